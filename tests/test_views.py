"""The multi-view image-span model (``vlm_lens.spans``) on hand-built layouts, against hand-placed grids:
every patch token located and stitched where it lies in the original image, separators belonging to no
patch, and single-view spans behaving exactly as before."""

from __future__ import annotations

import pytest
import torch

from vlm_lens.errors import ImageTokenMismatchError
from vlm_lens.spans import ImageSpan, View


def tiled_span() -> ImageSpan:
    """A 2x3 tiling of 2x2-token tiles, each tile preceded by one marker token, then a 2x2 base view:
    LLaVA-style thumbnail-last layout, as InternVL and Idefics3 order theirs."""
    views, cursor = [], 10
    for r in range(2):
        for c in range(3):
            cursor += 1  # a marker token before each tile
            views.append(View("tile", tuple(range(cursor, cursor + 4)), (2, 2), tile=(r, c), tiles=(2, 3)))
            cursor += 4
    views.append(View("base", tuple(range(cursor, cursor + 4)), (2, 2)))
    return ImageSpan(0, 10, cursor + 4, (2, 2), views=tuple(views))


def test_every_patch_token_is_located_and_stitched_where_it_lies():
    span = tiled_span()
    assert span.n_tokens == 6 * 5 + 4 and len(span.positions) == 6 * 4 + 4
    assert span.separators == [10, 15, 20, 25, 30, 35]  # the markers, nothing else
    # stitch a per-position code that says (row, col) in the 4x6 image grid, computed by hand per tile
    values = torch.full((2, 50), -1.0)  # two rows of values (e.g. two heads), over 50 sequence positions
    for r in range(2):
        for c in range(3):
            first = 11 + (r * 3 + c) * 5
            for k in range(4):
                gr, gc = r * 2 + k // 2, c * 2 + k % 2  # global row, col
                values[:, first + k] = torch.tensor([gr * 10 + gc, -(gr * 10 + gc)])
    stitched = span.stitch(values)
    assert stitched.shape == (2, 4, 6)
    expected = torch.tensor([[gr * 10 + gc for gc in range(6)] for gr in range(4)], dtype=torch.float)
    assert torch.equal(stitched[0], expected) and torch.equal(stitched[1], -expected)
    assert torch.equal(span.stitch(values, kind="base"), values[:, 40:44].reshape(2, 2, 2))
    for position in span.positions:
        k, row, col = span.locate(position)
        assert span.all_views[k].position_of(row, col) == position
    assert span.locate(17) == (1, 0, 1)  # tile (0, 1): its token 1
    assert span.all_views[4].region == (0.5, 1 / 3, 1.0, 2 / 3)
    assert span.base.kind == "base" and span.position_of(1, 1) == 43  # single-grid code reads the base view
    with pytest.raises(IndexError, match="separator"):
        span.locate(15)
    with pytest.raises(IndexError, match="outside the image"):
        span.locate(3)


def test_a_single_view_span_is_unchanged():
    span = ImageSpan(image=0, start=5, end=17, grid=(3, 4))
    assert span.positions == list(range(5, 17)) and span.separators == [] and span.position_of(1, 0) == 9
    assert span.locate(9) == (0, 1, 0) and span.base.grid == (3, 4)
    values = torch.arange(20.0)
    assert torch.equal(span.stitch(values), values[5:17].reshape(3, 4))


def test_a_highres_view_with_row_newlines():
    # LLaVA-NeXT: base 2x2, then the crops stitched into 2x3 with a newline after each row
    highres = View("highres", (5, 6, 7, 9, 10, 11), (2, 3), separators=(8, 12))
    span = ImageSpan(0, 1, 13, (2, 2), views=(View("base", (1, 2, 3, 4), (2, 2)), highres))
    assert span.separators == [8, 12]
    assert torch.equal(span.stitch(torch.arange(13.0)), torch.tensor([[5.0, 6, 7], [9, 10, 11]]))


def test_inconsistent_views_are_refused():
    with pytest.raises(ImageTokenMismatchError, match="needs 4 patch tokens"):
        View("tile", (1, 2, 3), (2, 2))
    with pytest.raises(ValueError, match="view kind"):
        View("crop", (1,), (1, 1))
    mixed = ImageSpan(
        0,
        0,
        6,
        (1, 1),
        views=(View("tile", (0,), (1, 1), tiles=(1, 2)), View("tile", (1, 2, 3, 4), (2, 2), tile=(0, 1), tiles=(1, 2))),
    )
    with pytest.raises(ValueError, match="cannot be stitched"):
        mixed.stitch(torch.zeros(6))


def test_covering_finds_every_token_over_a_base_cell_by_hand():
    # a picture cut into 2x2 tiles of 2x2 tokens (positions 10.., row-major, tile by tile), then a 2x2 base (50..53)
    tiles = [
        View("tile", tuple(range(10 + 4 * k, 14 + 4 * k)), (2, 2), tile=divmod(k, 2), tiles=(2, 2)) for k in range(4)
    ]
    span = ImageSpan(0, 10, 54, (2, 2), views=(*tiles, View("base", (50, 51, 52, 53), (2, 2))))
    assert span.covering(0, 0) == [10, 11, 12, 13, 50]  # the top-left quarter: all of tile (0, 0)
    assert span.covering(1, 1) == [22, 23, 24, 25, 53]
    # a 3x5 high-resolution grid (positions 0..14) under a 2x2 base (20..23): cell (0, 0) is the top-left quarter,
    # which rows 0-1 (row 1 spans 1/3..2/3) and cols 0-2 (col 2 spans 2/5..3/5) of the grid overlap
    highres = View("highres", tuple(range(15)), (3, 5))
    span = ImageSpan(0, 0, 24, (2, 2), views=(View("base", (20, 21, 22, 23), (2, 2)), highres))
    assert span.covering(0, 0) == [0, 1, 2, 5, 6, 7, 20]
    assert span.covering(1, 1) == [7, 8, 9, 12, 13, 14, 23]
    assert ImageSpan(0, 5, 9, (2, 2)).covering(1, 0) == [7]  # one view: the cell's own token
    with pytest.raises(IndexError, match="outside the 2x2 grid"):
        span.covering(2, 0)
    unknown = ImageSpan(
        0, 0, 12, (2, 2), views=(View("tile", (0, 1, 2, 3), (2, 2), tiles=None), View("base", (8, 9, 10, 11), (2, 2)))
    )
    with pytest.raises(ValueError, match="arranged"):
        unknown.covering(0, 0)
