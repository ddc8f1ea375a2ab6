"""Scoring: whether an answer is right, by each benchmark's own published rule and nothing in front of it.

Every ``Record`` / ``Example`` names its rule (``metric``); ``score(prediction, golds, metric)``
applies it to the answer exactly as generated (a word, a phrase or a sentence):

- ``"yesno"``: POPE's evaluation script (``evaluate.py`` of POPE, copied as LLaVA's
  ``eval_pope.py``): keep the text before the first ``.``, drop commas, split on spaces; the
  answer is "no" when one of the words is ``No``, ``no`` or ``not``, "yes" otherwise.
- ``"vqa"`` (VQAv2, TextVQA): the official VQA evaluation (``vqaEval.py``): the answer's
  punctuation, periods, number words (zero..ten), articles and contractions normalised, then
  ``min(#matching humans / 3, 1)`` averaged over the ten leave-one-out subsets of the humans.
  The golds are normalised the same way (the released annotations already are; the rule is
  idempotent on them).
- ``"count"``: the first integer the answer gives, in digits or in words of any size
  ("twenty-one", "one hundred and five"); "no"/"none" counts as 0 when nothing else is named.
- ``"relation"``: the spatial relation the answer names: a direction or a multi-word relation
  ("on the left" is left, "on top of" is on top of) before a bare "on" / "in".
- ``"exact"``: the project's own rule for short free answers without a published scorer (the
  Shapes colours): the VQA-normalised answer equals a normalised gold, or contains it as whole
  words ("the blue one" is blue).
- ``"open"`` (LLaVA-Bench) needs a judge model: refused here.

``reading(answer, metric)`` is what the rule reads from an answer ("yes", "3", "left", the
normalised text): self-consistency groups its samples by it, so one answer is one vote.
``decisive_span`` is where in the answer that reading was decided (the output confidence of a
closed-form answer is that token's probability); ``gold_forms`` are the spellings of a gold the
rule accepts (the truth margin's reference tokens are read from them).

    >>> score("There is no dog in the image.", ["no"], "yesno"), score("one way", ["one way"] * 10, "vqa")
    (1.0, 1.0)
    >>> score("There are twenty-one.", ["21"], "count"), score("It is on the right side.", ["right"], "relation")
    (1.0, 1.0)
    >>> vqa_accuracy("two", ["2"] * 4 + ["3"] * 6), vqa_accuracy("two", ["2"] * 3 + ["3"] * 7)
    (1.0, 0.9)
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence

from num2words import num2words

from vlm_lens.errors import DataError, InputError

# A VQA answer counts as correct from this accuracy on: at least two of ten humans gave it
# (leave-one-out average 0.6; one human gives 0.3). The other rules score 0 or 1.
CORRECT_AT = 0.5
METRICS = ("yesno", "exact", "vqa", "count", "relation", "open")
OPEN_ENDED = "open"
CLOSED_FORM = ("yesno", "count", "relation")  # questions whose answer is one of a closed set

# --- POPE's reading of a yes/no answer --------------------------------------------------------------


def pope_reading(answer: str) -> str:
    """ "yes" or "no" as POPE's ``evaluate.py`` reads an answer (case-sensitive, as published)."""
    text = answer.split(".")[0] if "." in answer else answer
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def _pope_span(answer: str) -> tuple[int, int] | None:
    """Where POPE's reading is decided: the first No/no/not of the first sentence, else the first word."""
    first = answer.split(".")[0]
    for match in re.finditer(r"[^ ]+", first):
        if match.group().replace(",", "") in ("No", "no", "not"):
            return match.start(), match.end()
    match = re.search(r"\w+", answer)
    return (match.start(), match.end()) if match else None


# --- the official VQA answer normalisation and accuracy ----------------------------------------------

_CONTRACTED = (
    "ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't haven't he'd "
    "he'd've he'll he's how'd how'll how's i'd i'd've i'm i've isn't it'd it'd've it'll it's let's ma'am mightn't "
    "mightn't've might've mustn't must've needn't not've o'clock oughtn't 'ow's'at shan't she'd she'd've she'll "
    "she's should've shouldn't shouldn't've somebody'd somebody'd've somebody'll somebody's someone'd someone'd've "
    "someone'll someone's something'd something'd've something'll that's there'd there'd've there're there's "
    "they'd they'd've they'll they're they've 'twas wasn't we'd we'd've we'll we're we've weren't what'll what're "
    "what's what've when's where'd where's where've who'd who'd've who'll who's who've why'll why're why's won't "
    "would've wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've you'll you're you've"
).split()


