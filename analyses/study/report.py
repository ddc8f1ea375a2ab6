"""Writing the study's results: ``tables.json``, ``tables.md`` and a self-contained ``report.html``.

The report reads the typed results (``analyses.study.results``), never display strings. The
HTML embeds plotly.js once, so it opens offline; every figure stays interactive. ``compare``
lays several runs side by side, matching predictors by their stable ``key``.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from sklearn.metrics import roc_curve

from analyses import formatting, plots
from analyses.data.examples import Example
from analyses.files import write_atomic
from analyses.study.extract import Extraction
from analyses.study.findings import findings, warnings
from analyses.study.results import StudyResults
from vlm_lens.errors import DataError

STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222;line-height:1.45}"
    "table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{padding:3px 10px;border-bottom:1px solid #ddd;"
    "text-align:right}th{background:#f4f4f4}h3{margin-bottom:.2em}.note{color:#555;font-style:italic}.warn{background:#fff4e5;border-left:4px solid "
    "#f0a020;padding:.5em 1em;margin:1em 0}code{font-size:12px}" + formatting.SCROLL_CSS
)

TITLES = {
    "table1_models": "Table 1. The model studied",
    "table7_benchmarks": "The benchmark (the questions asked)",
    "table2_accuracy": "Table 2a. Task accuracy",
    "headline_comparisons": "The paper's headline comparisons (95% CI, permutation p, adjusted over the six)",
    "table2_attention_rpb": "Table 2b. Attention sharpness vs correctness by layer (point-biserial R, 95% CI; "
    "p adjusted over layers: an extension)",
    "dbscan_robustness": "C_k re-counted by DBSCAN on the top-mass patches (robustness)",
    "probe_seeds": "Probe AUROC over several splits: mean and standard error",
    "table2_attention_rpb_pooled": "Table 2b (pooled). Attention sharpness (H_s / log patches) and C_k vs "
    "correctness, per run and pooled over every run",
    "table7_confidence_vs_probe": "Table 7. Output confidence vs probe AUROC, per model and benchmark",
    "table2_top_heads": "Table 2c. Attention heads with the largest direct logit contribution to the truth margin",
    "table2_top_heads_attention_rpb": "Table 2d. Attention sharpness of the top heads vs correctness (point-biserial R)",
    "table3_logit_lens": "Table 3. Logit-lens peak, separation and MLP share of the margin",
    "table4_5_ablations": "Tables 4-5. Probe-unit ablations vs random units, single-unit clamp, escalating random "
    "(test split, paired bootstrap 95% CI; per-type columns: the object-ID questions among them)",
    "mlp_bypass": "MLP bypass by layer (test split, paired bootstrap 95% CI)",
    "patch_masking": "Patch masking: most-attended vs random patches, token and pixel level",
    "table6_predictors": "Table 6. Reliability predictors: test AUROC (bootstrap 95% CI)",
    "table8_accounting": "Table 8. Sample accounting",
    "table9_methods": "Table 9. Method comparison",
    "margin_curves": "Truth margin by layer (correct vs incorrect)",
    "lens_kl": "The two lenses: KL to the final distribution by layer (test-split prompts, every position)",
    "lens_peaks": "The two lenses: where right and wrong answers' margins separate",
    "table10_circuit": "Table 10. Circuit summary: the probe's units and their activation shifts",
    "figure4_delta_entropy": "Figure 4 data. H_s of right minus wrong answers by layer",
    "delta_h_s_by_layer": "Delta H_s by layer (the paper's: H_s at layer l minus layer l-1)",
    "figure5_visual_updates": "Figure 5 data. Writes to the image tokens by layer",
    "symbolic_detachment": "Symbolic detachment: the three criteria",
    "open_ended_summary": "Open-ended answers: judge-free metrics by category",
    "open_ended_answers": "Open-ended answers beside their references",
}


# How to read each section: two sentences, printed under its title in report.html and tables.md.
NOTES = {
    "table1_models": "The model as this run loaded it: sizes, dtype and how many image tokens one image became. "
    "Compare runs only when these match what you meant to study.",
    "table7_benchmarks": "Which questions were asked, how many, and the rule that scored them. "
    "The accuracy here is the share of answers the benchmark's own metric calls right.",
    "table2_accuracy": "Accuracy overall and per question type, with the expected calibration error of the output "
    "confidence. A low accuracy on a type means the later tables are mostly about that type's errors.",
    "headline_comparisons": "The study's six headline tests on this run: attention structure (C_k, H_s) and "
    "self-consistency against correctness, the dense probe against chance, and the accuracy cost "
    "of masking the most-attended patches and of zeroing the probe's units. Read p_bonferroni "
    "and p_bh, adjusted over these six.",
    "dbscan_robustness": "C_k counted again by DBSCAN with settings that join diagonal neighbours and drop lone patches. "
    "High agreement and a DBSCAN R_pb like C_k's mean the attention result does not hang on how "
    "components are counted.",
    "probe_seeds": "The dense and sparse probes refitted on fresh stratified splits (layer chosen on each split's "
    "validation). A small standard error means Table 6's probe AUROC is not the luck of one split.",
    "table2_attention_rpb": "Point-biserial R between attention sharpness (H_s, C_k - 1) and correctness per layer; "
    "a CI that holds 0 means no relation. The p-values are permutation tests, adjusted across "
    "layers (Bonferroni, Benjamini-Hochberg): read the adjusted ones.",
    "table2_top_heads": "The attention heads whose direct write at the answer position most raises the gold answer's "
    "logit over its strongest competitor. A head near the top with a large std helps some "
    "questions and hurts others.",
    "table2_top_heads_attention_rpb": "H_s of the first answer token's map averaged over the heads of Table 2c, "
    "against correctness, beside every head's mean. If even the heads that write the "
    "answer show no relation, sharpness is not where reliability lives.",
    "table3_logit_lens": "l* is where right and wrong answers' truth margins are furthest apart; the separation layer "
    "is where their CIs stop overlapping. The MLP share is the MLP's part of the residual "
    "update's magnitude at l*.",
    "margin_curves": "Mean truth margin per layer for right and wrong answers, with 95% CIs. Where the bands part, "
    "the model's internal state already knows whether it will be right.",
    "lens_kl": "How far each layer read through a lens is from the model's own output (mean KL, nats, with its "
    "standard error). The tuned lens's translators were trained for exactly this; the smaller its KL, the more an "
    "early layer's margin says what that layer knows rather than how far its basis is from the last layer's.",
    "lens_peaks": "l*, the separation layer and the layer of the largest mean margin, through each lens. The study's "
    "tables read margins through the lens this run was given (--lens); the other is here to compare.",
    "table4_5_ablations": "Zeroing the sparse probe's strongest units versus random units of the same layer and size, "
    "each unit alone, the strongest clamped (to class means and to the extreme clamp), the same "
    "ablation at neighbouring layers, and escalating random ablations. Reliability is concentrated only "
    "if the probe units hurt clearly more than random ones.",
    "mlp_bypass": "Each layer's MLP write removed in turn. A layer whose bypass costs much accuracy is a bottleneck; "
    "small costs everywhere mean the work is spread out.",
    "patch_masking": "The most-attended share of image patches hidden, against as many random patches, as tokens and "
    "as pixels. If the attended patches matter, masking them hurts more than random masking.",
    "table6_predictors": "Each signal's test AUROC for telling right from wrong answers, with a bootstrap CI; 0.5 is "
    "chance. Classifier rows also give their test accuracy (the stress test's number).",
    "table8_accounting": "Where every question went, and the dense probe used as an error monitor: of the answers it "
    "flags, the share that are wrong (precision@tau), and the share of wrong answers it flags.",
    "table9_methods": "The predictors side by side with what each costs to run. Cheap signals that match expensive ones "
    "are the ones to deploy.",
    "table10_circuit": "The sparse probe's strongest units: coefficient, mean activation on right and wrong answers, "
    "the shift and its effect size. A large shift with no ablation effect is a marker, not a cause.",
    "figure4_delta_entropy": "Mean H_s of right answers minus wrong ones per layer, with a 95% CI. Bands that hold 0 "
    "everywhere say sharpness does not separate right from wrong.",
    "delta_h_s_by_layer": "How much the attention map's entropy changes from one layer to the next, over all questions "
    "(with a 95% CI) and over right and wrong answers. Negative values are layers where attention "
    "sharpens; an early dip is the entropy collapse symbolic detachment looks for.",
    "figure5_visual_updates": "How much attention and the MLPs write into the image tokens at each layer. A fall to "
    "near zero late in the network is the visual stream going quiet.",
    "symbolic_detachment": "The three criteria of symbolic detachment, each from this run's numbers. All three must "
    "hold for the verdict; each row says which measure decided it.",
}


def to_json(results: StudyResults) -> dict:
    out = {
        "config": results.config.as_dict(),
        "findings": [vars(f) for f in findings(results)],
        "warnings": warnings(results),
        "case_study": results.case,
    }
    for key, frame in results.tables().items():
        out[key] = frame.replace({np.nan: None}).to_dict(orient="records")
    return out


def to_markdown(results: StudyResults) -> str:
    found = "\n".join(f"- **{f.question}** {f.answer}" for f in findings(results))
    cautions = "".join(f"\n> {w}" for w in warnings(results))
    tables = "\n".join(
        f"### {TITLES.get(key, key)}\n\n{NOTES.get(key, '')}\n\n{formatting.markdown(frame)}\n"
        for key, frame in results.tables().items()
    )
    return f"### Findings\n\n{found}\n{cautions}\n\n{tables}"


def roc_figure(results: StudyResults, labels: np.ndarray) -> go.Figure:
    curves = []
    for predictor in results.predictors.rows:  # every predictor, the attention classifiers included
        fpr, tpr, _ = roc_curve(labels, predictor.scores)
        curves.append((predictor.method, fpr, tpr, predictor.estimate.value))
    return plots.roc_curves(curves, "ROC curves on the test split")


def _attention_map(results, extraction, examples, i: int, label: str) -> go.Figure:
    layers = extraction.attention_layers  # every layer, or a cross model's cross layers: the one nearest l*
    column = min(range(len(layers)), key=lambda k: abs(layers[k] - results.margins.peak_layer))
    layer = layers[column]
    row = extraction.rows[i]
    grid = extraction.attention[i][column].reshape(row["grid"])
    title = f"Attention at layer {layer}, {label}: {examples[i].text} -> {row['prediction']!r} (gold {row['label']!r})"
    return plots.attention_over_image(examples[i].load_image(), grid, title)


def _case_study(results: StudyResults, extraction: Extraction, examples: list[Example]) -> tuple[str, list[go.Figure]]:
    """Figure 6: sharp attention, wrong answer, the probe flags it, the logit lens shows the suppression."""
    i = results.case
    if i is None:
        return "No wrong test answer was flagged by the dense probe, so there is no case to show.", []
    margins = extraction.margins[:, i]
    best = int(np.argmax(margins))
    entropy = results.features.entropy[i].mean()
    text = (
        f'Question {i}: "{examples[i].text}" answered {extraction.rows[i]["prediction"]!r}, gold '
        f"{extraction.rows[i]['label']!r}. Its attention is sharp (mean H_s {entropy:.2f} against "
        f"{results.features.entropy.mean():.2f} over all questions), the dense probe flags it as likely wrong, and "
        f"the logit lens shows the gold answer's margin highest at layer {best} ({margins[best]:+.2f}) before it "
        f"ends at {margins[-1]:+.2f}"
        + (": the right token was suppressed late." if margins[best] > 0 > margins[-1] else ".")
    )
    return text, [
        _attention_map(results, extraction, examples, i, "the case"),
        plots.margin_trajectory(margins, f"Truth margin by layer, question {i}"),
    ]


def _sections(results: StudyResults, extraction: Extraction, examples: list[Example]) -> list[tuple[str, str, list]]:
    """(title, reading note, [tables and figures]) in the report's order."""
    t = results.tables()
    m, features, correct = results.margins, results.features, extraction.correct
    maps = []
    for label, flag in (("a correct answer", True), ("a wrong answer", False)):
        hits = np.flatnonzero(correct == flag)
        if len(hits):
            maps.append(_attention_map(results, extraction, examples, int(hits[0]), label))

    def effects(key, title):
        frame = t[key].dropna(subset=["diff"])
        bars = frame.rename(columns={"condition": "type", "group": "condition"})
        return [plots.intervention_effects(bars, title)] if len(frame) else []

    sparse = results.predictors.sparse.probe
    values = extraction.hidden[int(sparse.layer)]
    circuit = t["table10_circuit"]
    probe_fig = (
        [plots.probe_units(circuit, values[correct, circuit.unit.iloc[0]], values[~correct, circuit.unit.iloc[0]])]
        if len(circuit)
        else []
    )
    case_text, case_figs = _case_study(results, extraction, examples)

    def table(key, *figures):  # a study table's section: its title and note (by its one key), the table, its figures
        return TITLES[key], NOTES[key], [t[key], *figures]

    return [
        table("table1_models"),
        table("table7_benchmarks"),
        table("table2_accuracy", plots.reliability_diagram(results.accuracy.calibration_bins, results.accuracy.ece)),
        table("headline_comparisons"),
        table("table2_attention_rpb"),
        table("dbscan_robustness"),
        (
            TITLES["delta_h_s_by_layer"],
            NOTES["delta_h_s_by_layer"],
            [
                plots.layer_difference(
                    t["delta_h_s_by_layer"], "delta_h_s", "Delta H_s: layer l minus layer l-1", "Delta H_s (nats)"
                ),
                t["delta_h_s_by_layer"],
            ],
        ),
        (
            "Figure 4. H_s across layers: right minus wrong answers",
            NOTES["figure4_delta_entropy"],
            [
                plots.layer_difference(
                    t["figure4_delta_entropy"], "delta_h_s", "Delta H_s: right minus wrong answers", "Delta H_s (nats)"
                ),
                plots.entropy_and_components(features.entropy.mean(0), features.components.mean(0)),
                *maps,
            ],
        ),
        table("table2_top_heads"),
        table("table2_top_heads_attention_rpb"),
        table("table3_logit_lens"),
        (
            TITLES["margin_curves"],
            NOTES["margin_curves"],
            [plots.margin_curves({results.config.model: m.curves}), plots.margin_contributions(m.contributions)],
        ),
        *_lens_sections(results),
        (
            "Figure 5. Writes to the image tokens by layer",
            NOTES["figure5_visual_updates"],
            [plots.update_norms(m.visual_updates)],
        ),
        table("symbolic_detachment"),
        table("table6_predictors", roc_figure(results, correct[results.predictors.split.test])),
        table("probe_seeds"),
        table("table9_methods"),
        table("table4_5_ablations", *effects("table4_5_ablations", "Accuracy change: probe units vs random units")),
        table("mlp_bypass", *effects("mlp_bypass", "Accuracy change: MLP bypassed")),
        table("patch_masking", *effects("patch_masking", "Accuracy change: most-attended vs random patches")),
        (TITLES["table10_circuit"], NOTES["table10_circuit"], [circuit, *probe_fig]),
        ("Figure 6. A case study: sharp attention, wrong answer", case_text, case_figs),
        table("table8_accounting"),
    ]


