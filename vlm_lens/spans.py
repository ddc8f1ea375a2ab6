"""Where an image's tokens sit: one grid, or several views of the image (a base view and crop tiles).

Single-view families (LLaVA-1.5, PaliGemma, Qwen-VL) give each image one run of tokens tiling one
grid, row-major:

    >>> span = ImageSpan(image=0, start=5, end=17, grid=(3, 4))
    >>> span.n_tokens, span.positions[:3], span.position_of(1, 0), span.locate(9)
    (12, [5, 6, 7], 9, (0, 1, 0))

Multi-crop families (LLaVA-NeXT, Idefics3, InternVL) see one image as several ``View``s: a base
(global, low-resolution) view, and crop tiles, each with its own grid, or the crops already
stitched into one high-resolution grid; separator tokens (row newlines, tile markers) sit between
patch tokens and belong to no patch. ``span.views`` lists them; ``span.locate(position)`` maps any
patch token to (view, row, col); ``span.stitch(values)`` lays a per-token quantity (an attention
row) out on the original image's high-resolution grid. On such a span ``start..end`` covers every
token of the image (separators included), ``positions`` every patch token, and ``grid`` /
``position_of`` the base view, so an analysis written for one grid reads the base view.

    >>> base = View("base", (1, 2, 3, 4), (2, 2))
    >>> tiles = [View("tile", (6 + 4 * k, 7 + 4 * k, 8 + 4 * k, 9 + 4 * k), (2, 2), tile=(0, k), tiles=(1, 2)) for k in range(2)]
    >>> span = ImageSpan(0, 1, 14, (2, 2), views=(base, *tiles))
    >>> span.locate(11), span.separators, tuple(span.stitch(torch.arange(14.0)).shape)
    ((2, 0, 1), [5], (2, 4))

A video (Qwen-VL families) is a span with ``video=True`` whose views are its frames (kind "frame", one per temporal
patch: two input frames make one), each on the same grid; ``locate`` gives (frame, row, col), ``stitch`` a
[..., frame, rows, cols] block (or one frame's grid with ``frame=``), ``covering`` a place in every frame:

    >>> frames = [View("frame", (3 + 4 * t, 4 + 4 * t, 5 + 4 * t, 6 + 4 * t), (2, 2), frame=t) for t in range(2)]
    >>> clip = ImageSpan(0, 3, 11, (2, 2), views=tuple(frames), video=True)
    >>> clip.frames, clip.locate(9), clip.covering(1, 0), tuple(clip.stitch(torch.arange(11.0)).shape)
    (2, (1, 1, 0), [5, 9], (2, 2, 2))
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import torch
from jaxtyping import Float
from torch import Tensor

from vlm_lens.errors import ImageTokenMismatchError, InputError, InputIndexError

VIEW_KINDS = ("base", "tile", "highres", "frame")
_UNKNOWN = (
    "how these tiles are arranged in the picture is unknown (spans read from forward tensors alone): "
    "build the inputs with model.prepare(), or pass model.as_inputs(..., tile_layout=...)"
)


@dataclass(frozen=True)
class View:
    """One view of an image: patch tokens at ``positions`` tiling ``grid`` (rows, cols) row-major.

    kind "base": the whole image at low resolution (global view, thumbnail); "tile": one crop, at
    ``tile`` (row, col) of the ``tiles`` (rows, cols) the original image was cut into; "highres": the
    crops already stitched into one grid over the whole image. ``separators``: positions inside the
    view's run that are no patch (LLaVA-NeXT's row newlines)."""

    kind: str
    positions: tuple[int, ...]
    grid: tuple[int, int]
    tile: tuple[int, int] = (0, 0)
    tiles: tuple[int, int] | None = (1, 1)  # None: the arrangement is unknown (InternVL from forward tensors alone)
    separators: tuple[int, ...] = ()
    frame: int = 0

    def __post_init__(self):
        if self.kind not in VIEW_KINDS:
            raise InputError(f"view kind must be one of {VIEW_KINDS}, got {self.kind!r}")
        if len(self.positions) != self.grid[0] * self.grid[1]:
            raise ImageTokenMismatchError(
                f"a {self.grid[0]}x{self.grid[1]} {self.kind} view needs "
                f"{self.grid[0] * self.grid[1]} patch tokens, got {len(self.positions)}"
            )

    def position_of(self, row: int, col: int) -> int:
        rows, cols = self.grid
        if not (0 <= row < rows and 0 <= col < cols):
            raise InputIndexError(f"patch ({row}, {col}) is outside the {rows}x{cols} grid")
        return self.positions[row * cols + col]

    def cell_of(self, position: int) -> tuple[int, int] | None:
        """(row, col) of a patch token of this view; None for any other position."""
        try:
            return divmod(self.positions.index(position), self.grid[1])
        except ValueError:
            return None

    @property
    def region(self) -> tuple[float, float, float, float]:
        """(top, left, bottom, right) of the original image this view covers, as fractions."""
        if self.tiles is None:
            raise InputError(_UNKNOWN)
        (r, c), (rows, cols) = self.tile, self.tiles
        return r / rows, c / cols, (r + 1) / rows, (c + 1) / cols


@dataclass(frozen=True)
class ImageSpan:
    """One image's tokens in one sequence: positions start..end-1 tile a (rows, cols) grid, or, with
    ``views``, hold the image's views (``grid`` is then the base view's). With ``video=True`` the views are a
    video's frames, each on ``grid``."""

    image: int  # index of the image in the batch's flat image list (of a video: in its flat video list)
    start: int
    end: int
    grid: tuple[int, int]
    views: tuple[View, ...] = ()
    video: bool = False

    def __post_init__(self):
        if self.video and (not self.views or any(v.kind != "frame" or v.grid != self.grid for v in self.views)):
            raise InputError(f"a video's views are its frames, each on its {self.grid} grid")

    @property
    def frames(self) -> int:
        """How many frames (temporal patches) the span holds: 1 for an image."""
        return len(self.views) if self.video else 1

    @property
    def label(self) -> str:
        """``image 0`` or ``video 0``: what the span is, for figure titles and token labels."""
        return f"{'video' if self.video else 'image'} {self.image}"

    @property
    def n_tokens(self) -> int:
        return self.end - self.start

    @property
    def all_views(self) -> tuple[View, ...]:
        return self.views or (View("base", tuple(range(self.start, self.end)), self.grid),)

    @property
    def base(self) -> View:
        """The view that sees the whole image in one grid (a single-view span's only view). A video has none."""
        if self.video:
            raise InputError(f"{self.label} has {self.frames} frames and no base view: read span.views[frame]")
        views = self.all_views
        return next((v for v in views if v.kind == "base"), views[0])

    @property
    def positions(self) -> list[int]:
        """Every patch token of the image, in sequence order (separators left out)."""
        if not self.views:
            return list(range(self.start, self.end))
        return sorted(p for v in self.views for p in v.positions)

    @property
    def separators(self) -> list[int]:
        """Positions in start..end that are no patch: row newlines, tile markers."""
        return sorted(set(range(self.start, self.end)) - set(self.positions))

    def position_of(self, row: int, col: int) -> int:
        """The base view's patch (row, col)."""
        return self.base.position_of(row, col)

    def covering(self, row: int, col: int) -> list[int]:
        """Every patch token, in every view, that sees part of what the base view's patch (row, col) sees of the
        picture: what must be hidden to hide that part of the picture (token masking of a multi-crop image). Views
        are placed by ``region`` (a base or highres view spans the whole picture), exactly (fractions)."""
        rows, cols = self.grid
        if not (0 <= row < rows and 0 <= col < cols):
            raise InputIndexError(f"patch ({row}, {col}) is outside the {rows}x{cols} grid")
        if not self.views:
            return [self.position_of(row, col)]
        top, left, bottom, right = (
            Fraction(row, rows),
            Fraction(col, cols),
            Fraction(row + 1, rows),
            Fraction(col + 1, cols),
        )
        out = []
        for view in self.views:
            if view.tiles is None:
                raise InputError(_UNKNOWN)
            (tr, tc), (n_tr, n_tc), (vr, vc) = view.tile, view.tiles, view.grid
            # the view's cells this area overlaps, in the view's own grid (rows i_lo..i_hi-1, cols j_lo..j_hi-1)
            i_lo, i_hi = max(0, math.floor((top * n_tr - tr) * vr)), min(vr, math.ceil((bottom * n_tr - tr) * vr))
            j_lo, j_hi = max(0, math.floor((left * n_tc - tc) * vc)), min(vc, math.ceil((right * n_tc - tc) * vc))
            out += [view.positions[i * vc + j] for i in range(i_lo, i_hi) for j in range(j_lo, j_hi)]
        return sorted(out)

    def _frame(self, frame: int) -> View:
        if not 0 <= frame < self.frames:
            raise InputIndexError(f"{self.label} has {self.frames} frames (0..{self.frames - 1}); no frame {frame}")
        return self.views[frame]

    def locate(self, position: int) -> tuple[int, int, int]:
        """(view index, row, col) of a patch token (of a video: (frame, row, col)); a separator or a position outside
        the image raises."""
        for k, view in enumerate(self.all_views):
            cell = view.cell_of(position)
            if cell is not None:
                return (k, *cell)
        what = "a separator token" if self.start <= position < self.end else "outside the image"
        raise InputIndexError(f"position {position} is {what} (image tokens {self.start}..{self.end - 1}), not a patch")

    def stitch(
        self, values: Float[Tensor, "... seq"], kind: str | None = None, frame: int | None = None
    ) -> Float[Tensor, "... rows cols"]:
        """A per-position quantity (e.g. an attention row over keys) on the image's grid: the high-resolution
        views ("tile" or "highres") placed where they sit in the original image, or ``kind="base"`` the base view.
        A single-view span gives its own grid. A video gives [..., frame, rows, cols], or with ``frame=`` that
        frame's grid (it has no base view: ``kind="base"`` needs ``frame``)."""
        if self.video:
            if frame is None and kind == "base":
                raise InputError(
                    f"{self.label} has {self.frames} frames and no base view: pass frame= (0..{self.frames - 1}) "
                    "for one frame's grid, or no kind for every frame's"
                )
            picked = self.views if frame is None else (self._frame(frame),)
            grids = [values[..., list(v.positions)].reshape(*values.shape[:-1], *self.grid) for v in picked]
            return grids[0] if frame is not None else torch.stack(grids, dim=-3)
        if frame is not None:
            raise InputError(f"frame={frame} was given but {self.label} is no video")
        views = (
            [v for v in self.all_views if v.kind == kind]
            if kind
            else ([v for v in self.all_views if v.kind != "base"] or [self.base])
        )
        if not views:
            raise InputError(f"this image has no {kind!r} view; its views: {[v.kind for v in self.all_views]}")
        if len(views) == 1:
            return values[..., list(views[0].positions)].reshape(*values.shape[:-1], *views[0].grid)
        tiles = views[0].tiles
        if tiles is None or any(v.tiles is None for v in views):
            raise InputError(_UNKNOWN)
        (rows, cols), (tr, tc) = views[0].grid, tiles
        if any(v.grid != (rows, cols) or v.tiles != (tr, tc) for v in views):
            raise InputError("tiles of different grids or tilings cannot be stitched into one grid")
        out = values.new_zeros(*values.shape[:-1], tr * rows, tc * cols)
        for v in views:
            r, c = v.tile
            out[..., r * rows : (r + 1) * rows, c * cols : (c + 1) * cols] = values[..., list(v.positions)].reshape(
                *values.shape[:-1], rows, cols
            )
        return out


