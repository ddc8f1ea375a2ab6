"""The notebooks run top to bottom on the shipped toy models; a failing cell or assertion fails here."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))


def test_notebooks_exist():
    assert [p.name for p in NOTEBOOKS] == [
        "01_circuit_exploration.ipynb",
        "02_ablation_experiments.ipynb",
        "03_margin_curves.ipynb",
        "04_transformer_lens_main_demo.ipynb",
        "05_reliability_monitor.ipynb",
        "06_circuit_discovery.ipynb",
        "07_tuned_lens.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path):
    book = nbformat.read(path, as_version=4)
    NotebookClient(
        book, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebooks_hold_their_outputs_with_a_static_image_of_every_figure(path):
    """As committed, each notebook is one top-to-bottom run, and every figure it shows carries a PNG beside the
    interactive plotly figure (what GitHub and nbconvert's HTML display); each PNG is a PNG."""
    import base64

    book = nbformat.read(path, as_version=4)
    code = [cell for cell in book.cells if cell.cell_type == "code"]
    counts = [cell.execution_count for cell in code]
    assert counts == list(range(1, len(code) + 1)), f"{path.name}: run it top to bottom before committing ({counts})"
    figures = 0
    for cell in code:
        if ".show()" not in cell.source:
            continue
        shown = [o for o in cell.outputs if "application/vnd.plotly.v1+json" in o.get("data", {})]
        assert shown, f"{path.name}: a cell that shows a figure has none stored"
        for output in shown:
            assert base64.b64decode(output["data"]["image/png"])[:8] == b"\x89PNG\r\n\x1a\n"
            figures += 1
    assert figures, f"{path.name} shows no figure"
    assert not any(
        "application/vnd.jupyter.widget-view+json" in o.get("data", {}) for cell in code for o in cell.outputs
    ), f"{path.name}: progress-bar widgets (no state saved) would show as noise"
