"""The circuit summary (Table 10), the attention-difference curve (Figure 4), the symbolic-detachment
test and the error monitor's precision at a threshold (Table 8).

Symbolic detachment is the study's account of a confident wrong answer: the model stops looking
and answers from its language prior. vlm-lens tests it by three criteria, each from this run's
numbers (the operationalisation is this project's; thresholds are settings):

1. **entropy collapse**: H_s over the last third of layers is lower than over the first third
   (the paired per-question difference, its bootstrap CI entirely below 0);
2. **visual-stream stagnation**: the writes to the image tokens (attention + MLP norms, Figure 5)
   in the last third fall below ``stagnation_ratio`` of the first third's;
3. **commitment before re-engagement**: the layer where right and wrong margins first separate
   (Table 3's separation layer) comes before the layer where attention to the image is highest
   in the second half of the network.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from analyses import probes, stats
from analyses.study.config import VRPConfig
from analyses.study.extract import Extraction
from analyses.study.results import Ablations, AttentionFeatures, MarginBuilding, Predictors

STAGNATION_RATIO = 0.5


def circuit_table(ex: Extraction, predictors: Predictors, ablations: Ablations, k: int = 10) -> pd.DataFrame:
    """Table 10: the sparse probe's strongest units, their coefficients and activation shifts (mean on right
    answers minus mean on wrong ones, over every extracted question, with Cohen's d), and the accuracy change
    when the top-k including each is zeroed."""
    chosen = probes.selected_neurons(predictors.sparse.probe).head(k)
    values = ex.hidden[int(predictors.sparse.probe.layer)]
    correct = ex.correct
    zeroed = sorted((r.k, r.k_requested, r.change.value) for r in ablations.group("probe units") if r.k)
    rows = []
    for rank, (unit, coefficient) in enumerate(zip(chosen["index"], chosen["coefficient"])):
        right, wrong = values[correct, unit], values[~correct, unit]
        pooled = np.sqrt((right.var(ddof=1) + wrong.var(ddof=1)) / 2)
        smallest = next((z for z in zeroed if z[0] > rank), None)  # the smallest top-k ablation holding this unit
        rows.append({"layer": ablations.layer, "unit": int(unit), "coefficient": float(coefficient),
                     "mean (right)": float(right.mean()), "mean (wrong)": float(wrong.mean()),
                     "shift": float(right.mean() - wrong.mean()),
                     "cohens_d": float((right.mean() - wrong.mean()) / pooled) if pooled > 0 else float("nan"),
                     "zeroed in": f"top-{smallest[1]}" if smallest else "",
                     "acc change (top-k zeroed)": smallest[2] if smallest else None})
    return pd.DataFrame(rows)


def delta_entropy(features: AttentionFeatures, correct: np.ndarray, cfg: VRPConfig) -> pd.DataFrame:
    """Figure 4: per layer, mean H_s of right answers minus wrong answers, with a bootstrap 95% CI."""
    rows = []
    for layer in range(features.entropy.shape[1]):
        right, wrong = features.entropy[correct, layer], features.entropy[~correct, layer]
        diff = float(right.mean() - wrong.mean())
        if cfg.n_resamples:
            ci = scipy_stats.bootstrap((right, wrong), lambda a, b, axis: a.mean(axis) - b.mean(axis), vectorized=True,
                                       n_resamples=cfg.n_resamples, method="percentile", rng=cfg.seed).confidence_interval
            low, high = float(ci.low), float(ci.high)
        else:
            low = high = float("nan")
        rows.append({"layer": layer, "h_s right": float(right.mean()), "h_s wrong": float(wrong.mean()), "delta_h_s": diff,
                     "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows)


def _thirds(n_layers: int) -> tuple[slice, slice]:
    third = max(1, n_layers // 3)
    return slice(0, third), slice(n_layers - third, n_layers)


def symbolic_detachment(ex: Extraction, features: AttentionFeatures, margins: MarginBuilding, cfg: VRPConfig) -> pd.DataFrame:
    """The three criteria (module docstring), each with its measure and whether it holds, and the verdict."""
    n_layers = features.entropy.shape[1]
    early, late = _thirds(n_layers)
    # per question: H_s over the last third minus the first third, its mean and paired-bootstrap CI
    change = stats.paired_bootstrap_diff(features.entropy[:, early].mean(1), features.entropy[:, late].mean(1),
                                         cfg.n_resamples, cfg.seed)
    visual = margins.visual_updates.set_index("layer")
    writes = (visual["attn_norm"] + visual["mlp_norm"]).to_numpy()
    ratio = float(writes[late].mean() / writes[early].mean())
    image_share = np.array([[a.sum() for a in attn] for attn in ex.attention])  # question layer: attention on the image
    second = np.arange(n_layers // 2, n_layers)
    reengage = int(second[np.argmax(image_share[:, second].mean(0))])
    commit = margins.separation_layer
    rows = [
        {"criterion": "entropy collapse", "measure": "mean H_s (last third) - H_s (first third)",
         "value": change.value, "ci_low": change.ci[0], "ci_high": change.ci[1], "holds": bool(change.ci[1] < 0)},
        {"criterion": "visual-stream stagnation", "measure": f"image-token writes, last third / first third (< {STAGNATION_RATIO})",
         "value": ratio, "ci_low": None, "ci_high": None, "holds": bool(ratio < STAGNATION_RATIO)},
        {"criterion": "commitment before re-engagement",
         "measure": f"separation layer {commit} vs layer {reengage} of most attention to the image (second half)",
         "value": float("nan") if commit is None else float(reengage - commit), "ci_low": None, "ci_high": None,
         "holds": commit is not None and commit < reengage},
    ]
    rows.append({"criterion": "symbolic detachment", "measure": "all three criteria hold", "value": None, "ci_low": None,
                 "ci_high": None, "holds": all(r["holds"] for r in rows)})
    return pd.DataFrame(rows)


def monitor_precision(predictors: Predictors, correct: np.ndarray, tau: float) -> dict:
    """Table 8's monitor line: the dense probe flags a test answer as wrong when its probability of being
    right is below ``tau``; the precision (share of flags that are wrong answers) and recall of those flags."""
    p = predictors["dense_probe"]
    probability = 1 / (1 + np.exp(-p.scores))
    flagged = probability < tau
    wrong = ~correct[predictors.split.test]
    hits = int((flagged & wrong).sum())
    return {"monitor": f"{p.method}, flags p(right) < {tau}", "flagged": int(flagged.sum()),
            "precision@tau": hits / flagged.sum() if flagged.any() else float("nan"),
            "recall@tau": hits / wrong.sum() if wrong.any() else float("nan")}


def case_study(ex: Extraction, features: AttentionFeatures, predictors: Predictors) -> int | None:
    """Figure 6's question: among wrong test answers the probe flags (negative decision), the one with the
    sharpest attention (lowest mean H_s); None when the probe flags none."""
    test = predictors.split.test
    scores = predictors["dense_probe"].scores
    candidates = [(features.entropy[i].mean(), int(i)) for i, s in zip(test, scores) if not ex.correct[i] and s < 0]
    return min(candidates)[1] if candidates else None
