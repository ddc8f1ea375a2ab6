"""Selective prediction: answer the questions a score trusts most, abstain on the rest.

A score is a *risk* per question (higher: more likely wrong). Keeping the ``k`` least risky answers gives a
coverage ``k / n`` and a selective risk (the error rate among those kept); the risk-coverage curve traces it
for every ``k`` and AURC is the curve's mean (Geifman et al., 2018: lower is better; an oracle that keeps the
right answers first reaches its floor). Ties in the risk are order-free: a block of tied questions is taken
as a whole, and inside it each kept question counts the block's mean error (the expectation over every
order of the tie), so a constant score's AURC is the plain error rate.

>>> import numpy as np
>>> risk, correct = np.array([0.1, 0.2, 0.3, 0.4]), np.array([1, 1, 0, 1])
>>> round(aurc(risk, correct), 4)  # errors kept at k = 1..4: 0, 0, 1, 1 -> (0 + 0 + 1/3 + 1/4) / 4
0.1458
>>> accuracy_at_coverage(risk, correct, 0.5)
1.0
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from jaxtyping import Float

from analyses import stats
from vlm_lens.errors import InputError


def _checked(risk, correct) -> tuple[np.ndarray, np.ndarray]:
    risk = np.asarray(risk, dtype=float)
    correct = np.asarray(correct)
    if risk.ndim != 1 or risk.shape != correct.shape or risk.size == 0:
        raise InputError(f"risk and correct must be 1-D and of one length, got shapes {risk.shape} and {correct.shape}")
    if not np.isfinite(risk).all():
        raise InputError(f"risk holds {int((~np.isfinite(risk)).sum())} NaN or infinite value(s)")
    if set(np.unique(correct).tolist()) - {0, 1}:
        raise InputError(f"correct must be 0/1 or bool, got values {sorted(set(np.unique(correct).tolist()))[:5]}")
    return risk, correct.astype(float)


def _expected_errors(risk: np.ndarray, correct: np.ndarray) -> Float[np.ndarray, " n"]:
    """Expected errors among the k least risky, k = 1..n, ties taken order-free."""
    order = np.argsort(risk, kind="stable")
    risk, wrong = risk[order], 1.0 - correct[order]
    per = np.empty_like(wrong)
    start = 0
    for end in np.append(np.flatnonzero(np.diff(risk)) + 1, len(risk)):  # blocks of equal risk
        per[start:end] = wrong[start:end].mean()
        start = end
    return np.cumsum(per)


def risk_coverage(risk, correct) -> pd.DataFrame:
    """One row per k = 1..n: ``coverage`` k/n, ``selective_risk`` (error rate of the k kept) and
    ``threshold`` (the largest risk kept)."""
    risk, correct = _checked(risk, correct)
    k = np.arange(1, len(risk) + 1)
    return pd.DataFrame(
        {"coverage": k / len(k), "selective_risk": _expected_errors(risk, correct) / k, "threshold": np.sort(risk)}
    )


def aurc(risk, correct) -> float:
    """Area under the risk-coverage curve: the mean selective risk over k = 1..n."""
    return float(risk_coverage(risk, correct)["selective_risk"].mean())


def accuracy_at_coverage(risk, correct, coverage: float) -> float:
    """Accuracy of the ``ceil(coverage * n)`` least risky answers."""
    if not 0 < coverage <= 1:
        raise InputError(f"coverage must be in (0, 1], got {coverage!r}")
    risk, correct = _checked(risk, correct)
    k = max(1, math.ceil(round(coverage * len(risk), 9)))
    return float(1.0 - _expected_errors(risk, correct)[k - 1] / k)


def selective_table(
    risks: dict[str, np.ndarray],
    correct,
    coverages: tuple[float, ...] = (0.8, 0.9),
    costs: dict[str, str] | None = None,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per scorer: AUROC of its confidence (``-risk``) for correctness with a bootstrap CI, AURC, the
    accuracy at each coverage, and what it costs (``costs``: model passes, e.g. "1 + 10 decodes")."""
    _, labels = _checked(next(iter(risks.values())), correct)
    rows = []
    for name, risk in risks.items():
        estimate = stats.auroc(-np.asarray(risk, dtype=float), labels, n_resamples, seed)
        row = {"scorer": name, "auroc": estimate.value, "ci_low": estimate.ci[0], "ci_high": estimate.ci[1]}
        row["aurc"] = aurc(risk, labels)
        for c in coverages:
            row[f"accuracy@{round(c * 100)}%"] = accuracy_at_coverage(risk, labels, c)
        row["n"] = len(labels)
        if costs is not None:
            row["cost"] = costs.get(name, "")
        rows.append(row)
    return pd.DataFrame(rows)
