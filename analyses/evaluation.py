"""Running a model over a dataset, with and without an intervention, and comparing accuracy.

An ``Example`` is an image, a question, the exact answer word and a question type. Predictions
are the greedy next token after the templated prompt, as the toy zoo answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from analyses import shapes
from analyses.interventions import NOTHING, Intervention, apply
from analyses.stats import paired_bootstrap_diff
from vlm_lens import HookedVLM


@dataclass(frozen=True)
class Example:
    image: Image.Image | Path  # a path is opened (RGB) when its batch runs
    text: str
    label: str
    type: str = "all"

    def load_image(self) -> Image.Image:
        return self.image if isinstance(self.image, Image.Image) else Image.open(self.image).convert("RGB")


def shapes_examples(n: int, seed: int, size: int = 32) -> list[Example]:
    return [
        Example(Image.fromarray(shapes.image_of(s, seed, size)), s.text, s.label, s.type)
        for s in shapes.generate(n, seed, size)
    ]


def batches(model: HookedVLM, examples: Sequence[Example], batch_size: int):
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        yield chunk, model.prepare(images=[e.load_image() for e in chunk], prompts=[e.text for e in chunk])


def predict(
    model: HookedVLM,
    examples: Sequence[Example],
    intervention: Intervention = NOTHING,
    batch_size: int = 100,
    progress: bool = False,
    transform=None,
) -> list[str]:
    """Greedy next-token answers; ``transform(model, inputs) -> inputs`` edits a batch first (pixel masking)."""
    answers = []
    for _, inputs in tqdm(batches(model, examples, batch_size), total=-(-len(examples) // batch_size), disable=not progress):
        if transform is not None:
            inputs = transform(model, inputs)
        logits = apply(model, inputs, intervention)[:, -1]
        answers += [model.to_string(int(i)).strip() for i in logits.argmax(-1)]
    return answers


def correctness(examples: Sequence[Example], answers: Sequence[str]) -> list[bool]:
    return [a == e.label for a, e in zip(answers, examples)]


def compare(
    examples: Sequence[Example],
    before: Sequence[bool],
    after: Sequence[bool],
    condition: str,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> pd.DataFrame:
    """Accuracy before and after, and the paired-bootstrap CI of the difference, overall and per type."""
    frame = pd.DataFrame({"type": [e.type for e in examples], "before": before, "after": after})
    rows = []
    for group, part in [("all", frame), *sorted(frame.groupby("type"))]:
        est = paired_bootstrap_diff(part.before, part.after, n_resamples, seed)
        rows.append({"condition": condition, "type": group, "n": len(part), "acc_before": part.before.mean(),
                     "acc_after": part.after.mean(), "diff": est.value, "ci_low": est.ci[0], "ci_high": est.ci[1]})
    return pd.DataFrame(rows)


def evaluate_intervention(
    model: HookedVLM,
    examples: Sequence[Example],
    intervention: Intervention,
    control: Intervention | None = None,
    batch_size: int = 100,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> pd.DataFrame:
    """Tidy table: one row per (condition, question type) with accuracy before/after and the CI of the change."""
    base = correctness(examples, predict(model, examples, NOTHING, batch_size))
    tables = []
    for item in [intervention] + ([control] if control is not None else []):
        after = correctness(examples, predict(model, examples, item, batch_size))
        tables.append(compare(examples, base, after, item.name, n_resamples, seed))
    return pd.concat(tables, ignore_index=True)

