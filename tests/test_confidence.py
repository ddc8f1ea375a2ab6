"""The study's definitions on answers of several tokens, by hand: the output confidence by question form and
the truth margin's reference tokens (every gold, every spelling the rule accepts, with and without a space).

Two tokenizers: the toy zoo's word-level one and a byte-level BPE trained here (sub-word pieces, a leading
space that changes the token, a newline token), so a definition that only holds for one-token words fails."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from analyses import answers
from analyses.logit_lens import best_references, truth_margin
from vlm_lens import HookedVLM
from vlm_lens.errors import DataError

CORPUS = [
    "There are twenty-one circles.",
    "Yes, there is a dog.\nIt is brown.",
    "No.",
    "yes no Yes No",
    "There is no dog in the image.",
    "It is on the left side.",
    "three 3 Three",
    "green Green blue",
] * 20


@pytest.fixture(scope="module")
def bpe() -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(
            vocab_size=600, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>")


@pytest.fixture(scope="module")
def word():
    return HookedVLM.from_pretrained("toy-llava").tokenizer


def _at_word(tok, text: str, word: str, metric: str) -> tuple[float, float]:
    """(output confidence, expected) for ``text`` generated with token i's probability 0.1 + 0.02 i: expected is the
    probability of the token holding the first character of ``word``, by the tokenizer's own character offsets."""
    encoded = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = encoded["input_ids"]
    probs = [0.1 + 0.02 * i for i in range(len(ids))]
    start = text.index(word)
    for i, (_, end) in enumerate(encoded["offset_mapping"]):
        if end > start:
            return answers.output_confidence(tok, ids, probs, metric, True), probs[i]
    raise AssertionError(f"{word!r} not in {text!r}")


def test_closed_form_confidence_is_the_answer_tokens_probability(word, bpe):
    cases = [("there is no red circle", "no", "yesno"), ("yes , there is a red circle", "yes", "yesno")]
    for tok in (word, bpe):
        for text, decided, metric in cases:  # "no" decides POPE's reading: its probability, not the sentence's mean
            value, expected = _at_word(tok, text, decided, metric)
            assert value == expected
    # a number in sub-word pieces, a relation after a leading space (the answer text is stripped, the tokens not)
    for text, decided, metric in [
        ("There are twenty-one circles.", "twenty", "count"),
        (" It is on the left side.", "left", "relation"),
        ("Yes, there is a dog.", "Yes", "yesno"),
    ]:
        value, expected = _at_word(bpe, text, decided, metric)
        assert value == expected and value > 0.1 or decided == "Yes"


def test_free_form_confidence_is_the_geometric_mean_to_the_first_newline(bpe):
    text = "Yes, there is a dog.\nIt is brown."
    ids = bpe.encode(text, add_special_tokens=False)
    cut = next(t for t in range(len(ids)) if "\n" in bpe.decode(ids[: t + 1]))
    probs = list(np.linspace(0.2, 0.9, len(ids)))
    expected = float(np.exp(np.mean(np.log(probs[:cut]))))
    assert 0 < cut < len(ids) - 1
    assert answers.output_confidence(bpe, ids, probs, "vqa", False) == pytest.approx(expected)
    assert answers.output_confidence(bpe, ids, probs, "vqa", False) != pytest.approx(
        float(np.exp(np.mean(np.log(probs))))
    )
    assert answers.output_confidence(bpe, [], [0.7], "vqa", False) == 0.7  # empty answer: the stop token's


def test_reference_tokens_take_every_spelling_the_rule_accepts(word, bpe):
    # the toy's vocabulary is lower case: "Green " is found through its lower-case form (issue 22, point 8)
    assert answers.reference_token_ids(word, ["Green "]) == [word.convert_tokens_to_ids("green")]
    with pytest.raises(DataError, match="every spelling"):
        answers.reference_token_ids(word, ["zebra"])
    # byte-level BPE: "yes" and " yes" are different tokens, and "Yes" another; all count
    ids = answers.reference_token_ids(bpe, ["yes"], "yesno")
    spaced, plain = (bpe.convert_tokens_to_ids(bpe.tokenize(s))[0] for s in (" Yes", "Yes"))
    assert spaced != plain and {spaced, plain, bpe.convert_tokens_to_ids("yes")} == set(ids)
    # a count's gold in digits also reads the number word
    three = answers.reference_token_ids(bpe, ["3"], "count")
    assert bpe.convert_tokens_to_ids("three") in three and bpe.convert_tokens_to_ids("3") in three
    # every gold, not only the first
    both = answers.reference_token_ids(bpe, ["green", "blue"])
    assert bpe.encode(" blue", add_special_tokens=False)[0] in both


def test_truth_margin_is_the_maximum_over_golds():
    """Two golds: the margin follows whichever gold the model favours (the paper's maximum over golds)."""
    logits = torch.tensor([[0.0, 5.0, 1.0, 4.0], [0.0, 1.0, 6.0, 2.0]])
    refs = [[1, 3], [1, 3]]  # item 0 favours gold token 1; item 1 has both golds below token 2
    assert truth_margin(logits, refs).tolist() == [1.0, -4.0]
    assert truth_margin(logits, [[3], [3]]).tolist() == [-1.0, -4.0]  # one gold only: another number
    assert best_references(logits, refs) == [1, 3]
