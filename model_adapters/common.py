"""Pieces the families share: the pre-norm decoder block table and square patch grids."""

from __future__ import annotations

from typing import Any

import torch

from vlm_lens.errors import ImageTokenMismatchError, InputError
from vlm_lens.inputs import ImageSpan, spans_from_runs

# Where the language model sits in all three families' ForConditionalGeneration classes.
LANGUAGE_MODEL = {
    "layers": "model.language_model.layers",
    "final_norm": "model.language_model.norm",
    "unembed": "lm_head",
    "embed": "model.language_model.embed_tokens",
}

# Llama, Gemma and Qwen2 decoder layers: pre-norm attention and gated MLP, the residual
# adds attention's and the MLP's outputs as they leave the modules.
PRE_NORM_BLOCK = {
    "attn": "self_attn",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_o": "self_attn.o_proj",
    "attn_out": "self_attn",
    "ln1": "input_layernorm",
    "ln2": "post_attention_layernorm",
    "mlp_gate": "mlp.gate_proj",
    "mlp_up": "mlp.up_proj",
    "mlp_down": "mlp.down_proj",
    "mlp_out": "mlp",
}


def square_grid_spans(config, input_ids: torch.Tensor, tensors: dict) -> list[list[ImageSpan]]:
    """Fixed-resolution towers (CLIP, SigLIP): each image is (size/patch)^2 tokens in a square grid."""
    vision = config.vision_config
    side = vision.image_size // vision.patch_size
    pixels = tensors["pixel_values"]
    if pixels.ndim != 4:
        raise InputError(f"pixel_values must be [image, channel, height, width], got shape {tuple(pixels.shape)}")
    if tuple(pixels.shape[-2:]) != (vision.image_size, vision.image_size):
        raise InputError(
            f"pixel_values are {pixels.shape[-2]}x{pixels.shape[-1]} but the vision tower takes "
            f"{vision.image_size}x{vision.image_size}; use model.prepare() or the model's processor"
        )
    n_images = pixels.shape[0]
    n_tokens = int((input_ids == config.image_token_id).sum())
    if n_tokens != n_images * side * side:
        raise ImageTokenMismatchError(
            f"{n_images} image(s) need {n_images} x {side * side} = {n_images * side * side} image tokens "
            f"(a {side}x{side} patch grid each) but input_ids hold {n_tokens}"
        )
    return spans_from_runs(input_ids, config.image_token_id, [(side * side, (side, side))] * n_images)


def token_runs(ids: list[int], token_id: int) -> list[tuple[int, int]]:
    """(start, end) of each run of ``token_id`` in one item's ids (one per image, or per tile where text parts them)."""
    runs, start = [], None
    for pos, token in enumerate([*ids, None]):
        if token == token_id and start is None:
            start = pos
        elif token != token_id and start is not None:
            runs.append((start, pos))
            start = None
    return runs


def fill_grid_patches(config, tensors: dict, span: ImageSpan, cells, fill: torch.Tensor) -> None:
    """pixel_values [image, channel, H, W] whose patch grid tiles the picture (CLIP, SigLIP)."""
    pixels = tensors["pixel_values"]
    rows, cols = span.grid
    ph, pw = pixels.shape[2] // rows, pixels.shape[3] // cols
    for cell in cells:
        r, c = divmod(int(cell), cols)
        pixels[span.image, :, r * ph : (r + 1) * ph, c * pw : (c + 1) * pw] = fill[:, None, None]


def fill_merged_patches(config, tensors: dict, span: ImageSpan, cells, fill: torch.Tensor) -> None:
    """Packed patches in merge-block order (Qwen-VL towers): token j of an image is its patch rows
    [m^2 j, m^2 (j + 1)), each row channel-major ([channel, time, patch, patch] flattened). A video's tokens run
    frame by frame: its ``cells`` are filled in every frame (``pixel_values_videos``)."""
    what = "video" if span.video else "image"
    pixels = tensors["pixel_values_videos" if span.video else "pixel_values"]
    merge = config.vision_config.spatial_merge_size
    offset = int(tensors[f"{what}_grid_thw"][: span.image].prod(-1).sum())
    per_channel = pixels.shape[1] // 3
    per_frame = span.grid[0] * span.grid[1]
    for t in range(span.frames):
        for cell in cells:
            token = t * per_frame + int(cell)
            block = pixels[offset + merge**2 * token : offset + merge**2 * (token + 1)]
            block.view(merge**2, 3, per_channel)[:] = fill[None, :, None]


def image_only(processor_class: type, name: str | None = None) -> Any:  # a processor class, built at import
    """A processor class for images only (Qwen-VL, LLaVA-OneVision).

    transformers cannot build these families' video processors without torchvision, and the stock
    processors refuse to exist without one. Images are processed exactly as the stock one does.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        processor_class.__init__(self, image_processor, tokenizer, None, chat_template=chat_template, **kwargs)
        self.video_processor = None

    name = name or processor_class.__name__.replace("Processor", "ImageProcessor")
    return type(name, (processor_class,), {"__init__": __init__, "__doc__": image_only.__doc__, "__module__": __name__})
