"""``VRPConfig``: every number the study uses, in one frozen object.

The fields that decide what extraction stores make its fingerprint: a folder extracted under
one fingerprint is never resumed under another. The rest (batch size, probe strengths,
resamples, ...) only change the analysis, which reruns from the stored extraction.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import ClassVar

from analyses.answers import CORRECT_AT


@dataclass(frozen=True)
class VRPConfig:
    # what to run
    model: str = "toy-llava"
    benchmark: str = "shapes"  # "shapes", or a POPE/Shapes-format file (JSON lines or array)
    images: str | None = None  # image folder for a benchmark file
    n: int = 600
    seed: int = 0  # splits, sampling, bootstraps, random controls
    # extraction
    k: int = 10  # self-consistency samples per question
    top_p: float = 0.9
    temperature: float = 1.0
    shard_size: int = 50  # questions per resumable shard
    batch_size: int = 50  # questions per forward pass (independent of the shard size)
    hidden_layers: tuple[int, ...] | None = None  # residual stream stored at these layers (None: all)
    neuron_layers: tuple[int, ...] | None = None  # MLP neurons stored at these layers (None: all)
    correct_threshold: float = CORRECT_AT  # answers.is_correct: credit needed to count as correct
    # predictors
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    dense_C: float = 1.0  # inverse L2 strength of the dense probes
    sparse_C: float = 0.1  # inverse L1 strength of the sparse probes
    stacked_layers: int = 5  # the stacked probe reads this many last layers
    top_mass: float = 0.5  # C_k: components of the patches holding this share of attention
    # causal checks
    margin_items: int = 100  # questions whose margin is decomposed for Table 3
    ablation_k: int = 8  # probe neurons zeroed in Tables 4-5
    random_controls: int = 3  # random-neuron controls of the same size
    n_resamples: int = 2000  # bootstrap resamples for every CI

    EXTRACTION_FIELDS: ClassVar[tuple[str, ...]] = (
        "model", "benchmark", "images", "n", "seed", "k", "top_p", "temperature", "shard_size", "hidden_layers",
        "neuron_layers", "correct_threshold",
    )

    def __post_init__(self):
        for name in ("n", "k", "shard_size", "batch_size", "stacked_layers", "margin_items", "ablation_k"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not (0 < self.val_fraction and 0 < self.test_fraction and self.val_fraction + self.test_fraction < 1):
            raise ValueError(f"val_fraction and test_fraction must be positive and leave a training split, "
                             f"got {self.val_fraction} and {self.test_fraction}")

    def extraction(self) -> dict:
        """The settings that decide what extraction stores."""
        return {name: getattr(self, name) for name in self.EXTRACTION_FIELDS}

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.extraction(), sort_keys=True).encode()).hexdigest()[:16]

    def as_dict(self) -> dict:
        return asdict(self)
