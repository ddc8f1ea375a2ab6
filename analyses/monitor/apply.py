"""A monitor at work: answer a benchmark's questions, each with its risk, one JSON line per question.

Each line: ``question_id``, ``answer``, ``risk`` (the estimated probability that the answer is wrong),
``flagged`` (risk above the monitor's threshold) and, where the question has gold answers, ``correct`` (by the
benchmark's own rule, ``analyses.data.scoring``). Lines are appended a batch at a time and flushed, so a run
stopped at any point keeps what it answered and the same call resumes after the last whole line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from analyses.data.examples import Example
from analyses.data.scoring import OPEN_ENDED, is_correct
from analyses.evaluation import batches
from analyses.monitor.monitor import ReliabilityMonitor
from analyses.progress import Progress
from vlm_lens import HookedVLM
from vlm_lens.errors import DataError


def _answered(path: Path) -> list[dict]:
    """The whole lines a previous call wrote (a line cut by a kill is dropped, and the file trimmed to it)."""
    if not path.exists():
        return []
    text = path.read_text()
    whole = text[: text.rfind("\n") + 1]
    if len(whole) != len(text):
        path.write_text(whole)
    try:
        return [json.loads(line) for line in whole.splitlines() if line.strip()]
    except json.JSONDecodeError:
        raise DataError(f"{path} is not a monitor's answers file (a line is not JSON): give a new --out") from None


def answer(
    monitor: ReliabilityMonitor,
    model: HookedVLM,
    examples: Sequence[Example],
    out: str | Path,
    batch_size: int = 16,
    max_new_tokens: int = 16,
    progress: bool | Progress = False,
) -> list[dict]:
    """Answer ``examples`` greedily with ``monitor.generate``, appending one JSON line each to ``out``; returns
    every line (those of an earlier, interrupted call first)."""
    monitor.check_model(model)  # before any work
    progress = Progress.of(progress)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = _answered(out)
    ids = [str(e.question_id if e.question_id is not None else i) for i, e in enumerate(examples)]
    if [str(d.get("question_id")) for d in done] != ids[: len(done)]:
        raise DataError(f"{out} holds answers to other questions: give a new --out, or delete it to start again")
    if done:
        progress.note(f"resuming: {len(done)} of {len(examples)} questions answered in {out}")
    rows = list(done)
    todo = list(examples[len(done) :])
    with progress.stage("answering with the monitor", total=len(todo), unit="question") as bar, open(out, "a") as f:
        for start, (chunk, inputs) in zip(
            range(len(done), len(examples), batch_size), batches(model, todo, batch_size)
        ):
            result = monitor.generate(model, inputs, max_new_tokens=max_new_tokens)
            for i, example in enumerate(chunk):
                row = {
                    "question_id": example.question_id if example.question_id is not None else start + i,
                    "answer": result.texts[i],
                    "risk": float(result.risk[i]),
                    "flagged": bool(result.flagged[i]),
                }
                if example.metric != OPEN_ENDED:
                    row["correct"] = bool(is_correct(result.texts[i], example.golds, example.metric))
                rows.append(row)
                f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
            bar.advance(len(chunk))
    return rows


def summary(rows: list[dict], threshold: float) -> dict:
    """Counts a deployer reads first: answered, flagged, and (with gold) accuracy overall and of the kept."""
    flagged = np.array([r["flagged"] for r in rows], dtype=bool)
    out = {"answered": len(rows), "flagged": int(flagged.sum()), "threshold": threshold}
    if rows and all("correct" in r for r in rows):
        correct = np.array([r["correct"] for r in rows], dtype=float)
        out["accuracy"] = float(correct.mean())
        out["accuracy_of_kept"] = float(correct[~flagged].mean()) if (~flagged).any() else float("nan")
        if 0 < correct.sum() < len(correct):
            from analyses.stats import auroc

            risk = np.array([r["risk"] for r in rows], dtype=float)
            out["auroc"] = auroc(-risk, correct, n_resamples=0).value
    return out
