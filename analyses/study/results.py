"""The study's results: one dataclass per table, passed from step to step and read by the report.

Each has ``frame()`` (the tidy table written to ``tables.json`` / ``tables.md``). Predictors
carry a stable ``key`` beside their display label, so nothing downstream parses labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from analyses.interventions import Intervention
from analyses.probes import ProbeResult, Split
from analyses.stats import Estimate
from analyses.study.config import VRPConfig
from vlm_lens.errors import InputKeyError


@dataclass
class Accuracy:
    """Table 2a: accuracy overall and per question type, and the calibration of output confidence."""

    frame_: pd.DataFrame  # type, n, accuracy
    ece: float
    calibration_bins: list[dict]  # reliability-diagram bins (stats.expected_calibration_error)

    def frame(self) -> pd.DataFrame:
        return self.frame_.assign(**{"ece (output confidence)": [self.ece] + [float("nan")] * (len(self.frame_) - 1)})

    @property
    def overall(self) -> float:
        return float(self.frame_.loc[self.frame_.type == "all", "accuracy"].iloc[0])


@dataclass
class AttentionFeatures:
    """Per question and layer: spatial entropy H_s, component count C_k, and the flattened maps. Columns are the
    model layers ``layers`` where attention reads the image (every layer; a cross-attention model's cross layers)."""

    entropy: np.ndarray  # [n, layer]
    components: np.ndarray  # [n, layer]
    vectors: np.ndarray  # [n, layer * patches]
    top_mass: float
    layers: list[int]


@dataclass
class AttentionCorrelation:
    """Table 2b: point-biserial R between attention sharpness and correctness, per layer, with permutation
    p-values adjusted across layers (Bonferroni, Benjamini-Hochberg)."""

    frame_: pd.DataFrame  # layer, measure, r_pb, ci_low, ci_high, p_perm, p_bonferroni, p_bh

    def frame(self) -> pd.DataFrame:
        return self.frame_


@dataclass
class Predictor:
    key: str  # stable identifier ("dense_probe", ...)
    method: str  # display label, generated from the run's numbers
    signal: str
    passes: str
    estimate: Estimate
    scores: np.ndarray  # on the test split, higher = more likely correct
    accuracy: float | None = None  # classifiers only: test accuracy at probability 0.5 (the stress test's number)


@dataclass
class Predictors:
    """Table 6 (and Table 9): every predictor's test AUROC with a bootstrap CI, and the fitted probes."""

    rows: list[Predictor]
    split: Split
    dense: ProbeResult
    sparse: ProbeResult  # L1 over residual-stream units: its non-zero weights are the study's reliability "neurons"
    sparse_mlp: ProbeResult  # L1 over MLP neurons (an extension)
    stacked: ProbeResult
    margin_layer: int  # the earlier layer whose truth margin is reported

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            [
                {
                    "key": p.key,
                    "method": p.method,
                    "signal": p.signal,
                    "forward passes": p.passes,
                    "auroc": p.estimate.value,
                    "ci_low": p.estimate.ci[0],
                    "ci_high": p.estimate.ci[1],
                    "accuracy": p.accuracy,
                    "n_test": p.estimate.n,
                }
                for p in self.rows
            ]
        )

    def methods(self) -> pd.DataFrame:
        """Table 9: the method comparison (what each needs, how well it does)."""
        return self.frame()[["key", "method", "signal", "forward passes", "auroc"]]

    def __getitem__(self, key: str) -> Predictor:
        for p in self.rows:
            if p.key == key:
                return p
        raise InputKeyError(f"no predictor {key!r}; there are {[p.key for p in self.rows]}")


