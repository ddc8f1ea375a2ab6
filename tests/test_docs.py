"""The README's quickstart runs as written, the CLI demo works, and module doctests pass."""

from __future__ import annotations

import doctest
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

import model_adapters.tiny
import vlm_lens.inputs
import vlm_lens.names
from vlm_lens.cli import app

README = Path(__file__).parents[1] / "README.md"


def test_readme_quickstart_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README should hold a python quickstart"
    exec(compile(blocks[0], "README.md", "exec"), {})


def test_readme_test_command_is_what_ci_runs():
    ci = (Path(__file__).parents[1] / ".ci" / "run").read_text()
    assert "python -m pytest -q" in README.read_text() and "python -m pytest -q" in ci


@pytest.mark.parametrize("family", ["llava", "paligemma", "qwen2_vl"])
def test_cli_demo(family):
    result = CliRunner().invoke(app, ["demo", "--family", family])
    assert result.exit_code == 0, result.output
    assert "attention to image" in result.output and "4x4 grid" in result.output


@pytest.mark.parametrize("module", [vlm_lens.inputs, vlm_lens.names, model_adapters.tiny])
def test_doctests(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
