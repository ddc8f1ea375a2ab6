"""The command line answers what needs no model before torch loads, and names what is wrong with a model name or a
file at once: a near-miss toy ("did you mean"), a hub that cannot be reached (no retries), a file that is not there.
Timing lives in benchmarks/cli_startup.py; here the oracle is what the process imported, and the message."""

from __future__ import annotations

import subprocess
import sys

import pytest

from analyses.cli import main
from analyses.study.config import BUILT_IN_BENCHMARKS, DEVICE_TYPES, DTYPE_NAMES, VRPConfig
from vlm_lens.errors import DataError, ModelLoadError, UnknownToyError

PROBE = """
import sys
from analyses.cli import main
code = main({args!r})
heavy = sorted(m for m in ("torch", "transformers", "sklearn", "plotly") if m in sys.modules)
print("CODE", code, "HEAVY", ",".join(heavy) or "-")
"""


@pytest.mark.parametrize(
    "args, says",
    [
        (["--help"], "Mechanistic interpretability"),
        (["vrp", "--help"], "--benchmark"),
        (["vrp", "--nn", "3"], "No such option: --nn"),
        (["vrp", "--dtype", "bf17"], "unknown dtype 'bf17'"),
        (["vrp", "--n", "0"], "n must be at least 1"),
        (["vrp", "--model", "toy-lava"], "did you mean toy-llava?"),
        (["vrp", "--benchmark", "missing.jsonl"], "--benchmark missing.jsonl: the file does not exist"),
        (["vrp", "--benchmark", "shapes-word"], "did you mean shapes-words?"),
        (["vrp", "--benchmark", "shapes", "--device", "gpu"], "unknown device 'gpu'"),
        (["vrp", "--monitor", "--monitor-signal", "magic"], "--monitor-signal must be one of"),
        (["monitor", "--help"], "reliability monitor"),
        (["lens", "train", "--help"], "tuned lens"),
        (["lens", "train", "--out", "x", "--model", "toy-lava"], "did you mean toy-llava?"),
        (["monitor", "fit", "--help"], "--signal"),
        (["monitor", "fit", "no-such-run", "--out", "m"], "RUN_DIR no-such-run: does not exist"),
        (["monitor", "fit", ".", "--out", "m", "--calibration", "beta"], "--calibration must be one of"),
        (["monitor", "apply", ".", "--model", "toy-lava", "--benchmark", "shapes", "--out", "a"], "did you mean"),
        (["monitor", "apply", ".", "--model", "toy-llava", "--benchmark", "q.jsonl", "--out", "a"], "does not exist"),
    ],
)
def test_answered_before_torch_loads(args, says):
    done = subprocess.run([sys.executable, "-c", PROBE.format(args=args)], capture_output=True, text=True, timeout=120)
    last = done.stdout.strip().splitlines()[-1]
    assert says in done.stdout + done.stderr, done.stdout + done.stderr
    assert last.endswith("HEAVY -"), last  # none of torch, transformers, sklearn, plotly was imported
    assert last.split()[1] == ("0" if "--help" in args else "2"), last


def test_a_missing_annotations_file_or_image_folder_is_named(tmp_path):
    questions = tmp_path / "q.jsonl"
    questions.write_text("")
    with pytest.raises(DataError, match="--annotations .*nope.json: no such file"):
        VRPConfig(benchmark=str(questions), annotations=str(tmp_path / "nope.json")).check_files()
    with pytest.raises(DataError, match="--images .*: the folder is a file"):
        VRPConfig(benchmark=str(questions), images=str(questions)).check_files()
    VRPConfig(benchmark=str(questions), images=str(tmp_path)).check_files()  # all there: nothing to say


def test_the_light_name_tables_match_the_heavy_ones():
    from analyses.study.validate import BUILT_IN
    from vlm_lens.loading import DEVICE_TYPES as LOADING_DEVICES
    from vlm_lens.loading import DTYPES

    assert set(BUILT_IN_BENCHMARKS) == set(BUILT_IN)
    assert set(DTYPE_NAMES) == set(DTYPES)
    assert DEVICE_TYPES == LOADING_DEVICES


def test_a_near_miss_of_a_toy_is_not_sent_to_the_hub():
    from vlm_lens import zoo

    with pytest.raises(UnknownToyError, match="did you mean toy-qwen2-vl"):
        zoo.check_name("toy-qwen2vl")
    zoo.check_name("llava-hf/llava-1.5-7b-hf")  # a hub id: tried at load, not refused here
    zoo.check_name("gpt2")  # far from every toy: a hub id too


def test_an_unreachable_hub_fails_at_once_without_retries(monkeypatch, capsys):
    """No network here: the hub's host is made to refuse, and transformers must never be asked (its client would
    retry five times, ~25 s, before the same answer)."""
    import socket

    import transformers

    from vlm_lens import loading

    def refuse(*args, **kwargs):
        raise OSError("unreachable")

    def never(*args, **kwargs):
        raise AssertionError("transformers was asked to fetch from an unreachable hub")

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", never)
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache and the hub cannot be reached"):
        loading.load_pretrained("some-org/some-vlm")
    assert main(["demo", "--model", "some-org/some-vlm"]) == 2
    assert "hub cannot be reached" in capsys.readouterr().err
