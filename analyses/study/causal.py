"""Where the answer forms and what it rests on: Table 3 (margin building) and Tables 4-5 (ablations)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from analyses import answers, decomposition, interventions, logit_lens, probes, stats
from analyses.data.examples import Example
from analyses.evaluation import batches, correct
from analyses.study.config import VRPConfig
from analyses.study.extract import Extraction
from analyses.study.results import Ablation, Ablations, MarginBuilding, Predictors

DECOMPOSED = ("hook_resid_pre", "hook_resid_post", "hook_attn_out", "hook_mlp_out", "attn.hook_z")


@torch.no_grad()
def margin_building(model, examples: list[Example], ex: Extraction, cfg: VRPConfig) -> MarginBuilding:
    """Logit-lens peak and separation layers, the MLP share of the update at the peak, and the heads with the
    largest direct logit contribution, over the first ``cfg.margin_items`` questions (decomposed in batches
    of ``cfg.batch_size``)."""
    curves = logit_lens.margin_curves(ex.margins, ex.correct)
    summary = logit_lens.peak_and_separation(curves, ex.margins)
    subset = examples[: cfg.margin_items]
    frames, heads = [], []
    names = [n for n in model.hook_names() if n.startswith("blocks.") and n.endswith(DECOMPOSED)]
    norms = []
    for start, (chunk, inputs) in zip(range(0, len(subset), cfg.batch_size), batches(model, subset, cfg.batch_size)):
        captured = answers.capture_at_answer(model, inputs, names)  # rows at the answer only: one batch of memory
        refs = [answers.reference_token_ids(model.tokenizer, [e.label]) for e in chunk]
        competitors = logit_lens.competitor_ids(captured.logits, refs)
        table = decomposition.margin_contributions(model, captured, [r[0] for r in refs], competitors)
        frames.append(table.assign(item=table.item + start))
        per_head = decomposition.head_contributions(model, captured, [r[0] for r in refs], competitors)
        heads.append(per_head.assign(item=per_head.item + start))
        norms.append(decomposition.update_norms_at_answer(model, captured))
    contributions = pd.concat(frames, ignore_index=True)
    updates = decomposition.layer_means(pd.concat(norms, ignore_index=True))  # means over the questions
    peak = summary["peak_layer"]
    return MarginBuilding(
        peak_layer=peak, gap_at_peak=summary["gap_at_peak"], separation_layer=summary["separation_layer"],
        mlp_update_share_at_peak=float(updates.mlp_share[peak]),
        mlp_margin_share_to_peak=decomposition.mlp_share(contributions, peak),
        max_margin_layer=summary["max_margin_layer"], n_items=len(subset), curves=curves,
        contributions=decomposition.layer_table(contributions), updates=updates,
        top_heads=decomposition.top_heads(pd.concat(heads, ignore_index=True), cfg.top_heads))


def ablation_table(model, examples: list[Example], predictors: Predictors, cfg: VRPConfig) -> Ablations:
    """Zero the residual sparse probe's ``cfg.ablation_k`` strongest units of h_l (``blocks.l.hook_resid_post``,
    every position) vs ``cfg.random_controls`` random sets of the same size at the same layer, on the test
    split, with paired-bootstrap CIs of the accuracy change."""
    sparse = predictors.sparse
    chosen = probes.selected_neurons(sparse.probe).head(cfg.ablation_k)["index"].tolist()
    layer = int(sparse.probe.layer)
    test_examples = [examples[i] for i in predictors.split.test]
    before = np.array(correct(model, test_examples, batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens), float)
    conditions = []
    if chosen:
        conditions.append(("probe neurons", interventions.neurons(layer, chosen, "zero", site="resid")))
    for seed in range(cfg.random_controls):
        control = interventions.random_neurons(model, layer, max(1, len(chosen)), seed=cfg.seed + seed, exclude=chosen,
                                               site="resid")
        conditions.append((f"random control {seed}", control))
    rows = []
    for condition, intervention in conditions:
        after = np.array(correct(model, test_examples, intervention, batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens), float)
        change = stats.paired_bootstrap_diff(before, after, cfg.n_resamples, cfg.seed)
        rows.append(Ablation(condition, intervention, float(before.mean()), float(after.mean()), change))
    return Ablations(layer, chosen, cfg.ablation_k, rows)