def _cut(
    input_ids: torch.Tensor,
    token_id: int,
    sizes: list[int],
    what: str,
    make: Callable[[int, int, list[int]], ImageSpan],
) -> list[list[ImageSpan]]:
    """Each item's ``token_id`` positions cut into consecutive entries of ``sizes`` tokens (one per image or video
    of the batch, consumed item by item as every HF family scatters its features); ``make(item, entry, positions)``
    checks an entry's positions and builds its span."""
    spans: list[list[ImageSpan]] = []
    cursor = 0
    for item, ids in enumerate(input_ids):
        positions = torch.nonzero(ids == token_id).flatten().tolist()
        item_spans, taken = [], 0
        while taken < len(positions):
            if cursor >= len(sizes):
                raise ImageTokenMismatchError(
                    f"item {item} has {len(positions) - taken} {what} tokens beyond the {len(sizes)} {what}s given"
                )
            block = positions[taken : taken + sizes[cursor]]
            item_spans.append(make(item, cursor, block))
            taken += sizes[cursor]
            cursor += 1
        spans.append(item_spans)
    if cursor != len(sizes):
        raise ImageTokenMismatchError(
            f"{len(sizes)} {what}s were given but the prompts hold {what} tokens for {cursor}; "
            f"each {what} needs its placeholder in the prompt"
        )
    return spans


