"""Who predicts correctness: Table 6 (every predictor's test AUROC) and Table 2b (attention sharpness).

All predictors share one stratified split (``cfg.val_fraction`` / ``cfg.test_fraction``); probes
choose their layer on validation and touch the test split once.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analyses import probes, stats
from analyses.attention_structure import component_count, resample_grid
from analyses.study.config import VRPConfig
from analyses.study.extract import Extraction
from analyses.study.results import AttentionCorrelation, AttentionFeatures, Predictor, Predictors
from vlm_lens.errors import DataError


def common_grid(ex: Extraction, cfg: VRPConfig) -> tuple[int, int]:
    """The grid attention features share: ``cfg.attention_grid``, else the smallest rows and cols in the run."""
    if cfg.attention_grid is not None:
        return tuple(cfg.attention_grid)
    grids = [tuple(r["grid"]) for r in ex.rows]
    return min(g[0] for g in grids), min(g[1] for g in grids)


def attention_features(ex: Extraction, cfg: VRPConfig) -> AttentionFeatures:
    """Per question: H_s per layer (of the attention averaged over the T answer tokens, normalised over the
    grid: the study's Eq. 1), C_k per layer on its own grid (of the token-averaged map), and its per-layer maps on
    the common grid (``attention_structure.resample_grid``: mass-preserving; unchanged when every image has
    that grid)."""
    shape = common_grid(ex, cfg)
    entropy, components, vectors = [], [], []
    for attn, row in zip(ex.attention, ex.rows):
        grids = attn.reshape(attn.shape[0], *row["grid"])
        entropy.append(row["attention_entropy"])
        components.append([component_count(g, cfg.top_mass) for g in grids])
        same = tuple(row["grid"]) == shape
        vectors.append(np.concatenate([(g if same else resample_grid(g, shape)).ravel() for g in grids]))
    return AttentionFeatures(
        np.array(entropy), np.array(components), np.array(vectors), cfg.top_mass, ex.attention_layers
    )


def predictor_table(ex: Extraction, features: AttentionFeatures, cfg: VRPConfig) -> Predictors:
    correct = ex.correct
    if correct.all() or not correct.any():
        raise DataError(
            f"all {len(correct)} answers are {'right' if correct.all() else 'wrong'}: predicting correctness "
            "needs both right and wrong answers (a random-init model, or a benchmark too easy or too hard "
            "for this model); the accuracy is in the extraction's shards"
        )
    split = probes.stratified_split(correct, cfg.seed, cfg.val_fraction, cfg.test_fraction)
    test = split.test
    rows: list[Predictor] = []

    def add(key, method, signal, passes, scores):
        scores = np.asarray(scores, dtype=float)[test]
        rows.append(
            Predictor(
                key, method, signal, passes, stats.auroc(scores, correct[test], cfg.n_resamples, cfg.seed), scores
            )
        )

    add(
        "confidence",
        "output confidence",
        "answer-token probability (closed form) or geometric mean to the first newline (free form)",
        "1",
        [r["confidence"] for r in ex.rows],
    )
    add("entropy", "logit entropy", "-entropy", "1", [-r["entropy"] for r in ex.rows])
    # The margin needs the gold answer, and at the last layer its sign *is* correctness: choose among the
    # earlier layers (on validation), and read it as a diagnostic of where the answer forms, not a monitor.
    margins = ex.margins
    val_auc = [
        stats.auroc(margins[l][split.val], correct[split.val], n_resamples=0).value for l in range(len(margins) - 1)
    ]
    margin_layer = int(np.nanargmax(val_auc))
    add(
        "truth_margin",
        f"truth margin (layer {margin_layer})",
        f"{cfg.lens} lens, needs the gold",
        "1",
        margins[margin_layer],
    )
    common = dict(seed=cfg.seed, n_resamples=cfg.n_resamples, split=split)
    # The study's probes read the residual stream h_l (its "neurons" are h_l's units, Section 3.3);
    # the sparse probe over MLP neurons is this project's extension, reported beside them.
    dense = probes.layerwise_probe(ex.hidden, correct, "l2", C=cfg.dense_C, **common)
    sparse = probes.layerwise_probe(ex.hidden, correct, "l1", C=cfg.sparse_C, **common)
    sparse_mlp = probes.layerwise_probe(ex.neurons, correct, "l1", C=cfg.sparse_C, **common)
    stacked = probes.stacked_probe(ex.hidden, correct, last=cfg.stacked_layers, C=cfg.dense_C, **common)
    layers = stacked.probe.layer
    model_layer = dict(enumerate(ex.stored_layers("hidden"))).get
    neuron_layer = dict(enumerate(ex.stored_layers("neurons"))).get
    add(
        "dense_probe",
        f"dense probe (L2) @L{model_layer(dense.best_layer)}",
        "residual stream",
        "1",
        dense.probe.decision(ex.hidden[dense.best_layer]),
    )
    add(
        "sparse_probe",
        f"sparse probe (L1) @L{model_layer(sparse.best_layer)}",
        "residual stream",
        "1",
        sparse.probe.decision(ex.hidden[sparse.best_layer]),
    )
    add(
        "sparse_probe_mlp",
        f"sparse probe (L1) @L{neuron_layer(sparse_mlp.best_layer)} (extension)",
        "MLP neurons",
        "1",
        sparse_mlp.probe.decision(ex.neurons[sparse_mlp.best_layer]),
    )
    add(
        "stacked_probe",
        f"stacked probe (L2) @L{model_layer(layers[0])}-{model_layer(layers[-1])}",
        "residual stream",
        "1",
        stacked.probe.decision(np.concatenate([ex.hidden[l] for l in layers], axis=1)),
    )
    add(
        "self_consistency",
        f"self-consistency (K={cfg.k})",
        "majority support",
        f"1 + {cfg.k} decodes",
        [r["consistency"] for r in ex.rows],
    )
    add("attention_entropy", "attention entropy (mean over layers)", "-H_s", "1", -features.entropy.mean(1))
    add("attention_components", "attention components (mean over layers)", "-C_k", "1", -features.components.mean(1))
    # Table 9's floor: a score that knows nothing (seeded uniform noise), with the CI chance gives on this test split
    add("random", "random baseline", "uniform noise", "0", np.random.default_rng(cfg.seed).random(len(correct)))
    summary = np.concatenate([features.vectors, features.entropy, features.components], axis=1)
    for key, kind, label, x in (
        ("attention_mlp", "mlp", "ensemble attention probe (MLP)", features.vectors),
        ("attention_gbt", "gbt", "attention stress test (GBT)", summary),
        ("attention_rf", "rf", "attention stress test (RF)", summary),
    ):
        fitted = probes.classifier_probe(x, correct, kind, cfg.seed, cfg.n_resamples, split=split)
        rows.append(Predictor(key, label, "attention maps", "1", fitted.test, fitted.scores, fitted.accuracy))
    return Predictors(rows, split, dense, sparse, sparse_mlp, stacked, margin_layer)


def attention_table(ex: Extraction, features: AttentionFeatures, cfg: VRPConfig) -> AttentionCorrelation:
    """Point-biserial R between H_s (and C_k - 1) and correctness at each layer, with bootstrap CIs, a
    permutation p-value (``cfg.n_resamples`` relabellings) and its Bonferroni and Benjamini-Hochberg
    adjustments across the layers (per measure): the study's multiple-comparison control."""
    rows = []
    correct = ex.correct
    for column, layer in enumerate(features.layers):
        for measure, values in (("H_s", features.entropy[:, column]), ("C_k - 1", features.components[:, column] - 1)):
            if np.std(values) == 0:  # a constant measure has no correlation to report
                rows.append(
                    {
                        "layer": layer,
                        "measure": measure,
                        "r_pb": float("nan"),
                        "ci_low": float("nan"),
                        "ci_high": float("nan"),
                        "p_perm": float("nan"),
                    }
                )
                continue
            est = stats.point_biserial(values, correct, cfg.n_resamples, cfg.seed)
            p = stats.permutation_test(values[correct], values[~correct], cfg.n_resamples, cfg.seed)
            rows.append(
                {
                    "layer": layer,
                    "measure": measure,
                    "r_pb": est.value,
                    "ci_low": est.ci[0],
                    "ci_high": est.ci[1],
                    "p_perm": p,
                }
            )
    frame = pd.DataFrame(rows)
    for _measure, part in frame.groupby("measure"):
        tested = part.p_perm.notna()
        index = part.index[tested]
        frame.loc[index, "p_bonferroni"] = stats.bonferroni(part.p_perm[tested])
        frame.loc[index, "p_bh"] = stats.benjamini_hochberg(part.p_perm[tested])
    return AttentionCorrelation(frame)
