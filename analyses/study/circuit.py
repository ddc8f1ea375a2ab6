"""The circuit summary (Table 10), the attention-difference curve (Figure 4), the symbolic-detachment
test and the error monitor's precision at a threshold (Table 8).

Symbolic detachment is the study's account of a confident wrong answer: the model stops looking
and answers from its language prior. vlm-lens tests it by three criteria, each from this run's
numbers (the operationalisation is this project's; thresholds are settings):

1. **early entropy collapse**: attention sharpens early: H_s at the first half's sharpest layer
   (lowest mean H_s) is below H_s at layer 0 (the paired per-question difference, its bootstrap
   CI entirely below 0), whatever H_s does afterwards (the paper's lock-then-diffuse curve
   collapses early and diffuses late);
2. **dormant middle, late surge**: the writes to the image tokens (attention + MLP norms,
   Figure 5) in the middle third fall below ``STAGNATION_RATIO`` of the first third's, and the
   last third's rise above the middle's by at least its inverse (LLaVA's visual stream is quiet
   mid-network and surges in the last layers);
3. **commitment before re-engagement**: the layer where right and wrong margins first separate
   (Table 3's separation layer) comes before the layer where attention to the image is highest
   in the second half of the network.

``detachment_criteria`` computes them from the curves alone (tested on synthetic curves shaped like
the paper's LLaVA, which meets all three, and PaliGemma, which meets none).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from analyses import probes, stats
from analyses.study.config import VRPConfig
from analyses.study.extract import Extraction
from analyses.study.results import Ablations, AttentionFeatures, MarginBuilding, Predictors

NAN = float("nan")
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
        rows.append(
            {
                "layer": ablations.layer,
                "unit": int(unit),
                "coefficient": float(coefficient),
                "mean (right)": float(right.mean()),
                "mean (wrong)": float(wrong.mean()),
                "shift": float(right.mean() - wrong.mean()),
                "cohens_d": float((right.mean() - wrong.mean()) / pooled) if pooled > 0 else float("nan"),
                "zeroed in": f"top-{smallest[1]}" if smallest else "",
                "acc change (top-k zeroed)": smallest[2] if smallest else None,
            }
        )
    return pd.DataFrame(rows)


def _bootstrap_ci(samples: tuple[np.ndarray, ...], statistic, cfg: VRPConfig) -> tuple[float, float]:
    """The percentile bootstrap 95% CI of ``statistic`` over ``samples`` (NaNs when ``cfg.n_resamples`` is 0)."""
    if not cfg.n_resamples:
        return float("nan"), float("nan")
    ci = scipy_stats.bootstrap(
        samples, statistic, vectorized=True, n_resamples=cfg.n_resamples, method="percentile", rng=cfg.seed
    ).confidence_interval
    return float(ci.low), float(ci.high)


def delta_entropy(features: AttentionFeatures, correct: np.ndarray, cfg: VRPConfig) -> pd.DataFrame:
    """Figure 4: per layer, mean H_s of right answers minus wrong answers, with a bootstrap 95% CI."""
    rows = []
    for column, layer in enumerate(features.layers):
        right, wrong = features.entropy[correct, column], features.entropy[~correct, column]
        diff = float(right.mean() - wrong.mean())
        low, high = _bootstrap_ci((right, wrong), lambda a, b, axis: a.mean(axis) - b.mean(axis), cfg)
        rows.append(
            {
                "layer": layer,
                "h_s right": float(right.mean()),
                "h_s wrong": float(wrong.mean()),
                "delta_h_s": diff,
                "ci_low": low,
                "ci_high": high,
            }
        )
    return pd.DataFrame(rows)


def entropy_change(features: AttentionFeatures, correct: np.ndarray, cfg: VRPConfig) -> pd.DataFrame:
    """The paper's Delta H_s: per layer l >= 1, H_s at layer l minus layer l-1 (negative: attention sharpens
    there), its mean over all questions with a bootstrap 95% CI, and its mean over right and over wrong answers.
    A cross-attention model's layers are its cross layers: the change from the previous one ("from layer")."""
    change = np.diff(features.entropy, axis=1)  # question, layer - 1
    rows = []
    for index in range(change.shape[1]):
        values = change[:, index]
        low, high = _bootstrap_ci((values,), np.mean, cfg)
        rows.append(
            {
                "layer": features.layers[index + 1],
                "from layer": features.layers[index],
                "delta_h_s": float(values.mean()),
                "ci_low": low,
                "ci_high": high,
                "delta_h_s (right)": float(values[correct].mean()),
                "delta_h_s (wrong)": float(values[~correct].mean()),
            }
        )
    return pd.DataFrame(
        rows,
        columns=["layer", "from layer", "delta_h_s", "ci_low", "ci_high", "delta_h_s (right)", "delta_h_s (wrong)"],
    )  # one image layer (a cross model): no change to show


