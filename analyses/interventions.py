"""Interventions as data: each is a named recipe that turns a batch into hooks, composable with ``+``.

    >>> ablate = neurons(layer=3, indices=[12, 40], mode="zero") + mlp_bypass(5, where="image")
    >>> ablate.name
    'zero 2 neurons @L3 + bypass MLP @L5 (image)'

``apply(model, inputs, intervention)`` runs a batch with it; every recipe goes in through
``model.hooks`` and so is exception-safe. Controls: ``random_neurons`` draws a seeded random
set of the same size at the same layer; ``patch_mask(..., rank="random")`` the same number of
random patches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from vlm_lens import HookedVLM, VLMInputs

Hooks = list[tuple[str, Callable]]


@dataclass(frozen=True)
class Intervention:
    name: str
    build: Callable[[HookedVLM, VLMInputs], Hooks]

    def hooks(self, model: HookedVLM, inputs: VLMInputs) -> Hooks:
        return self.build(model, inputs)

    def __add__(self, other: Intervention) -> Intervention:
        return Intervention(f"{self.name} + {other.name}", lambda m, x: self.build(m, x) + other.build(m, x))


NOTHING = Intervention("none", lambda model, inputs: [])


def apply(model: HookedVLM, inputs: VLMInputs, intervention: Intervention) -> Tensor:
    """Logits of ``inputs`` under ``intervention``."""
    with torch.no_grad():
        return model.run_with_hooks(inputs, fwd_hooks=intervention.hooks(model, inputs))


def _position_mask(inputs: VLMInputs, where: str) -> Tensor:
    """[batch, pos] bool: 'all' real positions, 'image' positions or 'text' positions."""
    real = inputs.attention_mask.bool()
    image = torch.zeros_like(real)
    for item in range(inputs.batch_size):
        image[item, inputs.image_positions(item)] = True
    masks = {"all": real, "image": image & real, "text": ~image & real}
    if where not in masks:
        raise ValueError(f"where must be one of {sorted(masks)}, got {where!r}")
    return masks[where]


def neurons(
    layer: int,
    indices: Sequence[int],
    mode: str = "zero",
    value: float | None = None,
    means: Tensor | None = None,
) -> Intervention:
    """Edit MLP neurons (``blocks.{layer}.mlp.hook_post``) at every position.

    modes: 'zero'; 'mean' (set to ``means[indices]``, e.g. from ``neuron_means``); 'clamp' (set to
    ``value``); 'scale' (multiply by ``value``).
    """
    index = list(indices)
    if mode in ("clamp", "scale") and value is None:
        raise ValueError(f"mode {mode!r} needs a value")
    if mode == "mean" and means is None:
        raise ValueError("mode 'mean' needs means (see neuron_means)")
    if mode not in ("zero", "mean", "clamp", "scale"):
        raise ValueError(f"mode must be zero, mean, clamp or scale; got {mode!r}")

    def edit(act: Tensor, hook) -> Tensor:
        act = act.clone()
        if mode == "zero":
            act[..., index] = 0
        elif mode == "mean":
            act[..., index] = means[index].to(act.dtype)
        elif mode == "clamp":
            act[..., index] = value
        else:
            act[..., index] *= value
        return act

    return Intervention(f"{mode} {len(index)} neurons @L{layer}", lambda m, x: [(f"blocks.{layer}.mlp.hook_post", edit)])


def random_neurons(model: HookedVLM, layer: int, k: int, seed: int, exclude: Sequence[int] = (), **kwargs) -> Intervention:
    """The matched control: ``k`` random neurons of the same layer (seeded), avoiding ``exclude``."""
    pool = np.setdiff1d(np.arange(model.cfg.d_mlp), np.asarray(exclude, dtype=int))
    if k > len(pool):
        raise ValueError(f"cannot draw {k} neurons from {len(pool)} available")
    chosen = np.random.default_rng(seed).choice(pool, size=k, replace=False)
    control = neurons(layer, sorted(chosen.tolist()), **kwargs)
    return Intervention(f"random {control.name} (seed {seed})", control.build)


@torch.no_grad()
def neuron_means(model: HookedVLM, batches: Sequence[VLMInputs], layer: int) -> Tensor:
    """Mean activation of every neuron at ``layer`` over the real positions of reference batches."""
    total, count = None, 0
    for inputs in batches:
        _, cache = model.run_with_cache(inputs, names_filter=f"blocks.{layer}.mlp.hook_post")
        act = cache["post", layer][inputs.attention_mask.bool()]
        total = act.sum(0) if total is None else total + act.sum(0)
        count += act.shape[0]
    return total / count


def mlp_bypass(layer: int, where: str = "all") -> Intervention:
    """Remove layer's MLP write (``hook_mlp_out`` = 0) at all, image or text positions."""

    def build(model, inputs):
        mask = _position_mask(inputs, where)

        def bypass(act, hook):
            return act * (~mask).unsqueeze(-1).to(act.dtype)

        return [(f"blocks.{layer}.hook_mlp_out", bypass)]

    return Intervention(f"bypass MLP @L{layer} ({where})", build)


def head_ablation(layer: int, heads: Sequence[int]) -> Intervention:
    """Zero the outputs of attention heads (``attn.hook_z``) before the output projection."""
    heads = list(heads)

    def zero(act, hook):
        act = act.clone()
        act[..., heads, :] = 0
        return act

    return Intervention(f"ablate heads {heads} @L{layer}", lambda m, x: [(f"blocks.{layer}.attn.hook_z", zero)])


def attention_knockout(layers: Sequence[int], query_positions: Sequence[int] = (-1,)) -> Intervention:
    """Block attention from the query positions (negative: from each item's last token) to the image tokens.

    Zeroing those pattern entries and renormalising each row is exactly masking them before the softmax.
    """
    layers = list(layers)

    def build(model, inputs):
        last = inputs.last_positions()
        blocked = torch.zeros(inputs.batch_size, inputs.input_ids.shape[1], inputs.input_ids.shape[1], dtype=torch.bool)
        for item in range(inputs.batch_size):
            rows = [int(last[item]) + 1 + q if q < 0 else q for q in query_positions]
            cols = inputs.image_positions(item)
            blocked[item, torch.tensor(rows)[:, None], torch.tensor(cols)[None, :]] = True

        def knock(pattern, hook):
            if pattern.shape[-2] != blocked.shape[-2]:  # decode steps attend from a single new query
                return None
            kept = pattern.masked_fill(blocked[:, None].to(pattern.device), 0)
            return kept / kept.sum(-1, keepdim=True).clamp_min(torch.finfo(kept.dtype).tiny)

        return [(f"blocks.{layer}.attn.hook_pattern", knock) for layer in layers]

    return Intervention(f"knock out attention to image @L{layers}", build)


def image_embedding_edit(positions: Sequence[Sequence[int]], fill: str = "mean", name: str = "mask patches") -> Intervention:
    """Replace image-token embeddings at per-item positions by the mean image-token embedding, or zero."""
    if fill not in ("mean", "zero"):
        raise ValueError(f"fill must be 'mean' or 'zero', got {fill!r}")

    def build(model, inputs):
        def edit(embed, hook):
            if hook.step > 0:  # generation: later steps carry no image tokens
                return None
            embed = embed.clone()
            for item, pos in enumerate(positions):
                if not len(pos):
                    continue
                image_pos = inputs.image_positions(item)
                value = embed[item, image_pos].mean(0) if fill == "mean" else torch.zeros_like(embed[item, 0])
                embed[item, list(pos)] = value
            return embed

        return [("hook_embed", edit)]

    return Intervention(name, build)
