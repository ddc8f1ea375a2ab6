"""Training toys that answer in words: teacher forcing computes, at every answer position, the logits HF's own
``generate`` computes there, and HF's own loss; a short run is reproducible and writes a card for the words study."""

from __future__ import annotations

import json

import pytest
import torch

from analyses import training
from analyses.cli import main
from analyses.data import shapes
from tests.conftest import FAMILIES
from vlm_lens.errors import InputError

STEPS = 3


def _toy_batch(family: str, n: int = 3):
    torch.manual_seed(0)
    model = training.build(family, seed=0, words=shapes.SPOKEN_WORDS)
    samples = shapes.generate(n, seed=3, types=shapes.WORD_TYPES)
    return model, samples, training.batch_inputs(model, samples, 3, 32)


@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_teacher_forced_logits_are_what_generate_computes(family):
    # an answer token marked as prompt or as image (PaliGemma's prefix, Gemma 3's image type) would see the tokens
    # after it, and the cross-attention mask left short would hide the image: either changes these logits
    model, _, inputs = _toy_batch(family)
    hf = model.hf_model.eval()
    special = sorted({*model.tokenizer.all_special_ids, *model.tokenizer.added_tokens_decoder})  # image tokens too
    out = hf.generate(
        **inputs.tensors,
        max_new_tokens=STEPS,
        do_sample=False,
        suppress_tokens=special,
        output_logits=True,
        return_dict_in_generate=True,
        pad_token_id=model.tokenizer.pad_token_id,
    )
    prompt = inputs.input_ids.shape[1]
    ids = out.sequences[:, prompt:].tolist()
    tensors, targets = training.forced(model, inputs, ids)
    logits = hf(**tensors).logits
    for step, scores in enumerate(out.logits):  # raw logits: the scores have the suppressed -inf
        torch.testing.assert_close(logits[:, prompt - 1 + step], scores, rtol=1e-4, atol=1e-4)
    assert targets[:, prompt - 1 : prompt - 1 + STEPS].tolist() == ids
    assert (targets[:, : prompt - 1] == -100).all() and (targets[:, -1] == -100).all()


@pytest.mark.parametrize("family", ["llava", "paligemma", "mllama"])
def test_words_loss_is_hf_loss_on_the_spoken_answer(family):
    model, samples, inputs = _toy_batch(family)
    tensors, targets = training.teacher_forced(model, inputs, [shapes.spoken(s) for s in samples])
    prompt = inputs.input_ids.shape[1]
    labels = torch.full_like(tensors["input_ids"], -100)  # HF's convention: the token itself, shifted inside
    for i, sample in enumerate(samples):
        said = model.tokenizer(shapes.spoken(sample), add_special_tokens=False)["input_ids"] + [
            model.tokenizer.eos_token_id
        ]
        labels[i, prompt : prompt + len(said)] = torch.tensor(said)
        assert model.tokenizer.decode(said[:-1]) == shapes.spoken(sample)  # every spoken word is in the vocabulary
    expected = model.hf_model(**tensors, labels=labels).loss
    torch.testing.assert_close(training.loss_of(model, samples, inputs, "words"), expected)


def test_an_input_teacher_forcing_cannot_extend_is_refused():
    model, samples, inputs = _toy_batch("llava")
    inputs.tensors["per_token_extra"] = torch.zeros_like(inputs.input_ids)
    with pytest.raises(InputError, match="per_token_extra"):
        training.teacher_forced(model, inputs, [shapes.spoken(s) for s in samples])


def test_short_words_run_is_deterministic_and_writes_a_words_card(tmp_path):
    torch.set_num_threads(1)
    cfg = training.TrainConfig(family="llava", steps=6, warmup=2, answers="words", eval_n=30)
    first, losses_a = training.train(cfg, progress=False)
    _, losses_b = training.train(cfg, progress=False)
    assert losses_a == losses_b and losses_a[-1] < losses_a[0]
    card = training.save(first, tmp_path, cfg, losses_a, 1.0)
    tokenizer = first.tokenizer
    longest = max(
        len(tokenizer(shapes.spoken(s), add_special_tokens=False)["input_ids"])
        for s in shapes.generate(4_000, training.HELD_OUT_SEED, types=shapes.WORD_TYPES)
    )
    assert card["answer_tokens"] == longest + 1 > 5  # the study generates the longest answer and its stop
    assert card["benchmark"] == "shapes-words" and card["answers"] == "words"
    assert {"metric:yesno", "metric:count", "metric:exact", "metric:relation", "spatial_side", "all"} <= set(
        card["held_out"]["accuracy"]
    )
    assert json.loads((tmp_path / "card.json").read_text()) == card
    assert "--answers words" in (tmp_path / "README.md").read_text()


def test_unknown_answer_style_is_one_line_and_exit_2(tmp_path, capsys):
    with pytest.raises(InputError, match="answers must be one of"):
        training.TrainConfig(family="llava", answers="sentences")
    assert main(["train-toy", "llava", "--answers", "sentences", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: answers must be one of") and len(err.strip().splitlines()) == 1
    assert main(["train-toy", "llama", "--steps", "1", "--out", str(tmp_path / "y")]) == 2
    assert "no family 'llama'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
