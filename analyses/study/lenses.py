"""The study's margins through a tuned lens (``vlm-lens vrp --lens tuned``).

The truth margin at layer l reads the residual stream at the answer position through a lens. The logit lens
(the default) applies the model's own final norm and unembedding to it; a tuned lens (``analyses.tuned_lens``)
first moves each layer's residual by its trained affine translator, so early layers are read in the basis the last
layer speaks. With ``lens="tuned"`` every table that reads margins (Table 3's curves and l*, the truth margin
among Table 6's predictors, the detachment check) reads them through the tuned lens, recomputed from the stored
residual streams: an extraction is never redone for it, and its stored logit-lens margins stay beside them for the
comparison this module reports (margin curves through both lenses, and the KL to the final distribution by layer
on test-split prompts).

The lens is ``cfg.tuned_lens`` (a folder saved by ``vlm-lens lens train``), or trained here on the training split's
prompts (``cfg.lens_steps`` steps; the lens sees no label, only the model's own output distribution) and saved in
``OUT/tuned_lens``, where a rerun finds it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from analyses import logit_lens, probes
from analyses.answers import reference_token_ids
from analyses.data.examples import Example
from analyses.progress import Progress
from analyses.study.config import VRPConfig
from analyses.study.extract import Extraction
from analyses.tuned_lens import TunedLens, kl_by_layer, train
from vlm_lens import HookedVLM
from vlm_lens.errors import DataError

FOLDER = "tuned_lens"


@dataclass
class LensComparison:
    """Both lenses on one run: ``kl`` per layer and lens (``tuned_lens.kl_by_layer`` on ``kl_questions`` test-split
    prompts), ``curves`` the margin curves through each (``logit_lens.margin_curves`` with a ``lens`` column) and
    ``peaks`` where right and wrong separate through each; ``source`` says where the tuned lens came from."""

    kl: pd.DataFrame
    curves: pd.DataFrame
    peaks: pd.DataFrame
    source: str
    kl_questions: int

    def tables(self) -> dict[str, pd.DataFrame]:
        return {"lens_kl": self.kl, "lens_peaks": self.peaks}


def margins_through(
    model: HookedVLM, ex: Extraction, lens: TunedLens, batch_size: int = 64
) -> np.ndarray:  # [layer, n]
    """Every stored answer's truth margin at every layer through ``lens``, from the extraction's residual streams
    (one layer, ``batch_size`` answers at a time in memory). Needs the residual at every layer."""
    stored = ex.stored_layers("hidden")
    if stored != list(range(model.cfg.n_layers)):
        raise DataError(
            f"--lens tuned reads the residual stream at every layer, but this run stored layers {stored}: "
            "rerun with hidden_layers unset (every layer) in a new --out"
        )
    refs = [reference_token_ids(model.tokenizer, r["golds"], r["metric"]) for r in ex.rows]
    out = np.zeros((len(stored), len(ex.rows)))
    with torch.no_grad():
        for layer in stored:
            hidden = torch.from_numpy(ex.hidden[layer])
            for start in range(0, len(refs), batch_size):
                moved = lens.at(layer, hidden[start : start + batch_size].to(model.device))
                logits = logit_lens.read_out(model, moved.to(model.dtype))
                part = refs[start : start + batch_size]
                out[layer, start : start + len(part)] = logit_lens.truth_margin(logits, part).cpu()
    return out


def _lens(
    model: HookedVLM, chosen: list[Example], cfg: VRPConfig, out: Path, progress: Progress
) -> tuple[TunedLens, str]:
    """The given lens, the one a previous run trained on these prompts, or one trained now on ``chosen``."""
    if cfg.tuned_lens is not None:
        lens = TunedLens.load(cfg.tuned_lens)
        lens.check_model(model)
        return lens, f"loaded from {cfg.tuned_lens}"
    wanted = {"steps": cfg.lens_steps, "batch_size": cfg.batch_size, "seed": cfg.seed, "examples": len(chosen)}
    saved = out / FOLDER
    if saved.is_dir():
        lens = TunedLens.load(saved)
        lens.check_model(model)
        if {k: lens.training.get(k) for k in wanted} == wanted:
            return lens, f"trained on the {len(chosen)} training-split prompts ({cfg.lens_steps} steps), {FOLDER}/"
    lens = train(model, chosen, steps=cfg.lens_steps, batch_size=cfg.batch_size, seed=cfg.seed, progress=progress)
    lens.save(saved)
    return lens, f"trained on the {len(chosen)} training-split prompts ({cfg.lens_steps} steps), saved in {FOLDER}/"


def through_tuned_lens(
    model: HookedVLM,
    examples: list[Example],
    ex: Extraction,
    cfg: VRPConfig,
    out: str | Path,
    progress: bool | Progress = False,
) -> tuple[Extraction, LensComparison]:
    """``ex`` with its margins read through the tuned lens (each row keeps the logit lens's as
    ``logit_margins``), and the two lenses compared."""
    progress = Progress.of(progress)
    split = probes.stratified_split(ex.correct, cfg.seed, cfg.val_fraction, cfg.test_fraction)  # the study's own
    of = lambda rows: [examples[int(ex.rows[i]["index"])] for i in rows]  # noqa: E731
    lens, source = _lens(model, of(split.train), cfg, Path(out), progress)
    tuned = margins_through(model, ex, lens, cfg.batch_size)
    rows = [{**r, "margins": tuned[:, i].tolist(), "logit_margins": r["margins"]} for i, r in enumerate(ex.rows)]
    test = of(split.test[: cfg.margin_items])
    kl = kl_by_layer(model, test, lens, cfg.batch_size)
    curves, peaks = [], []
    for name, margins in (("logit", ex.margins), ("tuned", tuned)):
        table = logit_lens.margin_curves(margins, ex.correct)
        curves.append(table.assign(lens=name))
        peaks.append({"lens": name, **logit_lens.peak_and_separation(table, margins)})
    comparison = LensComparison(kl, pd.concat(curves, ignore_index=True), pd.DataFrame(peaks), source, len(test))
    return replace(ex, rows=rows), comparison
