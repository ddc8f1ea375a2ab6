"""Files a run writes and reads back: atomic writes, content hashes, and locks.

- ``write_atomic`` writes to a temporary name beside the target and renames it: a reader, a
  kill -9 or a full disk leaves the old file or the new one, never half of one.
- ``sha256`` hashes a file in 1 MiB blocks (constant memory, ~1 GB/s).
- ``manifest_lock`` serialises manifest updates across processes (the ranks of a torchrun).
- ``RunLock`` keeps a second run off an output folder: an exclusive ``flock`` on
  ``<out>/.vlm-lens.lock``, which holds the owner's pid and host. The kernel drops the lock when its
  process dies, so a lock left by a killed run is stale by construction: the next run takes it over
  and says whose it was.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from vlm_lens.errors import DataError


def write_atomic(path: str | Path, content: str | bytes | Callable[[Path], None]) -> Path:
    """Write ``content`` (text, bytes, or a function writing a given path) to ``path`` all at once."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if callable(content):
            content(tmp)
        else:
            _write_bytes(tmp, content.encode() if isinstance(content, str) else content)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno == errno.ENOSPC:
            raise DataError(
                f"the disk is full: {path} was not written (any earlier version is intact); "
                "free some space and run the same command again"
            ) from e
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
