"""Each benchmark scored by its own published rule, on answers in words, phrases and sentences.

The oracles are the published evaluators, transcribed below line for line (VQA's ``vqaEval.py``,
POPE's ``evaluate.py``), num2words for number words, and hand-read cases.
"""

from __future__ import annotations

import re

import pytest
from num2words import num2words

from analyses.consistency import majority_support
from analyses.data import scoring as S
from analyses.data.examples import Example
from vlm_lens.errors import DataError, InputError

# --- the official VQA evaluation (vqaEval.py), transcribed: the oracle --------------------------------------

_MANUAL = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_ART = ["a", "an", "the"]
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA = re.compile(r"(\d)(,)(\d)")
_PUNCT = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_CONTRACTIONS = {
    "dont": "don't",
    "isnt": "isn't",
    "whats": "what's",
    "thats": "that's",
    "cant": "can't",
    "wont": "won't",
    "im": "i'm",
    "theres": "there's",
    "its": "it's",
}  # the entries these cases reach


def _process_punctuation(in_text):
    out_text = in_text
    for p in _PUNCT:
        if (p + " " in in_text or " " + p in in_text) or (re.search(_COMMA, in_text) is not None):
            out_text = out_text.replace(p, "")
        else:
            out_text = out_text.replace(p, " ")
    out_text = _PERIOD.sub("", out_text, re.UNICODE)
    return out_text


def _process_digit_article(in_text):
    out_text = []
    for word in in_text.lower().split():
        word = _MANUAL.setdefault(word, word)
        if word not in _ART:
            out_text.append(word)
    for word_id, word in enumerate(out_text):
        if word in _CONTRACTIONS:
            out_text[word_id] = _CONTRACTIONS[word]
    return " ".join(out_text)


def released(answer: str) -> str:
    """A gold as VQA releases it: the annotations' answers went through the same processing when collected (the
    evaluation itself only re-punctuates golds), so the oracle gets golds in that form."""
    return _process_digit_article(_process_punctuation(answer))


def official_vqa(res_ans: str, gt_answers: list[str]) -> float:
    gt_answers = [released(a) for a in gt_answers]
    res_ans = res_ans.replace("\n", " ").replace("\t", " ").strip()
    res_ans = _process_punctuation(res_ans)
    res_ans = _process_digit_article(res_ans)
    gts = [{"answer": a, "answer_id": i} for i, a in enumerate(gt_answers)]
    if len(set(gt_answers)) > 1:
        for ans_dic in gts:
            ans_dic["answer"] = _process_punctuation(ans_dic["answer"])
    gt_acc = []
    for gt_ans_datum in gts:
        other_gt_ans = [item for item in gts if item != gt_ans_datum]
        matching_ans = [item for item in other_gt_ans if item["answer"] == res_ans]
        gt_acc.append(min(1, float(len(matching_ans)) / 3))
    return sum(gt_acc) / len(gt_acc)


# --- POPE's evaluate.py, transcribed ----------------------------------------------------------------------


def official_pope(text: str) -> str:
    if text.find(".") != -1:
        text = text.split(".")[0]
    text = text.replace(",", "")
    words = text.split(" ")
    if "No" in words or "not" in words or "no" in words:
        return "no"
    return "yes"


# Answers equal to all ten humans' (already-normalised golds, as released) that a canonicaliser in front of the
# rule scored 0; and phrases and sentences.
IDENTICAL = ["one way", "10:30", "route 66", "7 up", "$3.99", "iphone 6", "no parking", "u.s. air force", "yes", "2"]
VQA_CASES = [
    ("One way.", ["one way"] * 10),
    ("10:30", ["10:30"] * 7 + ["10:35"] * 3),
    ("Route 66", ["route 66"] * 10),
    ("$3.99", ["$3.99"] * 2 + ["3.99"] * 8),
    ("the iPhone 6", ["iphone 6"] * 10),
    ("two", ["2"] * 3 + ["3"] * 7),
    ("Yes, there is a dog.", ["yes"] * 10),
    ("There are 2", ["2"] * 10),
    ("no", ["no"] * 9 + ["yes"]),
    ("It's a dog!", ["it's dog"] * 4 + ["dog"] * 6),
    ("dont know", ["don't know"] * 10),
    ("1,000", ["1000"] * 10),
    ("red-white", ["red white"] * 5 + ["red"] * 5),
    ("u.s. air force", ["us air force"] * 10),
]


@pytest.mark.parametrize("answer", IDENTICAL)
def test_vqa_answer_identical_to_the_humans_scores_one(answer):
    assert S.vqa_accuracy(answer, [answer] * 10) == official_vqa(answer, [answer] * 10) == 1.0


@pytest.mark.parametrize("answer, golds", VQA_CASES)
def test_vqa_accuracy_is_the_official_evaluation(answer, golds):
    assert S.score(answer, golds, "vqa") == pytest.approx(official_vqa(answer, golds))


def test_vqa_words_and_phrases_by_hand():
    assert S.score("none of them", ["none of them"] * 10, "vqa") == 1.0  # both sides normalised alike
    assert S.score("Yes, there is a dog.", ["yes"] * 10, "vqa") == 0.0  # VQA wants the short answer itself
    assert S.score("two", ["2"] * 3 + ["3"] * 7, "vqa") == pytest.approx(0.9)


