"""Patch masking: hide the most-attended image patches (or as many random ones) and see what breaks.

Patches are ranked by the answer token's attention averaged over heads and layers
(``attention_structure.image_attention``). Masking happens at the token level (the patch
tokens' embeddings become the mean image-token embedding, or zero) or at the pixel level (the
patch's pixels become mid-grey in the model's own normalised pixel space).
"""

from __future__ import annotations

import numpy as np
import torch

from analyses.attention_structure import image_attention
from analyses.interventions import Intervention, image_embedding_edit
from vlm_lens import HookedVLM, VLMInputs


def choose_cells(grids: np.ndarray, fraction: float = 0.3, rank: str = "top", seed: int = 0) -> list[list[int]]:
    """Per item, row-major indices of ``round(fraction * cells)`` patches: the most attended, or random ones."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction is in (0, 1], got {fraction}")
    grids = np.asarray(grids)
    k = max(1, int(round(fraction * grids[0].size)))
    rng = np.random.default_rng(seed)
    cells = []
    for grid in grids:
        if rank == "top":
            cells.append(sorted(np.argsort(-grid.ravel(), kind="stable")[:k].tolist()))
        elif rank == "random":
            cells.append(sorted(rng.choice(grid.size, size=k, replace=False).tolist()))
        else:
            raise ValueError(f"rank must be 'top' or 'random', got {rank!r}")
    return cells


def attention_grids(model: HookedVLM, inputs: VLMInputs) -> np.ndarray:
    """[batch rows cols] attention from the last token to the first image, averaged over layers."""
    return image_attention(model, inputs).grids.mean(axis=0)


def token_mask(inputs: VLMInputs, cells: list[list[int]], fill: str = "mean", rank: str = "top") -> Intervention:
    positions = [[inputs.image_spans[item][0].start + c for c in item_cells] for item, item_cells in enumerate(cells)]
    return image_embedding_edit(positions, fill, name=f"mask {rank} patches (tokens, {fill})")


def _grey(processor) -> torch.Tensor:
    mean = torch.tensor(processor.image_processor.image_mean)
    std = torch.tensor(processor.image_processor.image_std)
    return (0.5 - mean) / std  # mid-grey, normalised as the processor normalises


def pixel_mask(model: HookedVLM, inputs: VLMInputs, cells: list[list[int]]) -> VLMInputs:
    """A copy of ``inputs`` whose first image per item has the chosen patches grey in pixel space."""
    pixels = inputs.tensors["pixel_values"].clone()
    grey = _grey(model.processor).to(pixels.dtype)
    for item, item_cells in enumerate(cells):
        span = inputs.image_spans[item][0]
        rows, cols = span.grid
        if pixels.ndim == 4:  # [image, channel, H, W]: square grids (LLaVA, PaliGemma)
            ph, pw = pixels.shape[2] // rows, pixels.shape[3] // cols
            for cell in item_cells:
                r, c = divmod(cell, cols)
                pixels[span.image, :, r * ph : (r + 1) * ph, c * pw : (c + 1) * pw] = grey[:, None, None]
        else:  # packed patches in merge-block order (Qwen2-VL): token j <- rows [m^2 j, m^2 (j+1)) of its image
            merge = model.hf_model.config.vision_config.spatial_merge_size
            thw = inputs.tensors["image_grid_thw"]
            offset = int(thw[: span.image].prod(-1).sum())
            per_channel = pixels.shape[1] // 3
            for cell in item_cells:
                block = pixels[offset + merge**2 * cell : offset + merge**2 * (cell + 1)]
                block.view(merge**2, 3, per_channel)[:] = grey[None, :, None]
    tensors = {**inputs.tensors, "pixel_values": pixels}
    return VLMInputs(tensors, inputs.image_spans, inputs.padding_side, inputs.prompts, inputs.texts)


def patch_masking(fraction: float = 0.3, rank: str = "top", level: str = "token", fill: str = "mean", seed: int = 0):
    """A (transform, intervention) pair for ``evaluation.predict``: ranks patches per batch, then masks them."""
    if level not in ("token", "pixel"):
        raise ValueError(f"level must be 'token' or 'pixel', got {level!r}")

    def cells_for(model, inputs):
        return choose_cells(attention_grids(model, inputs), fraction, rank, seed)

    if level == "pixel":
        return (lambda model, inputs: pixel_mask(model, inputs, cells_for(model, inputs))), None

    def build(model, inputs):
        return token_mask(inputs, cells_for(model, inputs), fill, rank).hooks(model, inputs)

    return None, Intervention(f"mask {rank} {fraction:.0%} patches ({level}, {fill})", build)
