"""A saved monitor on other runs: the same model on another benchmark or sample, and why not another model.

``evaluate_run(monitor, RUN_DIR)`` scores a run's questions (all of them; the test split when it is the run the
monitor was fitted on) beside the run's own baselines; ``transfer_table`` does it for several runs, one row each,
and a run of another model gets the reason it cannot be scored (``MonitorMismatchError``) instead of numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from analyses.monitor import card as cards
from analyses.monitor.features import collect
from analyses.monitor.monitor import ReliabilityMonitor
from analyses.progress import Progress
from analyses.study.monitoring import Run, load_run_model, selective_on
from vlm_lens import HookedVLM
from vlm_lens.errors import InputError


def monitor_features(
    monitor: ReliabilityMonitor, run: Run, model: HookedVLM | None, progress: bool | Progress = False
) -> np.ndarray:
    """``[n, width]``: what ``monitor`` reads, for every question of ``run``: the stored answer-position states
    where the extraction holds its layers, else one forward per batch."""
    stored = run.extraction.stored_layers("hidden")
    if monitor.representation == "query" and all(l in stored for l in monitor.layers):
        return np.concatenate([run.extraction.hidden[stored.index(l)] for l in monitor.layers], axis=1)
    if model is None:
        raise InputError(f"the run in {run.folder} does not store what this monitor reads: give the model")
    features = collect(model, run.examples(), monitor.representation, monitor.layers, run.config.batch_size, progress)
    return monitor.select(features)


@dataclass
class Evaluation:
    run: Run
    rows: str  # "test split" (the run the monitor was fitted on) or "all questions"
    selective: pd.DataFrame
    curves: dict[str, pd.DataFrame]
    monitor_row: dict  # the monitor's figures on these rows, at its threshold too


def evaluate_run(
    monitor: ReliabilityMonitor, folder: str | Path, model: HookedVLM | None = None, progress: bool | Progress = False
) -> Evaluation:
    """The monitor on another run of the same model (another benchmark, another sample): every question, or the
    test split when it is the run the monitor was fitted on. A run of another model is refused
    (``MonitorMismatchError``) before any work."""
    run = Run.open(folder)
    if model is None:
        model = load_run_model(run)
    monitor.check_model(model)
    fitted_here = (
        monitor.data.get("extraction_fingerprint") == run.fingerprint
        and monitor.data.get("data_sha256") == run.data_sha256
    )
    rows = run.split.test if fitted_here else np.arange(len(run.correct))
    scores = monitor.scores(monitor_features(monitor, run, model, progress)[rows])
    name = f"monitor: {monitor.signal}"
    selective, curves = selective_on(run, {name: scores.risk}, {name: "1 forward (the answer's own prefill)"}, rows)
    correct = run.correct[rows]
    kept = ~scores.flagged
    figures = selective.set_index("scorer").loc[name].to_dict()
    figures.update(
        coverage_at_threshold=float(kept.mean()),
        accuracy_at_threshold=float(correct[kept].mean()) if kept.any() else float("nan"),
        accuracy=float(correct.mean()),
    )
    return Evaluation(run, "test split" if fitted_here else "all questions", selective, curves, figures)


def transfer_table(
    monitor: ReliabilityMonitor,
    folders: list[str | Path],
    progress: bool | Progress = False,
    curves: dict[str, dict[str, pd.DataFrame]] | None = None,
) -> pd.DataFrame:
    """One row per run: the monitor's AUROC (CI), AURC, accuracy at 80/90% coverage and at its threshold; a run
    of another model gets its reason instead of numbers. ``curves``, if given, receives each scored run's
    risk-coverage curves (the monitor's and the run's baselines'), by run folder."""
    models: dict[str, HookedVLM] = {}
    rows = []
    for folder in folders:
        run = Run.open(folder)
        row = {"run": str(folder), "model": run.config.model, "benchmark": Path(run.config.benchmark).name}
        if run.config.model not in models:
            models[run.config.model] = load_run_model(run)
        try:
            result = evaluate_run(monitor, folder, models[run.config.model], progress)
        except cards.MonitorMismatchError as e:
            rows.append({**row, "questions": "-", "note": f"cannot apply: {e}"})
            continue
        if curves is not None:
            curves[str(folder)] = result.curves
        f = result.monitor_row
        rows.append(
            {
                **row,
                "questions": result.rows,
                "n": int(f["n"]),
                "accuracy": f["accuracy"],
                "auroc": f["auroc"],
                "ci_low": f["ci_low"],
                "ci_high": f["ci_high"],
                "aurc": f["aurc"],
                "accuracy@80%": f["accuracy@80%"],
                "accuracy@90%": f["accuracy@90%"],
                "coverage_at_threshold": f["coverage_at_threshold"],
                "accuracy_at_threshold": f["accuracy_at_threshold"],
                "note": "",
            }
        )
    return pd.DataFrame(rows)
