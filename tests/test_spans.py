"""Image spans: where each image's tokens sit and the grid they tile, for every family."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from tests.conftest import PROMPTS, make_images, tiny


def check_spans_cover_image_tokens(model, inputs):
    for item, spans in enumerate(inputs.image_spans):
        is_image = inputs.input_ids[item] == model.cfg.image_token_id
        covered = torch.zeros_like(is_image)
        for span in spans:
            rows, cols = span.grid
            if not span.views:
                assert span.n_tokens == rows * cols
            for view in span.views:  # a multi-crop image: each view's tokens inside the image's run
                assert span.start <= min(view.positions) and max(view.positions) < span.end
            assert sorted(span.positions + span.separators) == list(range(span.start, span.end))
            covered[span.positions] = True
            covered[[p for p in span.separators if is_image[p]]] = True  # LLaVA-NeXT's newlines are image tokens
        assert torch.equal(covered, is_image)


def test_spans_cover_exactly_the_image_tokens(model, inputs):
    check_spans_cover_image_tokens(model, inputs)
    assert [[s.image for s in spans] for spans in inputs.image_spans] == [[0], [1]]


def test_right_padding_reported_and_positions_shift(model, images):
    left = model.prepare(images=images, prompts=PROMPTS)
    right = model.prepare(images=images, prompts=PROMPTS, padding_side="right")
    assert (left.padding_side, right.padding_side) == ("left", "right")
    check_spans_cover_image_tokens(model, right)
    short = int(left.attention_mask.sum(1).argmin())  # the item with padding (images and prompts set the lengths)
    pad = int((left.attention_mask[short] == 0).sum())
    assert pad > 0
    assert left.image_spans[short][0].start == right.image_spans[short][0].start + pad
    assert int(right.last_positions()[short]) == int(right.attention_mask[short].sum()) - 1


def test_forward_tensors_give_the_same_spans(model, inputs):
    alone = model.as_inputs(**inputs.tensors).image_spans
    assert [[s.positions for s in item] for item in alone] == [
        [s.positions for s in item] for item in inputs.image_spans
    ]
    # a tiled family's arrangement is not in the forward tensors (InternVL): given back, the spans are equal
    assert model.as_inputs(**inputs.tensors, tile_layout=inputs.tile_layout).image_spans == inputs.image_spans
    if inputs.tile_layout is None:
        assert alone == inputs.image_spans


def test_layout_matches_the_family_spec(model, spec, inputs, images):
    """Where the image tokens sit and which grid they tile, as the family's spec says (left padding)."""
    ids = inputs.input_ids
    tok = model.tokenizer.convert_tokens_to_ids
    for item, (span,) in enumerate(inputs.image_spans):
        first_real = int((inputs.attention_mask[item] == 0).sum())
        assert (span.start == first_real) == spec.image_first
        if spec.before_image is not None:
            assert ids[item, span.start - 1] == tok(spec.before_image)
        if spec.after_image is not None:
            assert ids[item, span.end] == tok(spec.after_image)
        assert span.grid == spec.expected_grid(images[item], model.processor)
        if (
            spec.expected_views is not None
        ):  # multi-crop: each view's kind and grid, from the processor's own arithmetic
            assert [(v.kind, v.grid) for v in span.views] == spec.expected_views(images[item], model.processor)


def test_several_images_in_one_prompt(family):
    model = tiny(family)
    images = make_images(sizes=((32, 32), (48, 32)))
    inputs = model.prepare(images=[images], prompts=["is there a square ?"])
    spans = inputs.image_spans[0]
    assert [s.image for s in spans] == [0, 1]
    assert spans[0].end <= spans[1].start
    check_spans_cover_image_tokens(model, inputs)
    with torch.no_grad():
        ref = model.hf_model(**inputs.tensors).logits
        assert torch.equal(model(inputs), ref)


def test_patch_position_lookup(model, inputs):
    span = inputs.image_spans[0][0]
    rows, cols = span.grid
    assert span.position_of(0, 0) == span.base.positions[0]
    assert span.position_of(rows - 1, cols - 1) == span.base.positions[-1]
    assert span.start == span.positions[0] and span.positions[-1] < span.end  # opens on a patch token
    assert span.views or span.base.positions == tuple(range(span.start, span.end))


def test_each_crop_sits_where_its_pixels_came_from(model, spec):
    """The arrangement, against the picture itself: a picture of exactly 1x2 (then 2x1) crops, black on the left
    (top), white on the right (bottom). Each crop is then a plain black or white square, so its tokens entering the
    language model must equal the base (whole-picture) view's tokens of a plain black or white picture (same pixels,
    same tower): the stitched grid must show black where the picture is black."""
    if spec.crop_pixels is None:
        pytest.skip(f"{spec.family} does not cut an image into crops")
    side = spec.crop_pixels(model.processor)

    def embedded(picture, kind=None):  # [d, rows, cols] on the picture's stitched high-resolution grid (or a view)
        inputs = model.prepare(images=[picture], prompts=["how many"])
        with torch.no_grad():
            _, cache = model.run_with_cache(inputs, names_filter="hook_embed")
        return inputs.image_spans[0][0], inputs.image_spans[0][0].stitch(cache["hook_embed"][0].T, kind)

    plain = {colour: embedded(Image.new("RGB", (side, side), colour), "base")[1] for colour in ("black", "white")}
    for width, height in ((2 * side, side), (side, 2 * side)):
        picture = Image.new("RGB", (width, height), "white")
        picture.paste(Image.new("RGB", (side, side), "black"), (0, 0))
        span, grid = embedded(picture)
        assert [v.kind for v in span.views if v.kind != "base"], f"a {width}x{height} picture was not cut into crops"
        one = plain["black"]  # [d, rows, cols] of one crop
        rows, cols = one.shape[1:]
        assert grid.shape[1:] == ((rows, 2 * cols) if width > height else (2 * rows, cols))
        first, second = (grid[:, :, :cols], grid[:, :, cols:]) if width > height else (grid[:, :rows], grid[:, rows:])
        torch.testing.assert_close(first, plain["black"], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(second, plain["white"], atol=1e-5, rtol=1e-4)
