"""Fault injection: bad input, tampered and changed data, a full disk, a second writer, misused hook sessions.

Each case asserts the specific error (one line from the command, exit status 2, and no model
loaded when the fault is in the input) or the correct recovery (the same results as a run that
never saw the fault). SIGKILL at random points is in tests/test_extract.py.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from analyses import files as whole_files
from analyses.cli import main
from analyses.data import shapes
from analyses.data.examples import shapes_examples
from analyses.study import extract as X
from analyses.study import files
from analyses.study.config import VRPConfig, size_of_test_split, smallest_n
from analyses.study.validate import SHAPES_EVAL_SEED
from tests.conftest import FAMILIES, PROMPTS, tiny
from vlm_lens.errors import DataError, HookSessionError, InputError, VLMLensWarning

ROOT = Path(__file__).resolve().parents[1]


def cli(capsys, *argv) -> tuple[int, str]:
    """Exit status and stderr of ``vlm-lens argv``."""
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def no_model(monkeypatch):
    """A run that gets as far as loading the model has missed the fault: fail loudly instead."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded: the fault should have been caught before")

    monkeypatch.setattr("analyses.study.pipeline.load_model", refuse)


def png(path: Path, colour=(200, 30, 30)) -> None:
    Image.new("RGB", (16, 16), colour).save(path)


def pope(folder: Path, records: list[dict] | None = None, n: int = 4) -> tuple[Path, Path]:
    """A POPE file (JSON lines) and its image folder; ``records`` replace the default good ones."""
    images = folder / "images"
    images.mkdir(exist_ok=True)
    for i in range(n):
        png(images / f"{i}.png", (50 * i, 40, 40))
    good = [
        {"question_id": i, "image": f"{i}.png", "text": "Is there a red square?", "label": "yes" if i % 2 else "no"}
        for i in range(n)
    ]
    path = folder / "q.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (records or good)))
    return path, images


def vrp(capsys, bench: Path, images: Path, out: Path, *extra) -> tuple[int, str]:
    return cli(capsys, "vrp", "--benchmark", bench, "--images", images, "--n", "4", "--out", out, *extra)


# --- the bad-input catalogue: every one stopped before the model loads, in one line, exit 2 --------------------

LABELS = [
    ({"label": True}, "label is true, expected a non-empty string or an integer"),
    ({"label": ""}, 'label is "", expected a non-empty string'),
    ({"label": "maybe"}, 'label "maybe" is not yes or no'),
    ({"text": None}, "text is null, expected a non-empty string"),
    ({"question_id": None}, "question_id is null"),
]


@pytest.mark.parametrize("change, message", LABELS)
def test_bad_records_are_named_by_file_and_line(tmp_path, capsys, no_model, change, message):
    records = [{"question_id": i, "image": f"{i}.png", "text": "Is there a cat?", "label": "no"} for i in range(4)]
    records[2].update(change)
    bench, images = pope(tmp_path, records)
    code, err = vrp(capsys, bench, images, tmp_path / "out", "--format", "pope")
    assert code == 2 and f"q.jsonl line 3: {message}" in one_line_error(err)


def test_duplicate_question_ids(tmp_path, capsys, no_model):
    records = [{"question_id": i % 3, "image": f"{i}.png", "text": "Is there a cat?", "label": "no"} for i in range(4)]
    bench, images = pope(tmp_path, records)
    code, err = vrp(capsys, bench, images, tmp_path / "out")
    assert code == 2 and "question_id(s) appear more than once (0 at q.jsonl line 1, q.jsonl line 4)" in one_line_error(
        err
    )


