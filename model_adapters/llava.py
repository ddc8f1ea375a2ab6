"""LLaVA-1.5: CLIP ViT tower, two-layer MLP projector, Llama/Vicuna language model.

Image features replace the ``<image>`` token's expansion (576 tokens, a 24x24 grid at 336 px
with patch 14) after the user-text prefix: late fusion.
"""

from __future__ import annotations

from transformers import (
    AutoProcessor,
    CLIPImageProcessorPil,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)

from model_adapters.common import (
    LANGUAGE_MODEL,
    PRE_NORM_BLOCK,
    fill_grid_patches,
    square_grid_spans,
)
from model_adapters.testing import (
    DEFAULT_WORDS,
    TOY_INIT,
    FamilySpec,
    RealSize,
    build,
    text_config,
    toy_text,
    word_tokenizer,
)
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
        modules={
            **LANGUAGE_MODEL,
            "vision_layers": "model.vision_tower.encoder.layers",
            "projector": "model.multi_modal_projector",
        },
        block=PRE_NORM_BLOCK,
        image_spans=image_spans,
        template=template,
        load_processor=AutoProcessor.from_pretrained,
        fill_patches=fill_grid_patches,
    )
)


def tiny(words=DEFAULT_WORDS, *, seed=0, image_size=32, patch_size=8, text=None, vision=None, **config):
    tokenizer = word_tokenizer(words, ("<image>",))
    vision_config = dict(
        model_type="clip_vision_model",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=32,
    )
    cfg = LlavaConfig(
        text_config=text_config(tokenizer, text, model_type="llama"),
        vision_config={**vision_config, **(vision or {})},
        image_token_id=tokenizer.image_token_id,
        image_seq_length=(image_size // patch_size) ** 2,
        vision_feature_layer=-1,  # -2 would leave a 2-layer tower's last layer without gradient
        **config,
    )
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    return build(LlavaForConditionalGeneration, cfg, seed), processor


def toy(image_size: int) -> dict:
    vision = dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, initializer_range=TOY_INIT
    )
    return dict(text=toy_text(), vision=vision, image_size=image_size, patch_size=8, initializer_range=TOY_INIT)


SPEC = FamilySpec(
    family="llava",
    tiny=tiny,
    toy=toy,
    # center-cropped to a square, then a fixed patch grid
    expected_grid=lambda image, processor: (processor.image_processor.crop_size["height"] // processor.patch_size,) * 2,
    real=(RealSize("llava-1.5-7b-hf", 32, 24, 4096, 11008, 32, 128, 32064, 1024),),
)
