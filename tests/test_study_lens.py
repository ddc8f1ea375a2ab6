"""``vlm-lens vrp --lens tuned``: the study's margins through a tuned lens, from the stored residual streams.

Oracles: the identity lens (all translators zero) is the logit lens, so it must give back the margins extraction
stored; a trained lens's margins against ``tuned_lens`` on a fresh forward's cache (its own ``translate``), each
table's numbers against ``logit_lens``'s functions on those margins, and the predictor's scores by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest

from analyses import logit_lens, probes
from analyses.answers import reference_token_ids
from analyses.checkpoint import CheckpointMismatchError
from analyses.cli import main
from analyses.data.examples import shapes_examples
from analyses.evaluation import batches
from analyses.study import lenses as study_lenses
from analyses.study.config import VRPConfig
from analyses.study.extract import load
from analyses.study.pipeline import run
from analyses.study.validate import SHAPES_EVAL_SEED
from analyses.tuned_lens import TunedLens, tuned_lens
from tests.conftest import tiny
from vlm_lens import HookedVLM
from vlm_lens.errors import DataError

SMALL = dict(n=150, k=2, n_resamples=200, random_controls=1, lens_steps=40, margin_items=20)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    out = tmp_path_factory.mktemp("vrp-tuned")
    return out, run(VRPConfig(lens="tuned", **SMALL), out, progress=False)


@pytest.fixture(scope="module")
def toy():
    return HookedVLM.from_pretrained("toy-llava")


def test_the_identity_lens_gives_back_the_stored_logit_lens_margins(tuned, toy):
    out, _ = tuned
    ex = load(out / "extraction")  # its margins: the logit lens's, computed during extraction from the live model
    got = study_lenses.margins_through(toy, ex, TunedLens.identity(toy), batch_size=7)  # batches cut mid-split
    np.testing.assert_allclose(got, ex.margins, atol=1e-4)


def test_tuned_margins_match_a_fresh_forward_through_the_lens(tuned, toy):
    out, _ = tuned
    ex = load(out / "extraction")
    lens = TunedLens.load(out / "tuned_lens")
    assert lens.training["steps"] == SMALL["lens_steps"] and not np.allclose(lens.weight.numpy(), 0)
    got = study_lenses.margins_through(toy, ex, lens)
    examples = shapes_examples(SMALL["n"], seed=SHAPES_EVAL_SEED)[:6]
    ((chunk, inputs),) = batches(toy, examples, 6)
    _, cache = toy.run_with_cache(inputs, names_filter=lambda n: n.endswith("hook_resid_post"))
    refs = [reference_token_ids(toy.tokenizer, e.golds, e.metric) for e in chunk]
    fresh = logit_lens.truth_margin(tuned_lens(toy, cache, lens), refs).numpy()
    np.testing.assert_allclose(got[:, :6], fresh, atol=1e-3)
    assert not np.allclose(got, ex.margins, atol=1e-2)  # the lens moved them


def test_every_margin_table_reads_the_tuned_lens_and_both_lenses_are_reported(tuned, toy):
    out, results = tuned
    ex = load(out / "extraction")
    margins = study_lenses.margins_through(toy, ex, TunedLens.load(out / "tuned_lens"))
    curves = logit_lens.margin_curves(margins, ex.correct)
    summary = logit_lens.peak_and_separation(curves, margins)
    table3 = results.margins.frame().iloc[0]
    assert table3["lens"] == "tuned"
    assert (table3.peak_layer, table3.separation_layer) == (summary["peak_layer"], summary["separation_layer"])
    assert table3.gap_at_peak == pytest.approx(summary["gap_at_peak"])
    margin_row = next(r for r in results.predictors.rows if r.key == "truth_margin")
    test = results.predictors.split.test
    np.testing.assert_allclose(margin_row.scores, margins[results.predictors.margin_layer][test], atol=1e-9)
    assert margin_row.signal.startswith("tuned lens")
    peaks = results.lenses.peaks.set_index("lens")
    logit = logit_lens.peak_and_separation(logit_lens.margin_curves(ex.margins, ex.correct), ex.margins)
    assert peaks.loc["logit", "peak_layer"] == logit["peak_layer"]
    assert peaks.loc["tuned", "peak_layer"] == summary["peak_layer"]
    kl = results.lenses.kl.pivot(index="layer", columns="lens", values="kl")
    last = toy.cfg.n_layers - 1
    assert kl.loc[last].tolist() == pytest.approx([0.0, 0.0], abs=1e-6)  # the last layer is the model's read-out
    assert (kl.loc[: last - 1, "tuned"] < kl.loc[: last - 1, "logit"]).all()
    tables = json.loads((out / "tables.json").read_text())
    assert {"lens_kl", "lens_peaks"} <= set(tables) and tables["table3_logit_lens"][0]["lens"] == "tuned"
    page = (out / "report.html").read_text()
    assert "The two lenses: KL to the final distribution" in page and "trained on the" in page


def test_a_rerun_reuses_the_extraction_and_the_lens(tuned, monkeypatch):
    out, results = tuned

    def refuse(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(study_lenses, "train", refuse)
    monkeypatch.setattr("analyses.study.pipeline.extract", lambda *a, **k: out / "extraction")
    again = run(VRPConfig(lens="tuned", **SMALL), out, progress=False)
    assert again.margins.peak_layer == results.margins.peak_layer
    logit = run(VRPConfig(**SMALL), out, progress=False)  # the same extraction through the logit lens
    assert logit.lenses is None and logit.margins.frame().iloc[0]["lens"] == "logit"
    assert logit.margins.peak_layer == results.lenses.peaks.set_index("lens").loc["logit", "peak_layer"]


def test_a_given_lens_is_used_and_another_models_refused(tuned, tmp_path):
    out, results = tuned
    given = run(VRPConfig(lens="tuned", tuned_lens=str(out / "tuned_lens"), **SMALL), tmp_path / "a", progress=False)
    assert given.lenses.source == f"loaded from {out / 'tuned_lens'}"
    assert given.margins.peak_layer == results.margins.peak_layer
    TunedLens.identity(tiny("qwen2_vl")).save(tmp_path / "other")
    with pytest.raises(CheckpointMismatchError):
        run(VRPConfig(lens="tuned", tuned_lens=str(tmp_path / "other"), **SMALL), tmp_path / "b", progress=False)
    assert not (tmp_path / "b" / "extraction" / "manifest.json").exists()  # refused before any extraction


def test_lens_settings_are_checked_where_they_are_defined(tmp_path, capsys):
    with pytest.raises(DataError, match="reads the residual stream at every layer"):
        VRPConfig(lens="tuned", hidden_layers=(1, 2))
    with pytest.raises(DataError, match="is read only with lens tuned"):
        VRPConfig(tuned_lens=str(tmp_path))
    with pytest.raises(DataError, match="holds no card.json"):
        VRPConfig(lens="tuned", tuned_lens=str(tmp_path)).check_files()
    assert main(["vrp", "--lens", "tuned", "--tuned-lens", str(tmp_path / "none"), "--quiet"]) == 2
    said = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(said) == 1 and "does not exist" in said[0]


def test_the_lens_trains_on_the_training_split_only(tuned):
    out, _ = tuned
    ex = load(out / "extraction")
    split = probes.stratified_split(ex.correct, 0, 0.2, 0.2)
    assert TunedLens.load(out / "tuned_lens").training["examples"] == len(split.train)
