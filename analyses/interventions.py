"""Interventions as data: small frozen dataclasses that turn a batch into hooks, composable with ``+``.

    >>> ablate = neurons(layer=3, indices=[12, 40], mode="zero") + mlp_bypass(5, where="image")
    >>> ablate.name
    'zero 2 neurons @L3 + bypass MLP @L5 (image)'
    >>> ablate.parts[0]
    Neurons(layer=3, indices=(12, 40), mode='zero', value=None, site='mlp')

What an intervention does is its fields (layer, indices, mode, value, ...), so two equal
interventions are ``==`` and an intervention prints as what it does. ``apply(model, inputs,
intervention)`` runs a batch with it; every one goes in through ``model.hooks`` and so is
exception-safe. Controls: ``random_neurons`` draws a seeded random set of the same size at the
same layer.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import no_type_check

import numpy as np
import torch
from torch import Tensor

from vlm_lens import HookedVLM, VLMInputs
from vlm_lens.errors import InputError

Hooks = list[tuple[str, Callable]]

# Units an intervention on "neurons" can address: MLP neurons or residual-stream dimensions.
NEURON_SITES = {"mlp": "blocks.{l}.mlp.hook_post", "resid": "blocks.{l}.hook_resid_post"}
NEURON_MODES = ("zero", "mean", "clamp", "scale")


def whole_numbers(values, what: str) -> tuple[int, ...]:
    """``values`` as non-negative ints, or an ``InputError`` naming ``what``: a float such as 1.7 is refused, not
    truncated, and a negative index is refused, not read from the end."""
    out = []
    for v in values:
        if (
            isinstance(v, bool)
            or not isinstance(v, (int, np.integer))
            and not (isinstance(v, (float, np.floating)) and float(v).is_integer())
        ):
            raise InputError(f"{what} must be whole numbers, got {v!r} in {list(values)}")
        if int(v) < 0:
            raise InputError(f"{what} must be non-negative (counted from 0), got {int(v)} in {list(values)}")
        out.append(int(v))
    return tuple(out)


def check_below(values, limit: int, what: str, size: str) -> None:
    """Every index in ``values`` below ``limit`` (the model's size, named by ``size``), or an ``InputError``."""
    outside = [v for v in values if v >= limit]
    if outside:
        raise InputError(f"{what} {outside} outside the model's {limit} {size} (0..{limit - 1})")


class Intervention(ABC):
    """Base: ``hooks(model, inputs)`` gives (name, fn) pairs; ``name`` says what it does."""

    name: str

    @abstractmethod
    def hooks(self, model: HookedVLM, inputs: VLMInputs) -> Hooks:
        """The (hook name, hook function) pairs that carry the intervention out on this batch."""

    def __add__(self, other: Intervention) -> Combined:
        mine = self.parts if isinstance(self, Combined) else (self,)
        theirs = other.parts if isinstance(other, Combined) else (other,)
        return Combined(tuple(p for p in mine + theirs if not isinstance(p, Nothing)))


@dataclass(frozen=True)
class Nothing(Intervention):
    name = "none"

    def hooks(self, model, inputs) -> Hooks:
        return []


NOTHING = Nothing()


@dataclass(frozen=True)
class Combined(Intervention):
    parts: tuple[Intervention, ...]

    @property
    def name(self) -> str:
        return " + ".join(p.name for p in self.parts) or "none"

    def hooks(self, model, inputs) -> Hooks:
        return [hook for part in self.parts for hook in part.hooks(model, inputs)]


def apply(model: HookedVLM, inputs: VLMInputs, intervention: Intervention, logits_to_keep: int = 0) -> Tensor:
    """Logits of ``inputs`` under ``intervention`` (``logits_to_keep=1``: the last position's only)."""
    with torch.no_grad():
        return model.run_with_hooks(inputs, fwd_hooks=intervention.hooks(model, inputs), logits_to_keep=logits_to_keep)


def _position_mask(inputs: VLMInputs, where: str) -> Tensor:
    """[batch, pos] bool: 'all' real positions, 'image' positions or 'text' positions."""
    real = inputs.attention_mask.bool()
    image = torch.zeros_like(real)
    for item in range(inputs.batch_size):
        image[item, inputs.image_positions(item)] = True
    masks = {"all": real, "image": image & real, "text": ~image & real}
    if where not in masks:
        raise InputError(f"where must be one of {sorted(masks)}, got {where!r}")
    return masks[where]


@no_type_check  # checks its own indices (the error contract): the tests' run-time type checker stays out
@dataclass(frozen=True)
class Neurons(Intervention):
    """Edit units of one layer at every position: MLP neurons (``site="mlp"``, ``mlp.hook_post``) or
    residual-stream dimensions (``site="resid"``, ``hook_resid_post``).

    modes: 'zero'; 'mean' (set to ``means[indices]``, e.g. from ``neuron_means``); 'clamp' (set to
    ``value``); 'scale' (multiply by ``value``).
    """

    layer: int
    indices: tuple[int, ...]
    mode: str = "zero"
    value: float | None = None
    site: str = "mlp"
    means: Tensor | None = field(default=None, repr=False, compare=False)
    label: str | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        (layer,) = whole_numbers([self.layer], "layer")
        object.__setattr__(self, "layer", layer)
        object.__setattr__(self, "indices", whole_numbers(self.indices, "neuron indices"))
        if self.mode not in NEURON_MODES:
            raise InputError(f"mode must be one of {NEURON_MODES}; got {self.mode!r}")
        if self.mode in ("clamp", "scale") and self.value is None:
            raise InputError(f"mode {self.mode!r} needs a value")
        if self.mode == "mean" and self.means is None:
            raise InputError("mode 'mean' needs means (see neuron_means)")
        if self.site not in NEURON_SITES:
            raise InputError(f"site must be one of {sorted(NEURON_SITES)}; got {self.site!r}")

    @property
    def name(self) -> str:
        unit = "neurons" if self.site == "mlp" else "residual units"
        return self.label or f"{self.mode} {len(self.indices)} {unit} @L{self.layer}"

    def hooks(self, model, inputs) -> Hooks:
        check_below([self.layer], model.cfg.n_layers, "layer", "language layers")
        width = model.cfg.d_mlp if self.site == "mlp" else model.cfg.d_model
        check_below(self.indices, width, "neuron indices", "MLP neurons" if self.site == "mlp" else "residual units")
        index = list(self.indices)

        def edit(act: Tensor, hook) -> Tensor:
            act = act.clone()
            if self.mode == "zero":
                act[..., index] = 0
            elif self.mode == "mean":
                act[..., index] = self.means[index].to(act.dtype)
            elif self.mode == "clamp":
                act[..., index] = self.value
            else:
                act[..., index] *= self.value
            return act

        return [(NEURON_SITES[self.site].format(l=self.layer), edit)]


neurons = Neurons


def random_neurons(
    model: HookedVLM, layer: int, k: int, seed: int, exclude: Sequence[int] = (), site: str = "mlp", **kwargs
) -> Neurons:
    """The matched control: ``k`` units of the same layer drawn with ``np.random.default_rng(seed)``, avoiding ``exclude``."""
    width = model.cfg.d_mlp if site == "mlp" else model.cfg.d_model
    pool = np.setdiff1d(np.arange(width), np.asarray(exclude, dtype=int))
    if k > len(pool):
        raise InputError(f"cannot draw {k} units from the {len(pool)} available at layer {layer}")
    chosen = sorted(np.random.default_rng(seed).choice(pool, size=k, replace=False).tolist())
    control = Neurons(layer, chosen, site=site, **kwargs)
    return replace(control, label=f"random {control.name} (seed {seed})")


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


@no_type_check  # checks its own indices (the error contract): the tests' run-time type checker stays out
@dataclass(frozen=True)
class MLPBypass(Intervention):
    """Remove a layer's MLP write (``hook_mlp_out`` = 0) at all, image or text positions."""

    layer: int
    where: str = "all"

    @property
    def name(self) -> str:
        return f"bypass MLP @L{self.layer} ({self.where})"

    def hooks(self, model, inputs) -> Hooks:
        check_below(whole_numbers([self.layer], "layer"), model.cfg.n_layers, "layer", "language layers")
        mask = _position_mask(inputs, self.where)

        def bypass(act, hook):
            if act.shape[1] != mask.shape[1]:  # a decode step: its new tokens are text
                return None if self.where == "image" else torch.zeros_like(act)
            return act * (~mask).unsqueeze(-1).to(act.device, act.dtype)

        return [(f"blocks.{self.layer}.hook_mlp_out", bypass)]


mlp_bypass = MLPBypass


@no_type_check  # checks its own indices (the error contract): the tests' run-time type checker stays out
@dataclass(frozen=True)
class HeadAblation(Intervention):
    """Zero the outputs of attention heads (``attn.hook_z``) before the output projection."""

    layer: int
    heads: tuple[int, ...]

    def __post_init__(self):
        (layer,) = whole_numbers([self.layer], "layer")
        object.__setattr__(self, "layer", layer)
        object.__setattr__(self, "heads", whole_numbers(self.heads, "heads"))

    @property
    def name(self) -> str:
        return f"ablate heads {list(self.heads)} @L{self.layer}"

    def hooks(self, model, inputs) -> Hooks:
        check_below([self.layer], model.cfg.n_layers, "layer", "language layers")
        check_below(self.heads, model.cfg.n_heads, "heads", "attention heads")
        heads = list(self.heads)

        def zero(act, hook):
            act = act.clone()
            act[..., heads, :] = 0
            return act

        return [(f"blocks.{self.layer}.attn.hook_z", zero)]


head_ablation = HeadAblation


@no_type_check  # checks its own indices (the error contract): the tests' run-time type checker stays out
@dataclass(frozen=True)
class AttentionKnockout(Intervention):
    """Block attention from the query positions (negative: counted back from each item's last token) to the
    image tokens. Zeroing those pattern entries and renormalising each row is exactly masking them before the softmax."""

    layers: tuple[int, ...]
    query_positions: tuple[int, ...] = (-1,)

    def __post_init__(self):
        object.__setattr__(self, "layers", whole_numbers(self.layers, "layers"))
        positions = tuple(self.query_positions)
        whole_numbers([abs(q) for q in positions], "query positions")  # negative ones count back from the last token
        object.__setattr__(self, "query_positions", tuple(int(q) for q in positions))

    @property
    def name(self) -> str:
        return f"knock out attention to image @L{list(self.layers)}"

    def hooks(self, model, inputs) -> Hooks:
        check_below(self.layers, model.cfg.n_layers, "layers", "language layers")
        last = inputs.last_positions()
        seq = inputs.input_ids.shape[1]
        reach = [q for q in self.query_positions if (q >= seq if q >= 0 else -q > int(last.min()) + 1)]
        if reach:
            raise InputError(
                f"query positions {reach} fall outside the shortest item's {int(last.min()) + 1} tokens "
                "(negative positions count back from each item's last token)"
            )
        blocked = torch.zeros(inputs.batch_size, seq, seq, dtype=torch.bool)
        for item in range(inputs.batch_size):
            rows = [int(last[item]) + 1 + q if q < 0 else q for q in self.query_positions]
            cols = inputs.image_positions(item)
            blocked[item, torch.tensor(rows)[:, None], torch.tensor(cols)[None, :]] = True

        rows_only = blocked.any(-1)  # batch query: the rows that read no image

        def knock(pattern, hook):
            if pattern.shape[-2] != blocked.shape[-2]:  # decode steps attend from a single new query
                return None
            if hook.layer() in model.cfg.cross_layers:  # every key is the image's: those rows read nothing at all
                return pattern.masked_fill(rows_only[:, None, :, None].to(pattern.device), 0)
            kept = pattern.masked_fill(blocked[:, None].to(pattern.device), 0)
            return kept / kept.sum(-1, keepdim=True).clamp_min(torch.finfo(kept.dtype).tiny)

        return [(f"blocks.{layer}.attn.hook_pattern", knock) for layer in self.layers]


def attention_knockout(layers: Sequence[int], query_positions: Sequence[int] = (-1,)) -> AttentionKnockout:
    return AttentionKnockout(tuple(layers), tuple(query_positions))


@no_type_check  # checks its own indices (the error contract): the tests' run-time type checker stays out
@dataclass(frozen=True)
class _PositionFill(Intervention):
    """Per-item positions of an image's patches to fill with the item's mean patch value, or zero: what
    ``EmbeddingEdit`` (image tokens) and ``KeyFeatureEdit`` (cross-attention keys) share."""

    positions: tuple[tuple[int, ...], ...]
    fill: str = "mean"
    label: str = field(default="mask patches", compare=False)

    def __post_init__(self):
        if self.fill not in ("mean", "zero"):
            raise InputError(f"fill must be 'mean' or 'zero', got {self.fill!r}")
        object.__setattr__(self, "positions", tuple(whole_numbers(pos, "positions") for pos in self.positions))

    @property
    def name(self) -> str:
        return self.label


@no_type_check  # checks its own indices (the error contract): the tests' run-time type checker stays out
@dataclass(frozen=True)
class EmbeddingEdit(_PositionFill):
    """Replace image-token embeddings at per-item positions by the item's mean image-token embedding, or zero."""

    def hooks(self, model, inputs) -> Hooks:
        if len(self.positions) != inputs.batch_size:
            raise InputError(f"positions for {len(self.positions)} items, but the batch has {inputs.batch_size}")
        check_below(
            [p for pos in self.positions for p in pos], inputs.input_ids.shape[1], "positions", "token positions"
        )

        def edit(embed, hook):
            if hook.step > 0:  # generation: later steps carry no image tokens
                return None
            embed = embed.clone()
            for item, pos in enumerate(self.positions):
                if not pos:
                    continue
                image_pos = inputs.image_positions(item)
                value = embed[item, image_pos].mean(0) if self.fill == "mean" else torch.zeros_like(embed[item, 0])
                embed[item, list(pos)] = value
            return embed

        return [("hook_embed", edit)]


def image_embedding_edit(
    positions: Sequence[Sequence[int]], fill: str = "mean", name: str = "mask patches"
) -> EmbeddingEdit:
    return EmbeddingEdit(tuple(tuple(p) for p in positions), fill, name)


@no_type_check  # checks its own indices (the error contract): the tests' run-time type checker stays out
@dataclass(frozen=True)
class KeyFeatureEdit(_PositionFill):
    """The cross-attention counterpart of ``EmbeddingEdit`` (Llama-3.2-Vision, whose image is no tokens in the
    sequence but the keys of its cross-attention layers): replace the projected image features at per-item key
    positions (``VLMInputs.key_spans``) by the mean of the item's patch features, or zero, at
    ``projector.hook_out`` [batch, image, tile, patch, d_model], so every cross layer reads the edited keys."""

    label: str = field(default="mask patches (cross-attention keys)", compare=False)

    def hooks(self, model, inputs) -> Hooks:
        if not model.cfg.cross_layers or inputs.key_spans is None:
            raise InputError(
                "KeyFeatureEdit edits cross-attention keys: this model (or these inputs) has none; "
                "use image_embedding_edit for image tokens in the sequence"
            )
        if len(self.positions) != inputs.batch_size:
            raise InputError(f"positions for {len(self.positions)} items, but the batch has {inputs.batch_size}")

        def edit(features, hook):
            flat = features.flatten(1, -2).clone()  # batch key d_model
            check_below([p for pos in self.positions for p in pos], flat.shape[1], "positions", "cross-attention keys")
            for item, pos in enumerate(self.positions):
                if not pos:
                    continue
                patches = [p for span in inputs.key_spans[item] for p in span.positions]
                value = flat[item, patches].mean(0) if self.fill == "mean" else torch.zeros_like(flat[item, 0])
                flat[item, list(pos)] = value
            return flat.reshape(features.shape)

        return [("projector.hook_out", edit)]
