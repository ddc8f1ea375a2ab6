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
from scipy import stats
from torch import Tensor

from vlm_lens import ActivationCache, HookedVLM


def final_norm(model: HookedVLM) -> torch.nn.Module:
    return model.hf_model.get_submodule(model.adapter.modules["final_norm"])


def unembed(model: HookedVLM) -> torch.nn.Module:
    return model.hf_model.get_submodule(model.adapter.modules["unembed"])


@torch.no_grad()
def logit_lens(model: HookedVLM, cache: ActivationCache, positions: Tensor | None = None) -> Float[Tensor, "layer batch vocab"]:
    """Per-layer logits at one position per item (default: each item's last real token)."""
    if positions is None:
        positions = cache.inputs.last_positions()
    resid = cache.stack("resid_post")  # layer batch pos d_model
    batch = torch.arange(resid.shape[1], device=resid.device)
    picked = resid[:, batch, positions.to(resid.device)]
    return unembed(model)(final_norm(model)(picked)).float()


def truth_margin(logits: Float[Tensor, "... vocab"], reference_ids: Sequence[Sequence[int]]) -> Float[Tensor, "..."]:
    """logit[r] - max other logit, maximised over each item's references (last dim of logits = vocab).

    ``reference_ids[i]`` lists item i's reference tokens; logits are [..., batch, vocab].
    """
    if logits.shape[-2] != len(reference_ids):
        raise ValueError(f"{len(reference_ids)} reference lists for a batch of {logits.shape[-2]}")
    out = torch.full(logits.shape[:-1], float("-inf"), dtype=logits.dtype, device=logits.device)
    for item, refs in enumerate(reference_ids):
        if not refs:
            raise ValueError(f"item {item} has no reference token")
        row = logits[..., item, :]
        for ref in refs:
            others = row.clone()
            others[..., ref] = float("-inf")
            out[..., item] = torch.maximum(out[..., item], row[..., ref] - others.max(dim=-1).values)
    return out


def reference_token_ids(tokenizer, golds: Sequence[str], closed_form: bool | None = None) -> list[int]:
    """The reference-token protocol.

    Closed-form answers (yes/no, integers): the answer's token, in lower case and capitalised
    (checkpoints differ in casing), maximised over later. Open-ended answers: the first content
    token of each gold (leading whitespace-only tokens and BOS skipped).
    """
    ids: list[int] = []
    for gold in golds:
        text = gold.strip()
        if not text:
            raise ValueError("an empty gold answer has no reference token")
        is_closed = text.lower() in ("yes", "no") or text.isdigit() if closed_form is None else closed_form
        variants = {text.lower(), text.capitalize()} if is_closed else {text}
        for variant in sorted(variants):
            tokens = tokenizer.encode(variant, add_special_tokens=False)
            content = [t for t in tokens if t != tokenizer.bos_token_id and tokenizer.decode([t]).strip()]
            if content and content[0] != tokenizer.unk_token_id and content[0] not in ids:
                ids.append(content[0])
    if not ids:
        raise ValueError(f"no reference token for golds {list(golds)}: all map to unknown or empty tokens")
    return ids


def margin_curves(margins: Float[np.ndarray, "layer n"], correct: Sequence[bool], confidence: float = 0.95) -> pd.DataFrame:
    """Mean margin per layer for correct and incorrect answers, with a t-interval. Tidy: one row per (layer, group)."""
    margins = np.asarray(margins, dtype=float)
    correct = np.asarray(correct, dtype=bool)
    if margins.ndim != 2 or margins.shape[1] != len(correct):
        raise ValueError(f"margins must be [layer, n] with n = {len(correct)} answers, got {margins.shape}")
    rows = []
    for group, mask in (("correct", correct), ("incorrect", ~correct)):
        n = int(mask.sum())
        for layer, values in enumerate(margins[:, mask]):
            mean = float(values.mean()) if n else float("nan")
            half = float(stats.t.ppf((1 + confidence) / 2, n - 1) * stats.sem(values)) if n > 1 else float("nan")
            rows.append({"layer": layer, "group": group, "n": n, "mean": mean, "ci_low": mean - half, "ci_high": mean + half})
    return pd.DataFrame(rows)


def peak_and_separation(curves: pd.DataFrame, margins: Float[np.ndarray, "layer n"]) -> dict:
    """The layer where the mean margin peaks, and the first where correct and incorrect CIs stop overlapping."""
    peak = int(np.argmax(np.asarray(margins, dtype=float).mean(axis=1)))
    correct = curves[curves.group == "correct"].set_index("layer")
    incorrect = curves[curves.group == "incorrect"].set_index("layer")
    apart = correct.ci_low > incorrect.ci_high
    separation = int(apart.idxmax()) if apart.any() else None
    return {"peak_layer": peak, "separation_layer": separation}


@torch.no_grad()
def dataset_margins(model: HookedVLM, examples, batch_size: int = 100) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Over ``evaluation.Example``s: truth margins [layer, n] of each label's token(s), greedy correctness [n],
    and the competitor token [n] (the strongest other token at the last layer)."""
    from analyses.evaluation import batches  # evaluation imports interventions; keep this module light

    margins, correct, competitors = [], [], []
    for chunk, inputs in batches(model, examples, batch_size):
        logits, cache = model.run_with_cache(inputs, names_filter=lambda n: n.endswith("hook_resid_post"))
        refs = [reference_token_ids(model.tokenizer, [e.label]) for e in chunk]
        lens = logit_lens(model, cache)
        margins.append(truth_margin(lens, refs).cpu().numpy())
        last = logits[:, -1].float()
        correct += [int(last[i].argmax()) in refs[i] for i in range(len(chunk))]
        for i, ref in enumerate(refs):
            others = last[i].clone()
            others[ref] = float("-inf")
            competitors.append(int(others.argmax()))
    return np.concatenate(margins, axis=1), np.array(correct), np.array(competitors)
