"""Run every notebook top to bottom and store its outputs, as committed (tests/test_notebooks.py checks them).

    HF_HUB_DISABLE_PROGRESS_BARS=1 python notebooks/refresh.py      # needs .[notebooks] and a Chromium for PNGs

Progress-bar widgets are dropped from the stored outputs: their state is not saved, so a reader would see only
"0%| | 0/64"."""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

WIDGET = "application/vnd.jupyter.widget-view+json"


def refresh(path: Path) -> None:
    book = nbformat.read(path, as_version=4)
    NotebookClient(
        book, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    for cell in book.cells:
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if WIDGET not in o.get("data", {})]
    nbformat.write(book, path)
    print(f"refreshed {path}")


if __name__ == "__main__":
    here = Path(__file__).parent
    for path in [Path(p) for p in sys.argv[1:]] or sorted(here.glob("*.ipynb")):
        refresh(path)
