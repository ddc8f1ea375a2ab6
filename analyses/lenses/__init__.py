"""Tuned lenses shipped for the zoo's toys, loadable by the toy's name: ``TunedLens.load("toy-llava")``.

Each folder is what ``vlm-lens lens train --model <toy> --out analyses/lenses/<toy>`` wrote (800 Shapes questions,
300 steps, seed 0; its card records the held-out KL by layer). Torch-free, so settings can name one before torch
loads (``vlm-lens vrp --lens tuned --tuned-lens toy-llava``).
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).parent


def names() -> list[str]:
    """The toys with a shipped lens."""
    return sorted(p.name for p in ROOT.iterdir() if (p / "card.json").is_file())


def folder(name_or_path: str | Path) -> Path:
    """A shipped lens's folder for a toy's name; any other name is taken as a folder."""
    path = Path(name_or_path)
    if not path.exists() and str(name_or_path) in names():
        return ROOT / str(name_or_path)
    return path
