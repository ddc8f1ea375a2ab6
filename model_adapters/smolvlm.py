"""SmolVLM 2 (transformers' ``SmolVLMForConditionalGeneration``): SigLIP tower, pixel-shuffle connector, SmolLM2
language model; images split into tiles exactly as Idefics3 splits them (``model_adapters.idefics3``: the same
markup, spans and module paths). SmolVLM-2.2B: 384 px tiles of 27x27 patches shuffled by 3 to 9x9 = 81 tokens.

The first SmolVLM (``HuggingFaceTB/SmolVLM-Instruct``) is an ``Idefics3ForConditionalGeneration`` checkpoint and
runs on the Idefics3 adapter. Images only: the video path is not mapped.
"""

from __future__ import annotations

from typing import Any, no_type_check

from transformers import (
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
    SmolVLMImageProcessorPil,
    SmolVLMProcessor,
)

from model_adapters.common import image_only
from model_adapters.idefics3 import (
    adapter,
    expected_views,
    tile_grid,
    tile_pixels,
    tiny_parts,
)
from model_adapters.llava import toy as llava_toy
from model_adapters.testing import DEFAULT_WORDS, FamilySpec, RealSize, build
from vlm_lens.adapter import register

_ImagesOnly: Any = image_only(SmolVLMProcessor, "SmolVLMImagesOnlyBase")


@no_type_check  # transformers reads its settings back from __init__'s own code: left unwrapped
class SmolVLMImageProcessor(_ImagesOnly):
    """SmolVLM's processor for images only, its arguments spelled out (transformers reads saved settings back by the
    names in ``__init__``'s code)."""

    def __init__(self, image_processor=None, tokenizer=None, image_seq_len: int = 169, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, chat_template=chat_template, image_seq_len=image_seq_len, **kwargs)


def template(prompt: str, n_images: int, processor) -> str:
    # HuggingFaceTB/SmolVLM2-2.2B-Instruct chat template (its tokenizer adds no start token)
    return f"<|im_start|>User:{processor.image_token * n_images}{prompt}<end_of_utterance>\nAssistant:"


ADAPTER = register(
    adapter("smolvlm", "SmolVLMForConditionalGeneration", SmolVLMImageProcessor.from_pretrained, template)
)


def tiny(words=DEFAULT_WORDS, *, seed=0, image_size=32, patch_size=4, text=None, vision=None, **config):
    tokenizer, cfg, image_processor, per_tile = tiny_parts(
        SmolVLMConfig,
        SmolVLMImageProcessorPil,
        words,
        image_size,
        patch_size,
        text,
        vision,
        config,
        specials=("<|im_start|>",),
    )
    processor = SmolVLMImageProcessor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=per_tile)
    return build(SmolVLMForConditionalGeneration, cfg, seed), processor


SPEC = FamilySpec(
    family="smolvlm",
    tiny=tiny,
    toy=llava_toy,
    expected_grid=tile_grid,
    after_image="<fake_token_around_image>",
    expected_views=expected_views,
    crop_pixels=tile_pixels,
    real=(RealSize("smolvlm2-2.2b-instruct", 24, 27, 2048, 8192, 32, 64, 49280, 1152),),
)
