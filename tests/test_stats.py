"""Statistics against scipy and sklearn."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps
from sklearn.metrics import roc_auc_score

from analyses import stats


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    labels = rng.random(400) < 0.4
    scores = rng.normal(size=400) + labels * 0.8
    scores[:20] = np.round(scores[:20])  # some ties
    return scores, labels


def test_auroc_against_sklearn(data):
    scores, labels = data
    est = stats.auroc(scores, labels, n_resamples=2000, seed=1)
    assert est.value == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert est.ci[0] < est.value < est.ci[1]
    assert (
        stats.auroc(scores, labels, n_resamples=500, seed=3).ci
        == stats.auroc(scores, labels, n_resamples=500, seed=3).ci
    )


def test_point_biserial_against_scipy(data):
    scores, labels = data
    est = stats.point_biserial(scores, labels, n_resamples=2000)
    assert est.value == pytest.approx(sps.pointbiserialr(labels, scores).statistic, abs=1e-12)
    ref = sps.bootstrap(
        (scores, labels.astype(float)),
        lambda x, y: np.corrcoef(x, y)[0, 1],
        paired=True,
        vectorized=False,
        n_resamples=2000,
        method="percentile",
        random_state=0,
    )
    assert est.ci == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high), abs=0.02)


def test_permutation_test_against_scipy():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=40), rng.normal(0.5, size=50)
    ref = sps.permutation_test(
        (x, y), lambda a, b: a.mean() - b.mean(), n_resamples=5000, alternative="two-sided", random_state=0
    ).pvalue
    assert stats.permutation_test(x, y, n_resamples=5000) == pytest.approx(ref, abs=0.02)


@pytest.mark.parametrize("shift", [0.0, 0.15, 0.4])
def test_sign_flip_test_is_scipys_paired_permutation_test(shift):
    rng = np.random.default_rng(2)
    before = (rng.random(60) < 0.7).astype(float)  # right/wrong on the same questions, as an ablation gives
    after = np.where(rng.random(60) < shift, 0.0, before)
    ref = sps.permutation_test(
        (after, before),
        lambda a, b: np.mean(a - b),
        permutation_type="samples",
        n_resamples=5000,
        alternative="two-sided",
        random_state=0,
    ).pvalue
    assert stats.sign_flip_test(after - before, n_resamples=5000) == pytest.approx(ref, abs=0.02)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        stats.sign_flip_test([])


def test_multiple_comparisons_against_scipy():
    p = np.array([0.001, 0.02, 0.03, 0.2, 0.5, 0.04])
    assert np.allclose(stats.benjamini_hochberg(p), sps.false_discovery_control(p, method="bh"))
    assert np.allclose(stats.bonferroni(p), np.minimum(p * 6, 1))


def test_ece_by_hand():
    ece, bins = stats.expected_calibration_error([0.95, 0.95, 0.15, 0.15], [1, 0, 0, 0], n_bins=10)
    # bin 9: confidence .95, accuracy .5 ; bin 1: confidence .15, accuracy 0
    assert ece == pytest.approx(0.5 * 0.45 + 0.5 * 0.15)
    assert [b["n"] for b in bins] == [2, 2]


@pytest.mark.parametrize(
    "scores,labels", [([1, 2], [1, 1]), ([1, 2], [0, 2]), ([np.nan, 1], [0, 1]), ([1, 2, 3], [0, 1])]
)
def test_bad_input(scores, labels):
    with pytest.raises(ValueError):
        stats.auroc(scores, labels)


@pytest.mark.parametrize(
    "call, says",
    [
        (lambda: stats.permutation_test([1.0, np.nan, 2.0], [0.5, 0.1]), "NaN or infinite"),
        (lambda: stats.expected_calibration_error([0.2, np.nan], [1, 0]), "NaN or infinite"),
        (lambda: stats.expected_calibration_error([0.2, 0.4], [1, 2]), "must be binary"),
        (lambda: stats.expected_calibration_error([0.2, 0.4], [1, 0, 1]), "the same length"),
        (
            lambda: stats.paired_bootstrap_diff([1, 0], [0, 0], n_resamples=0),
            "n_resamples must be an integer of at least 1",
        ),
        (lambda: stats.auroc([0.1, 0.2], [1, 1]), "one class only"),
        (lambda: stats.benjamini_hochberg([0.01, np.nan]), "NaN or infinite"),
        (lambda: stats.bonferroni([0.01, 1.5]), r"must lie in \[0, 1\]"),
    ],
)
def test_bad_statistics_inputs_are_refused_not_given_a_number(call, says):
    from vlm_lens.errors import InputError

    with pytest.raises(InputError, match=says):
        call()


def test_p_values_and_estimates_by_hand():
    # no difference at all: every relabelling or sign flip reaches it, so p is exactly 1 (not above, not below)
    assert stats.sign_flip_test(np.zeros(12), n_resamples=999) == 1.0
    assert stats.permutation_test(np.ones(5), np.ones(7), n_resamples=999) == 1.0
    # a difference no relabelling reaches: p is the smallest the resamples allow, 1 / (n + 1)
    assert stats.permutation_test(np.full(30, 10.0), np.zeros(30), n_resamples=999) == pytest.approx(1 / 1000)
    assert str(stats.Estimate(0.5, (0.25, 0.75), 10)) == "0.5000 [0.2500, 0.7500]"


def test_calibration_accepts_the_ends_of_the_unit_interval():
    ece, bins = stats.expected_calibration_error([0.0, 1.0, 1.0, 0.0], [0, 1, 1, 0])
    assert ece == 0.0 and sum(b["n"] for b in bins) == 4  # perfectly calibrated at the ends
