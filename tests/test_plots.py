"""Figures carry the numbers they were given; tables print whole numbers as whole numbers."""

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image

from analyses import logit_lens as L
from analyses import plots
from analyses.patching import TraceResult


def test_margin_curves_figure_overlays_models():
    rng = np.random.default_rng(0)
    curves = L.margin_curves(rng.normal(size=(4, 30)), rng.random(30) > 0.5)
    fig = plots.margin_curves({"a": curves, "b": curves})
    lines = [t for t in fig.data if t.mode == "lines+markers"]
    assert len(lines) == 4  # 2 models x correct/incorrect
    correct = curves[curves.group == "correct"].sort_values("layer")["mean"].to_numpy()
    assert np.allclose(lines[0].y, correct)


def test_attention_over_image_and_structure():
    grid = np.arange(16, dtype=float).reshape(4, 4)
    fig = plots.attention_over_image(Image.new("RGB", (32, 32)), grid)
    assert np.isclose(np.asarray(fig.data[1].z).sum(), 1.0)
    fig = plots.entropy_and_components(np.array([2.0, 1.0, 1.5]), np.array([1, 2, 3]))
    assert list(fig.data[1].y) == [0, 1, 2]


def test_trace_and_intervention_figures():
    result = TraceResult(np.ones((2, 3)), ["a", "b", "c"], [1], 5, 0.9, 0.1)
    fig = plots.trace_heatmap(result)
    assert list(fig.data[0].x) == ["0:a", "*1:b", "2:c"]
    table = pd.DataFrame([{"condition": "x", "type": "all", "diff": -0.1, "ci_low": -0.2, "ci_high": 0.0}])
    fig = plots.intervention_effects(table)
    assert np.allclose(fig.data[0].error_y.array, [0.1])


def test_reliability_diagram():
    from analyses.stats import expected_calibration_error

    ece, bins = expected_calibration_error([0.9, 0.8, 0.3], [1, 0, 0], n_bins=5)
    fig = plots.reliability_diagram(bins, ece)
    assert list(fig.data[0].y) == [b["accuracy"] for b in bins] and "ECE" in fig.layout.title.text


def test_whole_number_columns_print_as_integers_and_shares_do_not():
    from analyses.formatting import html_table, markdown

    frame = pd.DataFrame(
        {"peak_layer": [3.0, 1.0], "n": [100.0, 12.0], "accuracy": [1.0, 0.5], "max_layer": [2.0, None]}
    )
    md = markdown(frame).splitlines()
    cells = [c.strip() for c in md[2].strip("|").split("|")]
    assert cells == ["3", "100", "1.000", "2"]  # an accuracy of 1.0 stays a share
    assert [c.strip() for c in md[3].strip("|").split("|")][-1] in ("<NA>", "nan", "")
    page = html_table(frame)
    assert page.startswith("<div class='scroll'>") and "<td>100</td>" in page and "<td>1.000</td>" in page
    assert "<td>-</td>" in page  # the missing layer
    halves = pd.DataFrame({"layer": [1.5, 2.0]})  # not whole: stays float
    assert "1.500" in markdown(halves)
    # int64 columns beside floats (Table 3's row): the printers read the row as floats; they must stay integers
    mixed = pd.DataFrame({"peak_layer": [3], "gap_at_peak": [4.1237], "n_decomposed": [100], "kept": [True]})
    assert [c.strip() for c in markdown(mixed).splitlines()[2].strip("|").split("|")] == ["3", "4.124", "100", "True"]
    assert "<td>3</td>" in html_table(mixed) and "<td>100</td>" in html_table(mixed)


def test_roc_lines_are_each_their_own_look_with_sklearns_auroc_in_the_legend():
    from sklearn.metrics import roc_auc_score, roc_curve

    rng = np.random.default_rng(1)
    labels = rng.random(80) > 0.4
    curves = []
    for i in range(12):  # as many as the study's ROC: more than the 10 colours
        scores = labels * (i / 6) + rng.normal(size=80)
        fpr, tpr, _ = roc_curve(labels, scores)
        curves.append((f"predictor {i}", fpr, tpr, roc_auc_score(labels, scores)))
    fig = plots.roc_curves(curves)
    lines = [t for t in fig.data if t.name != "chance"]
    assert len({(t.line.color, t.line.dash) for t in lines}) == 12
    for trace, (name, _, _, auroc) in zip(lines, curves):
        assert trace.name == f"{name} (AUROC {auroc:.3f})"
    assert fig.layout.legend.x > 1  # beside the axes, not over the curves
