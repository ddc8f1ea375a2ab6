"""A reliability monitor from a study's run folder, and how it fares on other runs.

``fit_run(RUN_DIR, signal)`` reads the run's extraction (the answer-position states, whether each answer was
right, its K self-consistency samples) and the study's own split (``VRPConfig.seed``, ``val_fraction``,
``test_fraction``), so the monitor's test AUROC is comparable with Table 6's; the ``image`` and ``vision``
signals, which the extraction does not store, are read by one forward per batch of the run's questions. Beside
the monitor it reports what a deployer chooses by:

- ``signals``: every signal fitted on the same split, its validation choice score and test AUROC (CI), which
  of HALP's three representations reads this model best, and the chosen one;
- ``selective``: on the test split, the monitor against output confidence, logit entropy and K-sample
  self-consistency: AUROC (CI), AURC, accuracy at 80% and 90% coverage, and what each costs;
- ``consistency``: the self-consistency-trained probe's AUROC as a share of K-sample self-consistency's, and the
  cost ratio (one forward against 1 + K decodes).

Scoring a saved monitor on other runs (transfer) is ``analyses.study.monitor_transfer``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from analyses import formatting
from analyses.monitor import card as cards
from analyses.monitor.features import EMBED, collect
from analyses.monitor.monitor import SIGNALS, ReliabilityMonitor, fit
from analyses.monitor.selective import risk_coverage, selective_table
from analyses.probes import Split, stratified_split
from analyses.progress import Progress
from analyses.study import extract, validate
from analyses.study.config import VRPConfig
from vlm_lens import HookedVLM
from vlm_lens.errors import DataError, InputError

HALP = ("dense", "image", "vision")  # one signal per representation: what ``signal="auto"`` chooses among


@dataclass
class Run:
    """What a monitor needs of a finished run: its settings, extraction, correctness and the study's split."""

    folder: Path
    config: VRPConfig
    extraction: extract.Extraction
    correct: np.ndarray
    split: Split
    fingerprint: str  # the extraction manifest's: settings and data
    data_sha256: str  # of the manifest's digests of every question and image

    @classmethod
    def open(cls, folder: str | Path) -> Run:
        folder = Path(folder)
        tables = folder / "tables.json"
        if not tables.is_file():
            raise DataError(
                f"{folder} holds no tables.json: not a finished vlm-lens vrp run (run `vlm-lens vrp --out {folder}` "
                "to finish it)"
            )
        try:
            settings = json.loads(tables.read_text())["config"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
            raise DataError(f"{tables} is damaged (no readable config): run the study again") from None
        if "model" not in settings:  # a --compare or several-model folder
            raise DataError(f"{folder} is not a single run (no model in its config): give one model's run folder")
        config = VRPConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()})
        return cls.of(folder, config, extract.load(folder / "extraction"))

    @classmethod
    def of(cls, folder: str | Path, config: VRPConfig, ex: extract.Extraction) -> Run:
        """A run from its parts (the study, before its tables are written)."""
        folder = Path(folder)
        if any(r["correct"] is None for r in ex.rows):
            raise DataError(
                f"{folder} is an open-ended run (no answer is right or wrong without a judge): a monitor needs scored answers"
            )
        correct = ex.correct.astype(int)
        split = stratified_split(correct, config.seed, config.val_fraction, config.test_fraction)
        manifest = json.loads((folder / "extraction" / "manifest.json").read_text())
        digest = hashlib.sha256(json.dumps(manifest["data"]).encode()).hexdigest()
        return cls(folder, config, ex, correct, split, manifest["fingerprint"], digest)

    @property
    def support(self) -> np.ndarray:
        return np.array([r["consistency"] for r in self.extraction.rows], dtype=float)

    @property
    def data(self) -> dict:
        """What the card says the monitor was fitted on."""
        return {
            "run": str(self.folder),
            "model": self.config.model,
            "benchmark": Path(self.config.benchmark).name,
            "n": len(self.correct),
            "k": self.config.k,
            "seed": self.config.seed,
            "max_new_tokens": self.config.max_new_tokens,  # how long the answers it was fitted on could be
            "extraction_fingerprint": self.fingerprint,
            "data_sha256": self.data_sha256,
        }

    def features(self, representation: str, model: HookedVLM | None, progress: Progress) -> dict[int, np.ndarray]:
        """Per model layer, ``[n, d_model]``: the stored answer-position states, or one forward per batch."""
        if representation == "query":
            layers = self.extraction.stored_layers("hidden")
            return {l: self.extraction.hidden[i] for i, l in enumerate(layers)}
        if model is None:
            raise InputError(f"the {representation!r} signal is read from the model: give the run's model")
        layers = [EMBED] if representation == "vision" else list(range(model.cfg.n_layers))
        return collect(model, self.examples(), representation, layers, self.config.batch_size, progress)

    def examples(self) -> list:
        """The run's questions, checked to be the ones its extraction holds (the manifest's digests)."""
        data = validate.load_benchmark(self.config, progress=False)
        extract.check_resumable(self.folder / "extraction", self.config, data.digests)
        return data.examples

    def baselines(self) -> dict[str, np.ndarray]:
        """The risks a monitor is compared with, from the extraction: 1 - output confidence, the first token's
        logit entropy, 1 - self-consistency support."""
        rows = self.extraction.rows
        return {
            "output confidence": 1.0 - np.array([r["confidence"] for r in rows], dtype=float),
            "logit entropy": np.array([r["entropy"] for r in rows], dtype=float),
            f"self-consistency (K={self.config.k})": 1.0 - self.support,
        }

    def costs(self) -> dict[str, str]:
        return {
            "output confidence": "1 forward",
            "logit entropy": "1 forward",
            f"self-consistency (K={self.config.k})": f"1 forward + {self.config.k} sampled decodes",
        }