def _lens_sections(results: StudyResults) -> list[tuple[str, str, list]]:
    """With ``--lens tuned``: the two lenses' KL by layer and margin curves side by side."""
    lenses = results.lenses
    if lenses is None:
        return []
    curves = {f"{name} lens": part.drop(columns="lens") for name, part in lenses.curves.groupby("lens", sort=False)}
    return [
        (
            TITLES["lens_kl"],
            f"{NOTES['lens_kl']} Over {lenses.kl_questions} test-split prompts. The tuned lens: {lenses.source}.",
            [lenses.kl, plots.lens_kl(lenses.kl)],
        ),
        (
            TITLES["lens_peaks"],
            NOTES["lens_peaks"],
            [lenses.peaks, plots.margin_curves(curves, "Truth margin by layer through each lens")],
        ),
    ]


def _monitor_sections(monitored) -> list[tuple[str, str, list]]:
    """The reliability monitor's tables (``analyses.study.monitoring.MonitorReport``), after the study's."""
    m = monitored.monitor
    return [
        (
            f"Reliability monitor: {m.signal} ({m.representation}, layers {list(m.layers)}), saved in monitor/",
            "Each signal fitted on the study's split, its layer chosen on validation; the chosen one is saved "
            "(vlm-lens monitor apply scores new questions with it).",
            [monitored.signals],
        ),
        (
            "Selective prediction (test split)",
            "Keep the answers a scorer trusts most: accuracy at 80% and 90% coverage, and AURC (the mean error rate "
            "over every coverage; lower is better), the monitor beside output confidence, logit entropy and "
            "self-consistency, with what each costs.",
            [monitored.selective, plots.risk_coverage(monitored.curves)],
        ),
        (
            "The self-consistency probe against sampling",
            "A probe trained to predict self-consistency support from one forward, against K sampled answers.",
            [monitored.consistency],
        ),
    ]


