"""Probes that predict correctness from activations, with the study's protocol.

Stratified train / validation / test split (60/20/20, seeded); one probe per layer fitted on
train; the best layer chosen on validation AUROC only; the test set touched once, for that
layer. Dense probes are L2 logistic regressions, sparse probes L1 (their non-zero weights are
the candidate reliability neurons, as ``(layer, index, coefficient)``). Features are
standardised on train. Probes save as safetensors with a JSON header: no pickles.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from safetensors.numpy import load_file, save_file
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

from analyses.stats import Estimate, auroc
from vlm_lens.errors import InputError


@dataclass(frozen=True)
class Split:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def _labels(labels, rows: int | None = None, what: str = "the features") -> np.ndarray:
    """Binary labels with both classes, one per feature row, or an ``InputError`` saying what is wrong."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise InputError(f"labels must be 1-D (one per question), got shape {labels.shape}")
    if labels.size and set(np.unique(labels).tolist()) - {0, 1}:
        raise InputError(
            f"labels must be binary (0/1 or bool), got values {sorted(set(np.unique(labels).tolist()))[:5]}"
        )
    if rows is not None and len(labels) != rows:
        raise InputError(f"{len(labels)} labels for {rows} rows of {what}: give one label per row")
    labels = labels.astype(int)
    if len(labels) == 0 or labels.min() == labels.max():
        raise InputError(f"labels hold one class only ({len(labels)} of them): a probe needs right and wrong answers")
    return labels


def stratified_split(labels, seed: int = 0, val: float = 0.2, test: float = 0.2) -> Split:
    labels = _labels(labels)
    fewest = int(min(labels.sum(), len(labels) - labels.sum()))
    if fewest < 3:
        raise InputError(
            f"only {fewest} answer(s) of one class among {len(labels)}: a stratified train/val/test split "
            "needs at least 3 of each"
        )
    if not (0 < val and 0 < test and val + test < 1):
        raise InputError(f"val and test must be positive shares leaving a training split, got {val} and {test}")
    index = np.arange(len(labels))
    rest, test_idx = train_test_split(index, test_size=test, stratify=labels, random_state=seed)
    train_idx, val_idx = train_test_split(rest, test_size=val / (1 - test), stratify=labels[rest], random_state=seed)
    return Split(np.sort(train_idx), np.sort(val_idx), np.sort(test_idx))


@dataclass
class LinearProbe:
    """A standardised logistic-regression probe on one layer's (or several layers') features."""

    layer: int | list[int]
    coef: np.ndarray
    intercept: float
    mean: np.ndarray
    scale: np.ndarray
    penalty: str = "l2"

    def decision(self, features: np.ndarray) -> np.ndarray:
        return ((np.asarray(features) - self.mean) / self.scale) @ self.coef + self.intercept

    def save(self, path: str | Path) -> None:
        layers = self.layer if isinstance(self.layer, list) else [self.layer]
        save_file(
            {
                "coef": self.coef.astype(np.float64),
                "mean": self.mean,
                "scale": self.scale,
                "intercept": np.array([self.intercept]),
                "layers": np.array(layers, dtype=np.int64),
            },
            str(path),
            metadata={"penalty": self.penalty, "stacked": str(isinstance(self.layer, list))},
        )

    @classmethod
    def load(cls, path: str | Path) -> LinearProbe:
        from safetensors import safe_open

        with safe_open(str(path), "np") as f:
            meta = f.metadata()
        t = load_file(str(path))
        layers = t["layers"].tolist()
        layer = layers if meta["stacked"] == "True" else layers[0]
        return cls(layer, t["coef"], float(t["intercept"][0]), t["mean"], t["scale"], meta["penalty"])


PENALTIES = ("l1", "l2")


def fit_probe(features: np.ndarray, labels, layer, penalty: str = "l2", C: float = 1.0, seed: int = 0) -> LinearProbe:
    """A logistic probe on [n, d] features; ``penalty`` "l1" (sparse) or "l2" (dense), any case."""
    penalty = _penalty(penalty)
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2:
        raise InputError(f"features must be [n, d], got shape {features.shape}")
    if not np.isfinite(features).all():
        raise InputError(f"features hold {int((~np.isfinite(features)).sum())} NaN or infinite value(s)")
    labels = _labels(labels, len(features))
    if not (isinstance(C, (int, float)) and 0 < C < float("inf")):
        raise InputError(f"C must be a positive inverse regularisation strength, got {C!r}")
    mean, scale = features.mean(0), features.std(0)
    scale[scale == 0] = 1.0
    solver = "liblinear" if penalty == "l1" else "lbfgs"
    model = LogisticRegression(
        l1_ratio=1.0 if penalty == "l1" else 0.0, C=C, solver=solver, max_iter=2000, random_state=seed
    )
    model.fit((features - mean) / scale, np.asarray(labels).astype(int))
    return LinearProbe(layer, model.coef_[0].copy(), float(model.intercept_[0]), mean, scale, penalty)


def _penalty(penalty: str) -> str:
    if not isinstance(penalty, str) or penalty.lower() not in PENALTIES:
        raise InputError(f"penalty must be 'l1' or 'l2', got {penalty!r}")
    return penalty.lower()