def load_run_model(run: Run, device: str | None = None, dtype: str | None = None) -> HookedVLM:
    return HookedVLM.from_pretrained(
        run.config.model, dtype=dtype or run.config.dtype, device=device or run.config.device
    )


@dataclass
class MonitorReport:
    monitor: ReliabilityMonitor
    signals: pd.DataFrame  # one row per signal fitted: validation choice score, test AUROC and CI
    selective: pd.DataFrame  # test split: the monitor against the baselines
    consistency: pd.DataFrame  # the self-consistency-trained probe against K-sample self-consistency
    curves: dict[str, pd.DataFrame] = field(default_factory=dict)  # risk-coverage curve per scorer (test split)

    def tables(self) -> dict[str, pd.DataFrame]:
        return {"signals": self.signals, "selective": self.selective, "consistency": self.consistency}

    def markdown(self) -> str:
        m = self.monitor
        test = m.metrics["test"]
        lines = [
            f"# Reliability monitor: {m.signal} ({m.representation} at layers {list(m.layers)})",
            "",
            f"Fitted on {m.data.get('model')} / {m.data.get('benchmark')} (n = {m.data.get('n')}), calibration "
            f"{m.calibration}, threshold risk > {m.threshold:.4f} ({_target(m.target)}). On the test split "
            f"(n = {test['n']}): AUROC {test['auroc']:.3f} [{test['auroc_ci'][0]:.3f}, {test['auroc_ci'][1]:.3f}], "
            f"AURC {test['aurc']:.3f}, keeps {test['coverage_at_threshold']:.0%} of answers at "
            f"{test['accuracy_at_threshold']:.1%} accuracy (all answers: {test['accuracy']:.1%}).",
        ]
        notes = {
            "signals": "Each signal fitted on the study's split; the layer chosen on validation, the test split read once.",
            "selective": "Test split. Risk-coverage: keep the least risky answers; AURC is the mean error rate over "
            "every coverage (lower is better).",
            "consistency": "The consistency-trained probe needs no sampling when used: one forward against 1 + K decodes.",
        }
        for key, frame in self.tables().items():
            lines += ["", f"## {key}", "", notes[key], "", formatting.markdown(frame)]
        return "\n".join(lines) + "\n"


def _target(target: dict) -> str:
    if "coverage" in target:
        return f"keeps {target['coverage']:.0%} of the validation answers"
    reached = "" if target.get("reached") else ", not reached on validation: the strictest threshold"
    return f"validation accuracy of the answers kept >= {target['precision']:.0%}{reached}"


def _signal_row(monitor: ReliabilityMonitor) -> dict:
    test = monitor.metrics["test"]
    return {
        "signal": monitor.signal,
        "representation": monitor.representation,
        "layers": ", ".join("embed" if l == EMBED else str(l) for l in monitor.layers),
        "chosen_by": monitor.metrics["chosen_by"],
        "validation_score": monitor.metrics["validation_choice_score"],
        "validation_auroc": monitor.metrics["validation"]["auroc"],
        "test_auroc": test["auroc"],
        "ci_low": test["auroc_ci"][0],
        "ci_high": test["auroc_ci"][1],
        "test_aurc": test["aurc"],
    }


