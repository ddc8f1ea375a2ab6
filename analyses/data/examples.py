"""``Example``: one question, its image, its gold answers and the rule that scores it.

    >>> example = Example("cat.jpg", "Is there a cat?", "yes")
    >>> example.golds, example.label, example.metric
    (('yes',), 'yes', 'exact')
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from analyses.answers import METRICS
from analyses.data import shapes



@dataclass(frozen=True)
class Example:
    """``metric``: how ``analyses.answers.score`` credits an answer: "exact" (canonical match with any gold),
    "vqa" (official VQA accuracy over the golds), "count" (the integer), "relation" (the spatial relation)
    or "open" (open-ended: not scored without a judge)."""

    image: Image.Image | Path | str  # a path is opened (RGB) when its batch runs
    text: str
    golds: tuple[str, ...] | str
    type: str = "all"
    metric: str = "exact"
    question_id: int | str | None = None

    def __post_init__(self):
        golds = (self.golds,) if isinstance(self.golds, str) else tuple(self.golds)
        if not golds or not all(isinstance(g, str) for g in golds):
            raise ValueError(f"an example needs its gold answer(s) as strings, got {self.golds!r}")
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {self.metric!r}")
        object.__setattr__(self, "golds", golds)

    @property
    def label(self) -> str:
        """The first gold: the reference answer whose token the truth margin follows."""
        return self.golds[0]

    def load_image(self) -> Image.Image:
        return self.image if isinstance(self.image, Image.Image) else Image.open(self.image).convert("RGB")


def shapes_examples(n: int, seed: int, size: int = 32) -> list[Example]:
    """``n`` Shapes questions drawn with ``seed``, images rendered in memory."""
    return [
        Example(Image.fromarray(shapes.image_of(s, seed, size)), s.text, s.label, s.type, question_id=s.question_id)
        for s in shapes.generate(n, seed, size)
    ]
