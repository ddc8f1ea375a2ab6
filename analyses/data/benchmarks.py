"""Benchmark loaders: every one returns ``Record``s, turned into ``Example``s for the model.

A record is the image file name, the question, the gold answers, the scoring rule (``metric``,
applied by ``analyses.data.scoring.score``) and whether the answer is closed-form. Files are read
whole and checked record by record before any model work: a record that cannot be scored is
reported with its file and line (``DataError``), and so are duplicate question ids. Images come
from a folder the user names; ``check_images`` refuses paths that leave it and reports every
missing or undecodable image at once, returning each image's sha256 (the run's data fingerprint).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from analyses.data.examples import Example
from analyses.data.scoring import relation, whole_integer
from vlm_lens.errors import DataError
from vlm_lens.inputs import to_rgb


@dataclass(frozen=True)
class Record:
    question_id: int | str
    image: str
    text: str
    golds: tuple[str, ...]
    type: str = "all"
    metric: str = "exact"  # the rule analyses.data.scoring.score applies: yesno, vqa, count, relation, exact, open
    closed_form: bool = True
    extra: dict = field(default_factory=dict, compare=False, hash=False)
    source: str = field(default="", compare=False)  # "file.jsonl line 17": where error messages point

    @property
    def label(self) -> str:
        return self.golds[0]


# --- reading files, with the file and line in every error ----------------------------------------------


def _text(path: Path) -> str:
    if not path.is_file():
        raise DataError(f"benchmark file {path} does not exist" if not path.exists() else f"{path} is not a file")
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path} is not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start}): save it as UTF-8 JSON"
        ) from None


def _json(path: Path):
    """A whole-file JSON document, or None when the file is JSON lines (several documents, one per line)."""
    text = _text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        first = next((line for line in text.splitlines() if line.strip()), "")
        try:
            json.loads(first)
        except json.JSONDecodeError:
            raise DataError(f"{path} line {e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
        return None  # the first line is a document of its own: JSON lines


def _read_json_records(path: Path) -> list[tuple[str, dict]]:
    """(where, record) pairs from a JSON array or JSON lines (POPE ships both)."""
    path = Path(path)
    data = _json(path)
    if data is None:
        pairs = []
        for number, line in enumerate(_text(path).splitlines(), 1):
            if not line.strip():
                continue
            try:
                pairs.append((f"{path.name} line {number}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise DataError(
                    f"{path} line {number}: not valid JSON ({e.msg} at column {e.colno}); "
                    "a line cut short by an interrupted download or edit?"
                ) from None
    elif isinstance(data, list):
        pairs = [(f"{path.name} record {i + 1}", r) for i, r in enumerate(data)]
    else:
        pairs = [(f"{path.name} line 1", data)]
    for where, record in pairs:
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a JSON object with question_id, image, text, got {record!r:.60}")
    return pairs


def _field(record: dict, key: str, where: str, kind: str):
    """``record[key]``, checked: "text" a non-empty string, "id" an int or a string, "answer" a non-empty string or an int."""
    if key not in record:
        raise DataError(f"{where}: lacks {key!r} (it has {sorted(record)})")
    value = record[key]
    ok = {
        "text": isinstance(value, str) and value.strip() != "",
        "id": isinstance(value, (int, str)) and not isinstance(value, bool) and str(value) != "",
        "answer": (isinstance(value, str) and value.strip() != "")
        or (isinstance(value, int) and not isinstance(value, bool)),
    }
    if not ok[kind]:
        wanted = {
            "text": "a non-empty string",
            "id": "an integer or a string",
            "answer": "a non-empty string or an integer",
        }
        raise DataError(f"{where}: {key} is {json.dumps(value)}, expected {wanted[kind]}")
    return value


def _unique(records: list[Record], path: Path) -> list[Record]:
    seen = defaultdict(list)
    for r in records:
        seen[r.question_id].append(r.source)
    repeated = {qid: places for qid, places in seen.items() if len(places) > 1}
    if repeated:
        shown = "; ".join(f"{qid!r} at {', '.join(places[:3])}" for qid, places in list(repeated.items())[:3])
        raise DataError(
            f"{path}: {len(repeated)} question_id(s) appear more than once ({shown}): "
            "each question needs its own id (results are stored by it)"
        )
    return records


# --- the formats -----------------------------------------------------------------------------------------


def _base(r: dict, where: str, image: str = "image", text: str = "text") -> dict:
    return {
        "question_id": _field(r, "question_id", where, "id"),
        "image": _field(r, image, where, "text"),
        "text": _field(r, text, where, "text"),
        "source": where,
    }


def load_pope(path: str | Path) -> list[Record]:
    """POPE (COCO JSON lines, or SEEM/GQA JSON arrays): question_id, image, text, label ("yes" / "no")."""
    path = Path(path)
    records = []
    for where, r in _read_json_records(path):
        label = _field(r, "label", where, "answer")
        if str(label).strip().lower() not in ("yes", "no"):
            raise DataError(
                f"{where}: label {json.dumps(label)} is not yes or no, the only POPE answers; "
                "a counting/spatial suite takes --format counting"
            )
        records.append(
            Record(**_base(r, where), golds=(str(label).strip(),), type=str(r.get("type", path.stem)), metric="yesno")
        )
    return _unique(records, path)


def load_shapes(folder: str | Path) -> list[Record]:
    """The Shapes benchmark folder: POPE's format with a type per question, and counts and colours beside yes/no
    (read as a counting/spatial suite, as ``detect_format`` reads it)."""
    return load_counting_spatial(Path(folder) / "questions.jsonl")


def load_vqav2(questions: str | Path, annotations: str | Path) -> list[Record]:
    """VQAv2: the questions and annotations JSON files; ten human answers each, VQA accuracy."""
    questions, annotations = Path(questions), Path(annotations)
    qs, anns_file = _json(questions), _json(annotations)
    if not isinstance(qs, dict) or not isinstance(qs.get("questions"), list):
        raise DataError(f"{questions}: expected VQAv2's questions file, a JSON object with a 'questions' list")
    if not isinstance(anns_file, dict) or not isinstance(anns_file.get("annotations"), list):
        raise DataError(f"{annotations}: expected VQAv2's annotations file, a JSON object with an 'annotations' list")
    anns = {a.get("question_id"): (i, a) for i, a in enumerate(anns_file["annotations"])}
    subtype = qs.get("data_subtype", "val2014")
    records = []
    for i, q in enumerate(qs["questions"]):
        where = f"{questions.name} question {i + 1}"
        qid = _field(q, "question_id", where, "id")
        image_id = q.get("image_id")
        if not isinstance(image_id, int) or isinstance(image_id, bool):
            raise DataError(f"{where}: image_id is {json.dumps(image_id)}, expected COCO's integer image id")
        if qid not in anns:
            raise DataError(f"{where}: question {qid!r} has no annotation in {annotations}")
        j, a = anns[qid]
        given = a.get("answers")
        if not isinstance(given, list) or not given:
            raise DataError(f"{annotations.name} annotation {j + 1}: no 'answers' list for question {qid!r}")
        golds = [str(_field(x, "answer", f"{annotations.name} annotation {j + 1}", "answer")) for x in given]
        # the commonest human answer first: it is the reference whose token the truth margin follows
        counts = Counter(golds)
        golds = tuple(sorted(golds, key=lambda g: -counts[g]))
        image = f"COCO_{subtype}_{image_id:012d}.jpg"
        records.append(
            Record(
                qid,
                image,
                _field(q, "question", where, "text"),
                golds,
                a.get("answer_type", "all"),
                "vqa",
                a.get("answer_type") in ("yes/no", "number"),
                source=where,
            )
        )
    return _unique(records, questions)


def load_textvqa(path: str | Path) -> list[Record]:
    """TextVQA: {"data": [{question_id, question, image_id, answers}]}; VQA accuracy."""
    path = Path(path)
    data = _json(path)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise DataError(f"{path}: expected TextVQA's JSON object with a 'data' list")
    records = []
    for i, d in enumerate(data["data"]):
        where = f"{path.name} entry {i + 1}"
        given = d.get("answers") if isinstance(d, dict) else None
        if not isinstance(given, list) or not given or not all(isinstance(g, str) and g.strip() for g in given):
            raise DataError(f"{where}: 'answers' must be a non-empty list of strings, got {json.dumps(given)}")
        records.append(
            Record(
                _field(d, "question_id", where, "id"),
                f"{_field(d, 'image_id', where, 'id')}.jpg",
                _field(d, "question", where, "text"),
                tuple(given),
                "textvqa",
                "vqa",
                False,
                source=where,
            )
        )
    return _unique(records, path)


def load_llava_bench(questions: str | Path, answers: str | Path) -> list[Record]:
    """LLaVA-Bench in-the-wild: questions.jsonl and the reference answers file; open-ended."""
    questions = Path(questions)
    refs = {
        _field(r, "question_id", where, "id"): _field(r, "text", where, "text")
        for where, r in _read_json_records(Path(answers))
    }
    records = []
    for where, q in _read_json_records(questions):
        base = _base(q, where)
        if base["question_id"] not in refs:
            raise DataError(f"{where}: question {base['question_id']!r} has no reference answer in {answers}")
        records.append(
            Record(
                **base,
                golds=(refs[base["question_id"]],),
                type=str(q.get("category", "all")),
                metric="open",
                closed_form=False,
            )
        )
    return _unique(records, questions)


def _kind_of_label(label: str) -> str:
    """count (an integer), spatial (a relation), yesno or other (attributes)."""
    if label.lower() in ("yes", "no"):
        return "yesno"
    if whole_integer(label) is not None:
        return "count"
    return "spatial" if relation(label) is not None else "other"


def load_counting_spatial(path: str | Path) -> list[Record]:
    """A counting + spatial suite: JSON lines with integer labels (in digits or words: scored by the integer),
    relation labels ("left", "on top of", ...: scored by the relation named), yes/no labels (POPE's reading)
    or other labels (attributes: ``"exact"``). Every record is closed-form."""
    path = Path(path)
    records = []
    for where, r in _read_json_records(path):
        label = str(_field(r, "label", where, "answer")).strip()
        kind = _kind_of_label(label)
        metric = {"count": "count", "spatial": "relation", "yesno": "yesno", "other": "exact"}[kind]
        records.append(
            Record(
                **_base(r, where),
                golds=(label,),
                type=str(r.get("type", "count" if kind == "count" else "spatial")),
                metric=metric,
            )
        )
    return _unique(records, path)


FORMATS = ("pope", "counting", "vqav2", "textvqa", "llava_bench")
NEEDS_ANNOTATIONS = {
    "vqav2": "the annotations JSON (ten human answers per question)",
    "llava_bench": "the reference answers file (answers_gpt4.jsonl)",
}


def detect_format(path: str | Path) -> str:
    """The benchmark format of a questions file, read from its content.

    A JSON object with "questions" is VQAv2; one with "data" entries holding "answers" is TextVQA;
    records with question_id, image, text and a label are a counting/spatial suite when some label
    is an integer or a spatial relation, POPE otherwise (Shapes files too: the loader then insists on
    yes/no); records without a label are LLaVA-Bench questions."""
    path = Path(path)
    data = _json(path)
    if isinstance(data, dict) and "questions" in data:
        return "vqav2"
    if isinstance(data, dict) and isinstance(data.get("data"), list) and data["data"] and "answers" in data["data"][0]:
        return "textvqa"
    records = [r for _, r in _read_json_records(path)]
    if not records:
        raise DataError(f"{path}: no question records found; pass --format one of {FORMATS}")
    first = records[0]
    if {"question_id", "image", "text"} <= set(first) and "label" not in first:
        return "llava_bench"
    if "label" in first:
        kinds = {_kind_of_label(str(r.get("label", "")).strip()) for r in records}
        return "counting" if kinds - {"yesno"} else "pope"
    raise DataError(
        f"{path}: records hold {sorted(first)}; expected POPE's question_id, image, text, label "
        f"or another format: pass --format one of {FORMATS}"
    )


def load(path: str | Path, annotations: str | Path | None = None, format: str | None = None) -> list[Record]:
    """Any supported benchmark file, its format detected from the content unless ``format`` is given."""
    format = format or detect_format(path)
    if format not in FORMATS:
        raise DataError(f"unknown benchmark format {format!r}; one of {FORMATS}")
    if format in NEEDS_ANNOTATIONS and annotations is None:
        raise DataError(f"{path} is {format}: it needs --annotations, {NEEDS_ANNOTATIONS[format]}")
    if format not in NEEDS_ANNOTATIONS and annotations is not None:
        raise DataError(f"{path} is {format}, whose answers are in the file itself: drop --annotations")
    if format == "vqav2":
        return load_vqav2(path, annotations)
    if format == "llava_bench":
        return load_llava_bench(path, annotations)
    return {"pope": load_pope, "counting": load_counting_spatial, "textvqa": load_textvqa}[format](path)


# --- images -----------------------------------------------------------------------------------------------


def _inside(folder: Path, name: str) -> bool:
    """Whether ``folder / name`` stays inside ``folder``: as written (no absolute path, no ``..`` out of it), and
    once symbolic links are resolved (a link inside the folder to a file outside it leaves it too)."""
    if os.path.isabs(name):
        return False
    base = os.path.normpath(folder)
    if not os.path.normpath(os.path.join(base, name)).startswith(base + os.sep):
        return False
    real = os.path.realpath(folder)
    return os.path.realpath(os.path.join(base, name)).startswith(real + os.sep)


def _decode_error(data: bytes) -> str | None:
    """Why these bytes are not a readable image, or None. JPEGs decode at reduced scale (draft): fast, and a
    truncated or corrupt file still fails."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # past PIL's limit: refused, not decoded
            with Image.open(io.BytesIO(data)) as image:
                image.draft("RGB", (64, 64))
                image.load()
                to_rgb(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        return f"its header claims more pixels than PIL decodes safely ({e})".replace("\n", " ")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:  # InputError: a mode with no RGB form
        return str(e) or type(e).__name__
    return None


def check_images(
    records: list[Record], folder: str | Path, allow_outside: bool = False, progress: bool = False
) -> dict[str, str]:
    """Every image the records name, checked before any model work: inside ``folder`` (unless ``allow_outside``),
    present, and decodable. Returns each image's sha256; raises ``DataError`` naming every bad one and the count."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(
            f"image folder {folder} does not exist" if not folder.exists() else f"--images {folder} is not a folder"
        )
    names = sorted({r.image for r in records})
    outside = [n for n in names if not _inside(folder, n)]
    if outside and not allow_outside:
        raise DataError(
            f"{len(outside)} image path(s) leave the image folder {folder} ({shown(outside)}); "
            "pass --allow-outside-images if the benchmark means to read them"
        )
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise DataError(f"{len(missing)} image(s) missing from {folder}: {shown(missing)}")
    hashes, broken = {}, []
    for name in tqdm(names, desc="check images", unit="img", disable=not progress or len(names) < 200):
        data = (folder / name).read_bytes()
        why = _decode_error(data)
        if why:
            broken.append(f"{name} ({why})")
        hashes[name] = hashlib.sha256(data).hexdigest()
    if broken:
        raise DataError(f"{len(broken)} image(s) in {folder} cannot be decoded: {shown(broken, 3)}")
    return hashes


def shown(items: list, most: int = 5) -> str:
    """The first ``most`` items, comma-separated, "..." when there are more: how errors list what is wrong."""
    return ", ".join(map(str, items[:most])) + (" ..." if len(items) > most else "")


def to_examples(records: list[Record], folder: str | Path) -> list[Example]:
    """Examples whose images are opened (RGB) batch by batch (``check_images`` first, to fail before the model)."""
    return [
        Example(Path(folder) / r.image, r.text, r.golds, r.type, r.metric, r.question_id, r.closed_form)
        for r in records
    ]
