"""Benchmark loaders: every one returns ``Record``s, turned into ``Example``s for the model.

A record is the image file name, the question, the gold answers, the scoring rule (``metric``,
applied by ``analyses.answers.score``) and whether the answer is closed-form. Images come from a
folder the user names; ``check_images`` reports every missing one, with the count, before any
model work starts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from analyses.data.examples import Example


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
    return [Example(Path(folder) / r.image, r.text, r.golds, r.type, r.metric, r.question_id) for r in records]
