"""Statistics with uncertainty: every estimate comes back as ``Estimate(value, ci)``.

    >>> paired_bootstrap_diff([1, 1, 0, 1], [0, 1, 0, 0], n_resamples=2000, seed=0).value
    -0.5
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Estimate:
    value: float
    ci: tuple[float, float]
    n: int
    n_resamples: int = 0

    def __str__(self) -> str:
        return f"{self.value:.4f} [{self.ci[0]:.4f}, {self.ci[1]:.4f}]"


def paired_bootstrap_diff(
    before: Sequence[float], after: Sequence[float], n_resamples: int = 10_000, seed: int = 0, confidence: float = 0.95
) -> Estimate:
    """mean(after) - mean(before) over paired items, with a percentile bootstrap CI (items resampled together)."""
    before, after = np.asarray(before, dtype=float), np.asarray(after, dtype=float)
    if before.shape != after.shape or before.ndim != 1 or len(before) == 0:
        raise ValueError(f"before and after must be paired 1-D samples, got {before.shape} and {after.shape}")
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