def _consecutive(block: list[int], n: int, item: int, whose: str, what: str) -> None:
    if len(block) != n or block[-1] - block[0] != n - 1:
        raise ImageTokenMismatchError(
            f"item {item}: {whose} needs {n} consecutive {what} tokens, found {len(block)} at positions "
            f"{block[:3]}...; the prompt's placeholders do not match the {what}s"
        )


def spans_from_runs(
    input_ids: torch.Tensor, image_token_id: int, per_image: list[tuple[int, tuple[int, int]]]
) -> list[list[ImageSpan]]:
    """Cut each item's image-token positions into consecutive images.

    ``per_image`` gives, for the batch's images in order, (number of tokens, grid). Images are
    consumed item by item, as every HF family does when it scatters image features.
    """

    def make(item: int, k: int, block: list[int]) -> ImageSpan:
        n, grid = per_image[k]
        _consecutive(block, n, item, f"image {k}", "image")
        return ImageSpan(k, block[0], block[0] + n, grid)

    return _cut(input_ids, image_token_id, [n for n, _ in per_image], "image", make)


def video_spans_from_runs(
    input_ids: torch.Tensor, video_token_id: int, per_video: list[tuple[int, tuple[int, int]]]
) -> list[list[ImageSpan]]:
    """Each item's video-token positions cut into videos, then frames: ``per_video`` gives, for the batch's videos
    in order, (frames, grid). A frame's tokens are consecutive; text may sit between frames (Qwen3-VL's time
    stamps), and belongs to no patch (``ImageSpan.separators``)."""

    def make(item: int, k: int, block: list[int]) -> ImageSpan:
        frames, (rows, cols) = per_video[k]
        n = rows * cols
        views = []
        for t in range(frames):
            _consecutive(block[t * n : (t + 1) * n], n, item, f"frame {t} of video {k}", "video")
            views.append(View("frame", tuple(block[t * n : (t + 1) * n]), (rows, cols), frame=t))
        return ImageSpan(k, block[0], block[-1] + 1, (rows, cols), tuple(views), video=True)

    return _cut(input_ids, video_token_id, [f * r * c for f, (r, c) in per_video], "video", make)
