"""The signals a monitor can be fitted on, by name (no torch here: the command line checks a name at once)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Signal:
    representation: str
    penalty: str  # "l1" | "l2" (logistic, on correctness) | "ridge" (regression, on self-consistency support)
    stacked: bool = False
    about: str = ""


SIGNALS = {
    "dense": Signal("query", "l2", about="L2 probe, answer-position residual, layer chosen on validation"),
    "sparse": Signal("query", "l1", about="L1 probe, answer-position residual, layer chosen on validation"),
    "stacked": Signal("query", "l2", stacked=True, about="L2 probe, answer-position residual, last 5 layers"),
    "image": Signal("image", "l2", about="L2 probe, image tokens' mean residual, layer chosen on validation"),
    "vision": Signal("vision", "l2", about="L2 probe, projected vision features' mean, before the decoder"),
    "consistency": Signal(
        "query", "ridge", about="ridge regression on self-consistency support (no gold to fit), answer position"
    ),
}
CALIBRATIONS = ("platt", "isotonic")
RIDGE_CS = (0.001, 0.01, 0.1, 1.0)  # the consistency regression's inverse strengths (alpha = 1 / C), tried per layer
