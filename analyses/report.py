"""Writing the study's results: ``tables.json``, ``tables.md`` and a self-contained ``report.html``.

The HTML embeds plotly.js once, so the report opens offline; every figure stays interactive.
``compare`` lays several runs side by side.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from sklearn.metrics import roc_curve

from analyses import plots, stats

TITLES = {
    "table2_accuracy": "Table 2a. Task accuracy",
    "table2_attention_rpb": "Table 2b. Attention sharpness vs correctness (point-biserial R, 95% CI)",
    "table3_logit_lens": "Table 3. Logit-lens peak, separation and MLP share of the margin",
    "table4_5_ablations": "Tables 4-5. Probe-neuron ablation vs random-neuron controls (paired bootstrap 95% CI)",
    "table6_predictors": "Table 6. Reliability predictors: test AUROC (bootstrap 95% CI)",
    "table8_accounting": "Table 8. Sample accounting",
    "table9_methods": "Table 9. Method comparison",
    "margin_curves": "Truth margin by layer (correct vs incorrect)",
}


def _frames(tables: dict) -> dict[str, pd.DataFrame]:
    return {k: v for k, v in tables.items() if isinstance(v, pd.DataFrame)}


def to_json(tables: dict) -> dict:
    out = {}
    for key, value in tables.items():
        out[key] = value.replace({np.nan: None}).to_dict(orient="records") if isinstance(value, pd.DataFrame) else value
    return out


def to_markdown(tables: dict) -> str:
    parts = []
    for key, frame in _frames(tables).items():
        parts.append(f"### {TITLES.get(key, key)}\n\n{frame.to_markdown(index=False, floatfmt='.3f')}\n")
    return "\n".join(parts)


def roc_figure(scores: dict[str, list[float]], labels: np.ndarray) -> go.Figure:
    fig = go.Figure()
    for method, values in scores.items():
        fpr, tpr, _ = roc_curve(labels, values)
        fig.add_trace(go.Scatter(x=fpr, y=tpr, mode="lines", name=method))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "grey"}, name="chance"))
    fig.update_layout(title="ROC curves on the test split", xaxis_title="false positive rate",
                      yaxis_title="true positive rate", template="plotly_white")
    return fig


def _figures(tables, curves, contributions, extraction, examples, extra) -> list[tuple[str, go.Figure]]:
    model = tables["config"]["model"]
    figures = [("Truth margin by layer", plots.margin_curves({model: curves})),
               ("Who builds the margin", plots.margin_contributions(contributions))]
    peak = int(tables["table3_logit_lens"].peak_layer.iloc[0])
    correct = extraction.correct
    for label, flag in (("a correct answer", True), ("a wrong answer", False)):
        hits = np.flatnonzero(correct == flag)
        if len(hits):
            i = int(hits[0])
            row = extraction.rows[i]
            grid = extraction.attention[i][peak].reshape(row["grid"])
            title = f"Attention at layer {peak}, {label}: {examples[i].text} -> {row['prediction']!r} (gold {row['label']!r})"
            figures.append((f"Attention over the image ({label})", plots.attention_over_image(examples[i].load_image(), grid, title)))
    figures.append(("Attention structure by layer", plots.entropy_and_components(extra["entropy"].mean(0), extra["components"].mean(0))))
    ablations = tables["table4_5_ablations"].rename(columns={"condition": "type", "intervention": "condition"})
    figures.append(("Ablation effects", plots.intervention_effects(ablations, "Accuracy change: probe neurons vs random controls")))
    figures.append(("ROC curves", roc_figure(extra["scores"], correct[extra["test"]])))
    ece, bins = stats.expected_calibration_error([r["confidence"] for r in extraction.rows], correct)
    figures.append(("Calibration", plots.reliability_diagram(bins, ece)))
    return figures


def write(out: Path, tables: dict, curves, contributions, extraction, examples, extra) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    tables = {**tables, "margin_curves": curves}
    (out / "tables.json").write_text(json.dumps(to_json(tables), indent=1))
    (out / "tables.md").write_text(to_markdown(tables))
    sections = []
    for i, (title, fig) in enumerate(_figures(tables, curves, contributions, extraction, examples, extra)):
        sections.append(f"<h2>{html.escape(title)}</h2>" + fig.to_html(full_html=False, include_plotlyjs=i == 0))
    table_html = "".join(
        f"<h2>{html.escape(TITLES.get(k, k))}</h2>" + f.to_html(index=False, float_format=lambda x: f"{x:.3f}", border=0)
        for k, f in _frames(tables).items() if k != "margin_curves"
    )
    cfg = html.escape(json.dumps(tables["config"]))
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>vlm-lens VRP report</title>"
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;margin:1em 0}"
        "td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}</style></head><body>"
        f"<h1>VLM Reliability Probe: {html.escape(tables['config']['model'])} on {html.escape(tables['config']['benchmark'])}</h1>"
        f"<p><code>{cfg}</code></p>{table_html}{''.join(sections)}</body></html>"
    )
    path = out / "report.html"
    path.write_text(page)
    return path


def compare(runs: list[Path], out: Path) -> Path:
    """Several runs' key tables side by side (compare.md, compare.html) and their margin curves overlaid."""
    loaded = {}
    for run in runs:
        data = json.loads((Path(run) / "tables.json").read_text())
        loaded[f"{data['config']['model']} ({Path(run).name})"] = data
    accuracy = pd.DataFrame({name: {r["type"]: r["accuracy"] for r in d["table2_accuracy"]} for name, d in loaded.items()})
    aurocs = pd.DataFrame({name: {r["method"].split(" @")[0].split(" (layer")[0]: r["auroc"] for r in d["table6_predictors"]}
                           for name, d in loaded.items()})
    lens = pd.DataFrame({name: d["table3_logit_lens"][0] for name, d in loaded.items()})
    ablation = pd.DataFrame({name: {r["condition"]: r["diff"] for r in d["table4_5_ablations"]} for name, d in loaded.items()})
    parts = {"Accuracy": accuracy, "Predictor AUROC (test)": aurocs, "Logit lens": lens, "Ablation: accuracy change": ablation}
    out.mkdir(parents=True, exist_ok=True)
    md = "\n".join(f"### {t}\n\n{f.to_markdown(floatfmt='.3f')}\n" for t, f in parts.items())
    (out / "compare.md").write_text(md)
    fig = plots.margin_curves({name: pd.DataFrame(d["margin_curves"]) for name, d in loaded.items()},
                              "Truth margin by layer, models overlaid")
    body = "".join(f"<h2>{html.escape(t)}</h2>{f.to_html(float_format=lambda x: f'{x:.3f}', border=0)}" for t, f in parts.items())
    (out / "compare.html").write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>vlm-lens comparison</title></head><body>"
        f"<h1>VRP comparison</h1>{body}{fig.to_html(full_html=False, include_plotlyjs=True)}</body></html>"
    )
    return out / "compare.md"
