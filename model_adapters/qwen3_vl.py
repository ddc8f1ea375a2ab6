"""Qwen3-VL: a SigLIP-2 style tower with learned position embeddings and DeepStack, Qwen3 language model
(q and k normalised per head), interleaved M-RoPE.

Image tokens sit between ``<|vision_start|>`` and ``<|vision_end|>``, one per 2x2 block of 16-pixel
patches, as in Qwen2-VL (``model_adapters.qwen2_vl``). DeepStack: the tower's features from some of
its layers (``deepstack_visual_indexes``) are merged and added to the residual stream at the image
positions after the first language layers, outside any block: ``blocks.{l}.hook_deepstack`` is
what is added after layer l (zeros at text positions), so ``resid_pre[l + 1] = resid_post[l] +
deepstack[l]`` and the residual decompositions carry it as a component.
"""

from __future__ import annotations

from dataclasses import replace

from transformers import (
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
)

from model_adapters.common import image_only
from model_adapters.qwen2_vl import SPEC as QWEN2_VL_SPEC
from model_adapters.qwen2_vl import qwen_adapter, tiny_qwen
from model_adapters.testing import DEFAULT_WORDS, RealSize
from model_adapters.video import loader
from vlm_lens.adapter import register

Qwen3VLImageProcessor = image_only(Qwen3VLProcessor)

ADAPTER = register(
    qwen_adapter(
        "qwen3_vl",
        "Qwen3VLForConditionalGeneration",
        loader(Qwen3VLImageProcessor),
        projector="model.visual.merger",
        injected_layers=lambda config: range(len(config.vision_config.deepstack_visual_indexes)),
    )
)

ROPE = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3], "mrope_interleaved": True}


def tiny(
    words=DEFAULT_WORDS,
    *,
    seed=0,
    patch_size=4,
    min_pixels=16 * 16,
    max_pixels=32 * 32,
    text=None,
    vision=None,
    **config,
):
    def vision_config(hidden, patch):
        # DeepStack from the tower's layer 0, added after language layer 0
        return dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=hidden,
            patch_size=patch,
            spatial_merge_size=2,
            temporal_patch_size=2,
            in_channels=3,
            deepstack_visual_indexes=[0],
            num_position_embeddings=64,
        )

    return tiny_qwen(
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLImageProcessor,
        "qwen3_vl_text",
        vision_config,
        words=words,
        seed=seed,
        patch_size=patch_size,
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        text={"head_dim": 16, "rope_parameters": ROPE, **(text or {})},
        vision=vision,
        **config,
    )


def toy(image_size: int) -> dict:
    return {
        **QWEN2_VL_SPEC.toy(image_size),
        "text": None,
        "vision": dict(hidden_size=64, intermediate_size=128, num_heads=2, depth=2),
    }


SPEC = replace(
    QWEN2_VL_SPEC,
    family="qwen3_vl",
    tiny=tiny,
    toy=toy,
    real=(RealSize("qwen3-vl-8b-instruct", 36, 27, 4096, 12288, 32, 128, 151936, 1152),),
)
