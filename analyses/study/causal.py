"""Where the answer forms and what it rests on: Table 3 (margin building), Tables 4-5 (unit ablations),
MLP bypass by layer and patch masking.

Cost: every causal condition re-answers the test split once (``n * test_fraction`` questions):
with the defaults, 2 probe sizes x (1 + 3 random controls) + 5 single units + 4 clamps (2 to class
means, 2 extreme) + 2 other layers x 2 + 3 escalating sizes + one bypass per layer + 4 masking
conditions, so a 32-layer model re-answers the test split 62 times. Memory stays one batch."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from analyses import answers, decomposition, interventions, logit_lens, probes, stats
from analyses.data.examples import Example
from analyses.evaluation import batches, correct
from analyses.patch_masking import patch_masking
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
    norms, visual = [], []
    for start, (chunk, inputs) in zip(range(0, len(subset), cfg.batch_size), batches(model, subset, cfg.batch_size)):
        at_image = decomposition.image_update_norm_hooks(model, inputs, visual)  # Figure 5, reduced inside the hooks
        captured = answers.capture_at_answer(model, inputs, names, at_image)  # rows at the answer only: one batch
        refs = [answers.reference_token_ids(model.tokenizer, e.golds, e.metric) for e in chunk]
        competitors = logit_lens.competitor_ids(captured.logits, refs)
        best = logit_lens.best_references(captured.logits, refs)
        table = decomposition.margin_contributions(model, captured, best, competitors)
        frames.append(table.assign(item=table.item + start))
        per_head = decomposition.head_contributions(model, captured, best, competitors)
        heads.append(per_head.assign(item=per_head.item + start))
        norms.append(decomposition.update_norms_at_answer(model, captured))
    contributions = pd.concat(frames, ignore_index=True)
    updates = decomposition.layer_means(pd.concat(norms, ignore_index=True))  # means over the questions
    peak = summary["peak_layer"]
    return MarginBuilding(
        peak_layer=peak,
        gap_at_peak=summary["gap_at_peak"],
        separation_layer=summary["separation_layer"],
        mlp_update_share_at_peak=float(updates.mlp_share[peak]),
        mlp_margin_share_to_peak=decomposition.mlp_share(contributions, peak),
        max_margin_layer=summary["max_margin_layer"],
        n_items=len(subset),
        curves=curves,
        contributions=decomposition.layer_table(contributions),
        updates=updates,
        top_heads=decomposition.top_heads(pd.concat(heads, ignore_index=True), cfg.top_heads),
        lens=cfg.lens,
        visual_updates=decomposition.image_update_table(visual),
    )


class _TestSplit:
    """The test questions, their unedited answers' correctness, and how to score a condition against them."""

    def __init__(self, model, examples: list[Example], cfg: VRPConfig, test: np.ndarray, stage=None):
        self.model, self.cfg, self.stage = model, cfg, stage  # stage: a progress counter, advanced per re-answer
        self.examples = [examples[i] for i in test]
        self.types = np.array([e.type for e in self.examples])
        self.before = self.correct()

    def correct(self, intervention=interventions.NOTHING, transform=None) -> np.ndarray:
        if self.stage is not None:
            self.stage.advance()
        return np.array(
            correct(
                self.model,
                self.examples,
                intervention,
                batch_size=self.cfg.batch_size,
                max_new_tokens=self.cfg.max_new_tokens,
                transform=transform,
            ),
            float,
        )

    def row(self, group: str, condition: str, intervention=None, transform=None, **extra) -> Ablation:
        after = self.correct(intervention or interventions.NOTHING, transform)
        change = stats.paired_bootstrap_diff(self.before, after, self.cfg.n_resamples, self.cfg.seed)
        by_type = {
            t: float(after[self.types == t].mean() - self.before[self.types == t].mean())
            for t in sorted(set(self.types))
        }
        return Ablation(
            group,
            condition,
            float(self.before.mean()),
            float(after.mean()),
            change,
            by_type,
            intervention,
            after=after,
            **extra,
        )

    def paired(self, group: str, condition: str, base: Ablation, other: Ablation) -> Ablation:
        """``other`` against ``base`` on the same questions: the paired-bootstrap CI of other's accuracy minus
        base's (a difference between two conditions, which their two marginal CIs cannot decide)."""
        change = stats.paired_bootstrap_diff(base.after, other.after, self.cfg.n_resamples, self.cfg.seed)
        by_type = {t: other.by_type[t] - base.by_type[t] for t in base.by_type}
        return Ablation(group, condition, base.acc_after, other.acc_after, change, by_type)

    def not_run(self, group: str, condition: str, note: str, **extra) -> Ablation:
        """A row for a condition that could not run, saying why (no change, no CI)."""
        nan = float("nan")
        return Ablation(
            group,
            condition,
            float(self.before.mean()),
            nan,
            stats.Estimate(nan, (nan, nan), len(self.before)),
            {},
            note=note,
            **extra,
        )


