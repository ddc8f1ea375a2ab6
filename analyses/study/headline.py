"""The paper's headline numbers for one run, and the checks of their robustness.

- ``comparisons``: the six headline comparisons, each with its estimate, 95% CI, permutation p-value and
  the Bonferroni and Benjamini-Hochberg adjustments over those six: the paper's comparison family (the
  per-layer attention R_pb of Table 2b is adjusted over layers, a labelled extension). As this project
  reads the paper, the six are R_pb(C_k, y) and R_pb(H_s, y) pooled over layers, R_pb(self-consistency,
  y), the dense probe's test AUROC, top-share patch masking and the top-k probe-unit ablation (the
  largest k), each of the last two against the unedited model on the same questions.
- ``dbscan_robustness``: C_k re-counted by DBSCAN on the top-mass patches' grid coordinates, at settings
  that can disagree with 4-neighbour components (``cfg.dbscan_eps``, ``cfg.dbscan_min_samples``), with
  the share of maps on which the two agree and DBSCAN's own R_pb.
- ``top_heads_attention``: Table 2's top-k-heads attention R_pb: H_s of the first answer token's map,
  averaged over the heads with the largest direct logit contribution (Table 2c), against correctness.
- ``probe_seeds``: the dense and sparse probes refitted on ``cfg.probe_seeds`` stratified splits (layer
  chosen on each split's validation), their test AUROC per seed, mean and standard error.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from analyses import probes, stats
from analyses.attention_structure import dbscan_clusters
from analyses.study.config import VRPConfig
from analyses.study.extract import Extraction
from analyses.study.results import Ablations, AttentionFeatures, MarginBuilding, Predictors

NAN = float("nan")


def rpb_with_ci(values: np.ndarray, correct: np.ndarray, cfg: VRPConfig) -> dict:
    """R_pb between ``values`` and correctness with its bootstrap CI, NaN for a constant measure: r_pb, ci_low,
    ci_high, n (the study's per-run and pooled attention rows share it)."""
    if np.std(values) == 0:  # a constant measure: no correlation, nothing to test
        return {"r_pb": NAN, "ci_low": NAN, "ci_high": NAN, "n": len(values)}
    est = stats.point_biserial(values, correct, cfg.n_resamples, cfg.seed)
    return {"r_pb": est.value, "ci_low": est.ci[0], "ci_high": est.ci[1], "n": est.n}


def _rpb(name: str, values: np.ndarray, correct: np.ndarray, cfg: VRPConfig) -> dict:
    """A comparison row: R_pb with its CI, and its permutation p-value."""
    est = rpb_with_ci(values, correct, cfg)
    p = (
        NAN
        if np.isnan(est["r_pb"])
        else stats.permutation_test(values[correct], values[~correct], cfg.n_resamples, cfg.seed)
    )
    return {
        "comparison": name,
        "statistic": "R_pb",
        "value": est["r_pb"],
        "ci_low": est["ci_low"],
        "ci_high": est["ci_high"],
        "n": est["n"],
        "p_perm": p,
    }


def _change(name: str, row, before: np.ndarray, cfg: VRPConfig) -> dict:
    if row is None or row.after is None or before is None:
        return {
            "comparison": name,
            "statistic": "accuracy change",
            "value": NAN,
            "ci_low": NAN,
            "ci_high": NAN,
            "n": 0,
            "p_perm": NAN,
        }
    return {
        "comparison": name,
        "statistic": "accuracy change",
        "value": row.change.value,
        "ci_low": row.change.ci[0],
        "ci_high": row.change.ci[1],
        "n": row.change.n,
        "p_perm": stats.sign_flip_test(row.after - before, cfg.n_resamples, cfg.seed),
    }


def comparisons(
    ex: Extraction, features: AttentionFeatures, predictors: Predictors, ablations: Ablations, cfg: VRPConfig
) -> pd.DataFrame:
    """The six headline comparisons with their p-values adjusted over the six (Bonferroni, BH)."""
    correct = ex.correct
    test = predictors.split.test
    dense = predictors["dense_probe"]
    scores = dense.scores
    rows = [
        _rpb("C_k - 1 (mean over layers) vs correctness", features.components.mean(1) - 1, correct, cfg),
        _rpb("H_s (mean over layers) vs correctness", features.entropy.mean(1), correct, cfg),
        _rpb(
            f"self-consistency (K={cfg.k}) vs correctness", np.array([r["consistency"] for r in ex.rows]), correct, cfg
        ),
        {
            "comparison": f"{dense.method}: test AUROC vs chance",
            "statistic": "AUROC",
            "value": dense.estimate.value,
            "ci_low": dense.estimate.ci[0],
            "ci_high": dense.estimate.ci[1],
            "n": dense.estimate.n,
            "p_perm": stats.permutation_test(scores[correct[test]], scores[~correct[test]], cfg.n_resamples, cfg.seed)
            if 0 < correct[test].sum() < len(test)
            else NAN,
        },
    ]
    before = ablations.before  # the unedited model's answers on the test split, as the ablations scored them
    masked = [r for r in ablations.group("patch masking") if r.condition.startswith("mask top") and r.after is not None]
    top = masked[-1] if masked else None  # pixel level where the adapter has it, else token level
    level = top.condition[top.condition.rfind("(") :] if top else ""
    rows.append(
        _change(f"mask top {cfg.mask_fraction:.0%} patches {level} vs unmasked".replace("  ", " "), top, before, cfg)
    )
    probe = [r for r in ablations.group("probe units") if r.k and r.after is not None]
    largest = max(probe, key=lambda r: r.k) if probe else None
    rows.append(
        _change(
            f"top-{largest.k if largest else max(cfg.ablation_ks)} probe units zeroed vs unedited", largest, before, cfg
        )
    )
    frame = pd.DataFrame(rows)
    tested = frame.p_perm.notna()
    frame["p_bonferroni"], frame["p_bh"] = NAN, NAN
    if tested.any():
        frame.loc[tested, "p_bonferroni"] = stats.bonferroni(frame.p_perm[tested])
        frame.loc[tested, "p_bh"] = stats.benjamini_hochberg(frame.p_perm[tested])
    frame["family"] = f"the paper's {int(tested.sum())} headline comparisons"
    return frame


def dbscan_robustness(ex: Extraction, features: AttentionFeatures, cfg: VRPConfig) -> pd.DataFrame:
    """Per layer (and pooled over layers): DBSCAN's cluster count beside C_k, the share of maps on which they
    agree, and DBSCAN's R_pb with correctness (its 95% CI)."""
    counts = np.array(
        [
            [
                dbscan_clusters(grid.reshape(row["grid"]), cfg.top_mass, cfg.dbscan_eps, cfg.dbscan_min_samples)
                for grid in attn
            ]
            for attn, row in zip(ex.attention, ex.rows)
        ]
    )
    correct = ex.correct
    rows = []
    for column in [*range(counts.shape[1]), None]:
        ours = features.components.mean(1) if column is None else features.components[:, column]
        theirs = counts.mean(1) if column is None else counts[:, column]
        agree = float(np.mean(features.components == counts)) if column is None else float(np.mean(ours == theirs))
        rpb = rpb_with_ci(theirs.astype(float), correct, cfg)  # (no p-value: nothing here is tested)
        rows.append(
            {
                "layer": "all" if column is None else str(features.layers[column]),
                "mean C_k": float(ours.mean()),
                "mean DBSCAN clusters": float(theirs.mean()),
                "agreement with C_k": agree,
                "r_pb (DBSCAN)": rpb["r_pb"],
                "ci_low": rpb["ci_low"],
                "ci_high": rpb["ci_high"],
                "eps": cfg.dbscan_eps,
                "min_samples": cfg.dbscan_min_samples,
            }
        )
    return pd.DataFrame(rows)


def probe_seeds(ex: Extraction, cfg: VRPConfig) -> pd.DataFrame:
    """The dense and sparse probes on ``cfg.probe_seeds`` splits (seeds ``cfg.seed`` onward): test AUROC per
    seed, with the mean and its standard error (NaN for one seed)."""
    correct = ex.correct
    rows = []
    for name, penalty, C in (("dense probe (L2)", "l2", cfg.dense_C), ("sparse probe (L1)", "l1", cfg.sparse_C)):
        values, layers = [], []
        for s in range(cfg.probe_seeds):
            split = probes.stratified_split(correct, cfg.seed + s, cfg.val_fraction, cfg.test_fraction)
            fitted = probes.layerwise_probe(
                ex.hidden, correct, penalty, C=C, seed=cfg.seed + s, n_resamples=0, split=split
            )
            values.append(fitted.test.value)
            layers.append(ex.stored_layers("hidden")[fitted.best_layer])
        se = float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else NAN
        rows.append(
            {
                "probe": name,
                "seeds": len(values),
                "mean test AUROC": float(np.mean(values)),
                "se": se,
                "min": float(np.min(values)),
                "max": float(np.max(values)),
                "per seed": [round(v, 4) for v in values],
                "layer per seed": layers,
            }
        )
    return pd.DataFrame(rows)


def top_heads_attention(ex: Extraction, margins: MarginBuilding, cfg: VRPConfig) -> pd.DataFrame:
    """R_pb between correctness and H_s averaged over the top heads (Table 2c's, by direct logit contribution on
    the first ``cfg.margin_items`` questions), beside all heads' mean, on every question; one row saying why when
    the extraction holds no per-head entropies (made before they were stored)."""
    if any("head_entropy" not in r for r in ex.rows):
        return pd.DataFrame(
            [
                {
                    "measure": "H_s over the top heads",
                    "note": "not in this extraction (made by an earlier "
                    "vlm-lens): extract again into a new --out to add per-head entropies",
                }
            ]
        )
    heads = np.array([r["head_entropy"] for r in ex.rows], dtype=float)  # question layer head (NaN: no image attention)
    column = {layer: k for k, layer in enumerate(ex.attention_layers)}  # a cross model: its cross layers only
    ranked = list(zip(margins.top_heads["layer"].astype(int), margins.top_heads["head"].astype(int)))
    top = [(l, h) for l, h in ranked if l in column]
    named = ", ".join(f"L{l}H{h}" for l, h in top)
    if len(top) < len(ranked):
        named += f"; of the top {len(ranked)}, the others at layers that do not read the image"
    if not top:
        return pd.DataFrame(
            [
                {
                    "measure": "H_s over the top heads",
                    "note": f"none of the top heads "
                    f"({', '.join(f'L{l}H{h}' for l, h in ranked)}) is at a layer whose attention reads the "
                    f"image (layers {ex.attention_layers}): no map to take H_s of",
                }
            ]
        )
    rows = []
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a question none of whose heads sees the image: left out
        chosen = np.nanmean(heads[:, [column[l] for l, _ in top], [h for _, h in top]], axis=1)
        every = np.nanmean(heads, axis=(1, 2))
    for measure, values in ((f"H_s over the top-{len(top)} heads ({named})", chosen), ("H_s over every head", every)):
        seen = ~np.isnan(values)
        if len(set(ex.correct[seen])) < 2:  # no head saw the image, or only right (wrong) answers remain
            rows.append(
                {
                    "measure": measure,
                    "r_pb": NAN,
                    "ci_low": NAN,
                    "ci_high": NAN,
                    "p_perm": NAN,
                    "n": int(seen.sum()),
                    "note": "too few questions whose heads attend to the image",
                }
            )
            continue
        row = _rpb(measure, values[seen], ex.correct[seen], cfg)
        rows.append(
            {
                "measure": measure,
                "r_pb": row["value"],
                "ci_low": row["ci_low"],
                "ci_high": row["ci_high"],
                "p_perm": row["p_perm"],
                "n": row["n"],
                "note": "first answer token's map, per head",
            }
        )
    return pd.DataFrame(rows)
