"""The toy zoo: trained toy VLMs shipped inside the package, found by name.

Each toy is a folder ``vlm_lens/zoo/<name>/`` holding weights (safetensors), tokenizer and
processor files and a model card (``card.json``, which names the family). This registry is the
only place a toy name is resolved; ``HookedVLM.from_pretrained("toy-llava")`` goes through it.

    >>> names()
    ['toy-llava', 'toy-llava-next', 'toy-llava-words', 'toy-mllama', 'toy-paligemma', 'toy-qwen2-vl']
    >>> get("toy-llava").family
    'llava'
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

from vlm_lens.errors import ModelLoadError, UnknownToyError


@dataclass(frozen=True)
class ZooEntry:
    """One shipped toy: its name, its family and the folder holding its files."""

    name: str
    family: str
    path: Path

    @property
    def card(self) -> dict:
        return json.loads((self.path / "card.json").read_text())


@cache
def _entries() -> dict[str, ZooEntry]:
    root = Path(str(resources.files("vlm_lens") / "zoo"))
    found = {}
    for folder in sorted(p for p in root.iterdir() if (p / "card.json").is_file()):
        card = json.loads((folder / "card.json").read_text())
        found[folder.name] = ZooEntry(folder.name, card["family"], folder)
    return found


def names() -> list[str]:
    return list(_entries())


def get(name: str) -> ZooEntry:
    """The toy called ``name``; an unknown name lists the toys there are."""
    try:
        return _entries()[name]
    except KeyError:
        raise UnknownToyError(f"no toy called {name!r} in the zoo; the zoo has {names()}") from None


def resolve(name_or_path: str) -> str:
    """The folder of a zoo toy, or ``name_or_path`` unchanged (a hub id or a local checkpoint)."""
    entries = _entries()
    return str(entries[name_or_path].path) if name_or_path in entries else name_or_path


def looks_local(name: str) -> bool:
    """A name written as a path (``./ckpt``, ``/data/llava``, ``~/m``) rather than a hub id (``org/name``)."""
    return name.startswith((".", "/", "~")) or Path(name).exists()


def check_name(name: str) -> None:
    """Fail fast on a name that cannot load, before torch is imported: a path that is no checkpoint folder, or a
    near-miss of a toy's name (``toy-lava``: "did you mean toy-llava?", not five retries of the hub). Other hub ids
    are tried at load (``vlm_lens.loading``)."""
    if name in names():
        return
    if not looks_local(name):
        close = difflib.get_close_matches(name, names(), n=1, cutoff=0.75)
        if close and "/" not in name:
            raise UnknownToyError(
                f"no toy called {name!r} in the zoo: did you mean {close[0]}? (the zoo has {', '.join(names())})"
            )
        return
    path = Path(name).expanduser()
    if not (path / "config.json").is_file():
        what = "does not exist" if not path.exists() else "holds no config.json"
        raise ModelLoadError(
            f"model {name!r}: the folder {what}; give a checkpoint folder, a hub id (org/name) "
            f"or a zoo toy ({', '.join(names())})"
        )
