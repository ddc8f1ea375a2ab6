"""Logit lens and the truth margin (the study's Eq. 3).

The logit lens reads every layer's residual stream through the model's own final norm
(Gemma's included) and unembedding; at the last layer it reproduces the logits exactly.
The truth margin of a reference token r is ``logit[r] - max_{t != r} logit[t]``: positive
exactly when r is the greedy answer. With several references (golds, or case variants of a
closed-form answer) it is the maximum over them.

    >>> import torch
    >>> truth_margin(torch.tensor([[1.0, 3.0, 2.0]]), [[1]]).item()
    1.0
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from numpy.typing import ArrayLike
from scipy import stats
from torch import Tensor

from analyses.answers import answer_positions, at_answer, greedy_answers, reference_token_ids, stack_at_answer
from analyses.data.scoring import correctness
from analyses.evaluation import batches
from vlm_lens import ActivationCache, HookedVLM
from vlm_lens.errors import InputError


def final_norm(model: HookedVLM) -> torch.nn.Module:
    return model.hf_model.get_submodule(model.adapter.modules["final_norm"])


def unembed(model: HookedVLM) -> torch.nn.Module:
    return model.hf_model.get_submodule(model.adapter.modules["unembed"])


@torch.no_grad()
def logit_lens(
    model: HookedVLM, cache: ActivationCache, positions: Tensor | None = None
) -> Float[Tensor, "layer batch vocab"]:
    """Per-layer logits at one position per item (default: each item's last real token)."""
    return read_out(model, stack_at_answer(cache, "resid_post", positions=positions))


@torch.no_grad()
def read_out(model: HookedVLM, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... vocab"]:
    """Residual-stream vectors through the model's own final norm and unembedding (float32 logits)."""
    return unembed(model)(final_norm(model)(resid)).float()


def truth_margin(logits: Float[Tensor, "... vocab"], reference_ids: Sequence[Sequence[int]]) -> Float[Tensor, ...]:
    """logit[r] - max other logit, maximised over each item's references (last dim of logits = vocab).

    ``reference_ids[i]`` lists item i's reference tokens; logits are [..., batch, vocab].
    """
    if logits.shape[-2] != len(reference_ids):
        raise InputError(f"{len(reference_ids)} reference lists for a batch of {logits.shape[-2]}")
    out = torch.full(logits.shape[:-1], float("-inf"), dtype=logits.dtype, device=logits.device)
    for item, refs in enumerate(reference_ids):
        if not refs:
            raise InputError(f"item {item} has no reference token")
        row = logits[..., item, :]
        for ref in refs:
            others = row.clone()
            others[..., ref] = float("-inf")
            out[..., item] = torch.maximum(out[..., item], row[..., ref] - others.max(dim=-1).values)
    return out


def margin_curves(margins: Float[np.ndarray, "layer n"], correct: ArrayLike, confidence: float = 0.95) -> pd.DataFrame:
    """Mean margin per layer for correct and incorrect answers, with a t-interval. Tidy: one row per (layer, group)."""
    margins = np.asarray(margins, dtype=float)
    correct = np.asarray(correct, dtype=bool)
    if margins.ndim != 2 or margins.shape[1] != len(correct):
        raise InputError(f"margins must be [layer, n] with n = {len(correct)} answers, got {margins.shape}")
    rows = []
    for group, mask in (("correct", correct), ("incorrect", ~correct)):
        n = int(mask.sum())
        for layer, values in enumerate(margins[:, mask]):
            mean = float(values.mean()) if n else float("nan")
            half = float(stats.t.ppf((1 + confidence) / 2, n - 1) * stats.sem(values)) if n > 1 else float("nan")
            rows.append(
                {"layer": layer, "group": group, "n": n, "mean": mean, "ci_low": mean - half, "ci_high": mean + half}
            )
    return pd.DataFrame(rows)


def peak_and_separation(curves: pd.DataFrame, margins: Float[np.ndarray, "layer n"]) -> dict:
    """Where the truth margin tells right from wrong (the study's Section 4.2, Table 3).

    - ``peak_layer``: the layer l* where the correct and incorrect trajectories separate most, the
      largest gap between their mean margins (the study's LLaVA l* = 24); ``gap_at_peak`` is that gap;
    - ``separation_layer``: the first layer whose 95% CIs of the two means no longer overlap;
    - ``max_margin_layer``: where the mean margin over all answers is largest (an extension: on a
      model whose margin keeps growing this is simply the last layer, and says little).
    """
    correct = curves[curves.group == "correct"].set_index("layer")
    incorrect = curves[curves.group == "incorrect"].set_index("layer")
    gap = correct["mean"] - incorrect["mean"]
    if gap.isna().all():
        raise InputError("the margin curves need both correct and incorrect answers to find where they separate")
    peak = int(gap.idxmax())
    apart = correct.ci_low > incorrect.ci_high
    separation = int(apart.idxmax()) if apart.any() else None
    return {
        "peak_layer": peak,
        "gap_at_peak": float(gap[peak]),
        "separation_layer": separation,
        "max_margin_layer": int(np.argmax(np.asarray(margins, dtype=float).mean(axis=1))),
    }


@torch.no_grad()
def dataset_margins(
    model: HookedVLM, examples, batch_size: int = 100, lens=None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Over ``Example``s: truth margins [layer, n] of each label's token(s), greedy correctness [n] (scored by
    ``analyses.answers``), and the competitor token [n] (the strongest other token at the last layer).

    ``lens``: read each layer through a tuned lens (``analyses.tuned_lens.TunedLens``) instead of the logit lens."""
    if lens is not None:
        lens.check_model(model)
    margins, correct, competitors = [], [], []
    for chunk, inputs in batches(model, examples, batch_size):
        logits, cache = model.run_with_cache(inputs, names_filter=lambda n: n.endswith("hook_resid_post"))
        refs = [reference_token_ids(model.tokenizer, e.golds, e.metric) for e in chunk]
        resid = stack_at_answer(cache, "resid_post")
        layers = read_out(model, resid if lens is None else lens.translate(resid))
        margins.append(truth_margin(layers, refs).cpu().numpy())
        correct += correctness(chunk, greedy_answers(model, logits, inputs)[1])
        competitors += competitor_ids(at_answer(logits, answer_positions(inputs)), refs)
    return np.concatenate(margins, axis=1), np.array(correct), np.array(competitors)


def best_references(logits: Float[Tensor, "batch vocab"], reference_ids: Sequence[Sequence[int]]) -> list[int]:
    """Per item, its reference token with the largest logit: the one the truth margin's maximum follows (the
    margin direction a decomposition projects on)."""
    return [max(refs, key=lambda r: float(logits[item, r])) for item, refs in enumerate(reference_ids)]


def competitor_ids(logits: Float[Tensor, "batch vocab"], reference_ids: Sequence[Sequence[int]]) -> list[int]:
    """Per item, the strongest token that is not one of its references (the margin's other side)."""
    others = logits.float().clone()
    for item, refs in enumerate(reference_ids):
        others[item, list(refs)] = float("-inf")
    return others.argmax(-1).tolist()
