"""Loaders on the real POPE files and on small hand-written files in the other formats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from analyses.data import benchmarks as B
from analyses.data import scoring as A
from vlm_lens.errors import DataError, InputError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pope"
EXCERPTS = Path(__file__).parent / "data" / "pope"


@pytest.mark.parametrize("name", ["coco_pope_random_first60.jsonl", "gqa_pope_seem_adversarial_first40.json"])
def test_real_pope_excerpts_shipped_with_the_tests(name):
    """Real POPE records (both published formats) that every clone has."""
    records = B.load_pope(EXCERPTS / name)
    assert len(records) in (60, 40)
    assert {r.label for r in records} == {"yes", "no"}
    assert all(r.text.startswith("Is there") and r.image.endswith(".jpg") for r in records)
    assert len({r.question_id for r in records}) == len(records)


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"the full POPE files are in {SHARED}, beside the repo, absent here")
@pytest.mark.parametrize(
    "name",
    ["coco_pope_random.json", "coco_pope_popular.json", "coco_pope_adversarial.json", "gqa_pope_seem_adversarial.json"],
)
def test_real_pope_files(name):
    records = B.load_pope(SHARED / name)
    assert len(records) == 3000
    labels = [r.label for r in records]
    assert labels.count("yes") == 1500 and labels.count("no") == 1500
    assert records[0].text.startswith("Is there")
    assert A.score("Yes, there is a snowboard.", records[0].golds, records[0].metric) == float(
        records[0].label == "yes"
    )


def test_pope_formats_agree(tmp_path):
    rows = [{"question_id": 1, "image": "a.jpg", "text": "Is there a cat?", "label": "no"}]
    (tmp_path / "lines.json").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "array.json").write_text(json.dumps(rows, indent=2))
    assert B.load_pope(tmp_path / "lines.json") == [B.Record(1, "a.jpg", "Is there a cat?", ("no",), "lines", "yesno")]
    assert [r.golds for r in B.load_pope(tmp_path / "array.json")] == [("no",)]
    (tmp_path / "bad.json").write_text(json.dumps([{"question_id": 1, "text": "x"}]))
    with pytest.raises(ValueError, match="lacks"):
        B.load_pope(tmp_path / "bad.json")


def test_vqav2_and_official_accuracy(tmp_path):
    questions = {
        "data_subtype": "val2014",
        "questions": [{"image_id": 42, "question": "How many dogs?", "question_id": 7}],
    }
    answers = ["2"] * 2 + ["two"] + ["3"] * 7
    annotations = {
        "annotations": [
            {
                "question_id": 7,
                "answer_type": "number",
                "answers": [{"answer": a, "answer_id": i + 1} for i, a in enumerate(answers)],
            }
        ]
    }
    (tmp_path / "q.json").write_text(json.dumps(questions))
    (tmp_path / "a.json").write_text(json.dumps(annotations))
    (record,) = B.load_vqav2(tmp_path / "q.json", tmp_path / "a.json")
    assert record.image == "COCO_val2014_000000000042.jpg" and record.metric == "vqa"
    assert record.label == "3" and sorted(record.golds) == sorted(answers)  # the commonest answer is the reference
    # "two" normalises to "2": three humans agree -> 0.9 over the leave-one-out subsets, as the official tool gives
    assert A.score("Two.", record.golds, record.metric) == pytest.approx(0.9)
    assert A.score("3", record.golds, record.metric) == pytest.approx(1.0)
    assert A.score("There are three dogs", record.golds, record.metric) == 0.0  # VQA scores the answer as given
    assert A.score("four", record.golds, record.metric) == 0.0
    assert A.is_correct("Two.", record.golds, record.metric) and not A.is_correct("four", record.golds, record.metric)


def test_vqa_normalisation_by_hand():
    assert A.vqa_normalise("It's a Dog.") == "it's dog"
    assert A.vqa_normalise("dont") == "don't"
    assert A.vqa_normalise("1,000") == "1000"
    assert A.vqa_normalise("red-white") == "red white"


def test_textvqa_llava_bench_counting(tmp_path):
    (tmp_path / "t.json").write_text(
        json.dumps(
            {"data": [{"question_id": 1, "question": "What brand?", "image_id": "abc", "answers": ["nike"] * 10}]}
        )
    )
    (rec,) = B.load_textvqa(tmp_path / "t.json")
    assert rec.image == "abc.jpg" and A.score("Nike", rec.golds, rec.metric) == 1.0
    (tmp_path / "q.jsonl").write_text(
        json.dumps({"question_id": 3, "image": "x.jpg", "text": "Describe.", "category": "detail"})
    )
    (tmp_path / "ans.jsonl").write_text(json.dumps({"question_id": 3, "text": "A red bus on a street."}))
    (rec,) = B.load_llava_bench(tmp_path / "q.jsonl", tmp_path / "ans.jsonl")
    assert rec.type == "detail" and not rec.closed_form and rec.label == "A red bus on a street."
    (tmp_path / "c.jsonl").write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"question_id": 1, "image": "x.jpg", "text": "How many?", "label": 3},
                {"question_id": 2, "image": "x.jpg", "text": "Is the cup left of the plate?", "label": "left"},
            ]
        )
    )
    count, spatial = B.load_counting_spatial(tmp_path / "c.jsonl")
    assert (count.type, spatial.type) == ("count", "spatial")
    assert A.score("There are three.", count.golds, count.metric) == 1.0
    assert (count.metric, spatial.metric, rec.metric) == ("count", "relation", "open")
    assert A.score("It is to the left of the plate.", spatial.golds, spatial.metric) == 1.0
    assert A.score("right", spatial.golds, spatial.metric) == 0.0
    assert A.score("three or four", count.golds, count.metric) == 1.0  # the first integer named
    assert A.score("There are 4, not three.", count.golds, count.metric) == 0.0
    assert A.score("many", count.golds, count.metric) == 0.0
    with pytest.raises(ValueError, match="judge model"):
        A.score("A bus.", rec.golds, rec.metric)
    (tmp_path / "attr.jsonl").write_text(
        json.dumps({"question_id": 9, "image": "x.jpg", "text": "Colour?", "label": "blue"})
    )
    (attribute,) = B.load_counting_spatial(tmp_path / "attr.jsonl")
    assert attribute.metric == "exact" and attribute.closed_form  # an attribute: the normalised gold, in a phrase too
    assert (
        A.score("the blue one", attribute.golds, "exact") == 1.0 and A.score("bluish", attribute.golds, "exact") == 0.0
    )


def test_relations_read_from_answers():
    assert A.relation("The cat sits in front of the door") == "in front of"
    assert A.relation("It is underneath the table.") == "under"
    assert A.relation("left") == "left" and A.relation("a red ball") is None
    assert (
        A.score("It's below the lamp", ["below"], "relation") == 1.0 and A.score("above", ["below"], "relation") == 0.0
    )


def test_missing_images_reported_before_work(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"")
    records = [B.Record(i, name, "q", ("yes",)) for i, name in enumerate(["a.jpg", "b.jpg", "c.jpg", "b.jpg"])]
    with pytest.raises(DataError, match=r"2 image\(s\) missing .*b.jpg, c.jpg"):
        B.check_images(records, tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        B.check_images(records, tmp_path / "nowhere")


def test_shapes_folder_loads_as_pope(tmp_path):
    from analyses.data import shapes

    shapes.write_benchmark(tmp_path, 10, seed=1)
    records = B.load_shapes(tmp_path)
    assert len(records) == 10 and records[0].type in shapes.TYPES
    examples = B.to_examples(records, tmp_path / "images")
    assert examples[0].load_image().size == (32, 32)


def write_formats(folder: Path) -> dict[str, tuple[Path, Path | None]]:
    """One small file per supported format (and its annotations where it has them)."""
    pope = [
        {"question_id": 1, "image": "a.jpg", "text": "Is there a cat?", "label": "Yes"},
        {"question_id": 2, "image": "a.jpg", "text": "Is there a dog?", "label": "no"},
    ]
    (folder / "pope.jsonl").write_text("\n".join(json.dumps(r) for r in pope))
    counting = [
        {"question_id": 1, "image": "a.jpg", "text": "How many cats?", "label": 2},
        {"question_id": 2, "image": "a.jpg", "text": "Is the cat left of the dog?", "label": "yes"},
    ]
    (folder / "counting.json").write_text(json.dumps(counting))
    (folder / "vqa_q.json").write_text(
        json.dumps({"questions": [{"image_id": 5, "question": "What colour?", "question_id": 9}]})
    )
    (folder / "vqa_a.json").write_text(
        json.dumps({"annotations": [{"question_id": 9, "answers": [{"answer": "red"}] * 10}]})
    )
    (folder / "textvqa.json").write_text(
        json.dumps({"data": [{"question_id": 3, "question": "Brand?", "image_id": "x", "answers": ["nike"] * 10}]})
    )
    (folder / "bench_q.jsonl").write_text(
        json.dumps({"question_id": 4, "image": "b.jpg", "text": "Describe it.", "category": "detail"})
    )
    (folder / "bench_a.jsonl").write_text(json.dumps({"question_id": 4, "text": "A red bus."}))
    return {
        "pope": (folder / "pope.jsonl", None),
        "counting": (folder / "counting.json", None),
        "vqav2": (folder / "vqa_q.json", folder / "vqa_a.json"),
        "textvqa": (folder / "textvqa.json", None),
        "llava_bench": (folder / "bench_q.jsonl", folder / "bench_a.jsonl"),
    }


def test_formats_are_detected_from_the_content(tmp_path):
    files = write_formats(tmp_path)
    assert {name: B.detect_format(q) for name, (q, _) in files.items()} == {name: name for name in files}
    assert (
        B.detect_format(EXCERPTS / "gqa_pope_seem_adversarial_first40.json") == "pope"
    )  # a JSON array of POPE records
    loaded = {name: B.load(q, a) for name, (q, a) in files.items()}
    assert loaded["pope"][0].golds == ("Yes",) and loaded["counting"][0].golds == ("2",)
    assert loaded["vqav2"][0].metric == "vqa" and loaded["textvqa"][0].metric == "vqa"
    assert loaded["llava_bench"][0].golds == ("A red bus.",)


def test_format_can_be_forced_and_annotations_are_checked(tmp_path):
    files = write_formats(tmp_path)
    assert B.load(files["pope"][0], format="counting")[0].type == "spatial"  # forced: read as a counting/spatial suite
    with pytest.raises(ValueError, match="needs --annotations"):
        B.load(files["vqav2"][0])
    with pytest.raises(ValueError, match="drop --annotations"):
        B.load(files["pope"][0], annotations=files["vqav2"][1])
    with pytest.raises(ValueError, match="unknown benchmark format"):
        B.load(files["pope"][0], format="gqa")


def _png_claiming(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header (IHDR, CRC fixed) claims width x height pixels: what a decompression bomb looks like."""
    import io
    import struct
    import zlib

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    start = data.index(b"IHDR")
    data[start + 4 : start + 12] = struct.pack(">II", width, height)
    data[start + 17 : start + 21] = struct.pack(">I", zlib.crc32(bytes(data[start : start + 17])))
    return bytes(data)