@dataclass
class ProbeResult:
    val_auroc: list[float]  # per layer (or per candidate)
    best_layer: int
    test: Estimate
    probe: LinearProbe
    split: Split = field(repr=False)

    def table(self) -> pd.DataFrame:
        return pd.DataFrame({"layer": range(len(self.val_auroc)), "val_auroc": self.val_auroc})


def layerwise_probe(
    features,
    correct,
    penalty: str = "l2",
    C: float = 1.0,
    seed: int = 0,
    n_resamples: int = 2000,
    split: Split | None = None,
) -> ProbeResult:
    """features [layer, n, d] (an array, or anything indexed by layer: the study's LayerStack): a probe per layer, the best layer by validation AUROC, test AUROC once.

    ``split`` defaults to ``stratified_split(correct, seed)``; pass the study's to share one test set."""
    penalty = _penalty(penalty)
    if len(features) == 0:
        raise InputError("features hold no layers: give [layer, n, d]")
    labels = _labels(correct, len(features[0]), "each layer's features")
    split = split or stratified_split(labels, seed)
    probes, val = [], []
    for layer in range(len(features)):  # one layer in memory at a time (an extraction's LayerStack reads lazily)
        x = np.asarray(features[layer])
        probe = fit_probe(x[split.train], labels[split.train], layer, penalty, C, seed)
        probes.append(probe)
        val.append(auroc(probe.decision(x[split.val]), labels[split.val], n_resamples=0).value)
    best = int(np.nanargmax(val))
    test = auroc(probes[best].decision(features[best][split.test]), labels[split.test], n_resamples, seed)
    return ProbeResult(val, best, test, probes[best], split)


def stacked_probe(
    features,
    correct,
    last: int = 5,
    penalty: str = "l2",
    C: float = 1.0,
    seed: int = 0,
    n_resamples: int = 2000,
    split: Split | None = None,
) -> ProbeResult:
    """features [layer, n, d] (an array, or anything indexed by layer): one probe over the last ``last`` layers' features concatenated (all layers if there are fewer)."""
    layers = list(range(max(0, len(features) - last), len(features)))
    x = np.concatenate([np.asarray(features[layer]) for layer in layers], axis=1)
    labels = np.asarray(correct).astype(int)
    split = split or stratified_split(labels, seed)
    probe = fit_probe(x[split.train], labels[split.train], layers, penalty, C, seed)
    val = auroc(probe.decision(x[split.val]), labels[split.val], n_resamples=0).value
    test = auroc(probe.decision(x[split.test]), labels[split.test], n_resamples, seed)
    return ProbeResult([val], len(features) - 1, test, probe, split)


def selected_neurons(probe: LinearProbe) -> pd.DataFrame:
    """Non-zero weights of a (sparse) probe: layer, index, coefficient, strongest first."""
    layers = probe.layer if isinstance(probe.layer, list) else [probe.layer]
    width = len(probe.coef) // len(layers)
    nonzero = np.flatnonzero(probe.coef)
    frame = pd.DataFrame(
        {"layer": [layers[i // width] for i in nonzero], "index": nonzero % width, "coefficient": probe.coef[nonzero]}
    )
    return frame.reindex(frame.coefficient.abs().sort_values(ascending=False).index).reset_index(drop=True)


CLASSIFIERS = {
    "mlp": lambda seed: MLPClassifier(hidden_layer_sizes=(64,), max_iter=500, random_state=seed),
    "gbt": lambda seed: GradientBoostingClassifier(random_state=seed),
    "rf": lambda seed: RandomForestClassifier(n_estimators=200, random_state=seed),
}


@dataclass
class ClassifierResult:
    test: Estimate  # test AUROC with its bootstrap CI
    scores: np.ndarray  # predicted probability of "correct" on the test split
    accuracy: float  # test accuracy of predicting right/wrong at probability 0.5 (the study's stress-test number)


def classifier_probe(
    features: np.ndarray, correct, kind: str = "mlp", seed: int = 0, n_resamples: int = 2000, split: Split | None = None
) -> ClassifierResult:
    """A non-linear classifier on [n, features] (the attention probes and stress test).

    Fitted on train + validation (no layer to choose), scored once on test."""
    if kind not in CLASSIFIERS:
        raise InputError(f"kind must be one of {sorted(CLASSIFIERS)}, got {kind!r}")
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or not np.isfinite(x).all():
        raise InputError(
            f"features must be a finite [n, d] array, got shape {x.shape}"
            + (" with NaN or infinite values" if x.ndim == 2 else "")
        )
    labels = _labels(correct, len(x))
    split = split or stratified_split(labels, seed)
    fit_idx = np.concatenate([split.train, split.val])
    mean, scale = x[fit_idx].mean(0), x[fit_idx].std(0)
    scale[scale == 0] = 1.0
    model = CLASSIFIERS[kind](seed).fit((x[fit_idx] - mean) / scale, labels[fit_idx])
    scores = model.predict_proba((x[split.test] - mean) / scale)[:, 1]
    accuracy = float(((scores > 0.5) == labels[split.test].astype(bool)).mean())
    return ClassifierResult(auroc(scores, labels[split.test], n_resamples, seed), scores, accuracy)