def _thirds(n_layers: int) -> tuple[slice, slice, slice]:
    third = max(1, n_layers // 3)
    return slice(0, third), slice(third, max(third + 1, n_layers - third)), slice(n_layers - third, n_layers)


def detachment_criteria(
    entropy: np.ndarray,
    writes: np.ndarray | None,
    image_share: np.ndarray,
    separation_layer: int | None,
    n_resamples: int = 10_000,
    seed: int = 0,
    layers: list[int] | None = None,
) -> pd.DataFrame:
    """The three criteria (module docstring) from per-question H_s ``entropy`` [n, layer], the image-token writes
    per layer ``writes`` [layer], per-question attention mass on the image ``image_share`` [n, layer] and the
    separation layer; each with its measure and whether it holds, and the verdict. ``layers``: the model layers
    behind the columns of ``entropy`` and ``image_share`` (default: every layer; a cross-attention model's cross
    layers), so the lock and re-engagement layers are named as model layers. ``writes`` None: the image is no
    tokens in the sequence (cross-attention), so the middle/late criterion is not defined and does not hold."""
    n_layers = entropy.shape[1]
    layers = list(range(n_layers)) if layers is None else list(layers)
    first_half = np.arange(1, max(2, (n_layers + 1) // 2)) if n_layers > 1 else np.arange(1)
    lock = int(first_half[np.argmin(entropy[:, first_half].mean(0))])
    second = np.arange(n_layers // 2, n_layers)
    reengage = layers[int(second[np.argmax(image_share[:, second].mean(0))])]
    commit = separation_layer
    if n_layers < 2:
        collapse_row = {
            "criterion": "early entropy collapse",
            "value": NAN,
            "ci_low": None,
            "ci_high": None,
            "measure": f"not defined: attention reads the image at one layer only ({layers})",
            "holds": False,
        }
    else:
        collapse = stats.paired_bootstrap_diff(entropy[:, 0], entropy[:, lock], n_resamples, seed)
        collapse_row = {
            "criterion": "early entropy collapse",
            "measure": f"mean H_s (layer {layers[lock]}, sharpest of the first half) - H_s (layer {layers[0]})",
            "value": collapse.value,
            "ci_low": collapse.ci[0],
            "ci_high": collapse.ci[1],
            "holds": bool(collapse.ci[1] < 0),
        }
    if writes is None:
        writes_row = {
            "criterion": "dormant middle, late surge",
            "value": NAN,
            "ci_low": None,
            "ci_high": None,
            "measure": "not defined: the image enters through cross-attention, as keys no layer writes to",
            "holds": False,
        }
    else:
        early, middle, late = _thirds(len(writes))
        dormant = float(writes[middle].mean() / writes[early].mean())
        surge = float(writes[late].mean() / writes[middle].mean())
        writes_row = {
            "criterion": "dormant middle, late surge",
            "measure": f"image-token writes: middle / first third {dormant:.3f} (< {STAGNATION_RATIO}), "
            f"last / middle third {surge:.3f} (> {1 / STAGNATION_RATIO:g})",
            "value": dormant,
            "ci_low": None,
            "ci_high": None,
            "holds": bool(dormant < STAGNATION_RATIO and surge > 1 / STAGNATION_RATIO),
        }
    rows = [
        collapse_row,
        writes_row,
        {
            "criterion": "commitment before re-engagement",
            "measure": f"separation layer {commit} vs layer {reengage} of most attention to the image (second half)",
            "value": float("nan") if commit is None else float(reengage - commit),
            "ci_low": None,
            "ci_high": None,
            "holds": commit is not None and commit < reengage,
        },
    ]
    rows.append(
        {
            "criterion": "symbolic detachment",
            "measure": "all three criteria hold",
            "value": None,
            "ci_low": None,
            "ci_high": None,
            "holds": all(r["holds"] for r in rows),
        }
    )
    return pd.DataFrame(rows)


def symbolic_detachment(
    ex: Extraction, features: AttentionFeatures, margins: MarginBuilding, cfg: VRPConfig, cross: bool = False
) -> pd.DataFrame:
    """``detachment_criteria`` on this run's H_s, image-token writes (Figure 5), maps and separation layer
    (``cross``: a cross-attention model, whose image has no tokens to write to)."""
    visual = margins.visual_updates.set_index("layer")
    writes = None if cross else (visual["attn_norm"] + visual["mlp_norm"]).to_numpy()
    image_share = np.array([[a.sum() for a in attn] for attn in ex.attention])  # question layer: attention on the image
    return detachment_criteria(
        features.entropy, writes, image_share, margins.separation_layer, cfg.n_resamples, cfg.seed, features.layers
    )


def monitor_precision(predictors: Predictors, correct: np.ndarray, tau: float) -> dict:
    """Table 8's monitor line: the dense probe flags a test answer as wrong when its probability of being
    right is below ``tau``; the precision (share of flags that are wrong answers) and recall of those flags."""
    p = predictors["dense_probe"]
    probability = 1 / (1 + np.exp(-p.scores))
    flagged = probability < tau
    wrong = ~correct[predictors.split.test]
    hits = int((flagged & wrong).sum())
    return {
        "monitor": f"{p.method}, flags p(right) < {tau}",
        "flagged": int(flagged.sum()),
        "precision@tau": hits / flagged.sum() if flagged.any() else float("nan"),
        "recall@tau": hits / wrong.sum() if wrong.any() else float("nan"),
    }


def case_study(ex: Extraction, features: AttentionFeatures, predictors: Predictors) -> int | None:
    """Figure 6's question: among wrong test answers the probe flags (negative decision), the one with the
    sharpest attention (lowest mean H_s); None when the probe flags none."""
    test = predictors.split.test
    scores = predictors["dense_probe"].scores
    candidates = [(features.entropy[i].mean(), int(i)) for i, s in zip(test, scores) if not ex.correct[i] and s < 0]
    return min(candidates)[1] if candidates else None
