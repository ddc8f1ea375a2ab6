"""Files a run writes and reads back: atomic writes, content hashes, and locks.

- ``write_atomic`` and ``sha256`` (from ``analyses.files``, shared with the monitor): whole files, content hashes.
- ``manifest_lock`` serialises manifest updates across processes (the ranks of a torchrun).
- ``RunLock`` keeps a second run off an output folder: an exclusive ``flock`` on
  ``<out>/.vlm-lens.lock``, which holds the owner's pid and host. The kernel drops the lock when its
  process dies, so a lock left by a killed run is stale by construction: the next run takes it over
  and says whose it was.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vlm_lens.errors import DataError


@contextmanager
def manifest_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on a folder's manifest, across processes, for one read-modify-write."""
    with open(folder / ".manifest.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class RunLock:
    """``with RunLock(out):`` — the one run writing into ``out``; a second is refused, naming the first.

    ``stale`` is the owner a killed run left in the lock file (None when there was none)."""

    NAME = ".vlm-lens.lock"

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / self.NAME
        self.stale: dict | None = None
        self._handle = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = self._owner(handle)
            handle.close()
            who = f"pid {owner.get('pid')} on {owner.get('host')}" if owner else "another process"
            raise DataError(
                f"{self.path.parent} is in use by another vlm-lens run ({who}); wait for it to finish, "
                "or give this run another --out"
            ) from None
        self.stale = self._owner(handle) or None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
        handle.flush()
        self._handle = handle
        return self

    @staticmethod
    def _owner(handle) -> dict:
        handle.seek(0)
        try:
            owner = json.loads(handle.read() or "{}")
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {}
        return owner if isinstance(owner, dict) else {}  # valid JSON of another shape: nobody's, overwritten

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.seek(0)
            self._handle.truncate()  # an empty lock file: nobody's, and not stale
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None
