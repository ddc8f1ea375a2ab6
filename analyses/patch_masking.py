"""Patch masking: hide the most-attended image patches (or as many random ones) and see what breaks.

Patches are ranked by the answer token's attention averaged over heads and layers
(``attention_structure.image_attention``). Masking happens at the token level (the patch
tokens' embeddings become the mean image-token embedding, or zero) or at the pixel level (the
patch's pixels become mid-grey in the model's own normalised pixel space).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from analyses.attention_structure import item_grids
from analyses.interventions import Intervention, KeyFeatureEdit, image_embedding_edit
from vlm_lens import HookedVLM, UnsupportedModelError, VLMInputs
from vlm_lens.errors import InputError


def choose_cells(grids, fraction: float = 0.3, rank: str = "top", seed: int = 0) -> list[list[int]]:
    """Per item, row-major indices of ``round(fraction * cells)`` of its grid's patches: the most attended, or
    random ones. ``grids``: one grid per item (items may have grids of different sizes)."""
    if not 0 < fraction <= 1:
        raise InputError(f"fraction is in (0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    cells = []
    for grid in map(np.asarray, grids):
        k = max(1, int(round(fraction * grid.size)))
        if rank == "top":
            cells.append(sorted(np.argsort(-grid.ravel(), kind="stable")[:k].tolist()))
        elif rank == "random":
            cells.append(sorted(rng.choice(grid.size, size=k, replace=False).tolist()))
        else:
            raise InputError(f"rank must be 'top' or 'random', got {rank!r}")
    return cells


def attention_grids(model: HookedVLM, inputs: VLMInputs) -> list[np.ndarray]:
    """Per item, [rows cols] attention from the last token to its first image, averaged over layers (each item
    on its own grid)."""
    return [grid.mean(axis=0) for grid in item_grids(model, inputs)]


def _stitched_position(span, cell: int) -> int:
    """The key position of a stitched-grid cell of a tiled span (non-overlapping tiles, ``ImageSpan.stitch``)."""
    (rows, cols), (_, wide) = span.views[0].grid, span.views[0].tiles
    r, c = divmod(cell, wide * cols)
    tile = next(v for v in span.views if v.tile == (r // rows, c // cols))
    return tile.position_of(r % rows, c % cols)


def token_mask(inputs: VLMInputs, cells: list[list[int]], fill: str = "mean", rank: str = "top") -> Intervention:
    """Hide the base-view ``cells`` of each item's first image at its tokens: a multi-crop image's every token, in
    every view, that sees part of those cells' area (``ImageSpan.covering``), so no crop shows what was hidden.
    A cross-attention model (``inputs.key_spans``): the cells of its stitched tiles, hidden in the projected image
    features its cross layers read (``KeyFeatureEdit``)."""
    if inputs.key_spans is not None:  # cross-attention: the cells are keys of the stitched tiles
        positions = [
            sorted(_stitched_position(inputs.key_spans[item][0], int(c)) for c in item_cells)
            for item, item_cells in enumerate(cells)
        ]
        return KeyFeatureEdit(tuple(map(tuple, positions)), fill, label=f"mask {rank} patches (cross keys, {fill})")
    positions = []
    for item, item_cells in enumerate(cells):
        span = inputs.image_spans[item][0]
        cols = span.grid[1]
        positions.append(sorted({p for c in item_cells for p in span.covering(*divmod(int(c), cols))}))
    return image_embedding_edit(positions, fill, name=f"mask {rank} patches (tokens, {fill})")


def _grey(processor) -> torch.Tensor:
    mean = torch.tensor(processor.image_processor.image_mean)
    std = torch.tensor(processor.image_processor.image_std)
    return (0.5 - mean) / std  # mid-grey, normalised as the processor normalises


def pixel_mask(model: HookedVLM, inputs: VLMInputs, cells: list[list[int]]) -> VLMInputs:
    """A copy of ``inputs`` whose first image per item has the chosen patches grey in pixel space.

    Where a family keeps a patch's pixels (a grid over the picture, or packed merge blocks) is
    its adapter's ``fill_patches``."""
    fill_patches = model.adapter.fill_patches
    if fill_patches is None:
        raise UnsupportedModelError(
            f"pixel-level masking needs to know where a patch's pixels lie, and the "
            f"{model.adapter.family!r} adapter does not declare it (Adapter.fill_patches); "
            "use token-level masking"
        )
    tensors = {k: v.clone() if v.is_floating_point() else v for k, v in inputs.tensors.items()}
    grey = _grey(model.processor).to(model.dtype)
    for item, item_cells in enumerate(cells):
        spans = inputs.key_spans if model.cfg.cross_layers else inputs.image_spans
        fill_patches(model.hf_model.config, tensors, spans[item][0], item_cells, grey)
    return replace(inputs, tensors=tensors)


@dataclass(frozen=True)
class PatchMask(Intervention):
    """Token-level patch masking as an intervention: per batch, rank the patches by attention, then
    replace the chosen patch tokens' embeddings (mean image embedding, or zero)."""

    fraction: float = 0.3
    rank: str = "top"
    fill: str = "mean"
    seed: int = 0

    @property
    def name(self) -> str:
        return f"mask {self.rank} {self.fraction:.0%} patches (token, {self.fill})"

    def hooks(self, model, inputs):
        cells = choose_cells(attention_grids(model, inputs), self.fraction, self.rank, self.seed)
        return token_mask(inputs, cells, self.fill, self.rank).hooks(model, inputs)


def patch_masking(fraction: float = 0.3, rank: str = "top", level: str = "token", fill: str = "mean", seed: int = 0):
    """A (transform, intervention) pair for ``evaluation.predict``: ranks patches per batch, then masks them."""
    if level not in ("token", "pixel"):
        raise InputError(f"level must be 'token' or 'pixel', got {level!r}")
    if level == "pixel":

        def transform(model, inputs):
            return pixel_mask(model, inputs, choose_cells(attention_grids(model, inputs), fraction, rank, seed))

        return transform, None
    return None, PatchMask(fraction, rank, fill, seed)