@dataclass
class MarginBuilding:
    """Table 3: where right and wrong answers' truth margins separate most (l*), and who writes there.

    ``mlp_update_share_at_peak`` is the study's MLP share: ||mlp_out|| / (||attn_out|| + ||mlp_out||) at
    the answer position at l*, mean over the decomposed questions. ``mlp_margin_share_to_peak`` (an
    extension) is the MLPs' signed share of the margin built in layers 0..l*."""

    peak_layer: int
    gap_at_peak: float  # mean margin of right answers minus wrong answers at l*
    separation_layer: int | None  # first layer whose CIs no longer overlap
    mlp_update_share_at_peak: float
    mlp_margin_share_to_peak: float
    max_margin_layer: int  # where the mean margin over all answers is largest
    n_items: int  # questions decomposed
    curves: pd.DataFrame  # layer, group, n, mean, ci_low, ci_high
    contributions: pd.DataFrame  # layer, attn, mlp, cumulative: projections on the margin direction
    updates: pd.DataFrame  # layer, attn_norm, mlp_norm, mlp_share: write magnitudes at the answer
    top_heads: pd.DataFrame  # layer, head, mean, std, n: heads ranked by direct logit contribution to the margin
    visual_updates: pd.DataFrame  # layer, attn_norm, mlp_norm: write magnitudes at the image tokens (Figure 5)
    lens: str = "logit"  # the lens the margins were read through (VRPConfig.lens)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            [
                {
                    "lens": self.lens,
                    "peak_layer": self.peak_layer,
                    "gap_at_peak": self.gap_at_peak,
                    "separation_layer": self.separation_layer,
                    "mlp_update_share_at_peak": self.mlp_update_share_at_peak,
                    "mlp_margin_share_to_peak (extension)": self.mlp_margin_share_to_peak,
                    "max_margin_layer": self.max_margin_layer,
                    "n_decomposed": self.n_items,
                }
            ]
        )


@dataclass
class Ablation:
    """One causal condition on the test split: accuracy before and after, the paired-bootstrap CI of the
    change, and the change per question type (on POPE / Shapes the existence types are the object-ID
    questions)."""

    group: str  # one of UNIT_GROUPS, "mlp bypass" or "patch masking"
    condition: str  # what was done, in words
    acc_before: float
    acc_after: float
    change: Estimate
    by_type: dict[str, float]  # question type -> accuracy change
    intervention: Intervention | None = None  # None for pixel-level masking (an input edit)
    layer: int | None = None
    k: int | None = None  # units edited
    k_requested: int | None = None
    note: str = ""  # why a condition was cut short or skipped
    after: np.ndarray | None = field(
        default=None, repr=False, compare=False
    )  # per test question: right (1) or wrong (0)


@dataclass
class Ablations:
    """The causal checks: Tables 4-5 (the sparse probe's top-k residual units zeroed vs random units of the
    same layer and size, escalating random ablations, a single-unit clamp), MLP bypass by layer and
    patch masking (most-attended vs random patches, token and pixel level). The study's "neurons" are
    units of h_l (``hook_resid_post``)."""

    layer: int
    neurons: list[int]  # the probe's units, strongest first (all it kept)
    rows: list[Ablation]
    width: int | None = None  # the layer's residual units: each unit ablation's size is also given as a share of it
    before: np.ndarray | None = field(
        default=None, repr=False, compare=False
    )  # per test question, unedited: right (1) or wrong (0)

    def frame(self, groups: tuple[str, ...] | None = None) -> pd.DataFrame:
        rows = [r for r in self.rows if groups is None or r.group in groups]
        types = sorted({t for r in rows for t in r.by_type})
        return pd.DataFrame(
            [
                {
                    "group": r.group,
                    "condition": r.condition,
                    "layer": r.layer,
                    "k": r.k,
                    "k_requested": r.k_requested,
                    "% of width": 100 * r.k_requested / self.width
                    if self.width and r.k_requested and r.group in UNIT_GROUPS
                    else None,
                    "acc_before": r.acc_before,
                    "acc_after": r.acc_after,
                    "diff": r.change.value,
                    "ci_low": r.change.ci[0],
                    "ci_high": r.change.ci[1],
                    "n": r.change.n,
                    **{f"diff ({t})": r.by_type.get(t) for t in types},
                    "note": r.note,
                }
                for r in rows
            ]
        )

    def tables(self) -> dict[str, pd.DataFrame]:
        return {
            "table4_5_ablations": self.frame(UNIT_GROUPS),
            "mlp_bypass": self.frame(("mlp bypass",)),
            "patch_masking": self.frame(("patch masking",)),
        }

    def group(self, name: str) -> list[Ablation]:
        return [r for r in self.rows if r.group == name]