def _unit_rows(
    split: _TestSplit, ex: Extraction, predictors: Predictors, cfg: VRPConfig
) -> tuple[int, list[int], list[Ablation]]:
    """Tables 4-5: top-k probe units vs random units of the same layer and size, a single-unit clamp, and
    escalating random ablations, all on residual-stream units of the sparse probe's layer."""
    sparse = predictors.sparse
    kept = probes.selected_neurons(sparse.probe)["index"].tolist()  # strongest first
    position = int(sparse.probe.layer)  # among the stored layers
    layer = ex.stored_layers("hidden")[position]
    width = split.model.cfg.d_model
    rows = []
    for k in cfg.ablation_ks:
        chosen = kept[:k]
        note = "" if len(chosen) == k else f"the L1 probe kept only {len(kept)} units: {len(chosen)} zeroed, not {k}"
        if not chosen:
            rows.append(
                split.not_run(
                    "probe units",
                    f"top-{k} probe units",
                    "untested: the L1 probe kept no units",
                    layer=layer,
                    k=0,
                    k_requested=k,
                )
            )
            continue
        rows.append(
            split.row(
                "probe units",
                f"top-{k} probe units",
                interventions.neurons(layer, chosen, "zero", site="resid"),
                layer=layer,
                k=len(chosen),
                k_requested=k,
                note=note,
            )
        )
        for seed in range(cfg.random_controls):
            control = interventions.random_neurons(
                split.model, layer, len(chosen), seed=cfg.seed + seed, exclude=chosen, site="resid"
            )
            rows.append(
                split.row(
                    "random units",
                    f"random control {seed} (k={len(chosen)})",
                    control,
                    layer=layer,
                    k=len(chosen),
                    k_requested=k,
                )
            )
    if cfg.single_units and kept:
        for rank, unit in enumerate(kept[: min(cfg.ablation_ks)]):
            rows.append(
                split.row(
                    "single units",
                    f"zero unit {unit} alone (probe rank {rank + 1})",
                    interventions.neurons(layer, [unit], "zero", site="resid"),
                    layer=layer,
                    k=1,
                    k_requested=1,
                )
            )
    if cfg.clamp_unit and kept:
        rows += _clamp_rows(split, ex, predictors, cfg, position, layer, kept[0])
    rows += _other_layer_rows(split, ex, predictors, cfg, position)
    for size in cfg.random_sizes:
        if size >= width:
            rows.append(
                split.not_run(
                    "escalating random",
                    f"random {size} units",
                    f"skipped: the model has only {width} residual units",
                    layer=layer,
                    k=0,
                    k_requested=size,
                )
            )
            continue
        control = interventions.random_neurons(split.model, layer, size, seed=cfg.seed, site="resid")
        rows.append(
            split.row("escalating random", f"random {size} units", control, layer=layer, k=size, k_requested=size)
        )
    return layer, kept, rows


def _clamp_rows(
    split: _TestSplit, ex: Extraction, predictors: Predictors, cfg: VRPConfig, position: int, layer: int, unit: int
) -> list[Ablation]:
    """The strongest unit clamped to its mean on wrong (and right) training answers, and to the extreme clamp:
    ``cfg.extreme_clamp`` standard deviations beyond its training mean, towards wrong (and right) answers."""
    train = predictors.split.train
    values = ex.hidden[position][train, unit].astype(np.float64)
    right = ex.correct[train]
    towards_right = 1.0 if values[right].mean() >= values[~right].mean() else -1.0
    rows = []
    for side, mask, sign in (("wrong", ~right, -towards_right), ("right", right, towards_right)):
        value = float(values[mask].mean())
        rows.append(
            split.row(
                "single-unit clamp",
                f"clamp unit {unit} to its mean on {side} answers ({value:+.3f})",
                interventions.neurons(layer, [unit], "clamp", value=value, site="resid"),
                layer=layer,
                k=1,
                k_requested=1,
            )
        )
        extreme = float(values.mean() + sign * cfg.extreme_clamp * values.std())
        rows.append(
            split.row(
                "single-unit clamp",
                f"extreme clamp unit {unit}: {cfg.extreme_clamp:g} sd towards {side} answers ({extreme:+.3f})",
                interventions.neurons(layer, [unit], "clamp", value=extreme, site="resid"),
                layer=layer,
                k=1,
                k_requested=1,
            )
        )
    return rows


