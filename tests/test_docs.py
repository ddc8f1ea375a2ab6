"""Every Python block of the README and the guides runs as written, the documentation site builds, the CLI demo
works, and module doctests pass."""

from __future__ import annotations

import doctest
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

import analyses.answers
import analyses.data.examples
import analyses.interventions
import model_adapters.testing
import vlm_lens.names
import vlm_lens.spans
import vlm_lens.zoo
from analyses.cli import app
from tests.conftest import FAMILIES

README = Path(__file__).parents[1] / "README.md"


DOCS = [README, *sorted((README.parent / "docs").glob("*.md"))]
PYTHON_BLOCKS = [
    pytest.param(block, id=f"{page.name}:{t.count(chr(10), 0, at.start()) + 1}")
    for page in DOCS
    for t in [page.read_text()]
    for at in re.finditer(r"```python\n(.*?)```", t, flags=re.S)
    for block in [at.group(1)]
]


def test_the_readme_and_the_guides_hold_python_blocks():
    pages = {p.id.split(":")[0] for p in PYTHON_BLOCKS}
    assert {"README.md", "analyses.md", "zoo.md", "study.md"} <= pages, pages


@pytest.mark.parametrize("block", PYTHON_BLOCKS)
def test_every_python_block_runs_as_written(block, tmp_path, monkeypatch):
    """Each block, alone in a fresh namespace and an empty folder, as a reader would paste it: nothing it uses may
    be defined by another block or by the test."""
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "block", "exec"), {"__name__": "__main__"})


def test_the_documentation_site_builds_without_warnings(tmp_path):
    """``mkdocs build --strict``: the guides, the README sections they include and the API reference from the
    docstrings; a broken link, a missing snippet or a docstring griffe cannot read fails it."""
    pytest.importorskip("mkdocs", reason="the docs extra (mkdocs, mkdocstrings) is not installed")
    import subprocess
    import sys

    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=README.parent,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    home = (site / "index.html").read_text()
    assert "HookedVLM.from_pretrained" in home  # the README's quickstart, included
    assert "Does attention sharpness predict correctness?" in (site / "study" / "index.html").read_text()
    api = (site / "api" / "core" / "index.html").read_text()
    assert 'id="vlm_lens.hooked_vlm.HookedVLM.run_with_cache"' in api


def test_readme_test_command_is_what_ci_runs():
    """The README's set-up block is two lines: install-and-run, then the tests; CI's last command is that test line
    exactly, and CI installs what the first line installs."""
    setup = re.search(r"```bash\n(.*?)```", README.read_text(), flags=re.S).group(1).strip().splitlines()
    assert len(setup) == 2, setup
    install, tests = setup
    ci = [
        line
        for line in (Path(__file__).parents[1] / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert ci[-1].strip() == tests.strip() and tests.startswith("python -m pytest")
    assert 'pip install -e ".[all]"' in install and any('pip install -q -e ".[all]"' in line for line in ci)
    assert install.rstrip().endswith("vlm-lens vrp")  # the main job on the built-in default


@pytest.mark.parametrize("family", FAMILIES)
def test_cli_demo(family):
    result = CliRunner().invoke(app, ["demo", "--family", family])
    assert result.exit_code == 0, result.output
    assert "attention to image" in result.output
    rows = [line.split() for line in result.output.splitlines() if line.split() and line.split()[0].isdigit()]
    assert len(rows) == 2 and all(0 < float(r[1]) <= 1 + 1e-6 for r in rows)  # one row per layer: a share of attention


@pytest.mark.parametrize("family", FAMILIES)
def test_cli_demo_on_a_saved_checkpoint(family, tmp_path):
    """``vlm-lens demo --model DIR`` loads a saved checkpoint with its own processor; its next token is what the
    HF model, loaded on its own, predicts for the same image and prompt."""
    import numpy as np
    import torch
    from PIL import Image

    from model_adapters import SPECS
    from vlm_lens import HookedVLM

    hf, processor = SPECS[family].tiny(seed=0)
    hf.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    prompt = "is there a red square in the image ?"
    result = CliRunner().invoke(app, ["demo", "--model", str(tmp_path), "--seed", "3", "--prompt", prompt])
    assert result.exit_code == 0, result.output
    assert f"model: {family}" in result.output
    image = Image.fromarray(np.random.RandomState(3).randint(0, 255, (64, 64, 3), dtype=np.uint8))
    reloaded = HookedVLM.from_pretrained(str(tmp_path))
    inputs = reloaded.prepare(images=[image], prompts=[prompt])
    with torch.no_grad():
        token = reloaded.to_string(int(reloaded.hf_model(**inputs.tensors).logits[0, -1].argmax()))
    assert f"next token: {token!r}" in result.output


def test_core_imports_no_outer_layer():
    """The core is the bottom of the house: importing it pulls no analyses, CLI, tables or plotting package."""
    import subprocess
    import sys

    code = (
        "import vlm_lens, sys; print([m for m in ('analyses', 'typer', 'pandas', 'sklearn', 'plotly', "
        "'model_adapters') if m in sys.modules])"
    )
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    )


@pytest.mark.parametrize(
    "module",
    [
        vlm_lens.spans,
        vlm_lens.names,
        vlm_lens.zoo,
        model_adapters.testing,
        analyses.answers,
        analyses.data.examples,
        analyses.interventions,
    ],
)
def test_doctests(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def test_cli_demo_defaults_to_the_trained_toy_on_a_shapes_question():
    """``vlm-lens demo`` alone: toy-llava on Shapes question 5; its next token is what the toy, loaded on its own,
    predicts, printed beside the gold answer."""
    import torch
    from PIL import Image

    from analyses.data.shapes import generate, image_of
    from vlm_lens import HookedVLM

    result = CliRunner().invoke(app, ["demo"])
    assert result.exit_code == 0, result.output
    question = generate(1, seed=5)[0]
    model = HookedVLM.from_pretrained("toy-llava")
    inputs = model.prepare(images=[Image.fromarray(image_of(question, seed=5))], prompts=[question.text])
    with torch.no_grad():
        predicted = model.to_string(int(model(inputs)[0, -1].argmax()))
    assert f"question: {question.text}" in result.output
    assert f"next token: {predicted!r} (gold: {question.label!r})" in result.output
