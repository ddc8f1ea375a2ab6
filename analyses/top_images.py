"""A unit's top-activating images: where in a dataset, and where in each picture, a neuron or an SAE latent fires.

``top_activating(model, examples, hook, unit)`` runs the questions a batch at a time, keeps only the unit's
activation at each image patch (``[batch, pos]``, never the whole hook), and returns the ``k`` questions whose
picture drives it hardest, each with the unit's activation laid on its patch grid. ``hook`` is any hook with a
unit axis last: ``blocks.{l}.mlp.hook_post`` (a neuron), ``blocks.{l}.hook_resid_post`` (a residual direction's
coordinate), or an SAE latent (``blocks.{l}.hook_resid_post.hook_sae_acts_post`` after ``model.add_sae``).
``analyses.maps.unit_view`` draws them.

    top = top_activating(model, shapes_examples(200, seed=3), "blocks.2.mlp.hook_post", unit=17, k=6)
    top.frame            # rank, example, text, max, mean, row, col (the patch where it fires most)
    unit_view(top).write_html("neuron_17.html")
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from PIL import Image

from analyses.evaluation import batches
from analyses.progress import Progress
from vlm_lens import HookedVLM
from vlm_lens.errors import InputError, InputIndexError


@dataclass
class TopImages:
    """``frame``: one row per top question (``rank``, ``example`` its index in the examples given, ``text``,
    ``max`` and ``mean`` of the unit over its first image's patches, ``row`` / ``col`` of the maximum);
    ``grids[i]``: the unit's activation on that image's patch grid (a multi-crop image's base view; a video's
    maximum over its frames); ``images[i]``: the picture."""

    hook: str
    unit: int
    frame: pd.DataFrame
    grids: list[Float[np.ndarray, "rows cols"]]
    images: list[Image.Image]


def _width(model: HookedVLM, hook: str) -> int | None:
    """The hook's number of units (None where only a run tells: an SAE's d_sae)."""
    shape = model.hook_shape(hook)
    if len(shape) != 3 or shape[:2] != ("batch", "pos"):
        raise InputError(
            f"{hook} is {list(shape)}: a unit's top images need a hook of [batch, pos, units] (mlp.hook_post, "
            "hook_resid_post, an SAE's hook_sae_acts_post)"
        )
    return shape[2] if isinstance(shape[2], int) else None


def _check_unit(hook: str, unit, width: int) -> None:
    if isinstance(unit, bool) or not isinstance(unit, int) or not 0 <= unit < width:
        raise InputIndexError(f"unit must be in 0..{width - 1} ({hook} has {width} units), got {unit!r}")


def _grid(span, values: torch.Tensor) -> np.ndarray:
    if span.video:
        return span.stitch(values).amax(dim=0).numpy()
    return span.stitch(values, kind="base").numpy()


@torch.no_grad()
def top_activating(
    model: HookedVLM,
    examples: Sequence,
    hook: str,
    unit: int,
    k: int = 8,
    batch_size: int = 16,
    progress: bool | Progress = False,
) -> TopImages:
    """The ``k`` examples (``analyses.data.examples.Example``) whose first image drives ``hook``'s ``unit`` hardest
    (its maximum over the image's patches), with the unit on each one's patch grid. Ties keep the earlier example."""
    width = _width(model, hook)
    if width is not None:
        _check_unit(hook, unit, width)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InputError(f"k must be a whole number of at least 1, got {k!r}")
    if not examples:
        raise InputError("top_activating needs at least one example")
    best: list[tuple[float, int, np.ndarray]] = []  # a min-heap of (max, -index, grid): the k largest so far
    kept: dict[str, torch.Tensor] = {}

    def keep(activation, hook):
        _check_unit(hook.name, unit, activation.shape[-1])
        kept["unit"] = activation[..., unit].detach().float().cpu()  # batch pos

    done = 0
    with Progress.of(progress).stage(f"{hook} unit {unit}: scanning", total=len(examples), unit="question") as bar:
        for chunk, inputs in batches(model, list(examples), batch_size):
            model.run_with_hooks(inputs, fwd_hooks=[(hook, keep)])
            for i in range(len(chunk)):
                grid = _grid(inputs.image_spans[i][0], kept["unit"][i])
                entry = (float(grid.max()), -(done + i), grid)
                if len(best) < k:
                    heapq.heappush(best, entry)
                else:
                    heapq.heappushpop(best, entry)
            done += len(chunk)
            bar.advance(len(chunk))
    ranked = sorted(best, key=lambda e: (-e[0], -e[1]))
    rows, grids, images = [], [], []
    for rank, (top, negative, grid) in enumerate(ranked):
        index = -negative
        row, col = divmod(int(np.argmax(grid)), grid.shape[1])
        rows.append(
            {
                "rank": rank,
                "example": index,
                "text": examples[index].text,
                "max": top,
                "mean": float(grid.mean()),
                "row": row,
                "col": col,
            }
        )
        grids.append(grid)
        images.append(examples[index].load_image())
    return TopImages(hook, unit, pd.DataFrame(rows), grids, images)
