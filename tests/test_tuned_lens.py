"""The tuned lens: the logit lens at zero, the model's logits at the last layer, a lower held-out KL once trained,
KL against scipy, its files and the checkpoint it refuses."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.special import softmax
from scipy.stats import entropy

from analyses import logit_lens, plots
from analyses.answers import answer_positions
from analyses.checkpoint import CheckpointMismatchError
from analyses.data.examples import shapes_examples
from analyses.study.config import VRPConfig
from analyses.tuned_lens import TunedLens, kl, kl_by_layer, train, tuned_lens
from vlm_lens import HookedVLM, zoo
from vlm_lens.errors import DataError, InputError


@pytest.fixture(scope="module")
def toy():
    return HookedVLM.from_pretrained("toy-llava")


@pytest.fixture(scope="module")
def lens(toy):
    return train(toy, shapes_examples(480, seed=3), steps=150, lr=1e-2, held_out=shapes_examples(64, seed=99))


def _inputs(model, n=4, seed=11):
    examples = shapes_examples(n, seed=seed)
    return examples, model.prepare(images=[e.load_image() for e in examples], prompts=[e.text for e in examples])


def test_at_zero_it_is_the_logit_lens_and_its_last_layer_is_the_models_logits(toy, lens):
    _, inputs = _inputs(toy)
    logits, cache = toy.run_with_cache(inputs)
    plain = logit_lens.logit_lens(toy, cache)
    torch.testing.assert_close(tuned_lens(toy, cache, TunedLens.identity(toy)), plain)
    tuned = tuned_lens(toy, cache, lens)
    last = logits[torch.arange(4), answer_positions(inputs)].float()
    torch.testing.assert_close(tuned[-1], last, atol=1e-4, rtol=1e-4)  # the last layer keeps the identity
    assert not torch.allclose(tuned[0], plain[0])  # the earlier ones moved


def test_kl_is_scipys():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, 7)), rng.normal(size=(3, 7))
    expected = [entropy(softmax(x), softmax(y)) for x, y in zip(a, b)]
    np.testing.assert_allclose(kl(torch.tensor(a), torch.tensor(b)).numpy(), expected, rtol=1e-5)


def test_training_lowers_the_held_out_kl_at_every_layer_before_the_last(toy, lens):
    table = kl_by_layer(toy, shapes_examples(64, seed=77), lens).pivot(index="layer", columns="lens", values="kl")
    last = toy.cfg.n_layers - 1
    assert (table.loc[: last - 1, "tuned"] < 0.5 * table.loc[: last - 1, "logit"]).all(), table
    assert table.loc[last, "tuned"] == pytest.approx(table.loc[last, "logit"], abs=1e-5)
    assert table.loc[last, "logit"] < 1e-5  # the logit lens at the last layer is the model itself
    recorded = {(r["layer"], r["lens"]) for r in lens.training["held_out_kl"]}
    assert len(recorded) == 2 * toy.cfg.n_layers
    fig = plots.lens_kl(kl_by_layer(toy, shapes_examples(16, seed=5), lens))
    assert [t.name for t in fig.data] == ["logit lens", "tuned lens"]


def test_margin_curves_through_either_lens(toy, lens):
    examples = shapes_examples(24, seed=21)
    plain = logit_lens.dataset_margins(toy, examples)
    through_zero = logit_lens.dataset_margins(toy, examples, lens=TunedLens.identity(toy))
    np.testing.assert_allclose(plain[0], through_zero[0], atol=1e-5)
    tuned = logit_lens.dataset_margins(toy, examples, lens=lens)
    np.testing.assert_allclose(tuned[0][-1], plain[0][-1], atol=1e-4)  # the last layer is the model's own margin
    assert np.array_equal(tuned[1], plain[1])


def test_saved_and_loaded_and_refused_elsewhere(toy, lens, tmp_path):
    lens.save(tmp_path / "lens")
    again = TunedLens.load(tmp_path / "lens")
    assert torch.equal(again.weight, lens.weight.float()) and torch.equal(again.bias, lens.bias.float())
    assert again.training["steps"] == 150
    card = json.loads((tmp_path / "lens" / "card.json").read_text())
    card["training"]["steps"] = 9999
    (tmp_path / "lens" / "card.json").write_text(json.dumps(card))
    with pytest.raises(DataError, match="edited after the tuned lens was saved"):
        TunedLens.load(tmp_path / "lens")
    other = HookedVLM.from_pretrained("toy-qwen2-vl")
    _, inputs = _inputs(other)
    _, cache = other.run_with_cache(inputs)
    with pytest.raises(CheckpointMismatchError, match="this tuned lens was fitted on 'toy-llava'"):
        tuned_lens(other, cache, lens)


def test_a_half_precision_model_reads_through_a_float32_lens(lens):
    half = HookedVLM.from_pretrained("toy-llava", dtype="bfloat16")
    _, inputs = _inputs(half)
    _, cache = half.run_with_cache(inputs)
    out = tuned_lens(half, cache, lens)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_what_training_refuses(toy):
    with pytest.raises(InputError, match="steps must be"):
        train(toy, shapes_examples(4, seed=1), steps=0)
    with pytest.raises(InputError, match="at least one example"):
        train(toy, [], steps=3)
    with pytest.raises(InputError, match="layers of width"):
        TunedLens.identity(toy).translate(torch.zeros(2, 3, toy.cfg.d_model))


@pytest.mark.parametrize("name", zoo.names())
def test_every_toy_ships_a_lens_loadable_by_name_that_beats_the_logit_lens(name):
    from analyses import lenses

    assert name in lenses.names()
    model = HookedVLM.from_pretrained(name)
    lens = TunedLens.load(name)
    lens.check_model(model)  # fitted on this very checkpoint
    assert lens.training["steps"] == 300
    table = kl_by_layer(model, shapes_examples(8, seed=77), lens).pivot(index="layer", columns="lens", values="kl")
    last = model.cfg.n_layers - 1
    assert (table.loc[: last - 1, "tuned"] < table.loc[: last - 1, "logit"]).all()  # fresh questions, every layer
    VRPConfig(model=name, lens="tuned", tuned_lens=name).check_files()