def _contraction_map() -> dict[str, str]:
    """Every spelling with some apostrophes dropped -> the proper contraction (as the VQA tools map them)."""
    table = {}
    for word in _CONTRACTED:
        parts = word.split("'")
        for keep in itertools.product((False, True), repeat=len(parts) - 1):
            if all(keep):
                continue
            spelled = parts[0] + "".join(("'" if k else "") + p for k, p in zip(keep, parts[1:]))
            table.setdefault(spelled, word)
    return table


CONTRACTIONS = _contraction_map()
_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")  # sic: the official pattern (a period not followed by a digit)
_COMMA_DIGITS = re.compile(r"(\d)(,)(\d)")
_VQA_DIGITS = {
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
}  # vqaEval.manualMap
ARTICLES = ("a", "an", "the")


def vqa_normalise(answer: str) -> str:
    """The VQA evaluation's normalisation: punctuation, periods, number words, articles, contractions."""
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    out = text
    for p in _PUNCT:
        if (p + " " in text or " " + p in text) or _COMMA_DIGITS.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    out = _PERIOD.sub("", out)
    words = [_VQA_DIGITS.get(w, w) for w in out.lower().split()]
    words = [CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES]
    return " ".join(words)


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Official VQA accuracy: min(#matching humans / 3, 1), averaged over the leave-one-out subsets."""
    if not answers:
        raise InputError("VQA accuracy needs the human answers; got none")
    pred = vqa_normalise(prediction)
    gold = [vqa_normalise(a) for a in answers]
    scores = []
    for i in range(len(gold)):
        others = gold[:i] + gold[i + 1 :]
        scores.append(min(1.0, sum(a == pred for a in others) / 3))
    return sum(scores) / len(scores)


# --- integers, in digits or words ------------------------------------------------------------------

_UNITS = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
        "seventeen eighteen nineteen".split()
    )
}
_TENS = {w: 10 * i for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), 2)}
_SCALES = {"hundred": 100, "thousand": 1_000, "million": 1_000_000, "billion": 1_000_000_000}
_NUMBER_WORDS = {**_UNITS, **_TENS, **_SCALES, "none": 0}
_TOKEN = re.compile(r"\d+(?:,\d{3})*|[a-z]+")


def _spoken(words: list[str]) -> tuple[int, int] | None:
    """The integer spelled by the longest run of number words at the start of ``words``, and the run's length."""
    total, current, used, last_number = 0, 0, 0, 0
    for j, word in enumerate(words):
        if word == "and" and used and j + 1 < len(words) and words[j + 1] in _NUMBER_WORDS:
            continue
        if word not in _NUMBER_WORDS:
            break
        if word in _SCALES:
            if not used:
                break
            current = max(current, 1) * _SCALES[word]
            if _SCALES[word] >= 1000:
                total, current = total + current, 0
        else:
            current += _NUMBER_WORDS[word]
        used = last_number = j + 1
    return (total + current, last_number) if used else None


def _numbers(answer: str) -> list[tuple[int, int, int]]:
    """(value, start, end) of each integer an answer names, in order."""
    tokens = list(_TOKEN.finditer(answer.lower()))
    found, i = [], 0
    while i < len(tokens):
        text = tokens[i].group()
        if text[0].isdigit():
            found.append((int(text.replace(",", "")), tokens[i].start(), tokens[i].end()))
            i += 1
            continue
        spoken = _spoken([t.group() for t in tokens[i:]])
        if spoken is None:
            i += 1
            continue
        found.append((spoken[0], tokens[i].start(), tokens[i + spoken[1] - 1].end()))
        i += spoken[1]
    return found


def integer(answer: str) -> int | None:
    """The first integer an answer gives ("There are 3" -> 3, "twenty-one" -> 21); "no ..." is 0 when nothing
    else is named; None when no number is named."""
    span = _integer_span(answer)
    return None if span is None else span[0]


def whole_integer(text: str) -> int | None:
    """The integer ``text`` is, written in digits or in words and nothing else ("21", "twenty-one"), or None."""
    text = text.strip()
    numbers = _numbers(text)
    rest = text.lower()[numbers[0][2] :].strip() if len(numbers) == 1 and numbers[0][1] == 0 else None
    return numbers[0][0] if rest == "" else None


def _integer_span(answer: str) -> tuple[int, int, int] | None:
    numbers = _numbers(answer)
    if numbers:
        return numbers[0]
    match = re.search(r"\bno\b", answer.lower())
    return (0, match.start(), match.end()) if match else None


# --- spatial relations ------------------------------------------------------------------------------

RELATIONS = ("in front of", "on top of", "next to", "left", "right", "above", "below", "under", "behind", "inside")
_BARE = ("on", "in")  # named only when no other relation is
_RELATION_WORDS = {
    "beneath": "below",
    "underneath": "under",
    "over": "above",
    "beside": "next to",
    "within": "inside",
    "top": "on top of",
}