def write(out: Path, results: StudyResults, extraction: Extraction, examples: list[Example], monitored=None) -> Path:
    """tables.json, tables.md and report.html; with ``monitored`` (a ``MonitorReport``), its tables too."""
    out.mkdir(parents=True, exist_ok=True)
    data = to_json(results)
    text = to_markdown(results)
    sections = _sections(results, extraction, examples)
    if monitored is not None:
        data["monitor"] = {
            "card": monitored.monitor.card(),
            **{k: v.replace({np.nan: None}).to_dict(orient="records") for k, v in monitored.tables().items()},
        }
        text += "\n" + re.sub(r"^(#+) ", r"##\1 ", monitored.markdown(), flags=re.M)  # under the study's ###
        sections += _monitor_sections(monitored)
    write_atomic(out / "tables.json", json.dumps(data, indent=1))
    write_atomic(out / "tables.md", text)
    body, plotly_included = [], False
    for title, note, parts in sections:
        body.append(f"<h2>{html.escape(title)}</h2><p class='note'>{html.escape(note)}</p>")
        for part in parts:
            if isinstance(part, pd.DataFrame):
                body.append(formatting.html_table(part))
            else:
                body.append(part.to_html(full_html=False, include_plotlyjs=not plotly_included))
                plotly_included = True
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
        + f"<h2>Findings</h2>{found}{''.join(body)}"
        f"<h2>Settings</h2><p><code>{settings}</code></p></body></html>"
    )
    path = out / "report.html"
    write_atomic(path, page)
    return path