def fit_run(
    folder: str | Path,
    signal: str = "dense",
    model: HookedVLM | None = None,
    calibration: str = "platt",
    coverage: float | None = 0.8,
    precision: float | None = None,
    progress: bool | Progress = False,
    compare: bool = True,
    run: Run | None = None,
) -> MonitorReport:
    """A monitor fitted on a run folder's extraction, with the tables a deployer chooses by.

    ``signal``: one of ``analyses.monitor.SIGNALS``, or ``"auto"``: the best validation AUROC of one signal per
    representation (``dense``, ``image``, ``vision``). ``model``: the run's model (loaded from its config when a
    signal or the fingerprint needs it). ``compare=False`` fits only the one signal (no signals table rows for
    the others). ``run``: the run already open (the study passes its own, before its tables are written)."""
    if signal != "auto" and signal not in SIGNALS:
        raise InputError(f"signal must be 'auto' or one of {sorted(SIGNALS)}, got {signal!r}")
    progress = Progress.of(progress)
    run = run or Run.open(folder)
    if model is None:
        with progress.stage(f"loading {run.config.model}"):
            model = load_run_model(run)
    fingerprint = cards.fingerprint(model)
    wanted = [signal] if signal != "auto" else list(HALP)
    if compare:
        wanted += [s for s in SIGNALS if s not in wanted and (SIGNALS[s].representation == "query" or signal == "auto")]
    if "consistency" not in wanted:
        wanted.append("consistency")  # the consistency comparison always has its probe
    cache: dict[str, dict[int, np.ndarray]] = {}
    fitted: dict[str, ReliabilityMonitor] = {}
    with progress.stage("fitting monitors: a probe per layer, chosen on validation", total=len(wanted)) as bar:
        for name in wanted:
            representation = SIGNALS[name].representation
            if representation not in cache:
                cache[representation] = run.features(representation, model, progress)
            fitted[name] = fit(
                cache[representation],
                run.correct,
                run.split,
                fingerprint,
                signal=name,
                support=run.support,
                calibration=calibration,
                coverage=coverage,
                precision=precision,
                C=run.config.dense_C if SIGNALS[name].penalty != "l1" else run.config.sparse_C,
                stacked_layers=run.config.stacked_layers,
                seed=run.config.seed,
                n_resamples=run.config.n_resamples,
                data=run.data,
            )
            bar.advance()
    chosen = signal if signal != "auto" else max(HALP, key=lambda s: fitted[s].metrics["validation"]["auroc"])
    signals = pd.DataFrame([_signal_row(m) for m in fitted.values()])
    signals["chosen"] = signals["signal"] == chosen
    test = run.split.test
    risks = {f"monitor: {chosen}": _risk(fitted[chosen], cache)[test]}
    if chosen != "consistency":
        risks["monitor: consistency probe"] = _risk(fitted["consistency"], cache)[test]
    costs = dict.fromkeys(risks, "1 forward (the answer's own prefill)")
    selective, curves = selective_on(run, risks, costs, test)
    return MonitorReport(fitted[chosen], signals, selective, _consistency(selective, run.config.k), curves)


def _risk(monitor: ReliabilityMonitor, cache: dict[str, dict[int, np.ndarray]]) -> np.ndarray:
    return monitor.scores(monitor.select(cache[monitor.representation])).risk


def selective_on(run: Run, risks: dict[str, np.ndarray], costs: dict[str, str], rows: np.ndarray):
    """The selective-prediction table and risk-coverage curves on ``rows``, the run's baselines beside ``risks``."""
    risks = {**risks, **{k: v[rows] for k, v in run.baselines().items()}}
    costs = {**costs, **run.costs()}
    cfg, correct = run.config, run.correct[rows]
    table = selective_table(risks, correct, costs=costs, n_resamples=cfg.n_resamples, seed=cfg.seed)
    return table, {name: risk_coverage(risk, correct) for name, risk in risks.items()}


def _consistency(selective: pd.DataFrame, k: int) -> pd.DataFrame:
    """The self-consistency-trained probe against K-sample self-consistency, on the same test questions."""
    by = selective.set_index("scorer")
    probe = by.loc[next(name for name in by.index if name.startswith("monitor: consistency"))]
    sampled = by.loc[f"self-consistency (K={k})"]
    above_chance = sampled["auroc"] - 0.5
    return pd.DataFrame(
        [
            {
                "probe_auroc": probe["auroc"],
                "probe_ci": f"[{probe['ci_low']:.3f}, {probe['ci_high']:.3f}]",
                f"self_consistency_K{k}_auroc": sampled["auroc"],
                "self_consistency_ci": f"[{sampled['ci_low']:.3f}, {sampled['ci_high']:.3f}]",
                "auroc_ratio": probe["auroc"] / sampled["auroc"],
                "share_above_chance": (probe["auroc"] - 0.5) / above_chance if above_chance > 0 else float("nan"),
                "passes_probe": 1,
                "passes_self_consistency": 1 + k,
                "cost_ratio": 1 / (1 + k),
                "n": int(probe["n"]),
            }
        ]
    )
