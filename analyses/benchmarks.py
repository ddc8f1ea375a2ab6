"""Benchmark loaders, answer canonicalisation (the study's Eq. 4) and scoring.

Every loader returns ``Record``s: the image file name, the question, the gold answers and how
to score a prediction. Images come from a folder the user names; ``check_images`` reports every
missing one, with the count, before any model work starts.

    >>> canonicalise("Yes, there is.")
    'yes'
    >>> canonicalise("There are two dogs")
    '2'
    >>> vqa_accuracy("two", ["2"] * 4 + ["3"] * 6), vqa_accuracy("two", ["2"] * 3 + ["3"] * 7)
    (1.0, 0.9)
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from analyses.evaluation import Example

# --- canonicalisation (Eq. 4) --------------------------------------------------------------------

NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12",
}
ARTICLES = ("a", "an", "the")
_YES = {"yes", "yeah", "yep", "true", "correct"}
_NO = {"no", "nope", "false", "incorrect"}


def canonicalise(answer: str) -> str:
    """Lower-case, strip punctuation and articles, collapse yes/no, extract integers (number words too)."""
    text = re.sub(r"[^\w\s]", " ", answer.lower())
    words = [w for w in text.split() if w not in ARTICLES]
    if not words:
        return ""
    if words[0] in _YES:
        return "yes"
    if words[0] in _NO:
        return "no"
    numbers = [NUMBER_WORDS.get(w, w) for w in words if w.isdigit() or w in NUMBER_WORDS]
    if numbers:
        return str(int(numbers[0]))
    return " ".join(words)


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
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_DIGITS = re.compile(r"(\d)(,)(\d)")
_DIGIT_MAP = {k: v for k, v in NUMBER_WORDS.items() if k not in ("eleven", "twelve")}


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
    words = [_DIGIT_MAP.get(w, w) for w in out.lower().split()]
    words = [CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES]
    return " ".join(words)


def vqa_accuracy(prediction: str, answers: list[str]) -> float:
    """Official VQA accuracy: min(#matching humans / 3, 1), averaged over the 10 leave-one-out subsets."""
    if not answers:
        raise ValueError("VQA accuracy needs the human answers")
    pred = vqa_normalise(prediction)
    gold = [vqa_normalise(a) for a in answers]
    scores = []
    for i in range(len(gold)):
        others = gold[:i] + gold[i + 1 :]
        scores.append(min(1.0, sum(a == pred for a in others) / 3))
    return sum(scores) / len(scores)


# --- records and loaders -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    question_id: int | str
    image: str
    text: str
    golds: tuple[str, ...]
    type: str = "all"
    metric: str = "exact"  # "exact": canonical match with any gold; "vqa": official VQA accuracy
    closed_form: bool = True
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def label(self) -> str:
        return self.golds[0]

    def score(self, prediction: str) -> float:
        if self.metric == "vqa":
            return vqa_accuracy(prediction, list(self.golds))
        return float(canonicalise(prediction) in {canonicalise(g) for g in self.golds})


def _read_json_records(path: Path) -> list[dict]:
    """A JSON array, or JSON lines (POPE ships both)."""
    text = Path(path).read_text()
    if text.lstrip().startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def load_pope(path: str | Path) -> list[Record]:
    """POPE (COCO JSON lines, or SEEM/GQA JSON arrays): question_id, image, text, label."""
    records = []
    for i, r in enumerate(_read_json_records(Path(path))):
        missing = {"question_id", "image", "text", "label"} - set(r)
        if missing:
            raise ValueError(f"{path}: record {i} lacks {sorted(missing)}")
        records.append(Record(r["question_id"], r["image"], r["text"], (r["label"],), r.get("type", Path(path).stem)))
    return records


def load_shapes(folder: str | Path) -> list[Record]:
    """The Shapes benchmark folder: POPE's format with a type per question."""
    return load_pope(Path(folder) / "questions.jsonl")


def load_vqav2(questions: str | Path, annotations: str | Path) -> list[Record]:
    """VQAv2: the questions and annotations JSON files; ten human answers each, VQA accuracy."""
    qs = json.loads(Path(questions).read_text())
    anns = {a["question_id"]: a for a in json.loads(Path(annotations).read_text())["annotations"]}
    subtype = qs.get("data_subtype", "val2014")
    records = []
    for q in qs["questions"]:
        a = anns.get(q["question_id"])
        if a is None:
            raise ValueError(f"question {q['question_id']} has no annotation in {annotations}")
        golds = tuple(x["answer"] for x in a["answers"])
        image = f"COCO_{subtype}_{q['image_id']:012d}.jpg"
        records.append(Record(q["question_id"], image, q["question"], golds, a.get("answer_type", "all"), "vqa",
                              a.get("answer_type") in ("yes/no", "number")))
    return records


def load_textvqa(path: str | Path) -> list[Record]:
    """TextVQA: {"data": [{question_id, question, image_id, answers}]}; VQA accuracy."""
    data = json.loads(Path(path).read_text())["data"]
    return [Record(d["question_id"], f"{d['image_id']}.jpg", d["question"], tuple(d["answers"]), "textvqa", "vqa", False)
            for d in data]


def load_llava_bench(questions: str | Path, answers: str | Path) -> list[Record]:
    """LLaVA-Bench in-the-wild: questions.jsonl and the reference answers file; open-ended."""
    refs = {r["question_id"]: r["text"] for r in _read_json_records(Path(answers))}
    return [Record(q["question_id"], q["image"], q["text"], (refs[q["question_id"]],), q.get("category", "all"),
                   "exact", False) for q in _read_json_records(Path(questions))]


def load_counting_spatial(path: str | Path) -> list[Record]:
    """A counting + spatial suite: JSON lines with integer or relation labels."""
    records = []
    for r in _read_json_records(Path(path)):
        label = str(r["label"])
        kind = r.get("type", "count" if label.isdigit() else "spatial")
        records.append(Record(r["question_id"], r["image"], r["text"], (label,), kind))
    return records


def check_images(records: list[Record], folder: str | Path) -> None:
    """Raise, naming the missing images and their count, before any model work starts."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    missing = sorted({r.image for r in records if not (folder / r.image).is_file()})
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise FileNotFoundError(f"{len(missing)} image(s) missing from {folder}: {shown}")


def to_examples(records: list[Record], folder: str | Path) -> list[Example]:
    """Examples whose images are opened (RGB) batch by batch, after checking every file exists."""
    check_images(records, folder)
    return [Example(Path(folder) / r.image, r.text, r.label, r.type) for r in records]
