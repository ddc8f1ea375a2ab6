"""PaliGemma: SigLIP tower, linear projector, Gemma language model.

Image tokens come first (256 = 16x16 at 224 px, patch 14), then BOS, the prompt and a newline;
the prefix (images + prompt) attends bidirectionally, marked by ``token_type_ids`` (0 = prefix,
1 = suffix). Gemma scales its token embeddings by sqrt(d_model) at lookup; image features are
inserted unscaled. ``hook_embed`` is the merged tensor layer 0 receives.
"""

from __future__ import annotations

from transformers import PaliGemmaProcessor

from model_adapters.common import LANGUAGE_MODEL, PRE_NORM_BLOCK, square_grid_spans
from vlm_lens.adapter import Adapter, register


def template(prompt: str, n_images: int, processor) -> str:
    # The processor adds BOS after the image tokens and the newline that ends the prefix.
    return processor.image_token * n_images + prompt


ADAPTER = register(
    Adapter(
        family="paligemma",
        hf_classes=("PaliGemmaForConditionalGeneration",),
        modules={**LANGUAGE_MODEL, "vision_layers": "model.vision_tower.encoder.layers", "projector": "model.multi_modal_projector"},
        block=PRE_NORM_BLOCK,
        image_spans=square_grid_spans,
        template=template,
        load_processor=PaliGemmaProcessor.from_pretrained,
        forward_keys=("input_ids", "attention_mask", "pixel_values", "token_type_ids"),
        drop_keys=("labels",),
        nested_images=True,
    )
)