UNIT_GROUPS = ("probe units", "random units", "single units", "single-unit clamp", "other layers", "escalating random")


@dataclass
class Setup:
    """Table 1 (the model studied) and Table 7 (the benchmark), as this run used them."""

    model: dict  # name, family, HF class, sizes, dtype, parameters, image tokens per image
    benchmark: dict  # name, format, questions in the file, questions used, metric, accuracy

    def models(self) -> pd.DataFrame:
        return pd.DataFrame([self.model])

    def benchmarks(self) -> pd.DataFrame:
        return pd.DataFrame([self.benchmark])


@dataclass
class Accounting:
    """Table 8: where every question went."""

    benchmark_questions: int
    images_missing: int
    extracted: int
    correct: int
    train: int
    val: int
    test: int
    monitor: dict = field(default_factory=dict)  # the dense probe as an error monitor: flags, precision@tau, recall@tau

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            [
                {
                    "benchmark questions": self.benchmark_questions,
                    "images missing": self.images_missing,
                    "extracted": self.extracted,
                    "correct": self.correct,
                    "incorrect": self.extracted - self.correct,
                    "train split": self.train,
                    "val split": self.val,
                    "test split": self.test,
                    **self.monitor,
                }
            ]
        )


@dataclass
class StudyResults:
    config: VRPConfig
    accuracy: Accuracy
    attention: AttentionCorrelation
    features: AttentionFeatures
    margins: MarginBuilding
    ablations: Ablations
    predictors: Predictors
    accounting: Accounting
    setup: Setup
    circuit: pd.DataFrame  # Table 10
    delta_entropy: pd.DataFrame  # Figure 4: H_s of right minus wrong answers per layer
    detachment: pd.DataFrame  # the symbolic-detachment criteria
    entropy_change: pd.DataFrame  # the paper's Delta H_s: H_s at layer l minus layer l-1
    headline: pd.DataFrame  # the paper's six headline comparisons, adjusted over the six (analyses.study.headline)
    dbscan: pd.DataFrame  # C_k re-counted by DBSCAN: agreement and R_pb per layer
    probe_seeds: pd.DataFrame  # the probes' test AUROC over several splits: mean and standard error
    top_heads_attention: pd.DataFrame  # Table 2's top-k-heads attention R_pb
    case: int | None  # Figure 6's question (index), if the probe flags a wrong answer
    lenses: Any = None  # analyses.study.lenses.LensComparison, when the margins are read through a tuned lens

    def tables(self) -> dict[str, pd.DataFrame]:
        """The tables as tidy frames, keyed as in ``tables.json`` (numbered as the study's tables)."""
        return {
            "table1_models": self.setup.models(),
            "table2_accuracy": self.accuracy.frame(),
            "headline_comparisons": self.headline,
            "table2_attention_rpb": self.attention.frame(),
            "dbscan_robustness": self.dbscan,
            "table2_top_heads": self.margins.top_heads,
            "table2_top_heads_attention_rpb": self.top_heads_attention,
            "table3_logit_lens": self.margins.frame(),
            **self.ablations.tables(),
            "table6_predictors": self.predictors.frame(),
            "probe_seeds": self.probe_seeds,
            "table7_benchmarks": self.setup.benchmarks(),
            "table8_accounting": self.accounting.frame(),
            "table9_methods": self.predictors.methods(),
            "table10_circuit": self.circuit,
            "figure4_delta_entropy": self.delta_entropy,
            "delta_h_s_by_layer": self.entropy_change,
            "figure5_visual_updates": self.margins.visual_updates,
            "symbolic_detachment": self.detachment,
            "margin_curves": self.margins.curves,
            **(self.lenses.tables() if self.lenses is not None else {}),
        }