def _relation_span(answer: str) -> tuple[str, int, int] | None:
    words = list(re.finditer(r"\w+", answer.lower()))
    normal = [_RELATION_WORDS.get(w.group(), w.group()) for w in words]
    for phrases in (RELATIONS, _BARE):
        for start in range(len(normal)):
            for phrase in phrases:
                width = 1 if normal[start] == phrase else len(phrase.split())  # a synonym stands for a whole phrase
                if normal[start] == phrase or normal[start : start + width] == phrase.split():
                    return phrase, words[start].start(), words[start + width - 1].end()
    return None


def relation(answer: str) -> str | None:
    """The spatial relation an answer names ("on the left" -> "left", "It sits on top of the box" -> "on top of")."""
    span = _relation_span(answer)
    return None if span is None else span[0]


# --- the one scorer ---------------------------------------------------------------------------------


def _metric(metric: str) -> str:
    if metric not in METRICS:
        raise InputError(f"metric {metric!r} is not a scoring rule: one of {METRICS}")
    if metric == OPEN_ENDED:
        raise InputError(
            "open-ended answers (LLaVA-Bench) are scored by a judge model, which vlm-lens does not run; "
            "the study reports their answers and judge-free metrics instead"
        )
    return metric


def _contains(answer: str, gold: str) -> bool:
    words, part = answer.split(), gold.split()
    return bool(part) and any(words[i : i + len(part)] == part for i in range(len(words) - len(part) + 1))


def reading(answer: str, metric: str = "exact") -> str:
    """What ``metric``'s rule reads from an answer: "yes"/"no", the integer, the relation, else the VQA-normalised
    text (also when the rule finds nothing to read, so that two such answers are one vote only if they agree)."""
    metric = _metric(metric)
    if metric == "yesno":
        return pope_reading(answer)
    found = integer(answer) if metric == "count" else relation(answer) if metric == "relation" else None
    return str(found) if found is not None else vqa_normalise(answer)


def score(prediction: str, golds: Sequence[str] | str, metric: str = "exact") -> float:
    """Credit for ``prediction`` under ``metric``'s rule: the VQA accuracy for ``"vqa"``, else 1.0 or 0.0."""
    golds = [golds] if isinstance(golds, str) else list(golds)
    if not golds:
        raise InputError("scoring needs at least one gold answer; got none")
    metric = _metric(metric)
    if metric == "vqa":
        return vqa_accuracy(prediction, golds)
    if metric == "yesno":
        return float(pope_reading(prediction) in {pope_reading(g.strip().capitalize()) for g in golds})
    if metric == "count":
        value = integer(prediction)
        return float(value is not None and value in {integer(g) for g in golds})
    if metric == "relation":
        named = relation(prediction)
        return float(named is not None and named in {relation(g) for g in golds})
    answer = vqa_normalise(prediction)
    return float(any(answer == vqa_normalise(g) or _contains(answer, vqa_normalise(g)) for g in golds))


def is_correct(
    prediction: str, golds: Sequence[str] | str, metric: str = "exact", threshold: float = CORRECT_AT
) -> bool:
    return score(prediction, golds, metric) >= threshold


def correctness(examples: Sequence, predictions: Sequence[str], threshold: float = CORRECT_AT) -> list[bool]:
    """Binary correctness of each prediction against its example's golds and metric."""
    if len(examples) != len(predictions):
        raise InputError(f"{len(predictions)} predictions for {len(examples)} examples: give one per example")
    return [is_correct(p, e.golds, e.metric, threshold) for p, e in zip(predictions, examples)]


def decisive_span(answer: str, metric: str = "exact") -> tuple[int, int] | None:
    """The characters of ``answer`` where its reading is decided (POPE's no/not or the first word, the integer,
    the relation phrase); None for the free-form rules, or when the rule finds nothing."""
    if metric == "yesno":
        return _pope_span(answer)
    found = _integer_span(answer) if metric == "count" else _relation_span(answer) if metric == "relation" else None
    return None if found is None else (found[1], found[2])


def gold_forms(gold: str, metric: str = "exact") -> list[str]:
    """The spellings of a gold that ``metric``'s rule accepts as that gold, for the truth margin's reference tokens:
    as written, lower case and capitalised; a count's integer also in digits and in words."""
    text = gold.strip()
    if not text:
        raise DataError("an empty gold answer has no spelling to read a truth margin from")
    forms = [text]
    if metric == "count" and integer(text) is not None:
        value = integer(text)
        forms += [str(value), num2words(value)]
    out: list[str] = []
    for form in forms:
        for variant in (form, form.lower(), form.capitalize()):
            if variant not in out:
                out.append(variant)
    return out