POPE_ANSWERS = [
    "Yes",
    "No",
    "yes",
    "no",
    "There is no dog in the image.",
    "Yes, there is a dog.",
    "No, there is not.",
    "NO",
    "The dog is not visible. Yes.",
    "I see a dog",
    "Nope",
    "There is a cat, but no dog.",
    "Not at all",
    "no.",
    "Yes. There is no cat.",
]


@pytest.mark.parametrize("answer", POPE_ANSWERS)
def test_pope_reading_is_its_evaluation_script(answer):
    assert S.pope_reading(answer) == official_pope(answer)
    assert S.score(answer, ["no"], "yesno") == float(official_pope(answer) == "no")
    assert S.score(answer, ["Yes"], "yesno") == float(official_pope(answer) == "yes")


def test_pope_by_hand():
    assert S.score("There is no dog in the image.", ["no"], "yesno") == 1.0  # the sentence
    assert S.score("Yes, there is a red circle.", ["yes"], "yesno") == 1.0


@pytest.mark.parametrize("n", [*range(0, 130), 200, 999, 1000, 1001, 2024, 12_345, 100_000, 1_000_000, 3_000_021])
def test_counts_in_words_of_any_size(n):
    words = num2words(n)  # "one hundred and five", "twenty-one"
    assert S.integer(words) == n and S.integer(f"There are {words} circles.") == n
    assert S.score(f"I count {words}.", [str(n)], "count") == 1.0
    assert S.score(f"I count {words}.", [str(n + 1)], "count") == 0.0


def test_counts_by_hand():
    assert S.integer("twelve") == 12 and S.integer("thirteen") == 13  # past the old list's end
    assert S.integer("There are no circles.") == 0 and S.integer("none") == 0
    assert S.integer("No, there are two.") == 2  # a named number before "no"
    assert S.integer("3 or four") == 3 and S.integer("many") is None and S.integer("one way") == 1
    assert S.score("many", ["3"], "count") == 0.0 and S.score("There are 3.", ["three"], "count") == 1.0
    assert S.whole_integer("twenty-one") == 21 and S.whole_integer("one way") is None and S.whole_integer("no") is None


@pytest.mark.parametrize(
    "answer, relation",
    [
        ("on the left", "left"),
        ("It is on the right side.", "right"),
        ("to the left of the plate", "left"),
        ("on top of the box", "on top of"),
        ("It sits on top.", "on top of"),
        ("It is on the table", "on"),
        ("in front of the door", "in front of"),
        ("It is in the box", "in"),
        ("underneath", "under"),
        ("beside the cup", "next to"),
        ("a red ball", None),
        ("above", "above"),
    ],
)
def test_relations_by_hand(answer, relation):
    assert S.relation(answer) == relation


def test_relation_scores():
    assert S.score("on the left", ["left"], "relation") == 1.0 and S.score("on the left", ["on"], "relation") == 0.0
    assert S.score("It is on top of the box.", ["on top of"], "relation") == 1.0
    assert S.score("It is on the right side.", ["left"], "relation") == 0.0


def test_exact_is_the_normalised_gold_also_in_a_phrase():
    assert S.score("the blue one", ["blue"], "exact") == 1.0 and S.score("Blue.", ["blue"], "exact") == 1.0
    assert S.score("bluish", ["blue"], "exact") == 0.0 and S.score("green", ["Green "], "exact") == 1.0


@pytest.mark.parametrize(
    "answer, metric, decided",
    [
        ("Yes, there is a dog.", "yesno", "Yes"),
        ("There is no dog.", "yesno", "no"),
        ("There are three.", "count", "three"),
        ("There are twenty-one.", "count", "twenty-one"),
        ("It is on the left.", "relation", "left"),
        ("on top of it", "relation", "top"),
        ("blue", "exact", None),
        ("many", "count", None),
    ],
)
def test_decisive_span(answer, metric, decided):
    span = S.decisive_span(answer, metric)
    assert (answer[span[0] : span[1]] if span else None) == decided


def test_self_consistency_votes_by_the_benchmarks_reading():
    samples = ["Yes.", "Yes, there is one.", "yes", "No.", "There is no dog."]
    assert majority_support(samples, "yesno") == ("yes", 0.6)
    assert majority_support(samples, "exact")[1] == 0.4  # as text, the three yeses are two different answers
    assert majority_support(["three", "There are 3.", "3", "four"], "count") == ("3", 0.75)
    assert majority_support(["on the left", "left", "It is on the right."], "relation") == ("left", 2 / 3)


def test_gold_forms():
    assert S.gold_forms("Green ") == ["Green", "green"]
    assert S.gold_forms("3", "count") == ["3", "three", "Three"]
    assert S.gold_forms("yes", "yesno") == ["yes", "Yes"]
    with pytest.raises(DataError, match="empty gold"):
        S.gold_forms("  ")


def test_rules_refused_with_one_line():
    with pytest.raises(InputError, match="judge model"):
        S.score("A bus.", ["a red bus"], "open")
    with pytest.raises(InputError, match="not a scoring rule"):
        S.score("x", ["x"], "fuzzy")
    with pytest.raises(InputError, match="at least one gold"):
        S.score("x", [], "exact")


def test_examples_know_their_question_form():
    assert Example("a.png", "Is there?", "yes", metric="yesno").closed_form
    assert not Example("a.png", "What brand?", ("nike",) * 10, metric="vqa").closed_form
    assert Example("a.png", "What brand?", ("nike",) * 10, metric="vqa", closed_form=True).closed_form
