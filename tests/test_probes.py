"""Probes recover a planted linear signal, ignore noise features, and round-trip through safetensors."""

from __future__ import annotations

import numpy as np
import pytest

from analyses import probes as P


@pytest.fixture(scope="module")
def planted():
    rng = np.random.default_rng(0)
    n, d, layers = 800, 12, 4
    features = rng.normal(size=(layers, n, d))
    signal = features[2, :, 3] - 0.8 * features[2, :, 7]
    correct = (signal + 0.4 * rng.normal(size=n)) > 0
    return features, correct


def test_split_is_stratified_and_disjoint(planted):
    _, correct = planted
    split = P.stratified_split(correct, seed=1)
    assert len(set(split.train) | set(split.val) | set(split.test)) == len(correct)
    assert not set(split.train) & set(split.test)
    for part in (split.train, split.val, split.test):
        assert abs(correct[part].mean() - correct.mean()) < 0.02


def test_dense_probe_finds_the_signal_layer(planted):
    features, correct = planted
    result = P.layerwise_probe(features, correct, penalty="l2", n_resamples=300)
    assert result.best_layer == 2
    assert result.test.value > 0.9 and result.test.ci[0] > 0.85
    assert max(result.val_auroc[0], result.val_auroc[1], result.val_auroc[3]) < 0.65


def test_sparse_probe_selects_the_planted_neurons(planted):
    features, correct = planted
    result = P.layerwise_probe(features, correct, penalty="l1", C=0.05, n_resamples=100)
    chosen = P.selected_neurons(result.probe)
    assert list(chosen["index"][:2]) == [3, 7]
    assert chosen.coefficient[0] > 0 > chosen.coefficient[1]
    assert len(chosen) <= 4  # noise features dropped
    assert set(chosen.layer) == {2}


def test_stacked_probe_and_roundtrip(planted, tmp_path):
    features, correct = planted
    result = P.stacked_probe(features, correct, last=3, n_resamples=100)
    assert result.probe.layer == [1, 2, 3] and result.test.value > 0.9
    path = tmp_path / "probe.safetensors"
    result.probe.save(path)
    loaded = P.LinearProbe.load(path)
    x = np.concatenate([features[l] for l in [1, 2, 3]], axis=1)
    assert np.allclose(loaded.decision(x), result.probe.decision(x))
    assert loaded.layer == [1, 2, 3] and loaded.penalty == "l2"
    assert path.read_bytes()[:8] != b"\x80\x04\x95"  # not a pickle


@pytest.mark.parametrize("kind", ["mlp", "gbt", "rf"])
def test_classifier_probes(kind):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 6))
    y = x[:, 0] * x[:, 1] > 0  # non-linear: a linear probe cannot read it
    fitted = P.classifier_probe(x, y, kind, n_resamples=100)
    assert fitted.test.value > 0.75
    split = P.stratified_split(y, 0)
    assert fitted.scores.shape == (len(split.test),)
    noise = P.classifier_probe(rng.normal(size=(400, 6)), y, kind, n_resamples=100)
    assert noise.test.value < 0.65


def test_penalty_names_any_case_and_refuse_unknown(planted):
    """penalty="L1" once fitted L2 silently: the upper-case name must give the same sparse probe as "l1"."""
    features, correct = planted
    upper = P.fit_probe(features[2], correct, 2, penalty="L1", C=0.05)
    lower = P.fit_probe(features[2], correct, 2, penalty="l1", C=0.05)
    assert upper.penalty == "l1" and np.array_equal(upper.coef, lower.coef)
    assert (upper.coef == 0).sum() >= 8  # L1 zeroes the noise dimensions; L2 would keep all 12 non-zero
    assert (P.fit_probe(features[2], correct, 2, penalty="l2", C=0.05).coef == 0).sum() == 0
    with pytest.raises(ValueError, match="penalty"):
        P.fit_probe(features[2], correct, 2, penalty="elasticnet")


def test_the_sparse_probe_is_sparse():
    """L1 really is L1 (scikit-learn before 1.8 ignored l1_ratio without penalty="l1" and kept every coefficient):
    3 informative of 128 features, and most coefficients exactly zero; the dense probe keeps them all."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 128))
    y = (x[:, :3].sum(1) + 0.3 * rng.normal(size=300)) > 0
    sparse = P.fit_probe(x, y, layer=0, penalty="l1", C=0.05)
    dense = P.fit_probe(x, y, layer=0, penalty="l2", C=0.05)
    assert np.count_nonzero(sparse.coef) < 32 and set(np.argsort(-np.abs(sparse.coef))[:3]) == {0, 1, 2}
    assert np.count_nonzero(dense.coef) == 128


def test_probe_inputs_that_would_fit_on_a_subset_or_one_class_are_refused():
    from analyses import probes as P
    from vlm_lens.errors import InputError

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(3, 40, 5)), rng.random(40) < 0.5
    with pytest.raises(InputError, match="30 labels for 40 rows"):
        P.layerwise_probe(x, y[:30])
    with pytest.raises(InputError, match="one class only"):
        P.layerwise_probe(x, np.ones(40, bool))
    with pytest.raises(InputError, match="needs at least 3 of each"):
        P.stratified_split(np.array([1] * 38 + [0] * 2))
    with pytest.raises(InputError, match="NaN or infinite"):
        P.fit_probe(np.where(np.eye(40, 5) > 0, np.nan, 1.0), y, 0)
    with pytest.raises(InputError, match="C must be a positive"):
        P.fit_probe(x[0], y, 0, C=0)
