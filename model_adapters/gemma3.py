"""Gemma 3: SigLIP tower, pooled projector, Gemma 3 language model with sandwich norms.

Each image is ``<start_of_image>``, 256 image tokens (the tower's 64x64 patches average-pooled to
16x16 at 896 px), ``<end_of_image>``; image tokens attend to each other bidirectionally
(``token_type_ids`` = 1 marks them). Gemma 3's blocks normalise what attention and the MLP write
before adding it ("sandwich" norms): ``hook_attn_out`` / ``hook_mlp_out`` are the outputs of
``post_attention_layernorm`` / ``post_feedforward_layernorm`` (what the residual adds), ``ln2`` is
``pre_feedforward_layernorm``, and ``attn.hook_result`` sums to ``o_proj``'s output before the norm;
``cache.stack_head_results`` and ``stack_neuron_results`` give the writes through it, linearised at the
actual scale (``vlm_lens.resid``). Layers alternate sliding-window and global attention; the
attention rows read the same mask. Pan-and-scan crops are not mapped (off by default).
"""

from __future__ import annotations

import math

import torch
from transformers import (
    AutoProcessor,
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3ImageProcessorPil,
    Gemma3Processor,
)

from model_adapters.common import LANGUAGE_MODEL, PRE_NORM_BLOCK, fill_grid_patches
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
from vlm_lens.errors import ImageTokenMismatchError, InputError
from vlm_lens.spans import spans_from_runs

SPECIALS = ("<image_soft_token>", "<start_of_image>", "<end_of_image>", "<start_of_turn>", "<end_of_turn>")

SANDWICH_BLOCK = {
    **PRE_NORM_BLOCK,
    "attn_out": "post_attention_layernorm",
    "ln2": "pre_feedforward_layernorm",
    "mlp_out": "post_feedforward_layernorm",
    "attn_post_norm": "post_attention_layernorm",
    "mlp_post_norm": "post_feedforward_layernorm",
}


def image_spans(config, input_ids, tensors):
    side = math.isqrt(config.mm_tokens_per_image)
    pixels = tensors["pixel_values"]
    if pixels.ndim != 4:
        raise InputError(f"pixel_values must be [image, channel, height, width], got shape {tuple(pixels.shape)}")
    n_tokens = int((input_ids == config.image_token_id).sum())
    if n_tokens != pixels.shape[0] * side * side:
        raise ImageTokenMismatchError(
            f"{pixels.shape[0]} image(s) need {side * side} image tokens each but input_ids "
            f"hold {n_tokens} (pan-and-scan crops are not supported)"
        )
    return spans_from_runs(input_ids, config.image_token_id, [(side * side, (side, side))] * pixels.shape[0])


def template(prompt: str, n_images: int, processor) -> str:
    # google/gemma-3-4b-it chat template (the processor expands each <start_of_image>)
    return f"<start_of_turn>user\n{processor.boi_token * n_images}{prompt}<end_of_turn>\n<start_of_turn>model\n"


ADAPTER = register(
    Adapter(
        family="gemma3",
        hf_classes=("Gemma3ForConditionalGeneration",),
        modules={
            **LANGUAGE_MODEL,
            "vision_layers": "model.vision_tower.encoder.layers",
            "projector": "model.multi_modal_projector",
        },
        block=SANDWICH_BLOCK,
        image_spans=image_spans,
        template=template,
        load_processor=AutoProcessor.from_pretrained,
        forward_keys=("input_ids", "attention_mask", "pixel_values", "token_type_ids"),
        nested_images=True,
        fill_patches=fill_grid_patches,  # a pooled token covers a square block of the picture, as a patch does
        embed_scale=lambda config: config.get_text_config().hidden_size ** 0.5,  # the scaled word embedding's
    )
)


def tiny(
    words=DEFAULT_WORDS, *, seed=0, image_size=64, patch_size=8, tokens_per_side=4, text=None, vision=None, **config
):
    tokenizer = word_tokenizer(words, SPECIALS, named={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>"})
    # 8x8 patches pooled to 4x4 tokens; two layers: one sliding-window, one global. The window (64) holds a
    # prompt and its answer, as 1024 holds a real one; tests/test_attention.py narrows it to see it mask keys
    text_cfg = text_config(
        tokenizer,
        text,
        model_type="gemma3_text",
        num_key_value_heads=2,
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=64,
        layer_types=["sliding_attention", "full_attention"],
    )
    vision_config = dict(
        model_type="siglip_vision_model",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
    )
    cfg = Gemma3Config(
        text_config=text_cfg,
        vision_config={**vision_config, **(vision or {})},
        mm_tokens_per_image=tokens_per_side**2,
        image_token_index=tokenizer.convert_tokens_to_ids("<image_soft_token>"),
        boi_token_index=tokenizer.convert_tokens_to_ids("<start_of_image>"),
        eoi_token_index=tokenizer.convert_tokens_to_ids("<end_of_image>"),
        **config,
    )
    image_processor = Gemma3ImageProcessorPil(size={"height": image_size, "width": image_size})
    processor = Gemma3Processor(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_length=tokens_per_side**2
    )
    model = build(Gemma3ForConditionalGeneration, cfg, seed)
    # transformers initialises the projection to zeros (a random model would not see its images): draw it
    projection = model.model.multi_modal_projector.mm_input_projection_weight
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        projection.copy_(torch.randn(projection.shape, generator=generator) * cfg.text_config.initializer_range * 10)
    return model, processor


def toy(image_size: int) -> dict:
    vision = dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, initializer_range=TOY_INIT
    )
    return dict(
        text=toy_text(
            num_key_value_heads=2,
            head_dim=32,
            query_pre_attn_scalar=32,
            sliding_window=16,
            layer_types=["sliding_attention", "full_attention"] * 2,
        ),
        vision=vision,
        image_size=image_size,
        patch_size=8,
        initializer_range=TOY_INIT,
    )


SPEC = FamilySpec(
    family="gemma3",
    tiny=tiny,
    toy=toy,
    expected_grid=lambda image, processor: (math.isqrt(processor.image_seq_length),) * 2,  # pooled, resized square
    before_image="<start_of_image>",
    after_image="<end_of_image>",
    real=(RealSize("gemma-3-4b-it", 34, 27, 2560, 10240, 8, 256, 262208, 1152),),
)
