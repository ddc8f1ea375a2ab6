"""Everything a run will touch, checked before a model is loaded.

    dataset = prepare(cfg, out)          # raises DataError with the fix; returns the examples and their digests

Checked, in order: the model name (a path must be a checkpoint folder); the output folder (a folder, writable); the benchmark (parsed whole: file and
line of any bad record, labels the benchmark's scorer can use, unique question ids); ``n`` against
the questions the file holds; every image the first ``n`` questions use (inside ``--images``,
present, decodable). Each question and image gets a sha256 digest: extraction stores them and
refuses to resume against data that changed (``analyses.study.extract``). Reading and hashing the
images costs one pass over their bytes (~3,000 COCO images, 0.5 GB: a few seconds).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from analyses.data import benchmarks, shapes
from analyses.data.examples import Example, shapes_examples
from analyses.files import sha256
from analyses.study.config import VRPConfig
from vlm_lens.errors import DataError
from vlm_lens.zoo import check_name

SHAPES_EVAL_SEED = 123  # the default benchmark: Shapes questions no toy model trained on
# the benchmarks built in, by name: Shapes, and Shapes with a family answered by a relation phrase (for toys that
# answer in words; its other questions are Shapes' own)
BUILT_IN = {"shapes": shapes.TYPES, "shapes-words": shapes.WORD_TYPES}


@dataclass
class Dataset:
    """The first ``n`` questions of a benchmark, checked, with their digests."""

    examples: list[Example]
    questions: int  # how many the benchmark holds
    digests: list[list[str]]  # per example: [question sha256, image sha256, image name]
    files: dict[str, str]  # the benchmark (and annotations) file's sha256, for the record


def check_out(out: str | Path) -> Path:
    """``out`` is (or can become) a folder this process can write into."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file; give a folder (it will hold the extraction, tables and report)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-check-"):
            pass
    except OSError as e:
        raise DataError(
            f"cannot write into --out {out} ({e.strerror or e}); choose a folder you can write to"
        ) from None
    return out


def question_digest(example: Example) -> str:
    record = [example.question_id, example.text, list(example.golds), example.type, example.metric]
    return hashlib.sha256(json.dumps(record).encode()).hexdigest()


def image_digest(image: Image.Image | Path | str) -> tuple[str, str]:
    """(sha256, name) of an image file's bytes, or of an in-memory image's pixels."""
    if isinstance(image, Image.Image):
        digest = hashlib.sha256(f"{image.mode}{image.size}".encode() + image.tobytes()).hexdigest()
        return digest, "(in memory)"
    return sha256(image), Path(image).name


def digests(examples: list[Example]) -> list[list[str]]:
    """Per example: the question's and the image's sha256, and the image's name (what a changed-data error names)."""
    return [[question_digest(e), *image_digest(e.image)] for e in examples]


def load_benchmark(cfg: VRPConfig, allow_outside_images: bool = False, progress: bool = True) -> Dataset:
    """The benchmark's first ``n`` questions, every record and image checked."""
    if cfg.benchmark in BUILT_IN:
        examples = shapes_examples(cfg.n, SHAPES_EVAL_SEED, types=BUILT_IN[cfg.benchmark])
        return Dataset(examples, cfg.n, digests(examples), {})
    cfg.check_files()
    if cfg.images is None:
        raise DataError(f"--benchmark {cfg.benchmark} needs --images, the folder holding its images")
    records = benchmarks.load(cfg.benchmark, cfg.annotations, cfg.format)
    if cfg.n > len(records):
        raise DataError(
            f"--n {cfg.n} asks for more questions than {cfg.benchmark} holds ({len(records)}): "
            f"use --n {len(records)} or fewer"
        )
    chosen = records[: cfg.n]
    hashes = benchmarks.check_images(chosen, cfg.images, allow_outside_images, progress)
    examples = benchmarks.to_examples(chosen, cfg.images)
    found = [[question_digest(e), hashes[r.image], r.image] for e, r in zip(examples, chosen)]
    files = {
        "benchmark": sha256(cfg.benchmark),
        **({"annotations": sha256(cfg.annotations)} if cfg.annotations else {}),
    }
    return Dataset(examples, len(records), found, files)


def prepare(cfg: VRPConfig, out: str | Path, allow_outside_images: bool = False, progress: bool = True) -> Dataset:
    """Check the output folder and the data; raise ``DataError`` saying what to fix, before any model work."""
    check_name(cfg.model)
    check_out(out)
    return load_benchmark(cfg, allow_outside_images, progress)
