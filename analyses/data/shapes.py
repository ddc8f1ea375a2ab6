"""The Shapes benchmark: coloured shapes on a noisy background, with questions that have ground truth.

Deterministic by seed. Question families (the ``type`` field):

- ``exist_random`` / ``exist_popular`` / ``exist_adversarial``: POPE-style "is there a red
  circle in the image ?", half yes; the "no" objects are a random absent object, the most
  common absent object (objects are drawn with a skewed prior), or an absent object that
  shares a colour or a shape with one present.
- ``count``: "how many circles are there ?" -> "0" .. "5".
- ``spatial_left`` / ``spatial_above``: "is the red circle left of the blue square ?", half yes,
  only asked when both objects are unique and clearly apart.
- ``attribute``: "what colour is the circle ?", only asked when that shape is unique.
- ``spatial_side`` (only in ``WORD_TYPES``): "is the red circle on the left or on the right of the
  blue square ?" -> "left" / "right", scored by the relation the answer names.

``label`` is the gold answer word (the one-token toys emit it). ``spoken(sample)`` is the same answer
in words, as the words toy is trained to say it: "yes , there is a red circle .", "there are two
circles .", "the blue one .", "on the left .".

    >>> samples = generate(4, seed=0)
    >>> [s.type for s in samples] == [s.type for s in generate(4, seed=0)]
    True
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from vlm_lens.errors import InputError

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 200, 30)}
SHAPES = ("square", "circle", "triangle")
PLURAL = {"square": "squares", "circle": "circles", "triangle": "triangles"}
SINGULAR = {plural: shape for shape, plural in PLURAL.items()}
NUMBERS = ("0", "1", "2", "3", "4", "5")
# Skewed prior over objects, so "popular" negatives mean something: earlier colours/shapes are commoner.
_COLOUR_P = np.array([0.4, 0.3, 0.2, 0.1])
_SHAPE_P = np.array([0.5, 0.3, 0.2])
OBJECTS = [(c, s) for c in COLOURS for s in SHAPES]
POPULARITY = sorted(OBJECTS, key=lambda o: -_COLOUR_P[list(COLOURS).index(o[0])] * _SHAPE_P[SHAPES.index(o[1])])

# Question-family mixture (existence split evenly over its three negative kinds).
TYPES = ("exist_random", "exist_popular", "exist_adversarial", "count", "spatial_left", "spatial_above", "attribute")
WORD_TYPES = (*TYPES, "spatial_side")  # the words benchmark adds a question whose answer is a relation phrase
_TYPE_P = {
    "exist_random": 0.15,
    "exist_popular": 0.15,
    "exist_adversarial": 0.15,
    "count": 0.2,
    "spatial_left": 0.1,
    "spatial_above": 0.1,
    "attribute": 0.15,
    "spatial_side": 0.1,
}

WORDS = (
    *COLOURS,
    *SHAPES,
    *PLURAL.values(),
    *NUMBERS,
    "yes",
    "no",
    "is",
    "there",
    "a",
    "in",
    "the",
    "image",
    "?",
    "how",
    "many",
    "are",
    "what",
    "colour",
    "left",
    "of",
    "above",
)
NUMBER_WORDS = ("no", "one", "two", "three", "four", "five")  # a count in words ("there are no circles .")
SPOKEN_WORDS = (*WORDS, ",", ".", "it", "on", "or", "right", "below", "one", "two", "three", "four", "five")


@dataclass(frozen=True)
class Shape:
    colour: str
    shape: str
    x0: int
    y0: int
    size: int

    @property
    def centre(self) -> tuple[float, float]:
        return self.x0 + self.size / 2, self.y0 + self.size / 2


@dataclass(frozen=True)
class Sample:
    question_id: int
    image: str  # file name under images/
    text: str
    label: str
    type: str
    shapes: tuple[Shape, ...]

    def record(self) -> dict:
        return {
            "question_id": self.question_id,
            "image": self.image,
            "text": self.text,
            "label": self.label,
            "type": self.type,
        }


def sample_scene(rng: np.random.Generator, size: int = 32, max_shapes: int = 5) -> tuple[Shape, ...]:
    """1-5 shapes of 6-10 px (scaled with the canvas), boxes apart by at least a pixel."""
    n = int(rng.integers(1, max_shapes + 1))
    lo, hi = max(4, size * 6 // 32), max(6, size * 10 // 32)
    shapes: list[Shape] = []
    for _ in range(200):
        if len(shapes) == n:
            break
        side = int(rng.integers(lo, hi + 1))
        x0, y0 = (int(v) for v in rng.integers(0, size - side + 1, size=2))
        if any(
            x0 < s.x0 + s.size + 1 and s.x0 < x0 + side + 1 and y0 < s.y0 + s.size + 1 and s.y0 < y0 + side + 1
            for s in shapes
        ):
            continue
        colour = list(COLOURS)[int(rng.choice(len(COLOURS), p=_COLOUR_P))]
        shape = SHAPES[int(rng.choice(len(SHAPES), p=_SHAPE_P))]
        shapes.append(Shape(colour, shape, x0, y0, side))
    return tuple(shapes)


def render(shapes: tuple[Shape, ...], size: int = 32, seed: int = 0) -> np.ndarray:
    """RGB uint8 [size, size, 3]: grey background with noise; shapes in exact palette colours."""
    rng = np.random.default_rng(seed)
    background = 128 + rng.integers(-20, 21, size=(size, size, 1))
    image = Image.fromarray(np.repeat(background, 3, axis=2).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for s in shapes:
        x1, y1 = s.x0 + s.size - 1, s.y0 + s.size - 1
        fill = COLOURS[s.colour]
        if s.shape == "square":
            draw.rectangle((s.x0, s.y0, x1, y1), fill=fill)
        elif s.shape == "circle":
            draw.ellipse((s.x0, s.y0, x1, y1), fill=fill)
        else:
            draw.polygon([(s.x0 + (s.size - 1) / 2, s.y0), (s.x0, y1), (x1, y1)], fill=fill)
    return np.asarray(image)


def _existence(rng, shapes, kind: str) -> tuple[str, str] | None:
    present = {(s.colour, s.shape) for s in shapes}
    absent = [o for o in OBJECTS if o not in present]
    if rng.random() < 0.5:
        obj = sorted(present)[int(rng.integers(len(present)))]
        answer = "yes"
    else:
        if kind == "random":
            pool = absent
        elif kind == "popular":
            pool = [o for o in POPULARITY if o in absent][:3]
        else:
            pool = [o for o in absent if any(o[0] == p[0] or o[1] == p[1] for p in present)]
        if not pool:
            return None
        obj = pool[int(rng.integers(len(pool)))]
        answer = "no"
    return f"is there a {obj[0]} {obj[1]} in the image ?", answer


def _spatial(rng, shapes, relation: str, size: int) -> tuple[str, str] | None:
    counts = {}
    for s in shapes:
        counts[(s.colour, s.shape)] = counts.get((s.colour, s.shape), 0) + 1
    unique = [s for s in shapes if counts[(s.colour, s.shape)] == 1]
    axis = 0 if relation in ("left", "side") else 1
    margin = size / 8
    pairs = [(a, b) for a in unique for b in unique if b.centre[axis] - a.centre[axis] >= margin]
    if not pairs:
        return None
    a, b = pairs[int(rng.integers(len(pairs)))]  # a is left of / above b
    if relation == "side":
        if rng.random() < 0.5:
            a, b, answer = b, a, "right"
        else:
            answer = "left"
        return f"is the {a.colour} {a.shape} on the left or on the right of the {b.colour} {b.shape} ?", answer
    if rng.random() < 0.5:
        a, b, answer = b, a, "no"
    else:
        answer = "yes"
    phrase = "left of" if relation == "left" else "above"
    return f"is the {a.colour} {a.shape} {phrase} the {b.colour} {b.shape} ?", answer


def ask(rng: np.random.Generator, shapes: tuple[Shape, ...], kind: str, size: int = 32) -> tuple[str, str] | None:
    """A question of family ``kind`` about the scene, and its answer; None if the scene cannot support it."""
    if kind.startswith("exist_"):
        return _existence(rng, shapes, kind.removeprefix("exist_"))
    if kind == "count":
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        return f"how many {PLURAL[shape]} are there ?", str(sum(s.shape == shape for s in shapes))
    if kind.startswith("spatial_"):
        return _spatial(rng, shapes, kind.removeprefix("spatial_"), size)
    if kind == "attribute":
        singles = [s for s in shapes if sum(t.shape == s.shape for t in shapes) == 1]
        if not singles:
            return None
        s = singles[int(rng.integers(len(singles)))]
        return f"what colour is the {s.shape} ?", s.colour
    raise InputError(f"unknown question family {kind!r}; one of {WORD_TYPES}")


def metric_of(kind: str) -> str:
    """The scoring rule of a question family: POPE's yes/no reading, the integer, the relation named, or the
    colour named."""
    return {"count": "count", "attribute": "exact", "spatial_side": "relation"}.get(kind, "yesno")


def spoken(sample: Sample) -> str:
    """The sample's answer in words, one fixed phrasing per family (what the words toy is trained to say):
    "yes , there is a red circle .", "no , it is on the right .", "there are no circles .", "the blue one .",
    "on the left ."; every phrasing is scored right by ``metric_of(sample.type)`` against ``sample.label``."""
    words = sample.text.split()
    if sample.type.startswith("exist_"):
        obj = " ".join(words[3:5])
        return f"yes , there is a {obj} ." if sample.label == "yes" else f"no , there is no {obj} ."
    if sample.type in ("spatial_left", "spatial_above"):
        where = {"spatial_left": ("on the left", "on the right"), "spatial_above": ("above", "below")}[sample.type]
        return f"yes , it is {where[0]} ." if sample.label == "yes" else f"no , it is {where[1]} ."
    if sample.type == "count":
        n, plural = int(sample.label), words[2]
        return f"there is one {SINGULAR[plural]} ." if n == 1 else f"there are {NUMBER_WORDS[n]} {plural} ."
    if sample.type == "attribute":
        return f"the {sample.label} one ."
    if sample.type == "spatial_side":
        return f"on the {sample.label} ."
    raise InputError(f"unknown question family {sample.type!r}; one of {WORD_TYPES}")


def generate(n: int, seed: int, size: int = 32, types: tuple[str, ...] = TYPES) -> list[Sample]:
    """n questions, one scene each, deterministic in (n, seed, size, types)."""
    rng = np.random.default_rng(seed)
    weights = np.array([_TYPE_P[t] for t in types])
    samples: list[Sample] = []
    while len(samples) < n:
        kind = types[int(rng.choice(len(types), p=weights / weights.sum()))]
        shapes = sample_scene(rng, size)
        qa = ask(rng, shapes, kind, size)
        if qa is None:
            continue
        qid = len(samples) + 1
        samples.append(Sample(qid, f"shapes_{seed}_{qid:06d}.png", qa[0], qa[1], kind, shapes))
    return samples


def image_of(sample: Sample, seed: int, size: int = 32) -> np.ndarray:
    """The rendered image of a sample (noise seeded by the benchmark seed and question id)."""
    return render(sample.shapes, size, seed=seed * 1_000_003 + sample.question_id)


def write_benchmark(out: str | Path, n: int, seed: int, size: int = 32) -> Path:
    """``out/questions.jsonl`` (POPE's JSON-lines records plus ``type``) and ``out/images/``."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    samples = generate(n, seed, size)
    with open(out / "questions.jsonl", "w") as f:
        for s in samples:
            Image.fromarray(image_of(s, seed, size)).save(out / "images" / s.image)
            f.write(json.dumps(s.record()) + "\n")
    with open(out / "scenes.json", "w") as f:  # the ground-truth scene of every question
        json.dump({s.question_id: [asdict(x) for x in s.shapes] for s in samples}, f)
    return out / "questions.jsonl"
