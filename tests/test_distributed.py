"""Data-parallel study runs: torchrun with two gloo ranks splits the shards and gives the one-process tables."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vlm_lens import zoo

CLI = shutil.which("vlm-lens") or str(Path(sys.executable).parent / "vlm-lens")
ARGS = [
    "vrp",
    "--model",
    zoo.names()[0],
    "--n",
    "120",
    "--k",
    "3",
    "--shard-size",
    "10",
    "--batch-size",
    "5",
    "--n-resamples",
    "300",
]
pytestmark = pytest.mark.skipif(
    not Path(CLI).exists(), reason="the vlm-lens command is not installed (pip install -e .)"
)


def torchrun(out: Path, **popen) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "--no-python",
        "--",
        CLI,
        *ARGS,
        "--out",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True, **popen
    )


def shards(out: Path) -> list[dict]:
    try:
        return json.loads((out / "extraction" / "manifest.json").read_text())["shards"]
    except (FileNotFoundError, json.JSONDecodeError):
        return []


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc: each process's parent is field 4 of its stat line)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def released(lock: Path) -> None:
    """Wait until no process holds ``lock`` (the kernel drops a flock when its holder exits)."""
    import fcntl

    with open(lock, "a") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                time.sleep(0.01)
                continue
            fcntl.flock(handle, fcntl.LOCK_UN)
            return


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single")
    done = subprocess.run(
        [CLI, *ARGS, "--out", str(out)], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_two_ranks_give_the_one_process_tables(single, tmp_path):
    process = torchrun(tmp_path)
    assert process.wait(timeout=600) == 0, process.stderr.read().decode()[-3000:]
    assert (tmp_path / "tables.json").read_bytes() == (single / "tables.json").read_bytes()
    listed = shards(tmp_path)
    assert sorted(s["start"] for s in listed) == list(range(0, 120, 10))  # every shard, none twice
    assert {s["rank"] for s in listed} == {0, 1} and {s["world_size"] for s in listed} == {2}
    assert (tmp_path / "report.html").exists()


def test_killed_ranks_resume_to_the_same_tables(single, tmp_path):
    process = torchrun(tmp_path)
    while len(shards(tmp_path)) < 3 and process.poll() is None:  # events, not a deadline: a busy machine is slower
        time.sleep(0.01)
    assert process.poll() is None, f"the run ended before its third shard: {process.stderr.read().decode()[-2000:]}"
    ranks = descendants(process.pid)  # torchrun may start its workers in sessions of their own: kill each by pid
    os.killpg(process.pid, signal.SIGKILL)  # torchrun and both ranks, mid-extraction
    for pid in ranks:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait()
    released(tmp_path / ".vlm-lens.lock")  # the ranks die a moment after torchrun: their lock goes with them
    partial = len(shards(tmp_path))
    assert 3 <= partial < 12 and not (tmp_path / "tables.json").exists()
    resumed = torchrun(tmp_path)
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read().decode()[-3000:]
    listed = shards(tmp_path)
    assert sorted(s["start"] for s in listed) == list(range(0, 120, 10))
    assert (tmp_path / "tables.json").read_bytes() == (single / "tables.json").read_bytes()
