"""Qwen2.5-VL: Qwen2-VL's layout with a windowed-attention ViT (RMSNorm, gated MLP) and M-RoPE.

Image tokens sit between ``<|vision_start|>`` and ``<|vision_end|>``, one per 2x2 block of
14-pixel patches, as in Qwen2-VL. The vision config's ``hidden_size`` is the tower's width
(``out_hidden_size`` is the merger's output, the language model's width).

The tower reorders patches into attention windows and its merger works in that order;
transformers puts the merged tokens back in image order after the merger. So ``projector.hook_out``
reads the vision model's ``pooler_output`` (image order, what replaces the image tokens), while
``vision.blocks.{l}.hook_resid_post`` rows stay in the tower's window order
(``transformers.vision_utils.get_vision_window_index``).
"""

from __future__ import annotations

from dataclasses import replace

from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
)

from model_adapters.common import image_only
from model_adapters.qwen2_vl import SPEC as QWEN2_VL_SPEC
from model_adapters.qwen2_vl import VIDEO_KEYS, qwen_adapter, tiny_qwen
from model_adapters.testing import DEFAULT_WORDS, RealSize
from model_adapters.video import loader
from vlm_lens.adapter import register

Qwen2_5_VLImageProcessor = image_only(Qwen2_5_VLProcessor)

ADAPTER = register(
    qwen_adapter(
        "qwen2_5_vl",
        "Qwen2_5_VLForConditionalGeneration",
        loader(Qwen2_5_VLImageProcessor),
        projector="model.visual",
        video_keys=(*VIDEO_KEYS, "second_per_grid_ts"),  # a video's seconds per frame group: M-RoPE's time step
        output_fields={"projector": "pooler_output"},
    )
)


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
        # window_size in pixels: 16 px = 2 merged tokens per window side; layer 1 attends globally
        return dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=hidden,
            patch_size=patch,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=16,
            fullatt_block_indexes=[1],
            in_channels=3,
        )

    return tiny_qwen(
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLImageProcessor,
        "qwen2_5_vl_text",
        vision_config,
        words=words,
        seed=seed,
        patch_size=patch_size,
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        text=text,
        vision=vision,
        **config,
    )


def toy(image_size: int) -> dict:
    return {
        **QWEN2_VL_SPEC.toy(image_size),
        "vision": dict(hidden_size=64, intermediate_size=128, num_heads=2, depth=2),
    }


# Qwen2-VL's layout and grids; its own builders and real-size checkpoint
SPEC = replace(
    QWEN2_VL_SPEC,
    family="qwen2_5_vl",
    tiny=tiny,
    toy=toy,
    real=(RealSize("qwen2.5-vl-7b-instruct", 28, 32, 3584, 18944, 28, 128, 152064, 1280),),
)
