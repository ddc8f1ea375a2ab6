"""Real-checkpoint concerns on CPU: half precision, inputs on the model's device and dtype, answer-position
capture, stored dtype and lazy reads, images of different sizes, device maps."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from analyses import answers
from analyses.attention_structure import resample_grid
from analyses.cli import app
from analyses.data import shapes
from analyses.data.examples import shapes_examples
from analyses.study.config import VRPConfig
from analyses.study.extract import extract, load
from tests.conftest import FAMILIES, PROMPTS, make_images, tiny
from vlm_lens import HookedVLM, zoo


def test_capture_at_answer_equals_the_full_cache_at_the_answer(model, inputs):
    names = [
        "blocks.0.hook_resid_post",
        "blocks.1.mlp.hook_post",
        "blocks.1.hook_attn_out",
        "blocks.1.attn.hook_pattern_rows",
    ]
    with torch.no_grad():
        logits, cache = model.run_with_cache(inputs, names_filter=names)
    captured = answers.capture_at_answer(model, inputs, names)
    last = inputs.last_positions()
    # one row through lm_head instead of all: the same numbers up to the matmul's summation order
    assert torch.allclose(captured.logits, logits[torch.arange(2), last], atol=1e-6, rtol=0)
    for name in names[:3]:
        assert torch.equal(captured.store[name], cache[name][torch.arange(2), last]), name
    assert torch.equal(captured.store[names[3]], cache[names[3]])
    assert captured.stack("resid_post", [0]).shape == (1, 2, model.cfg.d_model)


def test_right_padded_batches_refuse_last_position_logits(model, images):
    right = model.prepare(images=images, prompts=PROMPTS, padding_side="right")
    with pytest.raises(ValueError, match="pad on the left"):
        answers.capture_at_answer(model, right, ["blocks.0.hook_resid_post"])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_prepare_gives_inputs_in_the_models_dtype(dtype):
    model = tiny(FAMILIES[0])
    model.hf_model.to(dtype)
    inputs = model.prepare(images=make_images(), prompts=PROMPTS)
    assert inputs.tensors["pixel_values"].dtype == dtype and inputs.input_ids.dtype == torch.long
    with torch.no_grad():
        assert model(inputs).dtype == dtype  # runs: no DeviceMismatchError


@pytest.fixture(scope="module", params=["bfloat16", "float16"])
def half_checkpoint(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    model = HookedVLM.from_pretrained(zoo.names()[0], dtype=request.param)
    model.hf_model.save_pretrained(folder)
    model.processor.save_pretrained(folder)
    return request.param, folder


def test_half_precision_checkpoint_loads_in_its_own_dtype(half_checkpoint):
    dtype, folder = half_checkpoint
    assert str(HookedVLM.from_pretrained(str(folder)).dtype) == f"torch.{dtype}"


def test_half_precision_checkpoint_runs_the_study_to_the_report(half_checkpoint, tmp_path):
    _, folder = half_checkpoint
    result = CliRunner().invoke(
        app,
        [
            "vrp",
            "--model",
            str(folder),
            "--n",
            "40",
            "--k",
            "2",
            "--batch-size",
            "7",
            "--storage-dtype",
            "float16",
            "--n-resamples",
            "300",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    tables = json.loads((tmp_path / "tables.json").read_text())
    assert tables["table8_accounting"][0]["extracted"] == 40 and (tmp_path / "report.html").stat().st_size > 10_000


def test_stored_dtype_halves_the_store_and_layers_read_lazily(tmp_path):
    model = tiny(FAMILIES[0])
    examples = shapes_examples(12, seed=2)
    runs = {}
    for dtype in ("float32", "float16"):
        cfg = VRPConfig("tiny", n=12, k=2, shard_size=5, batch_size=4, storage_dtype=dtype)
        runs[dtype] = load(extract(model, examples, tmp_path / dtype, cfg, progress=False))
    full, half = runs["float32"], runs["float16"]
    assert full.rows == half.rows
    assert full.hidden.shape == half.hidden.shape == (model.cfg.n_layers, 12, model.cfg.d_model)
    for layer in range(model.cfg.n_layers):
        assert half.hidden[layer].dtype == np.float32  # read back as float32, one layer at a time
        assert np.array_equal(half.hidden[layer], full.hidden[layer].astype(np.float16).astype(np.float32))
        assert np.array_equal(half.neurons[layer], full.neurons[layer].astype(np.float16).astype(np.float32))
    size = {d: sum(p.stat().st_size for p in (tmp_path / d).glob("*.safetensors")) for d in runs}
    arrays = 12 * model.cfg.n_layers * (model.cfg.d_model + model.cfg.d_mlp)
    assert size["float32"] - size["float16"] == pytest.approx(2 * arrays, rel=0.01)


def test_resample_grid_by_hand():
    grid = np.arange(16, dtype=float).reshape(4, 4)
    assert np.array_equal(resample_grid(grid, (4, 4)), grid)
    pooled = resample_grid(grid, (2, 2))
    assert np.allclose(pooled, [[0 + 1 + 4 + 5, 2 + 3 + 6 + 7], [8 + 9 + 12 + 13, 10 + 11 + 14 + 15]])
    assert np.allclose(resample_grid([[4.0]], (2, 2)), [[1, 1], [1, 1]])  # split evenly when growing
    # 3 cells onto 2: the middle input cell is split between both outputs
    assert np.allclose(resample_grid([[1.0, 2.0, 3.0]], (1, 2)), [[1 + 1, 1 + 3]])
    rng = np.random.default_rng(0)
    messy = rng.random((7, 5))
    assert resample_grid(messy, (3, 4)).sum() == pytest.approx(messy.sum())


def test_images_of_five_sizes_run_the_study_to_the_report(tmp_path):
    """Native-resolution towers give each image its own grid; the attention features still line up."""
    qwen = next(name for name in zoo.names() if HookedVLM.from_pretrained(name).adapter.packed_vision)
    bench = shapes.write_benchmark(tmp_path / "bench", 60, seed=4)
    sizes = [(32, 32), (48, 32), (32, 64), (40, 40), (64, 48)]
    for i, line in enumerate(bench.read_text().splitlines()):
        path = bench.parent / "images" / json.loads(line)["image"]
        Image.open(path).resize(sizes[i % 5]).save(path)
    result = CliRunner().invoke(
        app,
        [
            "vrp",
            "--model",
            qwen,
            "--benchmark",
            str(bench),
            "--images",
            str(bench.parent / "images"),
            "--n",
            "60",
            "--k",
            "2",
            "--n-resamples",
            "300",
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert result.exit_code == 0, result.output
    rows = [
        r
        for shard in sorted((tmp_path / "o" / "extraction").glob("shard-*.json"))
        for r in json.loads(shard.read_text())
    ]
    assert len({tuple(r["grid"]) for r in rows}) >= 3
    assert (tmp_path / "o" / "report.html").exists()


def test_device_map_loads_the_same_model():
    name = zoo.names()[0]
    plain, mapped = HookedVLM.from_pretrained(name), HookedVLM.from_pretrained(name, device_map="auto")
    inputs = plain.prepare(images=make_images()[:1], prompts=PROMPTS[:1])
    with torch.no_grad():
        assert torch.equal(plain(inputs), mapped(mapped.prepare(images=make_images()[:1], prompts=PROMPTS[:1])))
    with pytest.raises(ValueError, match="not both"):
        HookedVLM.from_pretrained(name, device="cpu", device_map="auto")
    with pytest.raises(ValueError, match="unknown dtype"):
        HookedVLM.from_pretrained(name, dtype="float8")


@pytest.mark.parametrize("right", [True, False])
def test_a_run_with_only_right_or_only_wrong_answers_says_so(right):
    from analyses.study.extract import Extraction
    from analyses.study.predictors import predictor_table
    from analyses.study.results import AttentionFeatures

    ex = object.__new__(Extraction)  # the refusal reads only the rows: no stored activations needed
    object.__setattr__(ex, "rows", [{"correct": right}] * 10)
    with pytest.raises(ValueError, match=f"all 10 answers are {'right' if right else 'wrong'}"):
        predictor_table(ex, object.__new__(AttentionFeatures), VRPConfig(n=10))
