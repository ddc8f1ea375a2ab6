"""Extraction is resumable: killed with SIGKILL mid-run, it resumes to the uninterrupted result."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from analyses.data.examples import shapes_examples
from analyses.study import extract as X
from analyses.study.config import VRPConfig
from vlm_lens.errors import DataError

SCRIPT = """
import os, signal, sys, torch
torch.set_num_threads(1)
from analyses.data.examples import shapes_examples
from analyses.study import extract as X
from analyses.study.config import VRPConfig
from analyses.study.extract import extract
from tests.conftest import FAMILIES, tiny
if len(sys.argv) > 2:  # stop (SIGSTOP) once the manifest lists this many shards: the parent kills it there
    write, stop_after = X._write_manifest, int(sys.argv[2])
    def _write_then_stop(folder, manifest):
        write(folder, manifest)
        if len(manifest["shards"]) >= stop_after:
            os.kill(os.getpid(), signal.SIGSTOP)
    X._write_manifest = _write_then_stop
model = tiny(FAMILIES[0])
examples = shapes_examples(60, seed=3)
extract(model, examples, sys.argv[1], VRPConfig("tiny", n=60, shard_size=4, batch_size=3, k=3, max_new_tokens=1), progress=False)
"""
CONFIG = VRPConfig("tiny", n=60, shard_size=4, batch_size=3, k=3, max_new_tokens=1)  # what SCRIPT runs


def run(folder: Path, stop_after: int | None = None) -> subprocess.Popen:
    extra = [] if stop_after is None else [str(stop_after)]
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(folder), *extra],
        cwd=Path(__file__).parents[1],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def shards_done(folder: Path) -> int:
    try:
        return len(json.loads((folder / "manifest.json").read_text())["shards"])
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def same(a: X.Extraction, b: X.Extraction) -> None:
    assert a.rows == b.rows
    assert np.array_equal(a.hidden, b.hidden) and np.array_equal(a.neurons, b.neurons)
    assert all(np.array_equal(x, y) for x, y in zip(a.attention, b.attention))


@pytest.fixture(scope="module")
def full(tmp_path_factory) -> Path:
    """A folder holding the uninterrupted extraction (tests copy it before changing anything)."""
    folder = tmp_path_factory.mktemp("full")
    process = run(folder)
    assert process.wait(timeout=300) == 0, process.stderr.read().decode()
    return folder


@pytest.fixture(scope="module")
def uninterrupted(full):
    return X.load(full)


def test_kill_minus_nine_then_resume(tmp_path, uninterrupted):
    # the run stops itself once its manifest lists 3 of 15 shards (an event, not a deadline: a busy machine
    # only makes it slower), and is killed there with SIGKILL
    process = run(tmp_path, stop_after=3)
    _, status = os.waitpid(process.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), f"the run ended before its third shard: {process.stderr.read().decode()}"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert shards_done(tmp_path) == 3
    with pytest.raises(ValueError, match="incomplete"):
        X.load(tmp_path)
    resumed = run(tmp_path)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()
    same(X.load(tmp_path), uninterrupted)


def test_resume_ignores_a_half_written_shard(tmp_path, uninterrupted):
    process = run(tmp_path)
    assert process.wait(timeout=300) == 0
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["shards"] = manifest["shards"][:-2]  # as if killed after writing files but before listing them
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "shard-00013.json.tmp").write_text("{garbage")
    (tmp_path / "shard-00014.safetensors").write_bytes(b"truncated")
    resumed = run(tmp_path)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()
    same(X.load(tmp_path), uninterrupted)


def test_rows_hold_what_the_study_needs(uninterrupted):
    row = uninterrupted.rows[0]
    assert {"correct", "confidence", "entropy", "margins", "samples", "consistency", "type", "grid"} <= set(row)
    assert len(row["samples"]) == 3 and 0 < row["consistency"] <= 1
    assert uninterrupted.hidden.shape[:2] == (2, 60) and uninterrupted.neurons.shape[:2] == (2, 60)
    assert uninterrupted.attention[0].shape == (2, 16)
    positive, correct = uninterrupted.margins[-1] > 0, uninterrupted.correct
    worded = np.array([r["metric"] != "yesno" for r in uninterrupted.rows])  # POPE reads any non-"no" token as yes
    assert correct[positive].all() and np.array_equal(positive[worded], correct[worded])  # one-token answers


def test_other_config_or_format_is_refused_naming_what_changed(tmp_path, full):
    from tests.conftest import FAMILIES, tiny

    model, examples = tiny(FAMILIES[0]), shapes_examples(60, seed=3)
    folder = tmp_path / "x"
    shutil.copytree(full, folder)
    with pytest.raises(DataError, match=r"another configuration \(k=3 \(now 4\)\)"):
        X.extract(
            model,
            examples,
            folder,
            VRPConfig("tiny", n=60, shard_size=4, batch_size=3, k=4, max_new_tokens=1),
            progress=False,
        )
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["config"]["extraction_format"] = 2
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="format 2, from another vlm-lens version"):
        X.extract(model, examples, folder, CONFIG, progress=False)
    with pytest.raises(DataError, match="another format"):
        X.load(folder)


@pytest.mark.parametrize(
    "content, says",
    [
        ("[1]", "a JSON list, not an object"),
        ('"x"', "a JSON str"),
        ('{"fingerprint": "a", "config": {}, "shards": []}', "no 'data' dict"),
        ('{"fingerprint": "a", "config": {}, "data": {"examples": []}, "shards": [3]}', "a shard entry 3"),
    ],
)
def test_a_manifest_of_another_shape_is_refused_in_one_line(tmp_path, content, says):
    (tmp_path / "manifest.json").write_text(content)
    with pytest.raises(DataError, match="not a vlm-lens extraction manifest") as raised:
        X.check_resumable(tmp_path, CONFIG, [])
    assert says in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize("content", ["[1]", '"x"', "3", "{garbage"])
def test_a_lock_file_of_another_shape_is_nobodys(tmp_path, content):
    from analyses.study.files import RunLock

    (tmp_path / RunLock.NAME).write_text(content)
    with RunLock(tmp_path) as lock:
        assert lock.stale is None


def test_fingerprint_covers_what_extraction_stores_only():
    base = VRPConfig(n=10)
    assert VRPConfig(n=10, batch_size=7, n_resamples=50, ablation_ks=(3,)).fingerprint() == base.fingerprint()
    # where the data lives is not what it is: the data's digests guard a resume (tests/test_faults.py)
    assert VRPConfig(n=10, benchmark="x.json", images="elsewhere").fingerprint() == base.fingerprint()
    for changed in (
        dict(k=4),
        dict(seed=1),
        dict(top_p=0.5),
        dict(format="pope"),
        dict(neuron_layers=(1,)),
        dict(attention_view="stitched"),
    ):
        assert VRPConfig(n=10, **changed).fingerprint() != base.fingerprint(), changed
    assert "attention_view" not in base.extraction()  # added later: at its default, earlier extractions still resume


def test_extraction_stores_stitched_maps_of_multi_crop_images(tmp_path):
    """attention_view="stitched": each question's stored map is its image's crops laid out (the multi-crop family's
    high-resolution grid), equal to item_grids(view="stitched") run on that question alone."""
    from analyses.attention_structure import item_grids
    from model_adapters import SPECS
    from tests.conftest import FAMILIES, tiny

    model = tiny(next(f for f in FAMILIES if SPECS[f].crop_pixels is not None))
    examples = shapes_examples(3, seed=3)
    cfg = VRPConfig("tiny", n=3, shard_size=3, batch_size=3, k=2, max_new_tokens=1, attention_view="stitched")
    X.extract(model, examples, tmp_path, cfg, progress=False)
    stored = X.load(tmp_path)
    for example, row, attention in zip(examples, stored.rows, stored.attention):
        inputs = model.prepare(images=[example.load_image()], prompts=[example.text])
        alone = item_grids(model, inputs, view="stitched")[0]
        base = item_grids(model, inputs)[0]
        assert tuple(row["grid"]) == alone.shape[1:] != base.shape[1:]
        np.testing.assert_allclose(attention.reshape(alone.shape), alone, atol=1e-5)
