"""The shipped toy zoo: loads offline by name, scores as its model card says, trains reproducibly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from analyses import training
from analyses.data import shapes
from tests.conftest import FAMILIES
from vlm_lens import HookedVLM, UnknownToyError, zoo

NAMES = zoo.names()
TOKEN_TOYS = [n for n in NAMES if zoo.get(n).card.get("answers", "token") == "token"]  # the label as one token
WORD_TOYS = [n for n in NAMES if zoo.get(n).card.get("answers") == "words"]  # the answer in words, to end of sequence
FRESH_SEED = 11  # never used in training (training seeds start at training.TRAIN_SEED_OFFSET) nor by the cards


@pytest.fixture(scope="module", params=NAMES)
def toy(request):
    return request.param, HookedVLM.from_pretrained(request.param)


def card(name: str) -> dict:
    return zoo.get(name).card


def test_zoo_registry_is_the_package_folders():
    folders = sorted(p.parent.name for p in (Path(zoo.__file__).parent).glob("*/card.json"))
    assert NAMES == folders and len(NAMES) >= 3
    assert {zoo.get(n).family for n in NAMES} <= set(FAMILIES)  # every toy is of a registered family
    first = NAMES[0]
    assert zoo.resolve(first) == str(zoo.get(first).path)
    assert zoo.resolve("org/some-checkpoint") == "org/some-checkpoint"  # anything else passes through
    with pytest.raises(UnknownToyError, match=first):
        zoo.get(first[:-1])


def test_toy_loads_offline_with_its_processor(toy):
    name, model = toy
    assert model.adapter.family == zoo.get(name).family == card(name)["family"]
    assert model.cfg.n_layers == card(name)["language_layers"] == 4
    assert not model.hf_model.training
    weights = zoo.get(name).path / "model.safetensors"
    assert weights.stat().st_size < 8 * 2**20


def test_toy_scores_within_two_points_of_its_card(toy):
    name, model = toy
    torch.set_num_threads(1)
    fresh = training.evaluate(
        model, n=card(name)["held_out"]["n"], seed=FRESH_SEED, answers=card(name).get("answers", "token")
    )
    claimed = card(name)["held_out"]["accuracy"]
    assert abs(fresh["all"] - claimed["all"]) <= 2.0, (fresh, claimed)
    # neither chance (about 40-50% on these mixtures of yes/no, counts, colours) nor perfect, and wrong answers in
    # every question family
    assert 65 <= fresh["all"] <= 95
    assert all(v < 100 for v in fresh.values())


def test_questions_file_answer_is_the_next_token(toy, tmp_path):
    name, model = toy
    if name not in TOKEN_TOYS:
        pytest.skip(f"{name} answers in words: test_words_toy_says_its_answer_in_words reads it")
    path = shapes.write_benchmark(tmp_path, 40, seed=FRESH_SEED)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    from PIL import Image

    images = [Image.open(tmp_path / "images" / r["image"]).convert("RGB") for r in records]
    inputs = model.prepare(images=images, prompts=[r["text"] for r in records])
    with torch.no_grad():
        predicted = [model.to_string(int(i)).strip() for i in model(inputs)[:, -1].argmax(-1)]
    hits = sum(p == r["label"] for p, r in zip(predicted, records))
    assert hits >= 0.6 * len(records)
    assert all(p in shapes.WORDS for p in predicted)


@pytest.mark.parametrize("family", FAMILIES)
def test_short_training_run_is_deterministic(family):
    torch.set_num_threads(1)
    cfg = training.TrainConfig(family=family, steps=6, warmup=2)
    first, losses_a = training.train(cfg, progress=False)
    second, losses_b = training.train(cfg, progress=False)
    assert losses_a == losses_b
    a, b = first.hf_model.state_dict(), second.hf_model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert losses_a[-1] < losses_a[0]


@pytest.mark.parametrize("name", WORD_TOYS)
def test_words_toy_says_its_answer_in_words(name):
    """Generated to its end of sequence, the answer is a phrase of several tokens, the scoring rule of each
    family (scoring.score, tested against each benchmark's published evaluator) marks most of them right, and
    the card gives the study's answer length: the longest spoken answer and its stop."""
    from analyses import evaluation
    from analyses.data import scoring
    from analyses.data.examples import shapes_examples

    torch.set_num_threads(1)
    model = HookedVLM.from_pretrained(name)
    examples = shapes_examples(120, FRESH_SEED, types=shapes.WORD_TYPES)
    said = evaluation.predict(model, examples, max_new_tokens=card(name)["answer_tokens"])
    lengths = [len(model.tokenizer(s, add_special_tokens=False)["input_ids"]) for s in said]
    assert np.mean(lengths) > 3 and max(lengths) < card(name)["answer_tokens"]  # phrases, each ended by the model
    right = [scoring.score(s, e.golds, e.metric) == 1 for s, e in zip(said, examples)]
    assert np.mean(right) > 0.6
    assert {e.metric for e in examples} == {"yesno", "count", "exact", "relation"}
    assert card(name)["answer_tokens"] == training.longest_answer(shapes.WORD_TYPES, model.tokenizer)
    assert {"metric:yesno", "metric:count", "metric:exact", "metric:relation"} <= set(
        card(name)["held_out"]["accuracy"]
    )
