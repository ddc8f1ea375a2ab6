"""Benchmark loaders: every one returns ``Record``s, turned into ``Example``s for the model.

A record is the image file name, the question, the gold answers, the scoring rule (``metric``,
applied by ``analyses.answers.score``) and whether the answer is closed-form. Images come from a
folder the user names; ``check_images`` reports every missing one, with the count, before any
model work starts.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from analyses.answers import canonicalise, relation
from analyses.data.examples import Example


@dataclass(frozen=True)
class Record:
    question_id: int | str
    image: str
    text: str
    golds: tuple[str, ...]
    type: str = "all"
    metric: str = "exact"  # how analyses.answers.score credits an answer: exact, vqa, count, relation, open
    closed_form: bool = True
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def label(self) -> str:
        return self.golds[0]


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
        # the commonest human answer first: it is the reference whose token the truth margin follows
        counts = Counter(x["answer"] for x in a["answers"])
        golds = tuple(sorted((x["answer"] for x in a["answers"]), key=lambda g: -counts[g]))
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
                   "open", False) for q in _read_json_records(Path(questions))]


def load_counting_spatial(path: str | Path) -> list[Record]:
    """A counting + spatial suite: JSON lines with integer labels (scored by the integer), relation labels
    ("left", "above", ...: scored by the relation named) or other labels (yes/no, attributes: exact)."""
    records = []
    for r in _read_json_records(Path(path)):
        label = str(r["label"]).strip()
        kind = r.get("type", "count" if label.isdigit() else "spatial")
        spatial = canonicalise(label) not in ("yes", "no") and relation(label) is not None
        metric = "count" if label.isdigit() else "relation" if spatial else "exact"
        records.append(Record(r["question_id"], r["image"], r["text"], (label,), kind, metric))
    return records


FORMATS = ("pope", "counting", "vqav2", "textvqa", "llava_bench")
NEEDS_ANNOTATIONS = {"vqav2": "the annotations JSON (ten human answers per question)",
                     "llava_bench": "the reference answers file (answers_gpt4.jsonl)"}


def detect_format(path: str | Path) -> str:
    """The benchmark format of a questions file, read from its content.

    A JSON object with "questions" is VQAv2; one with "data" entries holding "answers" is TextVQA;
    records with question_id, image, text and a label are POPE (yes/no labels only; Shapes files too)
    or a counting/spatial suite (other labels); records without a label are LLaVA-Bench questions."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        data = None  # JSON lines (or not JSON at all: the loader will say where)
    if isinstance(data, dict) and "questions" in data:
        return "vqav2"
    if isinstance(data, dict) and isinstance(data.get("data"), list) and data["data"] and "answers" in data["data"][0]:
        return "textvqa"
    records = [data] if isinstance(data, dict) else data if isinstance(data, list) else _read_json_records(path)
    if not records or not isinstance(records[0], dict):
        raise ValueError(f"{path}: no question records found; pass --format one of {FORMATS}")
    first = records[0]
    if {"question_id", "image", "text"} <= set(first) and "label" not in first:
        return "llava_bench"
    if "label" in first:
        labels = {str(r.get("label", "")).strip().lower() for r in records}
        return "pope" if labels <= {"yes", "no"} else "counting"
    raise ValueError(f"{path}: records hold {sorted(first)}; expected POPE's question_id, image, text, label "
                     f"or another format: pass --format one of {FORMATS}")


def load(path: str | Path, annotations: str | Path | None = None, format: str | None = None) -> list[Record]:
    """Any supported benchmark file, its format detected from the content unless ``format`` is given."""
    format = format or detect_format(path)
    if format not in FORMATS:
        raise ValueError(f"unknown benchmark format {format!r}; one of {FORMATS}")
    if format in NEEDS_ANNOTATIONS and annotations is None:
        raise ValueError(f"{path} is {format}: it needs --annotations, {NEEDS_ANNOTATIONS[format]}")
    if format not in NEEDS_ANNOTATIONS and annotations is not None:
        raise ValueError(f"{path} is {format}, whose answers are in the file itself: drop --annotations")
    if format == "vqav2":
        return load_vqav2(path, annotations)
    if format == "llava_bench":
        return load_llava_bench(path, annotations)
    return {"pope": load_pope, "counting": load_counting_spatial, "textvqa": load_textvqa}[format](path)


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
    return [Example(Path(folder) / r.image, r.text, r.golds, r.type, r.metric, r.question_id) for r in records]
