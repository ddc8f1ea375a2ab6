"""The study in one command, end to end on a shipped toy model with a small sample count."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from analyses import report
from analyses.vrp import VRPConfig, run
from vlm_lens.cli import app


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("vrp")
    tables = run(VRPConfig(n=150, k=3, n_resamples=200, random_controls=2), out, progress=False)
    return out, tables


def test_outputs_written(study):
    out, tables = study
    page = (out / "report.html").read_text()
    assert page.startswith("<!doctype html>") and page.count("Plotly.newPlot") >= 6
    assert "<script src=" not in page and len(page) > 3_000_000  # plotly.js inline: self-contained
    data = json.loads((out / "tables.json").read_text())
    assert {"table2_accuracy", "table2_attention_rpb", "table3_logit_lens", "table4_5_ablations", "table6_predictors",
            "table8_accounting", "table9_methods", "margin_curves"} <= set(data)
    assert "Table 6" in (out / "tables.md").read_text()


def test_tables_are_consistent(study):
    _, tables = study
    accounting = tables["table8_accounting"].iloc[0]
    assert accounting.extracted == 150 == accounting.correct + accounting.incorrect
    assert accounting["train split"] + accounting["val split"] + accounting["test split"] == 150
    accuracy = tables["table2_accuracy"]
    assert accuracy[accuracy.type == "all"].accuracy.item() == pytest.approx(accounting.correct / 150)
    aurocs = tables["table6_predictors"]
    assert aurocs.auroc.between(0, 1).all() and (aurocs.ci_low <= aurocs.auroc).all()
    assert tables["table4_5_ablations"].condition.iloc[0] == "probe neurons"
    peak = tables["table3_logit_lens"].iloc[0]
    assert 0 <= peak.peak_layer < 4 and np.isfinite(peak.mlp_share_at_peak)


def test_rerun_resumes_and_agrees(study):
    out, tables = study
    again = run(VRPConfig(n=150, k=3, n_resamples=200, random_controls=2), out, progress=False)
    assert again["table6_predictors"].equals(tables["table6_predictors"])


def test_compare_lays_runs_side_by_side(study, tmp_path):
    out, _ = study
    path = report.compare([out, out], tmp_path)
    text = path.read_text()
    assert "Predictor AUROC" in text and text.count("toy-llava") >= 2
    assert (tmp_path / "compare.html").exists()


def test_missing_images_stop_before_model_work(tmp_path):
    questions = tmp_path / "q.json"
    questions.write_text("\n".join(json.dumps({"question_id": i, "image": f"img{i}.jpg", "text": "Is there a cat?",
                                               "label": "no"}) for i in range(3)))
    (tmp_path / "images").mkdir()
    result = CliRunner().invoke(app, ["vrp", "--model", "no/such-model", "--benchmark", str(questions),
                                      "--images", str(tmp_path / "images"), "--n", "3", "--out", str(tmp_path / "o")])
    assert isinstance(result.exception, FileNotFoundError)
    assert "3 image(s) missing" in str(result.exception)