def write_open(out: Path, results, cfg) -> Path:
    """tables.json, tables.md and report.html for an open-ended benchmark: answers, judge-free metrics, and a
    plain statement of what is not scored (``analyses.study.open_ended``)."""
    from analyses.study.open_ended import NOT_SCORED

    out.mkdir(parents=True, exist_ok=True)
    tables = results.tables()
    data = {"config": cfg.as_dict(), "not_scored": NOT_SCORED}
    data.update({k: f.replace({np.nan: None}).to_dict(orient="records") for k, f in tables.items()})
    write_atomic(out / "tables.json", json.dumps(data, indent=1))
    md = f"> {NOT_SCORED}\n\n" + "\n".join(
        f"### {TITLES.get(k, k)}\n\n{formatting.markdown(f)}\n" for k, f in tables.items()
    )
    write_atomic(out / "tables.md", md)
    body = "".join(f"<h2>{html.escape(TITLES.get(k, k))}</h2>" + formatting.html_table(f) for k, f in tables.items())
    write_atomic(
        out / "report.html",
        f"<!doctype html><html><head><meta charset='utf-8'><title>vlm-lens VRP report</title><style>{STYLE}</style></head>"
        f"<body><h1>VLM Reliability Probe: {html.escape(cfg.model)} on {html.escape(cfg.benchmark)} (open-ended)</h1>"
        f"<div class='warn'><b>Not scored.</b> {html.escape(NOT_SCORED)}</div>{body}</body></html>",
    )
    return out / "report.html"