def test_an_image_header_claiming_too_many_pixels_is_refused_in_one_line(tmp_path):
    (tmp_path / "bomb.png").write_bytes(_png_claiming(30_000, 30_000))
    with pytest.raises(
        DataError, match=r"1 image\(s\) .* cannot be decoded: bomb.png \(its header claims more pixels"
    ) as e:
        B.check_images([B.Record(0, "bomb.png", "q", ("yes",))], tmp_path)
    assert "\n" not in str(e.value)


def test_a_16_bit_image_is_scaled_not_saturated(tmp_path):
    import numpy as np
    from PIL import Image

    from analyses.data.examples import Example
    from vlm_lens import to_rgb

    values = (np.arange(1024).reshape(16, 64) * 64).astype(np.uint16)  # 0 .. 65472, a ramp
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    assert len(np.unique(np.asarray(Image.open(tmp_path / "deep.png").convert("RGB")))) < 10  # PIL's own: saturated
    B.check_images([B.Record(0, "deep.png", "q", ("yes",))], tmp_path)  # readable
    rgb = np.asarray(Example(tmp_path / "deep.png", "q", "yes").load_image())
    assert rgb.shape == (16, 64, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[..., 0], np.rint(values / 257).astype(np.uint8))  # by hand: 65535 -> 255
    assert (rgb[..., 0] == rgb[..., 2]).all()
    with pytest.raises(InputError, match="mode 'F' has no faithful 8-bit RGB form"):
        to_rgb(Image.fromarray(np.zeros((2, 2), np.float32)))


def test_a_symlink_inside_the_folder_to_an_image_outside_it_is_refused(tmp_path):
    from PIL import Image

    (tmp_path / "elsewhere").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "elsewhere" / "secret.png")
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (4, 4)).save(folder / "inside.png")
    (folder / "link.png").symlink_to(tmp_path / "elsewhere" / "secret.png")
    (folder / "alias.png").symlink_to(folder / "inside.png")  # a link that stays inside is fine
    records = [B.Record(0, "link.png", "q", ("yes",)), B.Record(1, "alias.png", "q", ("yes",))]
    with pytest.raises(DataError, match=r"1 image path\(s\) leave the image folder .*link.png"):
        B.check_images(records, folder)
    assert set(B.check_images(records, folder, allow_outside=True)) == {"link.png", "alias.png"}
