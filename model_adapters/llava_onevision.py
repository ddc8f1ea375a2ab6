"""LLaVA-OneVision: SigLIP tower, MLP projector, Qwen2 language model, LLaVA-NeXT's "anyres" images.

As LLaVA-NeXT (``model_adapters.llava_next``): a base view (27x27 = 729 tokens at 384 px, patch 14,
no CLS), then the crops stitched and unpadded with a newline token per row; when that grid holds over
1.1^2 x 9 base grids ("anyres_max_9") transformers shrinks it bilinearly, and the highres view is that
shrunk grid (each token then mixes neighbouring crop patches). Qwen2 chat template. Images only: the
video path (``pixel_values_videos``) is not mapped.
"""

from __future__ import annotations

from typing import Any, no_type_check

from transformers import (
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessorPil,
    LlavaOnevisionProcessor,
)

from model_adapters.common import LANGUAGE_MODEL, PRE_NORM_BLOCK, image_only
from model_adapters.llava import toy as llava_toy
from model_adapters.llava_next import anyres_views, image_spans
from model_adapters.testing import (
    DEFAULT_WORDS,
    FamilySpec,
    RealSize,
    build,
    text_config,
    word_tokenizer,
)
from vlm_lens.adapter import Adapter, register

SPECIALS = ("<image>", "<video>", "<|im_start|>", "<|im_end|>")  # <video> its own id: the processor counts it


_ImagesOnly: Any = image_only(LlavaOnevisionProcessor, "LlavaOnevisionImagesOnlyBase")


@no_type_check  # transformers reads its settings back from __init__'s own code: left unwrapped
class ImagesOnlyProcessor(_ImagesOnly):
    """LLaVA-OneVision's processor for images only, with its own arguments spelled out: transformers reads a
    processor's saved settings back by the names in ``__init__``'s code."""

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        num_image_tokens=None,
        vision_feature_select_strategy=None,
        chat_template=None,
        image_token="<image>",
        video_token="<video>",
        vision_aspect_ratio="anyres_max_9",
        **kwargs,
    ):
        super().__init__(
            image_processor,
            tokenizer,
            chat_template=chat_template,
            num_image_tokens=num_image_tokens,
            vision_feature_select_strategy=vision_feature_select_strategy,
            image_token=image_token,
            video_token=video_token,
            vision_aspect_ratio=vision_aspect_ratio,
            **kwargs,
        )


def template(prompt: str, n_images: int, processor) -> str:
    # llava-hf/llava-onevision-qwen2-7b-ov-hf chat template: the images, a newline, then the text
    return f"<|im_start|>user {processor.image_token * n_images}\n{prompt}<|im_end|><|im_start|>assistant\n"


ADAPTER = register(
    Adapter(
        family="llava_onevision",
        hf_classes=("LlavaOnevisionForConditionalGeneration",),
        modules={
            **LANGUAGE_MODEL,
            "vision_layers": "model.vision_tower.encoder.layers",
            "projector": "model.multi_modal_projector",
        },
        block=PRE_NORM_BLOCK,
        image_spans=image_spans,
        template=template,
        load_processor=ImagesOnlyProcessor.from_pretrained,
        forward_keys=("input_ids", "attention_mask", "pixel_values", "image_sizes", "batch_num_images"),
        image_keys=("pixel_values", "image_sizes"),
    )
)


def tiny(
    words=DEFAULT_WORDS,
    *,
    seed=0,
    image_size=32,
    patch_size=8,
    text=None,
    vision=None,
    vision_aspect_ratio="anyres_max_2",
    **config,
):
    tokenizer = word_tokenizer(words, SPECIALS)
    # up to 3x3 crops: a grid of up to 12x12 tokens, shrunk past 1.1^2 x 2 base grids of 4x4
    pinpoints = [[image_size * r, image_size * c] for r in (1, 2, 3) for c in (1, 2, 3)]
    vision_config = dict(
        model_type="siglip_vision_model",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
    )
    cfg = LlavaOnevisionConfig(
        text_config=text_config(tokenizer, text, model_type="qwen2"),
        vision_config={**vision_config, **(vision or {})},
        image_token_id=tokenizer.image_token_id,
        video_token_id=tokenizer.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=pinpoints,
        vision_feature_layer=-1,
        vision_aspect_ratio=vision_aspect_ratio,
        **config,
    )
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": image_size, "width": image_size}, image_grid_pinpoints=pinpoints
    )
    processor = ImagesOnlyProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        num_image_tokens=(image_size // patch_size) ** 2,
        vision_feature_select_strategy="full",
        vision_aspect_ratio=vision_aspect_ratio,
    )
    return build(LlavaOnevisionForConditionalGeneration, cfg, seed), processor


def expected_views(image, processor) -> list[tuple[str, tuple[int, int]]]:
    return anyres_views(
        image, processor, processor.image_processor.size["height"], int(processor.num_image_tokens**0.5)
    )


SPEC = FamilySpec(
    family="llava_onevision",
    tiny=tiny,
    toy=llava_toy,
    expected_grid=lambda image, processor: (int(processor.num_image_tokens**0.5),) * 2,  # the base view
    before_image="user",
    expected_views=expected_views,
    crop_pixels=lambda processor: processor.image_processor.size["height"],
    real=(RealSize("llava-onevision-qwen2-7b-ov-hf", 28, 26, 3584, 18944, 28, 128, 152128, 1152),),
)
