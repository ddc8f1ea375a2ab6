"""Writing the study's results: ``tables.json``, ``tables.md`` and a self-contained ``report.html``.

The report reads the typed results (``analyses.study.results``), never display strings. The
HTML embeds plotly.js once, so it opens offline; every figure stays interactive. ``compare``
lays several runs side by side, matching predictors by their stable ``key``.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from sklearn.metrics import roc_curve

from analyses import plots
from analyses.data.examples import Example
from analyses.study.extract import Extraction
from analyses.study.findings import findings, warnings
from analyses.study.results import StudyResults

STYLE = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222;line-height:1.45}"
         "table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{padding:3px 10px;border-bottom:1px solid #ddd;"
         "text-align:right}th{background:#f4f4f4}h3{margin-bottom:.2em}.warn{background:#fff4e5;border-left:4px solid "
         "#f0a020;padding:.5em 1em;margin:1em 0}code{font-size:12px}")

TITLES = {
    "table1_models": "Table 1. The model studied",
    "table7_benchmarks": "Table 7. The benchmark",
    "table2_accuracy": "Table 2a. Task accuracy",
    "table2_attention_rpb": "Table 2b. Attention sharpness vs correctness (point-biserial R, 95% CI)",
    "table2_top_heads": "Table 2c. Attention heads with the largest direct logit contribution to the truth margin",
    "table3_logit_lens": "Table 3. Logit-lens peak, separation and MLP share of the margin",
    "table4_5_ablations": "Tables 4-5. Probe-unit ablations vs random units, single-unit clamp, escalating random "
                          "(test split, paired bootstrap 95% CI; per-type columns: the object-ID questions among them)",
    "mlp_bypass": "MLP bypass by layer (test split, paired bootstrap 95% CI)",
    "patch_masking": "Patch masking: most-attended vs random patches, token and pixel level",
    "table6_predictors": "Table 6. Reliability predictors: test AUROC (bootstrap 95% CI)",
    "table8_accounting": "Table 8. Sample accounting",
    "table9_methods": "Table 9. Method comparison",
    "margin_curves": "Truth margin by layer (correct vs incorrect)",
    "open_ended_summary": "Open-ended answers: judge-free metrics by category",
    "open_ended_answers": "Open-ended answers beside their references",
}


def to_json(results: StudyResults) -> dict:
    out = {"config": results.config.as_dict(), "findings": [vars(f) for f in findings(results)],
           "warnings": warnings(results)}
    for key, frame in results.tables().items():
        out[key] = frame.replace({np.nan: None}).to_dict(orient="records")
    return out


def to_markdown(results: StudyResults) -> str:
    found = "\n".join(f"- **{f.question}** {f.answer}" for f in findings(results))
    cautions = "".join(f"\n> {w}" for w in warnings(results))
    tables = "\n".join(f"### {TITLES.get(key, key)}\n\n{frame.to_markdown(index=False, floatfmt='.3f')}\n"
                        for key, frame in results.tables().items())
    return f"### Findings\n\n{found}\n{cautions}\n\n{tables}"


def roc_figure(results: StudyResults, labels: np.ndarray) -> go.Figure:
    fig = go.Figure()
    for predictor in results.predictors.rows:
        fpr, tpr, _ = roc_curve(labels, predictor.scores)
        fig.add_trace(go.Scatter(x=fpr, y=tpr, mode="lines", name=predictor.method))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "grey"}, name="chance"))
    fig.update_layout(title="ROC curves on the test split", xaxis_title="false positive rate",
                      yaxis_title="true positive rate", template="plotly_white")
    return fig


def _figures(results: StudyResults, extraction: Extraction, examples: list[Example]) -> list[tuple[str, go.Figure]]:
    model = results.config.model
    margins = results.margins
    figures = [("Truth margin by layer", plots.margin_curves({model: margins.curves})),
               ("Who builds the margin", plots.margin_contributions(margins.contributions))]
    correct = extraction.correct
    for label, flag in (("a correct answer", True), ("a wrong answer", False)):
        hits = np.flatnonzero(correct == flag)
        if len(hits):
            i = int(hits[0])
            row = extraction.rows[i]
            grid = extraction.attention[i][margins.peak_layer].reshape(row["grid"])
            title = (f"Attention at layer {margins.peak_layer}, {label}: {examples[i].text} -> {row['prediction']!r} "
                     f"(gold {row['label']!r})")
            figures.append((f"Attention over the image ({label})", plots.attention_over_image(examples[i].load_image(), grid, title)))
    features = results.features
    figures.append(("Attention structure by layer", plots.entropy_and_components(features.entropy.mean(0), features.components.mean(0))))
    for key, title in (("table4_5_ablations", "Accuracy change: probe units vs random units, clamp, escalating random"),
                       ("mlp_bypass", "Accuracy change: MLP bypassed at one layer"),
                       ("patch_masking", "Accuracy change: most-attended vs random patches masked")):
        frame = results.tables()[key].dropna(subset=["diff"])
        if len(frame):
            bars = frame.rename(columns={"condition": "type", "group": "condition"})
            figures.append((title.split(": ")[1].capitalize(), plots.intervention_effects(bars, title)))
    figures.append(("ROC curves", roc_figure(results, correct[results.predictors.split.test])))
    figures.append(("Calibration", plots.reliability_diagram(results.accuracy.calibration_bins, results.accuracy.ece)))
    return figures


def write(out: Path, results: StudyResults, extraction: Extraction, examples: list[Example]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "tables.json").write_text(json.dumps(to_json(results), indent=1))
    (out / "tables.md").write_text(to_markdown(results))
    sections = []
    for i, (title, fig) in enumerate(_figures(results, extraction, examples)):
        sections.append(f"<h2>{html.escape(title)}</h2>" + fig.to_html(full_html=False, include_plotlyjs=i == 0))
    table_html = "".join(
        f"<h2>{html.escape(TITLES.get(k, k))}</h2>" + f.to_html(index=False, float_format=lambda x: f"{x:.3f}", border=0)
        for k, f in results.tables().items() if k != "margin_curves"
    )
    cfg = results.config
    settings = html.escape(json.dumps(cfg.as_dict()))
    found = "".join(f"<h3>{html.escape(f.question)}</h3><p>{html.escape(f.answer)}</p>" for f in findings(results))
    cautions = "".join(f"<li>{html.escape(w)}</li>" for w in warnings(results))
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>vlm-lens VRP report</title>"
        f"<style>{STYLE}</style></head><body>"
        f"<h1>VLM Reliability Probe: {html.escape(cfg.model)} on {html.escape(cfg.benchmark)}</h1>"
        f"<p>{results.accounting.extracted} questions, {results.accounting.correct} answered right; "
        f"test split {results.accounting.test}.</p>"
        + (f"<div class='warn'><b>Read with care</b><ul>{cautions}</ul></div>" if cautions else "")
        + f"<h2>Findings</h2>{found}{table_html}{''.join(sections)}"
        f"<h2>Settings</h2><p><code>{settings}</code></p></body></html>"
    )
    path = out / "report.html"
    path.write_text(page)
    return path


def write_open(out: Path, results, cfg) -> Path:
    """tables.json, tables.md and report.html for an open-ended benchmark: answers, judge-free metrics, and a
    plain statement of what is not scored (``analyses.study.open_ended``)."""
    from analyses.study.open_ended import NOT_SCORED

    out.mkdir(parents=True, exist_ok=True)
    tables = results.tables()
    data = {"config": cfg.as_dict(), "not_scored": NOT_SCORED}
    data.update({k: f.replace({np.nan: None}).to_dict(orient="records") for k, f in tables.items()})
    (out / "tables.json").write_text(json.dumps(data, indent=1))
    md = f"> {NOT_SCORED}\n\n" + "\n".join(f"### {TITLES.get(k, k)}\n\n{f.to_markdown(index=False, floatfmt='.3f')}\n"
                                           for k, f in tables.items())
    (out / "tables.md").write_text(md)
    body = "".join(f"<h2>{html.escape(TITLES.get(k, k))}</h2>" + f.to_html(index=False, float_format=lambda x: f"{x:.3f}", border=0)
                   for k, f in tables.items())
    (out / "report.html").write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>vlm-lens VRP report</title><style>{STYLE}</style></head>"
        f"<body><h1>VLM Reliability Probe: {html.escape(cfg.model)} on {html.escape(cfg.benchmark)} (open-ended)</h1>"
        f"<div class='warn'><b>Not scored.</b> {html.escape(NOT_SCORED)}</div>{body}</body></html>")
    return out / "report.html"


def _with_ci(value, low, high, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    fmt = "+.3f" if signed else ".3f"
    return f"{value:{fmt}} [{low:{fmt}}, {high:{fmt}}]" if low is not None else f"{value:{fmt}}"


def compare(runs: list[Path], out: Path) -> Path:
    """Several runs' key tables side by side (compare.md, compare.html) and their margin curves overlaid."""
    loaded = {}
    for i, run in enumerate(runs):
        data = json.loads((Path(run) / "tables.json").read_text())
        name = f"{data['config']['model']} ({Path(run).name})"
        loaded[name if name not in loaded else f"{name} #{i + 1}"] = data  # two runs never share a column
    accuracy = pd.DataFrame({name: {r["type"]: r["accuracy"] for r in d["table2_accuracy"]} for name, d in loaded.items()})
    aurocs = pd.DataFrame({name: {r["key"]: _with_ci(r["auroc"], r["ci_low"], r["ci_high"]) for r in d["table6_predictors"]}
                           for name, d in loaded.items()})
    lens = pd.DataFrame({name: d["table3_logit_lens"][0] for name, d in loaded.items()})
    ablation = pd.DataFrame({name: {r["condition"]: _with_ci(r["diff"], r["ci_low"], r["ci_high"], signed=True)
                                    for r in d["table4_5_ablations"]} for name, d in loaded.items()})
    parts = {"Accuracy": accuracy, "Predictor AUROC (test, 95% CI)": aurocs, "Logit lens": lens,
             "Ablation: accuracy change (95% CI)": ablation}
    out.mkdir(parents=True, exist_ok=True)
    md = "\n".join(f"### {t}\n\n{f.to_markdown(floatfmt='.3f')}\n" for t, f in parts.items())
    (out / "compare.md").write_text(md)
    fig = plots.margin_curves({name: pd.DataFrame(d["margin_curves"]) for name, d in loaded.items()},
                              "Truth margin by layer, models overlaid")
    body = "".join(f"<h2>{html.escape(t)}</h2>{f.to_html(float_format=lambda x: f'{x:.3f}', border=0)}" for t, f in parts.items())
    (out / "compare.html").write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>vlm-lens comparison</title><style>{STYLE}</style></head><body>"
        f"<h1>VRP comparison</h1>{body}{fig.to_html(full_html=False, include_plotlyjs=True)}</body></html>"
    )
    return out / "compare.md"