def _other_layer_rows(
    split: _TestSplit, ex: Extraction, predictors: Predictors, cfg: VRPConfig, position: int
) -> list[Ablation]:
    """The top-k ablation (the largest k) replicated at other stored layers: each layer's own sparse probe (fitted on
    the training split) gives its units; one random control of the same size beside each."""
    stored, k = ex.stored_layers("hidden"), max(cfg.ablation_ks)
    train, correct = predictors.split.train, ex.correct
    rows = []
    for offset in cfg.replicate_layers:
        other = position + offset
        if offset == 0 or not 0 <= other < len(stored):
            rows.append(
                split.not_run(
                    "other layers",
                    f"top-{k} probe units at stored layer {other}",
                    f"skipped: the probe reads stored layer {position}; there is no stored layer {other}",
                    k=0,
                    k_requested=k,
                )
            )
            continue
        layer = stored[other]
        probe = probes.fit_probe(ex.hidden[other][train], correct[train], other, "l1", cfg.sparse_C, cfg.seed)
        chosen = probes.selected_neurons(probe)["index"].tolist()[:k]
        if not chosen:
            rows.append(
                split.not_run(
                    "other layers",
                    f"top-{k} probe units @L{layer}",
                    "untested: the L1 probe kept no units",
                    layer=layer,
                    k=0,
                    k_requested=k,
                )
            )
            continue
        note = "" if len(chosen) == k else f"the L1 probe kept only {len(chosen)} units"
        rows.append(
            split.row(
                "other layers",
                f"top-{k} probe units @L{layer}",
                interventions.neurons(layer, chosen, "zero", site="resid"),
                layer=layer,
                k=len(chosen),
                k_requested=k,
                note=note,
            )
        )
        control = interventions.random_neurons(
            split.model, layer, len(chosen), seed=cfg.seed, exclude=chosen, site="resid"
        )
        rows.append(
            split.row(
                "other layers",
                f"random control @L{layer} (k={len(chosen)})",
                control,
                layer=layer,
                k=len(chosen),
                k_requested=k,
            )
        )
    return rows


def _bypass_rows(split: _TestSplit, cfg: VRPConfig) -> list[Ablation]:
    layers = range(split.model.cfg.n_layers) if cfg.bypass_layers is None else cfg.bypass_layers
    return [split.row("mlp bypass", f"bypass MLP @L{l}", interventions.MLPBypass(l), layer=l) for l in layers]


def _masking_rows(split: _TestSplit, cfg: VRPConfig) -> list[Ablation]:
    """The most-attended ``mask_fraction`` of patches hidden vs as many random ones, at token and pixel level."""
    rows = []
    share = f"{cfg.mask_fraction:.0%}"
    for level in ("token", "pixel"):
        if level == "pixel" and split.model.adapter.fill_patches is None:
            continue  # the adapter does not say where patch pixels lie: token level only
        pair = []
        for rank in ("top", "random"):
            transform, intervention = patch_masking(cfg.mask_fraction, rank, level, seed=cfg.seed)
            pair.append(split.row("patch masking", f"mask {rank} {share} patches ({level})", intervention, transform))
        rows += [*pair, split.paired("patch masking", f"top minus random ({level})", pair[1], pair[0])]
    return rows


def ablation_table(
    model, examples: list[Example], ex: Extraction, predictors: Predictors, cfg: VRPConfig, stage=None
) -> Ablations:
    """Every causal check on the test split, each with the paired-bootstrap CI of its accuracy change; ``stage``
    (``analyses.progress``) is advanced once per re-answer of the test split."""
    split = _TestSplit(model, examples, cfg, predictors.split.test, stage)
    layer, kept, rows = _unit_rows(split, ex, predictors, cfg)
    return Ablations(
        layer, kept, rows + _bypass_rows(split, cfg) + _masking_rows(split, cfg), model.cfg.d_model, split.before
    )
