"""Files written whole and read back checked: atomic writes and content hashes (used by the study and the monitor).

- ``write_atomic`` writes to a temporary name beside the target and renames it: a reader, a
  kill -9 or a full disk leaves the old file or the new one, never half of one.
- ``sha256`` hashes a file in 1 MiB blocks (constant memory, ~1 GB/s).
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Callable
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
