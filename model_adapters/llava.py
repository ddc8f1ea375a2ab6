"""LLaVA-1.5: CLIP ViT tower, two-layer MLP projector, Llama/Vicuna language model.

Image features replace the ``<image>`` token's expansion (576 tokens, a 24x24 grid at 336 px
with patch 14) after the user-text prefix: late fusion.
"""

from __future__ import annotations

from transformers import AutoProcessor

from model_adapters.common import LANGUAGE_MODEL, PRE_NORM_BLOCK, square_grid_spans
from vlm_lens.adapter import Adapter, register
from vlm_lens.errors import InputError


def image_spans(config, input_ids, tensors):
    if config.vision_feature_select_strategy != "default":
        raise InputError(
            f"vision_feature_select_strategy {config.vision_feature_select_strategy!r} keeps the CLS token among "
            "the image tokens; image spans cover the 'default' strategy (patches only), as LLaVA-1.5 uses"
        )
    return square_grid_spans(config, input_ids, tensors)


def template(prompt: str, n_images: int, processor) -> str:
    # llava-hf/llava-1.5 model card: "USER: <image>\n<prompt> ASSISTANT:"
    return "USER: " + f"{processor.image_token}\n" * n_images + f"{prompt} ASSISTANT:"


ADAPTER = register(
    Adapter(
        family="llava",
        hf_classes=("LlavaForConditionalGeneration",),
        modules={**LANGUAGE_MODEL, "vision_layers": "model.vision_tower.encoder.layers", "projector": "model.multi_modal_projector"},
        block=PRE_NORM_BLOCK,
        image_spans=image_spans,
        template=template,
        load_processor=AutoProcessor.from_pretrained,
    )
)