def test_truncated_json_line_and_non_utf8(tmp_path, capsys, no_model):
    bench, images = pope(tmp_path)
    lines = bench.read_text().splitlines()
    bench.write_text("\n".join(lines[:2] + [lines[2][:25]] + lines[3:]))  # line 3 cut short
    code, err = vrp(capsys, bench, images, tmp_path / "out")
    assert code == 2 and f"{bench} line 3: not valid JSON" in one_line_error(err)
    bench.write_bytes("\n".join(lines).encode() + b"\n\xff\xfe")
    code, err = vrp(capsys, bench, images, tmp_path / "out")
    assert code == 2 and f"{bench} is not UTF-8 text (byte 0xff at offset" in one_line_error(err)


def test_a_corrupt_image_is_found_before_the_first_question(tmp_path, capsys, no_model):
    bench, images = pope(tmp_path)
    data = (images / "3.png").read_bytes()
    (images / "3.png").write_bytes(data[: len(data) // 2])  # truncated
    (images / "1.png").write_bytes(b"not an image at all")
    code, err = vrp(capsys, bench, images, tmp_path / "out")
    line = one_line_error(err)
    assert code == 2 and "2 image(s) in" in line and "cannot be decoded: 1.png (" in line and "3.png (" in line


def test_images_outside_the_folder_need_a_flag(tmp_path, capsys, no_model):
    png(tmp_path / "outside.png")
    records = [
        {"question_id": 0, "image": "../outside.png", "text": "Is there a cat?", "label": "no"},
        {"question_id": 1, "image": str(tmp_path / "outside.png"), "text": "Is there a dog?", "label": "yes"},
    ]
    bench, images = pope(tmp_path, records, n=0)
    code, err = cli(capsys, "vrp", "--benchmark", bench, "--images", images, "--n", 2, "--out", tmp_path / "out")
    assert (
        code == 2
        and "2 image path(s) leave the image folder" in one_line_error(err)
        and "--allow-outside-images" in err
    )
    code, err = cli(
        capsys,
        "vrp",
        "--benchmark",
        bench,
        "--images",
        images,
        "--n",
        2,
        "--out",
        tmp_path / "out",
        "--allow-outside-images",
    )
    assert code == 1 and "the model was loaded" in err  # with the flag, validation passes and the run goes on


@pytest.mark.parametrize("option, value", [("--n", 0), ("--n", -5), ("--k", 0), ("--k", -2), ("--batch-size", 0)])
def test_counts_out_of_range_are_usage_errors(tmp_path, capsys, no_model, option, value):
    code, err = cli(capsys, "vrp", option, value, "--out", tmp_path)
    setting = option[2:].replace("-", "_")  # checked by VRPConfig, the one validation for every way in
    assert code == 2 and err.strip() == f"error: {setting} must be at least 1, got {value}"


def test_shapes_refuses_a_negative_count(tmp_path, capsys):
    code, err = cli(capsys, "shapes", "--out", tmp_path / "s", "--n", -5)
    assert code == 2 and "Invalid value for '--n'" in err and not (tmp_path / "s").exists()


def test_n_above_the_file_size(tmp_path, capsys, no_model):
    bench, images = pope(tmp_path)
    code, err = cli(capsys, "vrp", "--benchmark", bench, "--images", images, "--n", 9, "--out", tmp_path / "out")
    assert code == 2 and "--n 9 asks for more questions than" in one_line_error(err) and "(4): use --n 4" in err


def test_out_must_be_a_writable_folder(tmp_path, capsys, no_model, monkeypatch):
    bench, images = pope(tmp_path)
    (tmp_path / "a_file").write_text("x")
    code, err = vrp(capsys, bench, images, tmp_path / "a_file")
    assert code == 2 and "is a file; give a folder" in one_line_error(err)

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr("analyses.study.validate.tempfile.NamedTemporaryFile", denied)
    code, err = vrp(capsys, bench, images, tmp_path / "read_only")
    assert code == 2 and "cannot write into --out" in one_line_error(err) and "Permission denied" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; the patched case above covers it")
def test_read_only_out(tmp_path, capsys, no_model):
    bench, images = pope(tmp_path)
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    code, err = vrp(capsys, bench, images, tmp_path / "ro")
    assert code == 2 and "cannot write into --out" in one_line_error(err)


def test_missing_images_option_and_unknown_model(tmp_path, capsys, no_model):
    bench, _ = pope(tmp_path)
    code, err = cli(capsys, "vrp", "--benchmark", bench, "--n", 4, "--out", tmp_path / "out")
    assert code == 2 and "needs --images" in one_line_error(err)
    code, err = cli(capsys, "vrp", "--model", tmp_path / "no-checkpoint", "--n", 4, "--out", tmp_path / "out")
    assert code == 2 and "the folder does not exist" in one_line_error(err) and "toy-llava" in err


def test_unreachable_hub_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # as with no network: fails at once
    code, err = cli(capsys, "vrp", "--model", "llava-hf/llava-1.5-7b-hf", "--n", 4, "--out", tmp_path / "out")
    assert code == 2 and "cannot load model 'llava-hf/llava-1.5-7b-hf'" in one_line_error(err)


def test_debug_shows_the_traceback(tmp_path, capsys, no_model):
    bench, _ = pope(tmp_path)
    code, err = cli(capsys, "vrp", "--benchmark", bench, "--n", 4, "--out", tmp_path / "out", "--debug")
    assert code == 2 and "Traceback" in err and "needs --images" in err


def test_compare_needs_finished_scored_runs(tmp_path, capsys):
    code, err = cli(capsys, "vrp", "--compare", tmp_path / "nothing", tmp_path / "nor-this", "--out", tmp_path / "c")
    assert code == 2 and "nothing holds no tables.json: not a finished vlm-lens run" in one_line_error(err)


def test_bad_settings_file(tmp_path, capsys, no_model):
    (tmp_path / "s.json").write_text('{"n": "600"}')
    code, err = cli(capsys, "vrp", "--config", tmp_path / "s.json")
    assert code == 2 and "n must be int, got '600'" in one_line_error(err)
    (tmp_path / "s.json").write_text('{"n": 6,')
    code, err = cli(capsys, "vrp", "--config", tmp_path / "s.json")
    assert code == 2 and "s.json line 1: not valid JSON" in one_line_error(err)


def test_small_n_warns_with_the_smallest_n_that_gives_a_test_split_of_100(tmp_path, capsys, no_model):
    from sklearn.model_selection import train_test_split

    for fraction in (0.2, 0.25, 0.15):
        n = smallest_n(fraction)
        sizes = [len(train_test_split(np.arange(m), test_size=fraction, random_state=0)[1]) for m in (n - 1, n)]
        assert sizes[0] < 100 <= sizes[1] and sizes == [size_of_test_split(m, fraction) for m in (n - 1, n)]
    assert VRPConfig(n=496).size_warnings() == [] and "--n 496 or more" in VRPConfig(n=495).size_warnings()[0]
    code, err = cli(capsys, "vrp", "--n", 40, "--out", tmp_path / "out")
    assert "warning: n=40 gives a test split of 8 questions" in err and "--n 496 or more" in err


# --- a finished run, then changed data, a full disk, a second writer ----------------------------------------


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished study from a benchmark file: the folder, the file, the images and the command that made it."""
    root = tmp_path_factory.mktemp("finished")
    bench = shapes.write_benchmark(root / "bench", 60, seed=SHAPES_EVAL_SEED)
    images = bench.parent / "images"
    argv = [
        "vrp",
        "--benchmark",
        str(bench),
        "--images",
        str(images),
        "--n",
        "60",
        "--k",
        "2",
        "--n-resamples",
        "100",
        "--out",
        str(root / "out"),
    ]
    assert main(argv) == 0
    return root, bench, images, argv


def copied(finished, tmp_path) -> tuple[Path, Path, Path, list[str]]:
    """A private copy of the finished run, its benchmark and images, and the command pointing at them."""
    root, bench, images, argv = finished
    shutil.copytree(root, tmp_path / "run")
    mine = tmp_path / "run"
    swap = {
        str(root / "out"): str(mine / "out"),
        str(bench): str(mine / "bench" / bench.name),
        str(images): str(mine / "bench" / "images"),
    }
    return mine / "out", mine / "bench" / bench.name, mine / "bench" / "images", [swap.get(a, a) for a in argv]


def test_an_edited_benchmark_is_refused_on_resume(finished, tmp_path, capsys, no_model):
    out, bench, _, argv = copied(finished, tmp_path)
    records = [json.loads(line) for line in bench.read_text().splitlines()]
    for i in (3, 17):
        records[i]["label"] = "yes" if records[i]["label"] != "yes" else "no"
    bench.write_text("\n".join(json.dumps(r) for r in records))
    code, err = cli(capsys, *argv)
    assert code == 2
    assert "2 of 60 questions (text, answers or id) differ, at positions 3, 17" in one_line_error(err)


def test_other_images_are_refused_and_a_moved_copy_resumes(finished, tmp_path, capsys, monkeypatch):
    out, bench, images, argv = copied(finished, tmp_path)
    before = (out / "tables.md").read_text()
    moved = tmp_path / "moved"
    shutil.copytree(images, moved)
    argv = [str(moved) if a == str(images) else a for a in argv]
    assert main(argv) == 0  # the same bytes in another folder: the finished extraction is reused
    assert (out / "tables.md").read_text() == before
    name = sorted(p.name for p in moved.iterdir())[5]
    png(moved / name, (1, 2, 3))
    monkeypatch.setattr("analyses.study.pipeline.load_model", lambda *a: pytest.fail("the model was loaded"))
    code, err = cli(capsys, *argv)
    assert code == 2 and f"1 image(s) differ: {name}" in one_line_error(err)


def test_a_full_disk_leaves_the_last_report_whole(finished, tmp_path, capsys, monkeypatch):
    out, _, _, argv = copied(finished, tmp_path)
    report = (out / "report.html").read_bytes()
    real = whole_files._write_bytes

    def full(path, data):
        if "report.html" in path.name:
            real(path, data[: len(data) // 3])
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(whole_files, "_write_bytes", full)
    code, err = cli(capsys, *argv)
    assert code == 2 and "the disk is full" in one_line_error(err) and "report.html was not written" in err
    assert (out / "report.html").read_bytes() == report
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_a_second_writer_is_refused_and_a_stale_lock_taken_over(finished, tmp_path, capsys, no_model):
    out, _, _, argv = copied(finished, tmp_path)
    with files.RunLock(out):
        code, err = cli(capsys, *argv)
    assert code == 2 and f"is in use by another vlm-lens run (pid {os.getpid()}" in one_line_error(err)
    (out / files.RunLock.NAME).write_text(json.dumps({"pid": 999999, "host": "gone"}))  # left by a kill -9
    with files.RunLock(out) as lock:
        assert lock.stale == {"pid": 999999, "host": "gone"}
    with files.RunLock(out) as lock:
        assert lock.stale is None  # a clean exit leaves no owner behind


def test_two_processes_on_one_out(tmp_path):
    first = subprocess.Popen(
        [sys.executable, "-m", "analyses.cli", "vrp", "--n", "60", "--k", "2", "--out", str(tmp_path)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    lock = tmp_path / files.RunLock.NAME
    deadline = time.time() + 120
    while (not lock.exists() or not lock.read_text()) and time.time() < deadline and first.poll() is None:
        time.sleep(0.05)
    try:
        second = subprocess.run(
            [sys.executable, "-m", "analyses.cli", "vrp", "--n", "60", "--k", "2", "--out", str(tmp_path)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 2, second.stderr
        assert f"in use by another vlm-lens run (pid {first.pid}" in second.stderr
    finally:
        first.kill()
        first.wait()


# --- tampered shards: reported, and re-extracted to the untouched result -------------------------------------

CONFIG = VRPConfig("tiny", n=12, shard_size=4, batch_size=4, k=2, max_new_tokens=1)


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clean")
    X.extract(tiny(FAMILIES[0]), shapes_examples(12, seed=5), folder, CONFIG, progress=False)
    return folder


def flip_floats(folder: Path) -> None:
    path = folder / "shard-00001.safetensors"
    data = bytearray(path.read_bytes())
    for i in range(len(data) - 400, len(data) - 4, 4):
        data[i] ^= 0x40
    path.write_bytes(bytes(data))


def flip_correct(folder: Path) -> None:
    path = folder / "shard-00001.json"
    rows = json.loads(path.read_text())
    for row in rows:
        row["correct"] = not row["correct"]
    path.write_text(json.dumps(rows))


TAMPERINGS = {
    "flipped floats": (flip_floats, "shard-00001.safetensors does not match the sha256"),
    "flipped correct flags": (flip_correct, "shard-00001.json does not match the sha256"),
    "truncated json": (
        lambda f: (f / "shard-00001.json").write_text((f / "shard-00001.json").read_text()[:50]),
        "shard-00001.json does not match the sha256",
    ),
    "deleted safetensors": (lambda f: (f / "shard-00001.safetensors").unlink(), "shard-00001.safetensors is missing"),
}


@pytest.mark.parametrize("name", TAMPERINGS)
def test_a_tampered_shard_is_refused_then_re_extracted(clean, tmp_path, name):
    tamper, message = TAMPERINGS[name]
    folder = tmp_path / "x"
    shutil.copytree(clean, folder)
    tamper(folder)
    with pytest.raises(DataError, match=message):
        X.load(folder)
    with pytest.warns(VLMLensWarning, match=f"{message}.*re-extracting questions 4..7"):
        X.extract(tiny(FAMILIES[0]), shapes_examples(12, seed=5), folder, CONFIG, progress=False)
    again, reference = X.load(folder), X.load(clean)
    assert again.rows == reference.rows
    assert np.array_equal(again.hidden, reference.hidden) and np.array_equal(again.neurons, reference.neurons)


def test_changed_examples_are_refused_by_extraction_itself(clean, tmp_path):
    folder = tmp_path / "x"
    shutil.copytree(clean, folder)
    examples = shapes_examples(12, seed=6)  # other scenes, same settings
    with pytest.raises(DataError, match="the data changed since"):
        X.extract(tiny(FAMILIES[0]), examples, folder, CONFIG, progress=False)


def test_atomic_write_cleans_up_after_a_failing_writer(tmp_path):
    target = tmp_path / "tables.md"
    target.write_text("old")

    def half_then_full(path):
        path.write_text("new, cut sh")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DataError, match="the disk is full"):
        whole_files.write_atomic(target, half_then_full)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["tables.md"]


# --- hook sessions -----------------------------------------------------------------------------------------


def torch_hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.hf_model.modules())


def attn_impl(model) -> str:
    return model.hf_model.config.get_text_config()._attn_implementation


def test_sessions_closed_out_of_order_keep_the_inner_attention_hook(model, inputs):
    name = "blocks.0.attn.hook_pattern_rows"
    _, cache = model.run_with_cache(inputs, names_filter=name)
    baseline, impl = torch_hooks(model), attn_impl(model)
    seen = []
    outer = model.hooks([(name, lambda rows, hook: None)], inputs=inputs)
    inner = model.hooks([(name, lambda rows, hook: seen.append(rows.clone()))], inputs=inputs)
    outer.__enter__()
    inner.__enter__()
    outer.__exit__(None, None, None)
    with torch.no_grad():
        model.hf_model(**inputs.tensors)
    inner.__exit__(None, None, None)
    assert len(seen) == 1 and torch.allclose(seen[0], cache[name], atol=1e-6)
    assert torch_hooks(model) == baseline and attn_impl(model) == impl


def test_a_session_entered_twice_is_refused_and_still_cleans_up(model, inputs):
    baseline, calls = torch_hooks(model), []
    session = model.hooks([("blocks.0.hook_resid_post", lambda x, hook: calls.append(1))])
    with session:
        with pytest.raises(HookSessionError, match="already active"):
            session.__enter__()
        with torch.no_grad():
            model.hf_model(**inputs.tensors)
        assert calls == [1]  # once, not twice
    assert torch_hooks(model) == baseline
    with session:  # used again after it closed: fine
        with torch.no_grad():
            model.hf_model(**inputs.tensors)
    assert calls == [1, 1] and torch_hooks(model) == baseline


def test_an_edit_to_pattern_rows_is_applied_as_the_full_pattern_edit_would_be(model, inputs):
    def image(keys: int):  # batch key: the image's tokens; at a cross-attention layer, the first half of its keys
        if keys == inputs.input_ids.shape[1]:
            return inputs.input_ids == model.cfg.image_token_id
        return (torch.arange(keys) < keys // 2).expand(inputs.batch_size, keys)

    def rows_edit(rows, hook):
        return rows.masked_fill(image(rows.shape[-1])[:, None, None, :], 0.0)  # the answer row stops reading the image

    def pattern_edit(pattern, hook):
        edited = pattern.clone()
        edited[:, :, -1] = pattern[:, :, -1].masked_fill(image(pattern.shape[-1])[:, None, :], 0.0)
        return edited

    with torch.no_grad():
        plain = model.run_with_hooks(inputs)[:, -1]
        by_rows = model.run_with_hooks(inputs, fwd_hooks=[("blocks.1.attn.hook_pattern_rows", rows_edit)])[:, -1]
        by_pattern = model.run_with_hooks(inputs, fwd_hooks=[("blocks.1.attn.hook_pattern", pattern_edit)])[:, -1]
    assert not torch.allclose(by_rows, plain, atol=1e-4)  # the edit is not discarded
    torch.testing.assert_close(by_rows, by_pattern, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.int64, torch.float16, torch.float64])
def test_a_hook_returning_another_dtype_is_named(model, inputs, dtype):
    with pytest.raises(
        TypeError,
        match=f"hook on blocks.1.hook_resid_post returned a {dtype} tensor on cpu; the activation is torch.float32",
    ):
        model.run_with_hooks(inputs, fwd_hooks=[("blocks.1.hook_resid_post", lambda x, hook: x.to(dtype))])


def test_running_the_model_inside_its_own_hook_is_refused(model, inputs):
    baseline = torch_hooks(model)

    def nested(x, hook):
        model.run_with_cache(inputs)

    with pytest.raises(HookSessionError, match=r"run_with_cache\(\) was called while this model is running"):
        model.run_with_hooks(inputs, fwd_hooks=[("blocks.0.hook_resid_post", nested)])
    assert torch_hooks(model) == baseline
    model.run_with_cache(inputs, names_filter="blocks.0.hook_resid_post")  # and the model runs again afterwards


def test_empty_prompts_and_prompts_past_the_positions(model, images):
    with pytest.raises(InputError, match="got no prompts"):
        model.prepare(images=[], prompts=[])
    limit = model.hf_model.config.get_text_config().max_position_embeddings
    with pytest.warns(VLMLensWarning, match=f"trained on {limit} positions"):
        model.prepare(images=images[:1], prompts=["red " * (limit + 10)])
    with warnings.catch_warnings():
        warnings.simplefilter("error", VLMLensWarning)
        model.prepare(images=images, prompts=PROMPTS)  # ordinary prompts: no warning


def test_a_checkpoint_without_or_with_truncated_weights_is_a_model_load_error(tmp_path):
    import shutil

    from vlm_lens import HookedVLM, zoo
    from vlm_lens.errors import ModelLoadError

    source = zoo.get("toy-llava").path
    empty, cut = tmp_path / "empty", tmp_path / "cut"
    shutil.copytree(source, empty)
    (empty / "model.safetensors").unlink()
    shutil.copytree(source, cut)
    (cut / "model.safetensors").write_bytes((source / "model.safetensors").read_bytes()[:100_000])
    for folder in (empty, cut):
        with pytest.raises(ModelLoadError, match=f"cannot load the weights of model '{folder}'") as raised:
            HookedVLM.from_pretrained(str(folder))
        assert "\n" not in str(raised.value)


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n\x00\x00"])
def test_a_zero_byte_or_truncated_image_read_directly_is_a_data_error(tmp_path, content):
    from analyses.data.examples import Example
    from vlm_lens.errors import DataError

    (tmp_path / "x.png").write_bytes(content)
    with pytest.raises(DataError, match="x.png cannot be read"):
        Example(tmp_path / "x.png", "q", "yes").load_image()


def test_an_image_the_processor_refuses_is_an_input_error():
    from PIL import Image

    from tests.conftest import tiny
    from vlm_lens.errors import InputError

    model = tiny("qwen2_vl")
    with pytest.raises(
        InputError, match=r"the qwen2_vl processor refused the images \(4000x16\): absolute aspect ratio"
    ):
        model.prepare(images=[Image.new("RGB", (4000, 16))], prompts=["q"])


@pytest.mark.parametrize("call", ["generate", "device", "dtype", "batch"])
def test_python_api_settings_out_of_range_are_input_errors(call):
    import torch

    from analyses import answers, evaluation
    from analyses.data.examples import shapes_examples
    from tests.conftest import FAMILIES, tiny
    from vlm_lens import HookedVLM
    from vlm_lens.errors import InputError

    if call == "device":
        with pytest.raises(InputError, match="unknown device 'gpu'"):
            HookedVLM.from_pretrained("toy-llava", device="gpu")
    elif call == "dtype":
        with pytest.raises(InputError, match="cannot run a model"):
            HookedVLM.from_pretrained("toy-llava", dtype=torch.int8)
    else:
        model = tiny(FAMILIES[0])
        examples = shapes_examples(2, seed=0)
        if call == "batch":
            with pytest.raises(InputError, match="batch_size must be an integer of at least 1"):
                evaluation.predict(model, examples, batch_size=0)
        else:
            inputs = model.prepare(images=[e.load_image() for e in examples], prompts=[e.text for e in examples])
            with pytest.raises(InputError, match="max_new_tokens must be at least 1"):
                answers.generate_answers(model, inputs, max_new_tokens=0)


def test_ctrl_c_in_a_terminal_says_how_to_resume_and_exits_130(tmp_path):
    """Ctrl-C typed in a real pseudo-terminal (the terminal sends SIGINT to the foreground process): the run
    prints how to resume and exits 130. Waits for the extraction's progress bar to appear (an event), then types it."""
    import fcntl
    import pty
    import select
    import signal
    import struct
    import termios

    pid, fd = pty.fork()
    if pid == 0:  # the child: the command line, on the terminal
        os.environ["OMP_NUM_THREADS"] = "1"
        # an ignored SIGINT survives exec (a shell ignores it for a command run in the background with &, as a
        # CI script may run the suite): a user's terminal starts the command with the default, and so does this
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.execvp(
            sys.executable, [sys.executable, "-m", "analyses.cli", "vrp", "--n", "600", "--out", str(tmp_path / "run")]
        )
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a terminal's size: progress bars draw
    seen, typed = b"", False
    while True:
        select.select([fd], [], [])
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # the terminal closed: the child is gone
            break
        if not chunk:
            break
        seen += chunk
        if not typed and b"extract:" in seen:
            os.write(fd, b"\x03")  # Ctrl-C
            typed = True
    _, status = os.waitpid(pid, 0)
    text = seen.decode(errors="replace")
    assert typed, f"the run ended before its extraction started: {text[-500:]}"
    assert os.waitstatus_to_exitcode(status) == 130, text[-500:]
    assert "interrupted: run the same command again to resume where it stopped" in text
    assert "this is a bug" not in text and "Traceback" not in text
