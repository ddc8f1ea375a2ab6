"""Regenerate the README's static figures: run each notebook, screenshot one figure from it.

    python docs/figures.py            # needs Debian's chromium for the screenshots

Figures go to docs/img/<notebook>.png. The notebooks stay interactive; these are for the README.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat
import plotly.io as pio
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
# notebook -> index of the plotly figure (in output order) to show
PICK = {"01_circuit_exploration": 3, "02_ablation_experiments": 0, "03_margin_curves": 0}
CHROMIUM = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
            "--window-size=900,520", "--virtual-time-budget=5000"]


def figures_of(path: Path) -> list[dict]:
    book = nbformat.read(path, as_version=4)
    NotebookClient(book, timeout=1200, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    return [out["data"]["application/vnd.plotly.v1+json"] for cell in book.cells if cell.cell_type == "code"
            for out in cell.get("outputs", []) if "application/vnd.plotly.v1+json" in out.get("data", {})]


def main() -> None:
    (ROOT / "docs" / "img").mkdir(parents=True, exist_ok=True)
    for name, index in PICK.items():
        fig = pio.from_json(json.dumps(figures_of(ROOT / "notebooks" / f"{name}.ipynb")[index]))
        fig.update_layout(width=880, height=500)
        with tempfile.TemporaryDirectory() as tmp:
            page = Path(tmp) / "fig.html"
            fig.write_html(page, include_plotlyjs=True, full_html=True)
            target = ROOT / "docs" / "img" / f"{name}.png"
            subprocess.run([*CHROMIUM, f"--user-data-dir={tmp}/profile", f"--screenshot={target}", str(page)],
                           check=True, capture_output=True)
        print(f"wrote {target}", file=sys.stderr)


if __name__ == "__main__":
    main()
