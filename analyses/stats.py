"""Statistics with uncertainty: every estimate comes back as ``Estimate(value, ci)``.

>>> paired_bootstrap_diff([1, 1, 0, 1], [0, 1, 0, 0], n_resamples=2000, seed=0).value
-0.5
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from vlm_lens.errors import InputError


@dataclass(frozen=True)
class Estimate:
    value: float
    ci: tuple[float, float]
    n: int
    n_resamples: int = 0

    def __str__(self) -> str:
        return f"{self.value:.4f} [{self.ci[0]:.4f}, {self.ci[1]:.4f}]"


def paired_bootstrap_diff(
    before: ArrayLike, after: ArrayLike, n_resamples: int = 10_000, seed: int = 0, confidence: float = 0.95
) -> Estimate:
    """mean(after) - mean(before) over paired items, with a percentile bootstrap CI (items resampled together)."""
    _resamples(n_resamples)
    before, after = _finite(before, "before"), _finite(after, "after")
    if before.shape != after.shape or before.ndim != 1 or len(before) == 0:
        raise InputError(f"before and after must be paired 1-D samples, got {before.shape} and {after.shape}")
    diff = after - before
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    for start in range(0, n_resamples, 1000):  # chunks keep memory flat for large samples
        stop = min(start + 1000, n_resamples)
        idx = rng.integers(0, len(diff), size=(stop - start, len(diff)))
        means[start:stop] = diff[idx].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return Estimate(float(diff.mean()), (float(low), float(high)), len(diff), n_resamples)


def _bootstrap(
    statistic, arrays: tuple[np.ndarray, ...], n_resamples: int, seed: int, confidence: float
) -> tuple[float, float]:
    """Percentile CI of statistic(*arrays) over item resamples (arrays resampled together)."""
    rng = np.random.default_rng(seed)
    n = len(arrays[0])
    values = []
    for _ in range(n_resamples):
        idx = rng.integers(0, n, size=n)
        value = statistic(*(a[idx] for a in arrays))
        if np.isfinite(value):
            values.append(value)
    if not values:
        return float("nan"), float("nan")
    alpha = (1 - confidence) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return float(low), float(high)


def _finite(values, what: str) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    if not np.isfinite(values).all():
        bad = int((~np.isfinite(values)).sum())
        raise InputError(f"{what} hold {bad} NaN or infinite value(s) of {values.size}: drop or fill them first")
    return values


def _binary(labels, what: str = "labels") -> np.ndarray:
    labels = np.asarray(labels)
    if labels.size and set(np.unique(labels).tolist()) - {0, 1}:
        raise InputError(
            f"{what} must be binary (0/1 or bool), got values {sorted(set(np.unique(labels).tolist()))[:5]}"
        )
    return labels.astype(int)


def _resamples(n_resamples: int, least: int = 1) -> None:
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < least:
        raise InputError(f"n_resamples must be an integer of at least {least}, got {n_resamples!r}")


def _scores_labels(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels)
    if scores.shape != labels.shape or scores.ndim != 1:
        raise InputError(f"scores and labels must be 1-D and the same length, got {scores.shape} and {labels.shape}")
    scores = _finite(scores, "scores")
    labels = _binary(labels)
    if len(labels) == 0 or labels.min() == labels.max():
        raise InputError("labels hold one class only; AUROC and point-biserial need both")
    return scores, labels


def _auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    from scipy.stats import rankdata

    if labels.min() == labels.max():
        return float("nan")
    ranks = rankdata(scores)
    n_pos = labels.sum()
    n_neg = len(labels) - n_pos
    return float((ranks[labels == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auroc(scores, labels, n_resamples: int = 10_000, seed: int = 0, confidence: float = 0.95) -> Estimate:
    """Area under the ROC curve (ties count half), with a bootstrap CI."""
    scores, labels = _scores_labels(scores, labels)
    ci = _bootstrap(_auroc, (scores, labels), n_resamples, seed, confidence)
    return Estimate(_auroc(scores, labels), ci, len(scores), n_resamples)


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def point_biserial(scores, labels, n_resamples: int = 10_000, seed: int = 0, confidence: float = 0.95) -> Estimate:
    """Point-biserial correlation R_pb between a score and a binary label, with a bootstrap CI."""
    scores, labels = _scores_labels(scores, labels)
    ci = _bootstrap(_pearson, (scores, labels.astype(float)), n_resamples, seed, confidence)
    return Estimate(_pearson(scores, labels.astype(float)), ci, len(scores), n_resamples)


def permutation_test(x, y, n_resamples: int = 10_000, seed: int = 0, chunk: int = 1000) -> float:
    """Two-sided permutation p-value for a difference in means between samples x and y: the share of random
    relabellings (plus the observed one) whose |mean difference| reaches the observed. For a binary label
    this is also the permutation test of the point-biserial R, a monotone function of that difference."""
    _resamples(n_resamples)
    x, y = _finite(x, "the first sample"), _finite(y, "the second sample")
    if len(x) == 0 or len(y) == 0:
        raise InputError(f"a permutation test needs both samples non-empty, got {len(x)} and {len(y)}")
    observed = abs(x.mean() - y.mean())
    pooled = np.concatenate([x, y])
    rng = np.random.default_rng(seed)
    hits, done = 0, 0
    while done < n_resamples:
        size = min(chunk, n_resamples - done)
        perms = rng.permuted(np.broadcast_to(pooled, (size, len(pooled))), axis=1)
        diff = np.abs(perms[:, : len(x)].mean(1) - perms[:, len(x) :].mean(1))
        hits += int((diff >= observed - 1e-12).sum())
        done += size
    return float((hits + 1) / (n_resamples + 1))


def sign_flip_test(differences, n_resamples: int = 10_000, seed: int = 0, chunk: int = 1000) -> float:
    """Two-sided permutation p-value that paired differences (after - before on the same items) have mean 0:
    the share of random sign flips of the pairs (plus the observed one) whose |mean| reaches the observed
    (the paired-samples permutation test; scipy's ``permutation_test(permutation_type="samples")``)."""
    _resamples(n_resamples)
    d = _finite(differences, "the paired differences")
    if d.ndim != 1 or len(d) == 0:
        raise InputError(f"a sign-flip test needs a non-empty 1-D sample of paired differences, got shape {d.shape}")
    observed = abs(d.mean())
    rng = np.random.default_rng(seed)
    hits, done = 0, 0
    while done < n_resamples:
        size = min(chunk, n_resamples - done)
        signs = rng.choice(np.array([-1.0, 1.0]), size=(size, len(d)))
        hits += int((np.abs((signs * d).mean(1)) >= observed - 1e-12).sum())
        done += size
    return float((hits + 1) / (n_resamples + 1))


def _p_values(p_values) -> np.ndarray:
    p = _finite(p_values, "p-values")
    if ((p < 0) | (p > 1)).any():
        raise InputError(f"p-values must lie in [0, 1], got {p[(p < 0) | (p > 1)][:3].tolist()}")
    return p


def bonferroni(p_values) -> np.ndarray:
    p = _p_values(p_values)
    return np.minimum(p * len(p), 1.0)


def benjamini_hochberg(p_values) -> np.ndarray:
    """BH-adjusted p-values (step-up, monotone)."""
    p = _p_values(p_values)
    n = len(p)
    order = np.argsort(p)
    adjusted = p[order] * n / np.arange(1, n + 1)
    adjusted = np.minimum.accumulate(adjusted[::-1])[::-1]
    out = np.empty(n)
    out[order] = np.minimum(adjusted, 1.0)
    return out


def expected_calibration_error(confidence, correct, n_bins: int = 10) -> tuple[float, list[dict]]:
    """ECE with equal-width bins over [0, 1], and the reliability-diagram bins (confidence vs accuracy)."""
    confidence = _finite(confidence, "confidences")
    correct = _binary(correct, "correct").astype(float)
    if confidence.shape != correct.shape or confidence.ndim != 1:
        raise InputError(
            f"confidence and correct must be 1-D and the same length, got {confidence.shape} and {correct.shape}"
        )
    if ((confidence < 0) | (confidence > 1)).any():
        raise InputError("confidences must lie in [0, 1]")
    edges = np.linspace(0, 1, n_bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    bins, ece = [], 0.0
    for b in range(n_bins):
        mask = index == b
        if not mask.any():
            continue
        conf, acc = confidence[mask].mean(), correct[mask].mean()
        ece += mask.mean() * abs(acc - conf)
        bins.append(
            {"bin": b, "low": edges[b], "high": edges[b + 1], "n": int(mask.sum()), "confidence": conf, "accuracy": acc}
        )
    return float(ece), bins
