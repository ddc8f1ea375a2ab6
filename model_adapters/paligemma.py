"""PaliGemma: SigLIP tower, linear projector, Gemma language model.

Image tokens come first (256 = 16x16 at 224 px, patch 14), then BOS, the prompt and a newline;
the prefix (images + prompt) attends bidirectionally, marked by ``token_type_ids`` (0 = prefix,
1 = suffix). Gemma scales its token embeddings by sqrt(d_model) at lookup; image features are
inserted unscaled. ``hook_embed`` is the merged tensor layer 0 receives.
"""

from __future__ import annotations

import math

from transformers import (
    PaliGemmaConfig,
    PaliGemmaForConditionalGeneration,
    PaliGemmaProcessor,
    SiglipImageProcessorPil,
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


def template(prompt: str, n_images: int, processor) -> str:
    # The processor adds BOS after the image tokens and the newline that ends the prefix.
    return processor.image_token * n_images + prompt


ADAPTER = register(
    Adapter(
        family="paligemma",
        hf_classes=("PaliGemmaForConditionalGeneration",),
        modules={
            **LANGUAGE_MODEL,
            "vision_layers": "model.vision_tower.encoder.layers",
            "projector": "model.multi_modal_projector",
        },
        block=PRE_NORM_BLOCK,
        image_spans=square_grid_spans,
        template=template,
        load_processor=PaliGemmaProcessor.from_pretrained,
        forward_keys=("input_ids", "attention_mask", "pixel_values", "token_type_ids"),
        drop_keys=("labels",),
        nested_images=True,
        fill_patches=fill_grid_patches,
        answer_token_types={"token_type_ids": 1},  # the suffix: what follows the prefix is generated
        embed_scale=lambda config: config.get_text_config().hidden_size ** 0.5,  # Gemma's, applied at lookup
    )
)


def tiny(words=DEFAULT_WORDS, *, seed=0, image_size=32, patch_size=8, text=None, vision=None, **config):
    tokenizer = word_tokenizer(words)
    image_processor = SiglipImageProcessorPil(size={"height": image_size, "width": image_size})
    image_processor.image_seq_length = (image_size // patch_size) ** 2
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)  # adds <image> etc.
    text_cfg = text_config(tokenizer, text, model_type="gemma", num_key_value_heads=1, head_dim=16)
    vision_config = dict(
        model_type="siglip_vision_model",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
    )
    cfg = PaliGemmaConfig(
        text_config=text_cfg,
        vision_config={**vision_config, **(vision or {})},
        image_token_id=processor.image_token_id,
        projection_dim=text_cfg["hidden_size"],
        **config,
    )
    return build(PaliGemmaForConditionalGeneration, cfg, seed), processor


def toy(image_size: int) -> dict:
    vision = dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, initializer_range=TOY_INIT
    )
    return dict(
        text=toy_text(num_key_value_heads=1, head_dim=32),
        vision=vision,
        image_size=image_size,
        patch_size=8,
        initializer_range=TOY_INIT,
    )


SPEC = FamilySpec(
    family="paligemma",
    tiny=tiny,
    toy=toy,
    expected_grid=lambda image, processor: (math.isqrt(processor.image_seq_length),) * 2,  # resized to a square
    image_first=True,
    after_image="<s>",  # the processor puts BOS between the image tokens and the prompt
    real=(RealSize("paligemma-3b-pt-224", 18, 27, 2048, 16384, 8, 256, 257216, 1152),),
)
