"""A monitor's card and files (``analyses.checkpoint``: the checkpoint's fingerprint, safetensors + ``card.json``
each holding the other's digest), under the monitor's own names."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from analyses import checkpoint
from analyses.checkpoint import CARD, fingerprint
from analyses.checkpoint import CheckpointMismatchError as MonitorMismatchError
from vlm_lens import HookedVLM

FORMAT = "vlm-lens-monitor/1"
TENSORS = "monitor.safetensors"
__all__ = ["CARD", "FORMAT", "TENSORS", "MonitorMismatchError", "check", "fingerprint", "read", "write"]


def check(fitted: dict, model: HookedVLM) -> None:
    """Refuse ``model`` unless it is the checkpoint the monitor was fitted on."""
    checkpoint.check(fitted, model, "monitor")


def write(folder: str | Path, tensors: dict[str, np.ndarray], card: dict) -> Path:
    return checkpoint.write(folder, tensors, card, FORMAT, TENSORS)


def read(folder: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    return checkpoint.read(folder, FORMAT, TENSORS, "monitor")
