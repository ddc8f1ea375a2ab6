"""Draw a figure's standalone HTML page in a real headless Chromium: its DOM and a screenshot's pixels."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=5000",
]


def draw(fig, folder: Path, size: str = "1000,600") -> tuple[str, np.ndarray]:
    """(the page's DOM after its scripts ran, the screenshot's pixels [n, 3]); skips without Chromium."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no Chromium on this machine (Debian's `chromium`; .ci/run installs it)")
    page = folder / "view.html"
    fig.write_html(page)
    flags = [*FLAGS, f"--user-data-dir={tempfile.mkdtemp()}"]
    dom = subprocess.run([browser, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    shot = folder / "view.png"
    subprocess.run(
        [browser, *flags, f"--window-size={size}", f"--screenshot={shot}", page.as_uri()],
        capture_output=True,
        timeout=120,
    )
    return dom.stdout, np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3).astype(int)


def coloured_share(pixels: np.ndarray) -> float:
    """The share of saturated pixels: the picture and the heat map, not the page's white and grey."""
    return float(((pixels.max(1) - pixels.min(1)) > 60).mean())
