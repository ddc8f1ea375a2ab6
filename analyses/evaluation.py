"""Running a model over a dataset, with and without an intervention, and comparing accuracy.

Predictions are greedy answers after the templated prompt, one token (as the toy zoo answers) or
generated to a stop token, scored by the benchmark's own rule (``analyses.data.scoring``) like every other table.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from tqdm.auto import tqdm

from analyses import answers
from analyses.data.examples import Example
from analyses.data.scoring import correctness
from analyses.interventions import NOTHING, Intervention, apply
from analyses.stats import paired_bootstrap_diff
from vlm_lens import HookedVLM
from vlm_lens.errors import InputError


def batches(model: HookedVLM, examples: Sequence[Example], batch_size: int):
    """(examples, prepared inputs) in chunks of ``batch_size``; images are opened chunk by chunk."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be an integer of at least 1, got {batch_size!r}")
    return _batches(model, examples, batch_size)


def _batches(model: HookedVLM, examples: Sequence[Example], batch_size: int):
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
    max_new_tokens: int = 1,
) -> list[str]:
    """Greedy answers of up to ``max_new_tokens`` tokens (to a stop token, ``answers.generate_answers``; one token
    reads only the last position's logits); ``transform(model, inputs) -> inputs`` edits a batch first (pixel masking)."""
    predictions = []
    for _, inputs in tqdm(
        batches(model, examples, batch_size), total=-(-len(examples) // batch_size), disable=not progress
    ):
        if transform is not None:
            inputs = transform(model, inputs)
        if max_new_tokens > 1:
            hooks = intervention.hooks(model, inputs)
            predictions += answers.generate_answers(model, inputs, max_new_tokens=max_new_tokens, fwd_hooks=hooks).texts
            continue
        logits = apply(model, inputs, intervention, logits_to_keep=1)  # [batch, 1, vocab]: never the whole sequence's
        predictions += answers.greedy_answers(model, logits, inputs)[1]
    return predictions


def correct(
    model: HookedVLM, examples: Sequence[Example], intervention: Intervention = NOTHING, **kwargs
) -> list[bool]:
    """Whether each greedy answer is right (``scoring.correctness``), under ``intervention``."""
    return correctness(examples, predict(model, examples, intervention, **kwargs))


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
        rows.append(
            {
                "condition": condition,
                "type": group,
                "n": len(part),
                "acc_before": part.before.mean(),
                "acc_after": part.after.mean(),
                "diff": est.value,
                "ci_low": est.ci[0],
                "ci_high": est.ci[1],
            }
        )
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
    base = correct(model, examples, NOTHING, batch_size=batch_size)
    tables = []
    for item in [intervention] + ([control] if control is not None else []):
        after = correct(model, examples, item, batch_size=batch_size)
        tables.append(compare(examples, base, after, item.name, n_resamples, seed))
    return pd.concat(tables, ignore_index=True)
