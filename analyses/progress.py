"""Progress of long work: a line per stage, a bar where the stage counts something, quiet when asked.

    progress = Progress.of(True)                   # True: on stderr; False: silent (--quiet); or a Progress
    progress.note("resuming: 400 of 600 questions stored")
    with progress.stage("causal checks", total=49, unit="condition") as stage:
        for condition in conditions:
            ...
            stage.advance()

On a terminal a stage prints ``[vrp] causal checks ...`` and a tqdm bar, then ``[vrp] causal checks: done in 41.2 s``.
Elsewhere (a log file, a pipe, a job scheduler: stderr is not a terminal) each event is one JSON line that a
program can read: ``{"event": "stage", "stage": "causal checks", "total": 49}``, ``{"event": "progress", "stage":
..., "done": 3, "total": 49}``, ``{"event": "done", "stage": ..., "seconds": 41.2}``, ``{"event": "note",
"message": ...}``.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from tqdm.auto import tqdm

PREFIX = "[vrp]"


class Stage:
    """One stage's counter (``advance``); a bar on a terminal, JSON lines elsewhere."""

    def __init__(self, progress: Progress, name: str, total: int | None, unit: str):
        self.progress, self.name, self.total, self.done = progress, name, total, 0
        self._bar = None
        if progress.enabled and not progress.machine:  # (no total: a count and a rate)
            self._bar = tqdm(total=total, desc=name, unit=unit, file=progress.stream, leave=False)

    def advance(self, k: int = 1) -> None:
        self.done += k
        if self._bar is not None:
            self._bar.update(k)
        elif self.progress.machine:
            self.progress.emit(event="progress", stage=self.name, done=self.done, total=self.total)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class Progress:
    """Where a run says how far it is: ``enabled`` False says nothing; ``machine`` (default: the stream is not a
    terminal) writes JSON lines instead of bars."""

    def __init__(self, enabled: bool = True, stream: Any = None, machine: bool | None = None):  # a text stream
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", lambda: False)
        self.machine = (not isatty()) if machine is None else machine

    @classmethod
    def of(cls, progress: bool | Progress | None) -> Progress:
        if isinstance(progress, Progress):
            return progress
        return cls(enabled=bool(progress))

    def emit(self, **event: Any) -> None:
        if self.enabled:
            print(json.dumps(event), file=self.stream, flush=True)

    def say(self, line: str, **event: Any) -> None:
        if not self.enabled:
            return
        if self.machine:
            self.emit(**event)
        else:
            print(f"{PREFIX} {line}", file=self.stream, flush=True)

    def note(self, message: str) -> None:
        self.say(message, event="note", message=message)

    def stage(self, name: str, total: int | None = None, unit: str = "it") -> _StageContext:
        return _StageContext(self, name, total, unit)


class _StageContext:
    def __init__(self, progress: Progress, name: str, total: int | None, unit: str):
        self.progress, self.name, self.total, self.unit = progress, name, total, unit

    def __enter__(self) -> Stage:
        self.start = time.perf_counter()
        self.progress.say(f"{self.name} ...", event="stage", stage=self.name, total=self.total)
        self.counter = Stage(self.progress, self.name, self.total, self.unit)
        return self.counter

    def __exit__(self, kind, value, tb) -> None:
        self.counter.close()
        if kind is None:
            seconds = round(time.perf_counter() - self.start, 1)
            self.progress.say(f"{self.name}: done in {seconds} s", event="done", stage=self.name, seconds=seconds)
