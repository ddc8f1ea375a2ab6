"""``Example``: one question, its image, its gold answers and the rule that scores it.

>>> example = Example("cat.jpg", "Is there a cat?", "yes")
>>> example.golds, example.label, example.metric, example.closed_form
(('yes',), 'yes', 'exact', False)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from analyses.data import shapes
from analyses.data.scoring import CLOSED_FORM, METRICS
from vlm_lens.errors import DataError, InputError
from vlm_lens.inputs import to_rgb


@dataclass(frozen=True)
class Example:
    """``metric``: the rule ``analyses.data.scoring.score`` credits an answer by: "yesno" (POPE's reading),
    "vqa" (the official VQA accuracy over the golds), "count" (the integer), "relation" (the spatial
    relation), "exact" (the normalised gold, also inside a phrase) or "open" (not scored without a judge).
    ``closed_form``: whether the answer is one of a closed set (the output confidence is then the answer
    token's probability); by default, whether the metric is "yesno", "count" or "relation"."""

    image: Image.Image | Path | str  # a path is opened (RGB) when its batch runs
    text: str
    golds: tuple[str, ...] | str
    type: str = "all"
    metric: str = "exact"
    question_id: int | str | None = None
    closed_form: bool | None = None

    def __post_init__(self):
        golds = (self.golds,) if isinstance(self.golds, str) else tuple(self.golds)
        if not golds or not all(isinstance(g, str) for g in golds):
            raise InputError(f"an example needs its gold answer(s) as strings, got {self.golds!r}")
        if self.metric not in METRICS:
            raise InputError(f"metric must be one of {METRICS}, got {self.metric!r}")
        object.__setattr__(self, "golds", golds)
        if self.closed_form is None:
            object.__setattr__(self, "closed_form", self.metric in CLOSED_FORM)

    @property
    def label(self) -> str:
        """The first gold: the reference answer whose token the truth margin follows."""
        return self.golds[0]

    def load_image(self) -> Image.Image:
        """The image as 8-bit RGB (``vlm_lens.to_rgb``: a 16-bit PNG scaled, not saturated)."""
        if isinstance(self.image, Image.Image):
            return to_rgb(self.image, "the example's image")
        try:
            with Image.open(self.image) as image:
                return to_rgb(image, str(self.image)).copy()
        except (OSError, SyntaxError, ValueError) as e:  # missing, zero bytes, truncated, not an image
            if isinstance(e, InputError):
                raise
            raise DataError(
                f"image {self.image} cannot be read: {str(e).strip() or type(e).__name__} (check the file; "
                "vlm-lens vrp checks every image before it starts)"
            ) from None


def shapes_examples(n: int, seed: int, size: int = 32, types: tuple[str, ...] = shapes.TYPES) -> list[Example]:
    """``n`` Shapes questions drawn with ``seed``, images rendered in memory; ``types=shapes.WORD_TYPES`` is the
    words benchmark (``shapes-words``: the same families plus one answered by a relation phrase)."""
    return [
        Example(
            Image.fromarray(shapes.image_of(s, seed, size)),
            s.text,
            s.label,
            s.type,
            shapes.metric_of(s.type),
            s.question_id,
            closed_form=True,
        )
        for s in shapes.generate(n, seed, size, types)
    ]