def _with_ci(value, low, high, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    fmt = "+.3f" if signed else ".3f"
    return f"{value:{fmt}} [{low:{fmt}}, {high:{fmt}}]" if low is not None else f"{value:{fmt}}"


def ablation_keys(rows: list[dict]) -> list[str]:
    """What each ablation row is, the same in every run whatever its units' ids and sizes: "top-5 probe units",
    "top-5 probe units: random control 0", "probe rank 1 unit zeroed alone", "strongest unit clamped to its mean on
    wrong answers", "top-10 probe units @ probe layer +1": so --compare matches like with like."""
    probe_layer = next((r["layer"] for r in rows if r["group"] == "probe units"), None)
    keys, last_probe = [], ""
    for r in rows:
        text = re.sub(r"\s*\((k=\d+|[+-]?\d+(\.\d+)?)\)", "", r["condition"])  # sizes and values of this run
        text = re.sub(r"unit \d+", "unit", text)  # the unit's id: its rank says which it is
        if probe_layer is not None and r.get("layer") is not None and r["layer"] == r["layer"]:  # (NaN: none)
            text = re.sub(r"@L\d+", f"@ probe layer {int(r['layer'] - probe_layer):+d}", text)
        if r["group"] == "probe units":
            last_probe = text
        elif r["group"] == "random units":
            text = f"{last_probe}: {text}"
        elif r["group"] == "single-unit clamp":
            text = text.replace("clamp unit", "clamp the strongest unit")
        keys.append(text)
    return keys


def _runs_table(loaded: dict[str, dict]) -> pd.DataFrame:
    """One column per run: what it ran on (model, benchmark, n, K, test split, seed) and what it warned; a row
    says whether the runs' settings differ."""
    fields = ("model", "benchmark", "n", "k", "seed", "n_resamples")
    table = {}
    for name, d in loaded.items():
        cfg, accounting = d["config"], d["table8_accounting"][0]
        table[name] = {
            **{field: cfg.get(field) for field in fields},
            "test split": accounting.get("test split"),
            "warnings": len(d.get("warnings", [])),
        }
    frame = pd.DataFrame(table)
    differ = [f for f in fields if len({str(v) for v in frame.loc[f]}) > 1]
    frame.loc["settings that differ"] = ", ".join(differ) or "none"
    return frame


def compare(runs: list[Path], out: Path) -> Path:
    """Several runs' key tables side by side (compare.md, compare.html) and their margin curves overlaid."""
    loaded = {}
    for i, run in enumerate(runs):
        if not (Path(run) / "tables.json").is_file():
            raise DataError(f"{run} holds no tables.json: not a finished vlm-lens run (--compare takes run folders)")
        data = json.loads((Path(run) / "tables.json").read_text())
        if "table6_predictors" not in data:
            raise DataError(
                f"{run} is an open-ended run (nothing scored, no AUROCs): --compare lays scored runs side by side"
            )
        name = f"{data['config']['model']} ({Path(run).name})"
        loaded[name if name not in loaded else f"{name} #{i + 1}"] = data  # two runs never share a column
    accuracy = pd.DataFrame(
        {name: {r["type"]: r["accuracy"] for r in d["table2_accuracy"]} for name, d in loaded.items()}
    )
    aurocs = pd.DataFrame(
        {
            name: {r["key"]: _with_ci(r["auroc"], r["ci_low"], r["ci_high"]) for r in d["table6_predictors"]}
            for name, d in loaded.items()
        }
    )
    lens = pd.DataFrame({name: d["table3_logit_lens"][0] for name, d in loaded.items()})
    ablation = pd.DataFrame(
        {
            name: {
                key: _with_ci(r["diff"], r["ci_low"], r["ci_high"], signed=True)
                for key, r in zip(ablation_keys(d["table4_5_ablations"]), d["table4_5_ablations"])
            }
            for name, d in loaded.items()
        }
    )
    parts = {
        "Runs": _runs_table(loaded),
        "Accuracy": accuracy,
        "Predictor AUROC (test, 95% CI)": aurocs,
        "Logit lens": lens,
        "Ablation: accuracy change (95% CI)": ablation,
    }
    out.mkdir(parents=True, exist_ok=True)
    md = "\n".join(f"### {t}\n\n{f.to_markdown(floatfmt='.3f')}\n" for t, f in parts.items())
    write_atomic(out / "compare.md", md)
    fig = plots.margin_curves(
        {name: pd.DataFrame(d["margin_curves"]) for name, d in loaded.items()}, "Truth margin by layer, models overlaid"
    )
    body = "".join(
        f"<h2>{html.escape(t)}</h2>{f.to_html(float_format=lambda x: f'{x:.3f}', border=0)}" for t, f in parts.items()
    )
    write_atomic(
        out / "compare.html",
        f"<!doctype html><html><head><meta charset='utf-8'><title>vlm-lens comparison</title><style>{STYLE}</style></head><body>"
        f"<h1>VRP comparison</h1>{body}{fig.to_html(full_html=False, include_plotlyjs=True)}</body></html>",
    )
    return out / "compare.md"
