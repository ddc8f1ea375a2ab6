"""Node attribution: how much each activation accounts for a metric's difference between a clean and a corrupted
input, with image patches as nodes of their own.

``attribute(model, clean, corrupted, metric, at=[hook names], method=...)`` scores every node of the named hooks:
each position of a residual-like hook (``hook_resid_pre``, ``hook_attn_out``, ``hook_embed``, ...), each
(position, head) of a per-head hook (``attn.hook_z``, ``attn.hook_result``, ...), each (position, neuron) of an MLP
hook (``mlp.hook_post``, ``mlp.hook_pre``). A node at an image token also says where it sits in the picture
(``media``: "image" or "video"; ``image``, ``image_view``, ``image_row``, ``image_col``: ``ImageSpan.locate``, a
video's view being its frame); ``on_grid`` lays one hook's scores on an image's patch grid, or a video frame's.

- ``method="gradient"`` (attribution patching, Nanda 2023): ``(a_clean - a_corrupted) . d metric / d a`` at the
  clean run, one forward and one backward for every hook together. A first-order estimate of what patching the
  node to its corrupted value would cost the metric; exact when the metric is linear in the activation.
- ``method="ig"`` (integrated gradients on the straight path between the corrupted and the clean activation of one
  hook, as EAP-IG, Hanna et al. 2024): the gradient averaged at ``steps`` midpoints ``a_corrupted + (k + 1/2) /
  steps * (a_clean - a_corrupted)``, times the difference; one forward and backward per step and hook, the rest of
  the model on the clean input. Complete: a hook that carries all of the input to what follows
  (``blocks.{l}.hook_resid_pre`` on a family whose image enters as tokens) has scores that sum to
  ``metric(clean) - metric(corrupted)`` up to the midpoint rule's error, which shrinks as ``steps`` grows; the
  result carries that check (``completeness``).

Clean and corrupted inputs must lay their tokens out alike (the same prompt length and image size): a node is a
position. ``metric(logits)`` takes the ``[batch, pos, vocab]`` logits of a run and returns a scalar tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from vlm_lens import HookedVLM
from vlm_lens.errors import InputError
from vlm_lens.inputs import VLMInputs

METHODS = ("gradient", "ig")
NEURON_SITES = ("mlp.hook_post", "mlp.hook_pre", "mlp.hook_pre_linear")


@dataclass
class Attribution:
    """``frame``: one row per node (``item, hook, layer, position, index, media, image, image_view, image_row,
    image_col, score``); ``totals``: per hook, the sum of its scores; ``difference``: ``metric(clean) - metric(corrupted)``
    (the sum a complete hook's scores reach). ``completeness``: per hook, ``total - difference``."""

    frame: pd.DataFrame
    totals: dict[str, float]
    difference: float
    method: str
    steps: int

    @property
    def completeness(self) -> dict[str, float]:
        return {hook: total - self.difference for hook, total in self.totals.items()}


def _layer(name: str) -> int | None:
    return int(name.split(".")[1]) if name.startswith("blocks.") else None


def _check(model: HookedVLM, at: Sequence[str], method: str, steps: int) -> list[str]:
    if method not in METHODS:
        raise InputError(f"method must be one of {METHODS}, got {method!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InputError(f"steps must be a whole number of at least 1, got {steps!r}")
    if isinstance(at, str):
        at = [at]
    names = [model.vocab.info(name).name for name in at]  # an unknown name: the closest valid ones
    for name in names:
        shape = model.hook_shape(name)
        if shape[:2] != ("batch", "pos"):
            raise InputError(
                f"attribution reads language-model hooks shaped [batch, pos, ...]; {name} is {list(shape)}: "
                "name a hook of the decoder (blocks.{l}...., hook_embed, ln_final.hook_normalized)"
            )
    if len(set(names)) != len(names):
        raise InputError(f"a hook is named twice in at={list(at)}")
    return names


def _activations(model: HookedVLM, inputs: VLMInputs, names: list[str]) -> tuple[Tensor, dict[str, Tensor]]:
    with torch.no_grad():
        logits, cache = model.run_with_cache(inputs, names_filter=lambda n: n in names)
    return logits, {n: cache[n].detach() for n in names}


def _node_scores(name: str, products: Tensor) -> Tensor:
    """Per node: summed over the width of a residual-like or per-head hook; per neuron for an MLP hook."""
    if name.endswith(NEURON_SITES):
        return products  # [batch, pos, d_mlp]
    return products.sum(-1)  # [batch, pos] or [batch, pos, head]


def _gradient(model, clean, names, clean_acts, corrupted_acts, metric) -> dict[str, Tensor]:
    kept: dict[str, Tensor] = {}

    def keep(activation: Tensor, hook) -> None:
        activation.retain_grad()
        kept[hook.name] = activation

    with torch.enable_grad():
        value = metric(model.run_with_hooks(clean, fwd_hooks=[(n, keep) for n in names]))
        _scalar(value)
        value.backward()
    return {n: _node_scores(n, (clean_acts[n] - corrupted_acts[n]).float() * kept[n].grad.float()) for n in names}


def _integrated(model, clean, names, clean_acts, corrupted_acts, metric, steps) -> dict[str, Tensor]:
    out = {}
    for name in names:
        delta = clean_acts[name] - corrupted_acts[name]
        total = torch.zeros_like(delta, dtype=torch.float32)
        for k in range(steps):
            point = (corrupted_acts[name] + (k + 0.5) / steps * delta).detach().requires_grad_(True)
            with torch.enable_grad():
                value = metric(model.run_with_hooks(clean, fwd_hooks=[(name, lambda a, hook, p=point: p)]))
                _scalar(value)
                (grad,) = torch.autograd.grad(value, point)
            total += grad.float()
        out[name] = _node_scores(name, delta.float() * total / steps)
    return out


def _scalar(value) -> None:
    if not isinstance(value, Tensor) or value.numel() != 1:
        raise InputError(
            f"metric(logits) must return a scalar tensor (reduce over the batch yourself), got "
            f"{type(value).__name__}{'' if not isinstance(value, Tensor) else f' of shape {list(value.shape)}'}"
        )


def _image_cells(inputs: VLMInputs) -> list[dict[int, tuple[str, int, int, int, int]]]:
    """Per item: image position -> (media, image, view, row, col)."""
    cells = []
    for spans in inputs.image_spans:
        found = {}
        for span in spans:
            for position in span.positions:
                view, row, col = span.locate(position)
                found[position] = ("video" if span.video else "image", span.image, view, row, col)
        cells.append(found)
    return cells


def _frame(names: list[str], scores: dict[str, Tensor], inputs: VLMInputs, positions) -> pd.DataFrame:
    cells = _image_cells(inputs)
    rows = []
    for name in names:
        s = scores[name].detach().cpu().numpy()
        batch, pos = s.shape[:2]
        for item in range(batch):
            keep = range(pos) if positions is None else positions(item)
            for p in keep:
                media, image, view, row, col = cells[item].get(p, (None, None, None, None, None))
                base = {
                    "item": item,
                    "hook": name,
                    "layer": _layer(name),
                    "position": p,
                    "media": media,
                    "image": image,
                    "image_view": view,
                    "image_row": row,
                    "image_col": col,
                }
                if s.ndim == 2:
                    rows.append({**base, "index": None, "score": float(s[item, p])})
                else:
                    rows += [{**base, "index": i, "score": float(v)} for i, v in enumerate(s[item, p])]
    columns = [
        *("item", "hook", "layer", "position", "index", "media", "image", "image_view", "image_row", "image_col"),
        "score",
    ]
    frame = pd.DataFrame(rows, columns=columns)
    whole = ["layer", "index", "image", "image_view", "image_row", "image_col"]  # absent where they do not apply
    return frame.astype({c: "Int64" for c in whole})


def _positions(inputs: VLMInputs, positions) -> Callable[[int], list[int]] | None:
    if positions is None:
        return None
    if positions == "image":
        return lambda item: inputs.image_positions(item)
    if positions == "text":
        return lambda item: [p for p in range(inputs.input_ids.shape[1]) if p not in set(inputs.image_positions(item))]
    if isinstance(positions, str):
        raise InputError(f"positions must be None, 'image', 'text' or a list of positions, got {positions!r}")
    chosen = [int(p) for p in positions]
    bad = [p for p in chosen if not 0 <= p < inputs.input_ids.shape[1]]
    if bad:
        raise InputError(f"positions {bad} are outside the sequence (0..{inputs.input_ids.shape[1] - 1})")
    return lambda item: chosen


def attribute(
    model: HookedVLM,
    clean: VLMInputs,
    corrupted: VLMInputs,
    metric: Callable[[Tensor], Tensor],
    at: Sequence[str],
    method: str = "gradient",
    steps: int = 16,
    positions=None,
) -> Attribution:
    """Score every node of the hooks ``at`` for ``metric(clean) - metric(corrupted)`` (see the module's text).

    ``positions``: report only these (``"image"``, ``"text"``, or a list; all by default); the totals and the
    completeness check always sum over every position."""
    names = _check(model, at, method, steps)
    if clean.input_ids.shape != corrupted.input_ids.shape:
        raise InputError(
            f"clean and corrupted inputs hold {list(clean.input_ids.shape)} and {list(corrupted.input_ids.shape)} "
            "tokens: attribution compares them position by position, so give both the same prompt length and "
            "image size (e.g. the same prompt with another image of the same size)"
        )
    clean_logits, clean_acts = _activations(model, clean, names)
    corrupted_logits, corrupted_acts = _activations(model, corrupted, names)
    for name in names:
        if clean_acts[name].shape != corrupted_acts[name].shape:
            raise InputError(
                f"clean and corrupted give {name} of shapes {list(clean_acts[name].shape)} and "
                f"{list(corrupted_acts[name].shape)}: give inputs with the same token layout"
            )
    with torch.no_grad():
        high, low = metric(clean_logits), metric(corrupted_logits)
        _scalar(high)
        difference = float(high) - float(low)
    if method == "gradient":
        scores = _gradient(model, clean, names, clean_acts, corrupted_acts, metric)
    else:
        scores = _integrated(model, clean, names, clean_acts, corrupted_acts, metric, steps)
    totals = {n: float(scores[n].sum()) for n in names}
    frame = _frame(names, scores, clean, _positions(clean, positions))
    return Attribution(frame, totals, difference, method, steps if method == "ig" else 1)


def on_grid(
    result: Attribution, hook: str, item: int = 0, image: int = 0, view: int = 0, video: bool = False
) -> np.ndarray:
    """One hook's scores at one image's patches, laid on its patch grid ``[rows, cols]`` (per-head or per-neuron
    scores summed over the index): where in the picture the metric's difference is carried. ``video=True``: video
    ``image``'s frame ``view``."""
    media = "video" if video else "image"
    rows = result.frame[
        (result.frame.hook == hook)
        & (result.frame["item"] == item)
        & (result.frame["media"] == media)
        & (result.frame["image"] == image)
        & (result.frame.image_view == view)
    ]
    if rows.empty:
        what = f"{media} {image} ({'frame' if video else 'view'} {view})"
        raise InputError(
            f"no scores at {what} of item {item} for {hook}: attribute at that hook, with the image positions reported"
        )
    cells = rows.groupby(["image_row", "image_col"])["score"].sum()
    grid = np.zeros((int(rows.image_row.max()) + 1, int(rows.image_col.max()) + 1))
    for (r, c), v in cells.items():
        grid[int(r), int(c)] = v
    return grid
