"""``ReliabilityMonitor``: a probe that says, as the model answers, how likely the answer is to be wrong.

Fitted on one run of a model (its states and whether each answer was right), it reads one representation of a new
question in the forward that answers it (``features``: ``query``, ``image`` or ``vision``) and gives a calibrated
probability of being right; its ``risk`` is one minus that, and an answer whose risk is above the threshold chosen
on validation is ``flagged``. The signals:

- ``dense`` / ``sparse``: an L2 / L1 logistic probe on the answer position's residual stream, the layer chosen on
  validation (the study's probes, Table 6);
- ``stacked``: an L2 probe on the last five stored layers side by side;
- ``image`` / ``vision``: an L2 probe on the image tokens' residual at a layer, or on the projected vision
  features before the decoder (HALP's other two representations);
- ``consistency``: a ridge regression trained to predict the run's self-consistency support (K samples at fit
  time, none when used; no gold label is needed to fit it, only to calibrate it), after semantic entropy probes
  (Kossen et al., 2024).

Calibration (``platt``: a logistic curve; ``isotonic``: a monotone step fit; both sklearn's) and the threshold
(the risk that keeps ``coverage`` of the validation answers, or the largest coverage whose validation accuracy
reaches ``precision``) are fitted on the validation split; the test split is read once, for the card's metrics.

    monitor = ReliabilityMonitor.load("runs/monitor")           # refuses a model it was not fitted on
    scores = monitor.score(model, inputs)                        # one forward: scores.risk, scores.flagged
    answers = monitor.generate(model, inputs, max_new_tokens=16)  # answers with the risk of the same pass
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float

from analyses import stats
from analyses.answers import answer_length, stop_token_ids
from analyses.monitor import card as cards
from analyses.monitor.features import EMBED, REPRESENTATIONS, Reader, read
from analyses.monitor.selective import accuracy_at_coverage, aurc
from analyses.monitor.signals import CALIBRATIONS, RIDGE_CS, SIGNALS, Signal
from analyses.probes import Split, fit_probe
from vlm_lens import HookedVLM
from vlm_lens.errors import DataError, InputError
from vlm_lens.inputs import VLMInputs


def check_signal(signal: str) -> Signal:
    if signal not in SIGNALS:
        raise InputError(f"signal must be one of {sorted(SIGNALS)}, got {signal!r}")
    return SIGNALS[signal]


@dataclass(frozen=True)
class MonitorScores:
    """Per question: ``probability`` of being right, ``risk`` = 1 - probability, ``flagged`` = risk > threshold."""

    probability: Float[np.ndarray, " batch"]
    risk: Float[np.ndarray, " batch"]
    flagged: np.ndarray


@dataclass(frozen=True)
class MonitoredAnswers(MonitorScores):
    """Greedy answers to a stop token, each with the risk read in the forward pass that began it."""

    texts: list[str] = field(default_factory=list)
    tokens: list[list[int]] = field(default_factory=list)


@dataclass(frozen=True)
class ReliabilityMonitor:
    signal: str
    representation: str
    layers: tuple[int, ...]  # model layers read (``features.EMBED``: the vision representation)
    coef: np.ndarray  # on standardised features
    intercept: float
    mean: np.ndarray
    scale: np.ndarray
    calibration: str  # "platt" | "isotonic"
    calibration_x: np.ndarray  # platt: (slope, offset); isotonic: the step fit's x
    calibration_y: np.ndarray  # isotonic: the step fit's y (platt: empty)
    threshold: float  # flag an answer whose risk is above it
    target: dict  # {"coverage": c} or {"precision": p}, and whether validation reached it
    model: dict  # card.fingerprint of the checkpoint it was fitted on
    data: dict = field(default_factory=dict)  # what it was fitted on: benchmark, n, run folder, digests
    metrics: dict = field(default_factory=dict)  # validation and test figures

    # -- the numbers --------------------------------------------------------------------------------------------
    def decision(self, features) -> Float[np.ndarray, " n"]:
        """The probe's raw score (a logit, or the predicted support) on ``[n, width]`` features."""
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[1] != self.coef.shape[0]:
            raise InputError(
                f"features must be [n, {self.coef.shape[0]}] ({self.representation} at layers {list(self.layers)}), "
                f"got shape {features.shape}"
            )
        return ((features - self.mean) / self.scale) @ self.coef + self.intercept

    def select(self, features: Mapping[int, np.ndarray]) -> Float[np.ndarray, "n width"]:
        """Its layers' features side by side, from ``{layer: [n, d_model]}`` (what ``decision`` reads)."""
        missing = [l for l in self.layers if l not in features]
        if missing:
            raise InputError(f"the features hold no layer {missing} (this monitor reads layers {list(self.layers)})")
        return np.concatenate([np.asarray(features[l]) for l in self.layers], axis=1)

    def probability(self, features) -> Float[np.ndarray, " n"]:
        """The calibrated probability that each answer is right."""
        return calibrate(self.calibration, self.calibration_x, self.calibration_y, self.decision(features))

    def scores(self, features) -> MonitorScores:
        p = self.probability(features)
        return MonitorScores(p, 1.0 - p, (1.0 - p) > self.threshold)

    # -- on a model ---------------------------------------------------------------------------------------------
    def check_model(self, model: HookedVLM) -> None:
        """Refuse a model this monitor was not fitted on (``MonitorMismatchError``, one line naming both)."""
        cards.check(self.model, model)

    @torch.no_grad()
    def score(self, model: HookedVLM, inputs: VLMInputs) -> MonitorScores:
        """One forward (stopped after the last layer read): each question's risk before its answer is generated."""
        self.check_model(model)
        return self.scores(read(model, inputs, self.representation, self.layers))

    @torch.no_grad()
    def generate(
        self, model: HookedVLM, inputs: VLMInputs, max_new_tokens: int = 16, stop_ids: Sequence[int] | None = None
    ) -> MonitoredAnswers:
        """Greedy answers to the first stop token, and each one's risk from the prefill of the same ``generate``."""
        self.check_model(model)
        if max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        stops = list(stop_ids) if stop_ids is not None else stop_token_ids(model)
        reader = Reader(model, self.representation, self.layers, inputs)
        out = model.generate(
            inputs, max_new_tokens=max_new_tokens, fwd_hooks=reader.hooks(), eos_token_id=stops, pad_token_id=stops[0]
        )
        tokens, texts = [], []
        for row in out[:, inputs.input_ids.shape[1] :].tolist():
            row = row[: answer_length(row, stops)]
            tokens.append(row)
            texts.append(model.tokenizer.decode(row, skip_special_tokens=True).strip())
        s = self.scores(reader.features())
        return MonitoredAnswers(s.probability, s.risk, s.flagged, texts, tokens)

    # -- files ----------------------------------------------------------------------------------------------------
    def card(self) -> dict:
        """Everything but the arrays, as saved in ``card.json``."""
        return {
            "signal": self.signal,
            "about": SIGNALS[self.signal].about,
            "representation": self.representation,
            "layers": list(self.layers),
            "hook_names": ["hook_embed" if l == EMBED else f"blocks.{l}.hook_resid_post" for l in self.layers],
            "calibration": self.calibration,
            "threshold": self.threshold,
            "target": self.target,
            "model": self.model,
            "data": self.data,
            "metrics": self.metrics,
        }

    def save(self, folder: str | Path) -> Path:
        """``folder/monitor.safetensors`` + ``folder/card.json`` (``analyses.monitor.card``)."""
        tensors = {
            "coef": self.coef,
            "intercept": np.array([self.intercept]),
            "mean": self.mean,
            "scale": self.scale,
            "calibration_x": self.calibration_x,
            "calibration_y": self.calibration_y,
        }
        return cards.write(folder, {k: np.asarray(v, dtype=np.float64) for k, v in tensors.items()}, self.card())

    @classmethod
    def load(cls, folder: str | Path) -> ReliabilityMonitor:
        """A saved monitor; refused with one line if a file is missing, edited or of another format."""
        tensors, card = cards.read(folder)
        try:
            monitor = cls(
                signal=card["signal"],
                representation=card["representation"],
                layers=tuple(int(l) for l in card["layers"]),
                coef=tensors["coef"],
                intercept=float(tensors["intercept"][0]),
                mean=tensors["mean"],
                scale=tensors["scale"],
                calibration=card["calibration"],
                calibration_x=tensors["calibration_x"],
                calibration_y=tensors["calibration_y"],
                threshold=float(card["threshold"]),
                target=card["target"],
                model=card["model"],
                data=card.get("data", {}),
                metrics=card.get("metrics", {}),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{folder}: the monitor's card or tensors lack {e}; fit the monitor again") from None
        check_signal(monitor.signal)
        if monitor.representation not in REPRESENTATIONS or monitor.calibration not in CALIBRATIONS:
            raise DataError(f"{folder}: a representation or calibration this vlm-lens does not know; fit it again")
        return monitor


# -- fitting ------------------------------------------------------------------------------------------------------
def calibrate(method: str, x: np.ndarray, y: np.ndarray, decision: np.ndarray) -> np.ndarray:
    """A probe's raw score as a probability of being right: Platt's logistic curve, or the isotonic step fit
    (linear between its steps, clipped beyond them: sklearn's ``IsotonicRegression.predict``)."""
    if method == "platt":
        return 1.0 / (1.0 + np.exp(-(x[0] * decision + x[1])))
    return np.interp(decision, x, y)


def _fit_calibration(method: str, decision: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if method == "platt":
        from sklearn.linear_model import LogisticRegression

        fitted = LogisticRegression(C=1e6, max_iter=1000).fit(decision[:, None], correct)
        return np.array([fitted.coef_[0, 0], fitted.intercept_[0]]), np.zeros(0)
    from sklearn.isotonic import IsotonicRegression

    fitted = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(decision, correct)
    return np.asarray(fitted.X_thresholds_, dtype=float), np.asarray(fitted.y_thresholds_, dtype=float)


def choose_threshold(risk: np.ndarray, correct: np.ndarray, coverage: float | None, precision: float | None) -> dict:
    """The risk above which an answer is flagged, from the validation split: the one that keeps ``coverage`` of
    the answers, or the largest coverage whose accuracy reaches ``precision``."""
    if (coverage is None) == (precision is None):
        raise InputError("give a target coverage or a target precision (accuracy of the answers kept), not both")
    target = coverage if coverage is not None else precision
    if not 0 < target <= 1:
        raise InputError(f"a target coverage or precision must be in (0, 1], got {target!r}")
    ordered = np.sort(risk)
    if coverage is not None:
        threshold = float(ordered[max(1, math.ceil(round(coverage * len(risk), 9))) - 1])
        return {"coverage": coverage, "threshold": threshold, "reached": True}
    for t in ordered[::-1]:  # the loosest threshold first
        kept = risk <= t
        if correct[kept].mean() >= precision:
            return {"precision": precision, "threshold": float(t), "reached": True}
    return {"precision": precision, "threshold": float(ordered[0]), "reached": False}


def _fit_one(features: np.ndarray, split: Split, correct: np.ndarray, target: np.ndarray, signal: Signal, C, seed):
    if signal.penalty == "ridge":
        from sklearn.linear_model import Ridge

        x = np.asarray(features, dtype=np.float64)
        mean, scale = x[split.train].mean(0), x[split.train].std(0)
        scale[scale == 0] = 1.0
        fitted = Ridge(alpha=1.0 / C).fit((x[split.train] - mean) / scale, target[split.train])
        return fitted.coef_.copy(), float(fitted.intercept_), mean, scale
    probe = fit_probe(features[split.train], correct[split.train], 0, signal.penalty, C, seed)
    return probe.coef, probe.intercept, probe.mean, probe.scale


def _validation_score(decision: np.ndarray, split: Split, correct: np.ndarray, target: np.ndarray, signal: Signal):
    """How a candidate layer is chosen: validation AUROC, or (consistency) the correlation of predicted with
    sampled support, which needs no gold label."""
    if signal.penalty == "ridge":
        x, y = decision[split.val], target[split.val]
        return float(np.corrcoef(x, y)[0, 1]) if x.std() > 0 and y.std() > 0 else float("nan")
    return stats.auroc(decision[split.val], correct[split.val], n_resamples=0).value


def split_metrics(probability: np.ndarray, correct: np.ndarray, threshold: float, n_resamples: int, seed: int) -> dict:
    """AUROC (CI), AURC, accuracy at 80/90% coverage, ECE, and coverage and accuracy at the threshold."""
    risk = 1.0 - probability
    kept = risk <= threshold
    estimate = stats.auroc(probability, correct, n_resamples, seed)
    return {
        "n": len(correct),
        "accuracy": float(correct.mean()),
        "auroc": estimate.value,
        "auroc_ci": list(estimate.ci),
        "aurc": aurc(risk, correct),
        "accuracy@80%": accuracy_at_coverage(risk, correct, 0.8),
        "accuracy@90%": accuracy_at_coverage(risk, correct, 0.9),
        "ece": stats.expected_calibration_error(probability, correct)[0],
        "coverage_at_threshold": float(kept.mean()),
        "accuracy_at_threshold": float(correct[kept].mean()) if kept.any() else float("nan"),
    }


def fit(
    features: Mapping[int, np.ndarray],
    correct,
    split: Split,
    model: dict,
    signal: str = "dense",
    support=None,
    calibration: str = "platt",
    coverage: float | None = 0.8,
    precision: float | None = None,
    C: float = 1.0,
    stacked_layers: int = 5,
    seed: int = 0,
    n_resamples: int = 10_000,
    data: dict | None = None,
) -> ReliabilityMonitor:
    """A monitor from arrays: ``features`` maps each candidate model layer to ``[n, d]`` rows of the signal's
    representation (``-1``: the vision representation), ``correct`` the answers' correctness, ``split`` the
    train / validation / test split (the study's), ``model`` the checkpoint's ``card.fingerprint``. The layer is
    chosen on validation, the calibration and threshold fitted there; the test split gives the card's metrics."""
    chosen = check_signal(signal)
    if calibration not in CALIBRATIONS:
        raise InputError(f"calibration must be one of {CALIBRATIONS}, got {calibration!r}")
    if precision is not None:
        coverage = None
    correct = np.asarray(correct).astype(int)
    if not features:
        raise InputError("features hold no layers: give {layer: [n, d]}")
    layers = sorted(features)
    n = len(correct)
    if any(np.asarray(features[l]).shape[0] != n for l in layers):
        raise InputError(
            f"every layer's features need one row per answer ({n}), got {[len(features[l]) for l in layers]}"
        )
    if chosen.penalty == "ridge":
        if support is None:
            raise InputError(
                "the consistency signal is fitted on self-consistency support: give support (one per answer)"
            )
        target = np.asarray(support, dtype=float)
        if target.shape != (n,):
            raise InputError(f"support must hold one value per answer ({n}), got shape {target.shape}")
    else:
        target = correct
    candidates = [tuple(layers[-stacked_layers:])] if chosen.stacked else [(l,) for l in layers]
    # the regression's strength is chosen with its layer, on validation, without gold labels; the logistic probes
    # keep the study's C
    strengths = RIDGE_CS if chosen.penalty == "ridge" else (C,)
    best = None
    for group in candidates:
        x = np.concatenate([np.asarray(features[l], dtype=np.float64) for l in group], axis=1)
        for strength in strengths:
            coef, intercept, mean, scale = _fit_one(x, split, correct, target, chosen, strength, seed)
            decision = ((x - mean) / scale) @ coef + intercept
            value = _validation_score(decision, split, correct, target, chosen)
            if best is None or (not math.isnan(value) and (math.isnan(best[0]) or value > best[0])):
                best = (value, group, strength, coef, intercept, mean, scale, decision)
    value, group, strength, coef, intercept, mean, scale, decision = best
    cal_x, cal_y = _fit_calibration(calibration, decision[split.val], correct[split.val])
    probability = calibrate(calibration, cal_x, cal_y, decision)
    picked = choose_threshold(1.0 - probability[split.val], correct[split.val], coverage, precision)
    threshold = picked.pop("threshold")
    metrics = {
        "chosen_by": "validation correlation with self-consistency support"
        if chosen.penalty == "ridge"
        else "validation AUROC",
        "validation_choice_score": value,
        "C": strength,
        "validation": split_metrics(probability[split.val], correct[split.val], threshold, 0, seed),
        "test": split_metrics(probability[split.test], correct[split.test], threshold, n_resamples, seed),
        "split": {"train": len(split.train), "validation": len(split.val), "test": len(split.test)},
    }
    return ReliabilityMonitor(
        signal=signal,
        representation=chosen.representation,
        layers=tuple(int(l) for l in group),
        coef=np.asarray(coef, dtype=np.float64),
        intercept=float(intercept),
        mean=np.asarray(mean, dtype=np.float64),
        scale=np.asarray(scale, dtype=np.float64),
        calibration=calibration,
        calibration_x=cal_x,
        calibration_y=cal_y,
        threshold=threshold,
        target=picked,
        model=model,
        data=dict(data or {}),
        metrics=metrics,
    )
