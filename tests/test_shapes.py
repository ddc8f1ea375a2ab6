"""The Shapes generator: deterministic, balanced, and right (checked against the rendered pixels)."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from typer.testing import CliRunner

from analyses.cli import app
from analyses.data import scoring, shapes


def test_deterministic_by_seed(tmp_path):
    assert shapes.generate(300, seed=3) == shapes.generate(300, seed=3)
    assert shapes.generate(300, seed=3) != shapes.generate(300, seed=4)
    digests = []
    for name in ("a", "b"):
        shapes.write_benchmark(tmp_path / name, 50, seed=9)
        files = sorted((tmp_path / name).rglob("*.*"))
        digests.append([(f.name, hashlib.sha256(f.read_bytes()).hexdigest()) for f in files])
    assert digests[0] == digests[1]


def test_balanced_yes_no_and_all_families_present():
    samples = shapes.generate(6000, seed=1)
    types = Counter(s.type for s in samples)
    assert set(types) == set(shapes.TYPES)
    for kind in ("exist_random", "exist_popular", "exist_adversarial", "spatial_left", "spatial_above"):
        labels = [s.label for s in samples if s.type == kind]
        assert 0.45 < labels.count("yes") / len(labels) < 0.55, kind
    existence = [s.label for s in samples if s.type.startswith("exist")]
    assert 0.47 < existence.count("yes") / len(existence) < 0.53


def test_negative_kinds_mean_what_they_say():
    for s in shapes.generate(3000, seed=2):
        if not s.type.startswith("exist") or s.label != "no":
            continue
        words = s.text.split()
        obj = (words[3], words[4])
        present = {(x.colour, x.shape) for x in s.shapes}
        assert obj not in present
        if s.type == "exist_adversarial":
            assert any(obj[0] == c or obj[1] == k for c, k in present)
        if s.type == "exist_popular":
            absent = [o for o in shapes.POPULARITY if o not in present]
            assert obj in absent[:3]


def objects_from_pixels(image: np.ndarray) -> list[tuple[str, str, float, float]]:
    """An independent reading of the scene: exact palette colours, 4-connected blobs, fill ratio -> shape."""
    found = []
    for colour, rgb in shapes.COLOURS.items():
        mask = np.all(image == np.array(rgb, dtype=np.uint8), axis=-1)
        labels, n = ndimage.label(mask)
        for index in range(1, n + 1):
            ys, xs = np.nonzero(labels == index)
            fill = len(xs) / ((xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1))
            kind = "square" if fill > 0.92 else "circle" if fill > 0.66 else "triangle"
            found.append((colour, kind, xs.mean(), ys.mean()))
    return found


def answer_from_pixels(text: str, objects) -> str:
    words = text.split()
    if words[:2] == ["is", "there"]:
        return "yes" if (words[3], words[4]) in {(c, k) for c, k, _, _ in objects} else "no"
    if words[:2] == ["how", "many"]:
        singular = {v: k for k, v in shapes.PLURAL.items()}[words[2]]
        return str(sum(k == singular for _, k, _, _ in objects))
    if words[:2] == ["what", "colour"]:
        return next(c for c, k, _, _ in objects if k == words[4])
    first = next(o for o in objects if o[:2] == (words[2], words[3]))
    if words[4:9] == [
        "on",
        "the",
        "left",
        "or",
        "on",
    ]:  # "is the red circle on the left or on the right of the blue square ?"
        second = next(o for o in objects if o[:2] == (words[-3], words[-2]))
        return "left" if first[2] < second[2] else "right"
    # "is the red circle left of the blue square ?" / "is the red circle above the blue square ?"
    rest = words[6:] if words[4] == "left" else words[5:]
    second = next(o for o in objects if o[:2] == (rest[1], rest[2]))
    if words[4] == "left":
        return "yes" if first[2] < second[2] else "no"
    return "yes" if first[3] < second[3] else "no"


@pytest.mark.parametrize("types", [shapes.TYPES, shapes.WORD_TYPES])
def test_answers_match_an_independent_reading_of_the_pixels(types):
    samples = shapes.generate(400, seed=5, types=types)
    assert {s.type for s in samples} == set(types)
    for s in samples:
        objects = objects_from_pixels(shapes.image_of(s, 5))
        assert len(objects) == len(s.shapes), s
        assert answer_from_pixels(s.text, objects) == s.label, (s.text, s.label, objects)


def test_spoken_answers_score_right_by_their_benchmark_rule_and_the_opposite_wrong():
    samples = shapes.generate(3000, seed=6, types=shapes.WORD_TYPES)
    opposite = {"yes": "no", "no": "yes", "left": "right", "right": "left"}
    for s in samples:
        said = shapes.spoken(s)
        assert set(said.split()) <= set(shapes.SPOKEN_WORDS), said  # the words toy's vocabulary says it
        metric = shapes.metric_of(s.type)
        assert scoring.score(said, s.label, metric) == 1.0, (said, s.label, metric)
        wrong = opposite.get(s.label) or (
            str((int(s.label) + 1) % 6) if s.type == "count" else next(c for c in shapes.COLOURS if c != s.label)
        )
        assert scoring.score(said, wrong, metric) == 0.0, (said, wrong, metric)
    by_hand = {
        ("count", "0"): "there are no circles .",
        ("count", "1"): "there is one circle .",
        ("count", "3"): "there are three circles .",
    }
    for (kind, label), said in by_hand.items():
        sample = shapes.Sample(0, "0.png", "how many circles are there ?", label, kind, ())
        assert shapes.spoken(sample) == said
    assert shapes.metric_of("spatial_side") == "relation" and shapes.metric_of("attribute") == "exact"


def test_cli_writes_pope_format(tmp_path):
    result = CliRunner().invoke(app, ["shapes", "--out", str(tmp_path), "--n", "20", "--seed", "4"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (tmp_path / "questions.jsonl").read_text().splitlines()]
    assert len(records) == 20
    assert set(records[0]) == {"question_id", "image", "text", "label", "type"}
    image = Image.open(tmp_path / "images" / records[0]["image"])
    assert image.mode == "RGB" and image.size == (32, 32)


def test_unknown_family_is_refused():
    with pytest.raises(ValueError, match="unknown question family"):
        shapes.ask(np.random.default_rng(0), shapes.sample_scene(np.random.default_rng(0)), "colour")
