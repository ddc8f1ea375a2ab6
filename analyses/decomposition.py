"""Which layers and which component (attention or MLP) build the truth margin.

Each layer's attention write and MLP write is projected on the margin direction
``W_U[ref] - W_U[competitor]`` through the final norm linearised at the last layer, as
TransformerLens does: an RMSNorm is ``x / scale(x_final) * gain`` with the scale frozen at the
final residual. The embedding's and all layers' contributions then sum exactly to the final
logit difference between the reference and the competitor.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from analyses.answers import AnswerActivations, answer_positions, at_answer
from analyses.logit_lens import final_norm, unembed
from vlm_lens import ActivationCache, HookedVLM
from vlm_lens.adapter import get_module, layer_list
from vlm_lens.errors import InputError
from vlm_lens.resid import norm_gain, norm_scale, write_factor


def _rows_at(cache: ActivationCache | AnswerActivations, positions: Tensor | None = None):
    """A function taking a cached activation to one float32 row per item at the answer position: ``cache`` is a
    full cache (rows picked at ``positions``, default the answer positions) or what ``capture_at_answer`` kept."""
    if isinstance(cache, AnswerActivations):
        if positions is not None:
            raise InputError("answer activations hold one position per item already; positions cannot be chosen")
        return lambda t: t.float()
    positions = answer_positions(cache.inputs) if positions is None else positions
    return lambda t: at_answer(t, positions).float()


def _norm_gain_and_scale(model: HookedVLM, resid_final: Float[Tensor, "batch d_model"]):
    """The final RMSNorm linearised at the last residual (``vlm_lens.resid``: gain, and the rms it divides by)."""
    norm = final_norm(model)
    return norm_gain(norm, resid_final.shape[-1], resid_final), norm_scale(norm, resid_final)


def _margin_direction(
    model: HookedVLM, pick, cache, reference_ids: Sequence[int], competitor_ids: Sequence[int]
) -> Float[Tensor, "batch d_model"]:
    """``W_U[ref] - W_U[competitor]`` read through the final norm linearised at the last residual: a write's
    dot product with it is its contribution to logit[ref] - logit[competitor]."""
    gain, scale = _norm_gain_and_scale(model, pick(cache["resid_post", -1]))
    weight = unembed(model).weight.float()
    return (weight[list(reference_ids)] - weight[list(competitor_ids)]) * gain / scale


@torch.no_grad()
def margin_contributions(
    model: HookedVLM,
    cache: ActivationCache | AnswerActivations,
    reference_ids: Sequence[int],
    competitor_ids: Sequence[int],
    positions: Tensor | None = None,
) -> pd.DataFrame:
    """Tidy table: item, layer, component ('embed', 'attn', 'mlp'), contribution to logit[ref] - logit[comp].

    ``cache`` is a full cache (rows picked at ``positions``, default the answer positions) or what
    ``answers.capture_at_answer`` kept (already one row per item: memory of one batch)."""
    pick = _rows_at(cache, positions)
    direction = _margin_direction(model, pick, cache, reference_ids, competitor_ids)
    project = lambda write: (write * direction).sum(-1)  # noqa: E731
    rows = []
    for item, value in enumerate(project(pick(cache["resid_pre", 0]))):
        rows.append({"item": item, "layer": -1, "component": "embed", "contribution": float(value)})
    for layer in range(model.cfg.n_layers):
        for component, alias in (("attn", "attn_out"), ("mlp", "mlp_out")):
            for item, value in enumerate(project(pick(cache[alias, layer]))):
                rows.append({"item": item, "layer": layer, "component": component, "contribution": float(value)})
    return pd.DataFrame(rows)


def output_projection(model: HookedVLM, layer: int) -> torch.nn.Linear:
    """The attention output projection of a language layer (W_O: [d_model, heads * d_head])."""
    block = layer_list(model.hf_model, model.adapter.modules["layers"])[layer]
    return get_module(block, model.adapter.block_at(model.hf_model.config, layer)["attn_o"])


@torch.no_grad()
def head_contributions(
    model: HookedVLM,
    cache: ActivationCache | AnswerActivations,
    reference_ids: Sequence[int],
    competitor_ids: Sequence[int],
    positions: Tensor | None = None,
) -> pd.DataFrame:
    """Direct logit contribution of every attention head: head h's write ``z_h @ W_O[:, h]`` (through a post-attention
    norm, linearised at o_proj's output: ``vlm_lens.resid.through_post_norm``) projected on
    ``W_U[ref] - W_U[competitor]`` through the linearised final norm (as ``margin_contributions``). Over
    the heads of a layer they sum to that layer's attention contribution, less W_O's bias (no head's).
    Needs every layer's ``attn.hook_z`` and the last ``hook_resid_post``. Tidy: item, layer, head, contribution."""
    pick = _rows_at(cache, positions)
    direction = _margin_direction(model, pick, cache, reference_ids, competitor_ids)
    frames = []
    for layer in range(model.cfg.n_layers):
        z = pick(cache["z", layer])  # batch head d_head
        projection = output_projection(model, layer)
        w_o = projection.weight.float()
        per_head = w_o.view(w_o.shape[0], z.shape[1], z.shape[2])  # d_model head d_head
        bias = projection.bias.float() if projection.bias is not None else 0.0
        factor = write_factor(model, layer, "attn", torch.einsum("bhd,mhd->bm", z, per_head) + bias)  # post-norm, gate
        value = torch.einsum("bhd,mhd,bm->bh", z, per_head, (direction.to(z.device) * factor))
        frames.append(
            pd.DataFrame(
                {
                    "item": np.repeat(np.arange(z.shape[0]), z.shape[1]),
                    "layer": layer,
                    "head": np.tile(np.arange(z.shape[1]), z.shape[0]),
                    "contribution": value.reshape(-1).cpu().numpy(),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def top_heads(contributions: pd.DataFrame, k: int = 10) -> pd.DataFrame:
    """The k heads with the largest mean direct logit contribution (toward the reference) over the items:
    layer, head, mean, std, n."""
    means = contributions.groupby(["layer", "head"]).contribution.agg(["mean", "std", "count"]).reset_index()
    return means.rename(columns={"count": "n"}).sort_values("mean", ascending=False).head(k).reset_index(drop=True)


def update_norms_at_answer(model: HookedVLM, cache: ActivationCache | AnswerActivations) -> pd.DataFrame:
    """Per item and layer, at the answer position: the norms of attention's and the MLP's writes to the
    residual stream and the MLP's share of the update's magnitude, ||mlp|| / (||attn|| + ||mlp||).
    Tidy: item, layer, attn_norm, mlp_norm, mlp_share."""
    pick = _rows_at(cache)
    frames = []
    for layer in range(model.cfg.n_layers):
        attn, mlp = (pick(cache[alias, layer]).norm(dim=-1) for alias in ("attn_out", "mlp_out"))
        share = mlp / (attn + mlp).clamp_min(torch.finfo(torch.float32).tiny)
        frames.append(
            pd.DataFrame(
                {
                    "item": range(len(attn)),
                    "layer": layer,
                    "attn_norm": attn.tolist(),
                    "mlp_norm": mlp.tolist(),
                    "mlp_share": share.tolist(),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def update_shares(model: HookedVLM, cache: ActivationCache | AnswerActivations) -> pd.DataFrame:
    """Per layer: ``update_norms_at_answer`` averaged over items (the study's "MLP share" at a layer, Table 3).
    Tidy: layer, attn_norm, mlp_norm, mlp_share."""
    return layer_means(update_norms_at_answer(model, cache))


def image_update_norm_hooks(model: HookedVLM, inputs, rows: list[dict]) -> list:
    """Forward hooks that append, per layer and item, the mean norm of attention's and the MLP's writes over
    the item's image-token positions (the study's Figure 5: does the visual stream keep being updated?)
    to ``rows`` (item, layer, attn_norm / mlp_norm). Nothing of size positions x layers is kept."""
    mask = torch.zeros(inputs.attention_mask.shape, dtype=torch.float32)
    for item in range(inputs.batch_size):
        mask[item, inputs.image_positions(item)] = 1.0
    counts = mask.sum(1).clamp_min(1.0)

    def norm(activation: Tensor, hook) -> None:
        if activation.shape[1] != mask.shape[1]:  # a decode step: no image tokens
            return None
        value = (activation.float().norm(dim=-1) * mask.to(activation.device)).sum(1) / counts.to(activation.device)
        column = "attn_norm" if hook.name.endswith("hook_attn_out") else "mlp_norm"
        rows.extend(
            {"item": i, "layer": hook.layer(), "column": column, "value": float(v)} for i, v in enumerate(value)
        )
        return None

    return [
        (f"blocks.{l}.{kind}", norm) for l in range(model.cfg.n_layers) for kind in ("hook_attn_out", "hook_mlp_out")
    ]


def image_update_table(rows: list[dict]) -> pd.DataFrame:
    """Rows from ``image_update_norm_hooks`` (any number of batches, items renumbered) as layer means:
    layer, attn_norm, mlp_norm."""
    frame = pd.DataFrame(rows)
    return frame.pivot_table(index="layer", columns="column", values="value", aggfunc="mean").reset_index()


def layer_means(norms: pd.DataFrame) -> pd.DataFrame:
    """Per-item update norms (``update_norms_at_answer``, any number of batches concatenated) averaged per layer."""
    return norms.groupby("layer")[["attn_norm", "mlp_norm", "mlp_share"]].mean().reset_index()


def mlp_share(contributions: pd.DataFrame, upto_layer: int) -> float:
    """Share of the margin built by MLPs in layers 0..upto_layer: sum(mlp) / sum(attn + mlp), over items."""
    part = contributions[(contributions.layer >= 0) & (contributions.layer <= upto_layer)]
    total = part.contribution.sum()
    if abs(total) < 1e-12:
        return float("nan")
    return float(part[part.component == "mlp"].contribution.sum() / total)


@torch.no_grad()
def update_norms(model: HookedVLM, cache: ActivationCache) -> pd.DataFrame:
    """L2 norm of each layer's residual update (attn_out + mlp_out), mean over image and over text positions.

    The study's "dormant visual stream": how much the layers still write at image positions.
    """
    inputs = cache.inputs
    rows = []
    for layer in range(model.cfg.n_layers):
        update = (cache["attn_out", layer] + cache["mlp_out", layer]).float().norm(dim=-1)  # batch pos
        for item in range(update.shape[0]):
            image = torch.zeros(update.shape[1], dtype=torch.bool)
            image[inputs.image_positions(item)] = True
            real = inputs.attention_mask[item].bool().cpu()
            for where, mask in (("image", image & real), ("text", ~image & real)):
                rows.append(
                    {"item": item, "layer": layer, "positions": where, "update_norm": float(update[item, mask].mean())}
                )
    return pd.DataFrame(rows)


def layer_table(contributions: pd.DataFrame) -> pd.DataFrame:
    """Mean contribution per layer and component, with the cumulative margin (a wide, plot-ready table)."""
    table = contributions[contributions.layer >= 0].pivot_table(
        index="layer", columns="component", values="contribution", aggfunc="mean"
    )
    embed = contributions[contributions.component == "embed"].contribution.mean()
    table["cumulative"] = embed + (table["attn"] + table["mlp"]).cumsum()
    return table.reset_index()


def as_array(contributions: pd.DataFrame, component: str) -> np.ndarray:
    """[layer, item] array of one component's contributions."""
    part = contributions[contributions.component == component]
    return part.pivot(index="layer", columns="item", values="contribution").to_numpy()
