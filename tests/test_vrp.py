"""The study in one command, end to end on a shipped toy model with a small sample count."""

from __future__ import annotations

import html
import io
import json
import os

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as scipy_stats
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from analyses import probes
from analyses.cli import app
from analyses.data import shapes
from analyses.data.examples import shapes_examples
from analyses.evaluation import batches
from analyses.progress import Progress
from analyses.study.config import VRPConfig
from analyses.study.extract import load
from analyses.study.pipeline import run
from analyses.study.validate import SHAPES_EVAL_SEED
from vlm_lens import HookedVLM, zoo
from vlm_lens.errors import DataError

SMALL = dict(n=150, k=3, n_resamples=200, random_controls=2)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("vrp")
    return out, run(VRPConfig(**SMALL), out, progress=False)


def test_outputs_written(study):
    out, results = study
    page = (out / "report.html").read_text()
    assert page.startswith("<!doctype html>") and page.count("Plotly.newPlot") >= 6
    assert "<script src=" not in page and len(page) > 3_000_000  # plotly.js inline: self-contained
    data = json.loads((out / "tables.json").read_text())
    assert set(results.tables()) | {"config", "findings", "warnings", "case_study"} == set(data)
    assert data["config"] == results.config.as_dict()
    assert "Table 6" in (out / "tables.md").read_text()


def test_every_table_has_its_title_and_note_in_the_report(study):
    """A table's key is defined once (``StudyResults.tables``); the report's words for it are looked up by that key,
    so a new table without a title or a reading note fails here, and every titled table is shown."""
    out, results = study
    from analyses.study import report

    keys = set(results.tables())
    assert keys <= set(report.TITLES) and keys <= set(report.NOTES)
    page = (out / "report.html").read_text()
    shown = {key for key in keys if f"<h2>{html.escape(report.TITLES[key])}</h2>" in page}
    figures = {"figure4_delta_entropy", "figure5_visual_updates"}  # shown under their figure's own title
    assert shown == keys - figures, keys - figures - shown


def test_tables_agree_with_the_extraction(study):
    """Each table recomputed from the stored extraction with scipy / sklearn / numpy."""
    out, results = study
    ex = load(out / "extraction")
    correct = ex.correct
    assert results.accounting.extracted == 150 and results.accounting.correct == int(correct.sum())
    model = results.setup.model
    card = zoo.get(results.config.model).card
    assert (model["family"], model["language_layers"], model["parameters"]) == (
        card["family"],
        card["language_layers"],
        card["parameters"],
    )
    assert results.setup.benchmark["accuracy"] == pytest.approx(correct.mean())
    assert results.setup.benchmark["questions used"] == 150 and results.setup.benchmark["format"] == "shapes"
    assert results.accuracy.overall == pytest.approx(correct.mean())
    test = results.predictors.split.test
    confidence = np.array([r["confidence"] for r in ex.rows])
    assert results.predictors["confidence"].estimate.value == pytest.approx(
        roc_auc_score(correct[test], confidence[test])
    )
    consistency = np.array([r["consistency"] for r in ex.rows])
    assert results.predictors["self_consistency"].estimate.value == pytest.approx(
        roc_auc_score(correct[test], consistency[test])
    )
    gap = ex.margins[:, correct].mean(axis=1) - ex.margins[:, ~correct].mean(axis=1)
    peak = int(np.argmax(gap))  # where right and wrong answers' margins are furthest apart
    assert results.margins.peak_layer == peak and results.margins.gap_at_peak == pytest.approx(gap[peak])
    assert results.margins.max_margin_layer == int(np.argmax(ex.margins.mean(axis=1)))
    rpb = results.attention.frame()
    layer1 = rpb[(rpb.layer == 1) & (rpb.measure == "H_s")].r_pb.item()
    assert layer1 == pytest.approx(scipy_stats.pointbiserialr(correct, results.features.entropy[:, 1]).statistic)


def test_mlp_update_share_recomputed_from_a_full_cache(study):
    """The study reads the writes at the answer inside its hooks; recompute them from whole-sequence caches."""
    _, results = study
    model = HookedVLM.from_pretrained(results.config.model)
    examples = shapes_examples(results.config.margin_items, SHAPES_EVAL_SEED)
    shares = []
    for chunk, inputs in batches(model, examples, 25):
        with torch.no_grad():
            _, cache = model.run_with_cache(
                inputs, names_filter=lambda n: n.endswith(("hook_attn_out", "hook_mlp_out"))
            )
        last, rows = inputs.last_positions(), torch.arange(len(chunk))
        layer = results.margins.peak_layer
        attn = cache["attn_out", layer][rows, last].norm(dim=-1)
        mlp = cache["mlp_out", layer][rows, last].norm(dim=-1)
        shares += (mlp / (attn + mlp)).tolist()
    assert results.margins.mlp_update_share_at_peak == pytest.approx(np.mean(shares), abs=1e-5)


def test_ablations_zero_the_probe_units_and_match_random_controls(study):
    _, results = study
    ablations, cfg = results.ablations, results.config
    kept = probes.selected_neurons(results.predictors.sparse.probe)["index"].tolist()
    assert ablations.neurons == kept and ablations.layer == results.predictors.sparse.best_layer
    for k in cfg.ablation_ks:
        (probe,) = [r for r in ablations.group("probe units") if r.k_requested == k]
        assert list(probe.intervention.indices) == kept[:k] and probe.k == min(k, len(kept))
        assert (probe.note != "") == (len(kept) < k)  # a probe that kept fewer units says so
        controls = [r for r in ablations.group("random units") if r.k_requested == k]
        assert len(controls) == cfg.random_controls
        assert all(
            len(c.intervention.indices) == probe.k and not set(c.intervention.indices) & set(kept[:k]) for c in controls
        )
    unedited = [r for r in ablations.rows if not r.condition.startswith("top minus random")]  # those are paired rows
    assert {r.acc_before for r in unedited} == {ablations.rows[0].acc_before}  # one baseline for every condition
    frame = ablations.frame(("escalating random", "probe units")).set_index("condition")
    assert frame.loc["top-5 probe units", "% of width"] == pytest.approx(100 * 5 / 128)  # the toy's 128 units
    assert frame.loc["random 500 units", "% of width"] == pytest.approx(100 * 500 / 128)
    skipped = [r for r in ablations.group("escalating random") if r.note]
    assert [r.k_requested for r in skipped] == [s for s in cfg.random_sizes if s >= 128]  # the toy's d_model
    assert len(ablations.group("mlp bypass")) == 4 and len(ablations.group("patch masking")) == 6


def test_causal_conditions_recomputed_by_hand(study):
    """The clamp value, the per-type change and a bypass row, recomputed from the extraction and the model."""
    from analyses.evaluation import correct as answered
    from analyses.interventions import MLPBypass

    out, results = study
    ex = load(out / "extraction")
    ablations, split = results.ablations, results.predictors.split
    wrong, extreme_wrong, right, extreme_right = ablations.group("single-unit clamp")
    unit = ablations.neurons[0]
    values = ex.hidden[ablations.layer][split.train, unit].astype(np.float64)
    on_right = ex.correct[split.train]
    assert wrong.intervention.value == pytest.approx(values[~on_right].mean())
    assert right.intervention.value == pytest.approx(values[on_right].mean())
    # the extreme clamp: 10 sd beyond the training mean, on the side where wrong (right) answers sit
    towards_right = np.sign(values[on_right].mean() - values[~on_right].mean())
    spread = results.config.extreme_clamp * values.std()
    assert extreme_right.intervention.value == pytest.approx(values.mean() + towards_right * spread, rel=1e-5)
    assert extreme_wrong.intervention.value == pytest.approx(values.mean() - towards_right * spread, rel=1e-5)
    singles = ablations.group("single units")
    assert [list(r.intervention.indices) for r in singles] == [
        [u] for u in ablations.neurons[: min(results.config.ablation_ks)]
    ]
    for row in ablations.group("other layers"):
        if row.condition.startswith("top-") and row.intervention is not None:
            position = ex.stored_layers("hidden").index(row.layer)
            refit = probes.fit_probe(
                ex.hidden[position][split.train],
                ex.correct[split.train],
                position,
                "l1",
                results.config.sparse_C,
                results.config.seed,
            )
            chosen = probes.selected_neurons(refit)["index"].tolist()[: max(results.config.ablation_ks)]
            assert list(row.intervention.indices) == chosen and row.layer != ablations.layer
    model = HookedVLM.from_pretrained(results.config.model)
    test = [shapes_examples(results.config.n, SHAPES_EVAL_SEED)[i] for i in split.test]
    before = np.array(answered(model, test), float)
    after = np.array(answered(model, test, MLPBypass(1)), float)
    (row,) = [r for r in ablations.group("mlp bypass") if r.layer == 1]
    assert row.change.value == pytest.approx(after.mean() - before.mean())
    types = np.array([e.type for e in test])
    for t, diff in row.by_type.items():
        assert diff == pytest.approx(after[types == t].mean() - before[types == t].mean())


def test_headline_comparisons_recomputed(study):
    """The six headline numbers and their adjustment over the six, recomputed with scipy from the extraction."""
    from analyses import stats

    out, results = study
    ex, cfg = load(out / "extraction"), results.config
    frame = results.headline
    assert len(frame) == 6 and frame.p_perm.notna().all()
    ck = results.features.components.mean(1) - 1
    assert frame.value[0] == pytest.approx(scipy_stats.pointbiserialr(ex.correct, ck).statistic)
    assert frame.value[1] == pytest.approx(
        scipy_stats.pointbiserialr(ex.correct, results.features.entropy.mean(1)).statistic
    )
    consistency = np.array([r["consistency"] for r in ex.rows])
    assert frame.value[2] == pytest.approx(scipy_stats.pointbiserialr(ex.correct, consistency).statistic)
    assert frame.value[3] == results.predictors["dense_probe"].estimate.value
    top = [r for r in results.ablations.group("patch masking") if r.condition.startswith("mask top")][-1]
    assert frame.value[4] == top.change.value == pytest.approx(top.after.mean() - results.ablations.before.mean())
    assert frame.p_perm[4] == stats.sign_flip_test(top.after - results.ablations.before, cfg.n_resamples, cfg.seed)
    assert frame.p_bonferroni.tolist() == pytest.approx(np.minimum(frame.p_perm * 6, 1).tolist())
    assert frame.p_bh.tolist() == pytest.approx(scipy_stats.false_discovery_control(frame.p_perm, method="bh").tolist())
    assert "headline_comparisons" in json.loads((out / "tables.json").read_text())


def test_top_heads_attention_rpb_recomputed(study):
    out, results = study
    ex = load(out / "extraction")
    top = results.margins.top_heads
    assert len(top) == results.config.top_heads
    per_head = np.array([r["head_entropy"] for r in ex.rows])
    assert per_head.shape[1:] == (4, results.setup.model["heads"])  # layer head, for every question
    values = [np.mean([r["head_entropy"][int(l)][int(h)] for l, h in zip(top["layer"], top["head"])]) for r in ex.rows]
    table = results.top_heads_attention
    assert table.r_pb[0] == pytest.approx(scipy_stats.pointbiserialr(ex.correct, values).statistic)
    assert table.ci_low[0] <= table.r_pb[0] <= table.ci_high[0] and table.n[0] == len(ex.rows)


def test_dbscan_rerun_recounted_with_sklearn_and_can_disagree(study):
    from sklearn.cluster import DBSCAN

    from analyses.attention_structure import top_mass_mask

    out, results = study
    ex, cfg = load(out / "extraction"), results.config
    table = results.dbscan.set_index("layer")
    counts = np.array(
        [
            [
                len(
                    set(
                        DBSCAN(eps=cfg.dbscan_eps, min_samples=cfg.dbscan_min_samples)
                        .fit(np.argwhere(top_mass_mask(g.reshape(r["grid"]), cfg.top_mass)))
                        .labels_
                    )
                    - {-1}
                )
                for g in attn
            ]
            for attn, r in zip(ex.attention, ex.rows)
        ]
    )
    for layer in range(counts.shape[1]):
        agree = np.mean(counts[:, layer] == results.features.components[:, layer])
        assert table.loc[str(layer), "agreement with C_k"] == pytest.approx(agree)
        assert table.loc[str(layer), "mean DBSCAN clusters"] == pytest.approx(counts[:, layer].mean())
    assert table.loc["all", "r_pb (DBSCAN)"] == pytest.approx(
        scipy_stats.pointbiserialr(ex.correct, counts.mean(1)).statistic
    )
    assert table.loc["all", "agreement with C_k"] < 1  # at these settings the re-count is a real check


def test_probe_seeds_and_table9_floor(study):
    out, results = study
    ex, cfg = load(out / "extraction"), results.config
    seeds = results.probe_seeds.set_index("probe")
    dense = seeds.loc["dense probe (L2)"]
    assert dense.seeds == cfg.probe_seeds == len(dense["per seed"])
    assert dense["per seed"][0] == pytest.approx(
        results.predictors["dense_probe"].estimate.value, abs=1e-4
    )  # seed 0: Table 6's
    assert dense.se == pytest.approx(np.std(dense["per seed"], ddof=1) / np.sqrt(cfg.probe_seeds), rel=1e-3)
    test = results.predictors.split.test
    noise = np.random.default_rng(cfg.seed).random(len(ex.rows))[test]
    assert results.predictors["random"].estimate.value == pytest.approx(roc_auc_score(ex.correct[test], noise))
    components = results.predictors["attention_components"].estimate.value
    assert components == pytest.approx(roc_auc_score(ex.correct[test], -results.features.components.mean(1)[test]))
    assert {"random", "attention_components"} <= set(results.predictors.methods().key)


def test_attention_table_p_values_and_stress_accuracy(study):
    from analyses import stats

    out, results = study
    ex = load(out / "extraction")
    frame = results.attention.frame()
    h = frame[frame.measure == "H_s"].reset_index(drop=True)
    values = results.features.entropy[:, 2]
    p = stats.permutation_test(values[ex.correct], values[~ex.correct], results.config.n_resamples, results.config.seed)
    assert h.p_perm[2] == p
    assert h.p_bonferroni.tolist() == pytest.approx(np.minimum(h.p_perm * len(h), 1).tolist())
    order = np.argsort(h.p_perm.to_numpy())  # BH by hand: p_(i) * m / i, made monotone from the top
    ranked = h.p_perm.to_numpy()[order] * len(h) / np.arange(1, len(h) + 1)
    bh = np.minimum(np.minimum.accumulate(ranked[::-1])[::-1], 1)
    assert h.p_bh.to_numpy()[order] == pytest.approx(bh)
    stress = results.predictors["attention_gbt"]
    labels = ex.correct[results.predictors.split.test]
    assert stress.accuracy == pytest.approx(np.mean((stress.scores > 0.5) == labels))


def test_rerun_resumes_a_lost_shard_and_agrees(study):
    out, results = study
    folder = out / "extraction"
    manifest = json.loads((folder / "manifest.json").read_text())
    kept = {s["name"]: os.stat(folder / f"{s['name']}.json").st_mtime_ns for s in manifest["shards"][:-1]}
    lost = manifest["shards"][-1]["name"]
    manifest["shards"] = manifest["shards"][:-1]  # as if killed before the last shard was listed
    (folder / "manifest.json").write_text(json.dumps(manifest))
    said = io.StringIO()  # not a terminal: progress as JSON lines
    again = run(VRPConfig(**SMALL), out, progress=Progress(stream=said))
    events = [json.loads(line) for line in said.getvalue().splitlines()]
    stored = sum(s["end"] - s["start"] for s in manifest["shards"])
    assert {
        "event": "note",
        "message": f"resuming: {stored} of {SMALL['n']} questions stored in {folder}, extracting the rest",
    } in events
    stages = [e["stage"] for e in events if e["event"] == "done"]
    assert stages[0] == "loading " + SMALL.get("model", "toy-llava") and stages[-1].startswith("report")
    assert any(s.startswith("causal checks") for s in stages) and any(s.startswith("predictors") for s in stages)
    causal = [e for e in events if e["event"] == "progress" and e["stage"].startswith("causal checks")]
    assert [e["done"] for e in causal] == list(range(1, len(causal) + 1)) and len(causal) > 10  # one per re-answer
    extracted = [e for e in events if e["event"] == "progress" and e["stage"] == "extract"]
    assert extracted[-1]["done"] == extracted[-1]["total"] == SMALL["n"] - stored
    quiet = io.StringIO()
    Progress(enabled=False, stream=quiet).note("nothing")
    assert quiet.getvalue() == ""
    resumed = json.loads((folder / "manifest.json").read_text())
    assert [s["name"] for s in resumed["shards"]][-1] == lost  # the lost shard was extracted again
    assert {name: os.stat(folder / f"{name}.json").st_mtime_ns for name in kept} == kept  # the others were not
    assert again.predictors.frame().equals(results.predictors.frame())
    pd.testing.assert_frame_equal(again.ablations.frame(), results.ablations.frame())


def test_labels_in_any_case_give_the_same_tables(study, tmp_path):
    """A Shapes file whose labels read "Yes"/"No"/"yes " and "Green"/"green "/"GREEN" scores exactly as the
    lower-case run: the truth margin's reference tokens are read from every spelling the rule accepts (a capital
    gold once stopped the study: the toy's vocabulary is lower case)."""
    _, results = study
    path = shapes.write_benchmark(tmp_path / "bench", SMALL["n"], seed=SHAPES_EVAL_SEED)
    variants = {w: [w.capitalize(), w + " ", w.upper()] for w in ("yes", "no", *shapes.COLOURS)}
    lines = []
    for i, line in enumerate(path.read_text().splitlines()):
        record = json.loads(line)
        if record["label"] in variants:
            record["label"] = variants[record["label"]][i % 3]
        lines.append(json.dumps(record))
    path.write_text("\n".join(lines))
    shouting = run(
        VRPConfig(benchmark=str(path), images=str(path.parent / "images"), **SMALL), tmp_path / "out", progress=False
    )
    assert shouting.accuracy.frame().equals(results.accuracy.frame())
    pd.testing.assert_frame_equal(shouting.ablations.frame(), results.ablations.frame())
    assert shouting.predictors.frame().equals(results.predictors.frame())
    assert shouting.margins.frame().equals(results.margins.frame())


def test_compare_lays_runs_side_by_side(study, tmp_path):
    out, results = study
    written = CliRunner().invoke(app, ["vrp", "--compare", str(out), str(out), "--out", str(tmp_path)])  # as documented
    assert written.exit_code == 0, written.output
    path = tmp_path / "compare.md"
    text = path.read_text()
    assert "Predictor AUROC" in text and text.count(results.config.model) >= 2
    dense = f"{results.predictors['dense_probe'].estimate.value:.3f}"
    assert any(line.startswith("| dense_probe") and line.count(dense) == 2 for line in text.splitlines())
    assert (tmp_path / "compare.html").exists()


def test_compare_matches_ablation_rows_by_what_they_are_and_states_each_run(study, tmp_path):
    """A second run whose strongest unit has another id, whose probe kept other sizes, on other n: its rows land
    beside the first run's (no empty cells), and the runs table says n and which settings differ."""
    import re

    out, results = study
    other = tmp_path / "other"
    other.mkdir()
    data = json.loads((out / "tables.json").read_text())
    for row in data["table4_5_ablations"]:  # other unit ids and sizes, as another model's run has
        row["condition"] = re.sub(r"unit (\d+)", lambda m: f"unit {int(m.group(1)) + 1000}", row["condition"])
        row["condition"] = re.sub(r"\(k=(\d+)\)", lambda m: f"(k={int(m.group(1)) + 1})", row["condition"])
    data["config"]["n"] = 999
    (other / "tables.json").write_text(json.dumps(data))
    from analyses.study import report

    report.compare([out, other], tmp_path / "cmp")
    text = (tmp_path / "cmp" / "compare.md").read_text()
    ablation = text.split("### Ablation")[1]
    rows = [line for line in ablation.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == len(data["table4_5_ablations"])  # one row per condition: none split by its ids
    cells = [[c.strip() for c in line.strip("|").split("|")][1:] for line in rows]
    assert all(len(c) == 2 and all(c) and c[0] == c[1] for c in cells), rows  # both runs in every row: matched
    runs = text.split("### Runs")[1].split("###")[0]
    assert "999" in runs and re.search(r"settings that differ\s*\|\s*n\s*\|", runs)


def test_stray_arguments_without_compare_are_refused():
    result = CliRunner().invoke(app, ["vrp", "somewhere"])
    assert result.exit_code != 0 and "follow --compare" in result.output


def test_missing_images_stop_before_model_work(tmp_path):
    questions = tmp_path / "q.json"
    questions.write_text(
        "\n".join(
            json.dumps({"question_id": i, "image": f"img{i}.jpg", "text": "Is there a cat?", "label": "no"})
            for i in range(3)
        )
    )
    (tmp_path / "images").mkdir()
    result = CliRunner().invoke(
        app,
        [
            "vrp",
            "--model",
            "no/such-model",
            "--benchmark",
            str(questions),
            "--images",
            str(tmp_path / "images"),
            "--n",
            "3",
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert isinstance(result.exception, DataError)
    assert "3 image(s) missing" in str(result.exception)


def test_a_vqav2_pair_built_from_shapes_runs_from_the_command_line(tmp_path):
    """Questions + annotations with ten human answers each (8 give the label, 2 another answer), COCO file names."""
    bench = shapes.write_benchmark(tmp_path / "shapes", 60, seed=SHAPES_EVAL_SEED)
    images = tmp_path / "val2014"
    images.mkdir()
    questions, annotations = [], []
    for line in bench.read_text().splitlines():
        record = json.loads(line)
        qid = int(record["question_id"])
        (bench.parent / "images" / record["image"]).rename(images / f"COCO_val2014_{qid:012d}.jpg")
        questions.append({"image_id": qid, "question": record["text"], "question_id": qid})
        other = "no" if record["label"] != "no" else "yes"
        answers = [record["label"]] * 8 + [other] * 2
        annotations.append(
            {
                "question_id": qid,
                "answer_type": record["type"],
                "answers": [{"answer": a, "answer_id": i + 1} for i, a in enumerate(answers)],
            }
        )
    (tmp_path / "q.json").write_text(json.dumps({"data_subtype": "val2014", "questions": questions}))
    (tmp_path / "a.json").write_text(json.dumps({"annotations": annotations}))
    result = CliRunner().invoke(
        app,
        [
            "vrp",
            "--benchmark",
            str(tmp_path / "q.json"),
            "--annotations",
            str(tmp_path / "a.json"),
            "--images",
            str(images),
            "--n",
            "60",
            "--k",
            "2",
            "--n-resamples",
            "200",
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert result.exit_code == 0, result.output
    rows = [
        r for f in sorted((tmp_path / "out" / "extraction").glob("shard-*.json")) for r in json.loads(f.read_text())
    ]
    assert all(r["metric"] == "vqa" and len(r["golds"]) == 10 for r in rows)
    # with 8 of 10 humans giving the label, VQA accuracy 1.0 for the label, 0.6 for the other answer, else 0
    for r in rows:
        expected = r["prediction"] == r["label"] or (
            r["prediction"] in r["golds"] and r["golds"].count(r["prediction"]) >= 2
        )
        assert r["correct"] == expected


def test_study_settings_from_a_config_file_with_command_line_overrides(tmp_path):
    (tmp_path / "study.json").write_text(json.dumps({"n": 30, "k": 2, "n_resamples": 100, "hidden_layers": [2, 3]}))
    result = CliRunner().invoke(
        app, ["vrp", "--config", str(tmp_path / "study.json"), "--n", "40", "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 0, result.output
    used = json.loads((tmp_path / "o" / "tables.json").read_text())["config"]
    assert (used["n"], used["k"], used["n_resamples"], used["hidden_layers"]) == (40, 2, 100, [2, 3])
    (tmp_path / "bad.json").write_text(json.dumps({"nn": 3}))
    assert "unknown study settings" in str(
        CliRunner().invoke(app, ["vrp", "--config", str(tmp_path / "bad.json")]).exception
    )


def test_findings_state_this_runs_numbers_and_warn_about_small_n(study):
    from analyses.study.findings import concentration, findings, warnings

    out, results = study
    found = {f.question: f.answer for f in findings(results)}
    assert len(found) == 5
    where = found["Where does the margin form, and who builds it?"]
    assert f"l* = {results.margins.peak_layer}" in where and f"{results.margins.mlp_update_share_at_peak:.0%}" in where
    attention = results.predictors["attention_entropy"].estimate
    assert (
        f"{attention.value:.3f} [95% CI {attention.ci[0]:.3f}, {attention.ci[1]:.3f}], n = 30"
        in found["Does attention sharpness predict correctness?"]
    )
    verdict = concentration(results)
    assert verdict in ("concentrated", "no evidence")
    assert ("concentrated in those units" in found["Is reliability concentrated or distributed?"]) == (
        verdict == "concentrated"
    )
    cautions = warnings(results)
    assert any("only 30 questions" in w and "n = 496" in w for w in cautions)  # sklearn: ceil(0.2 x 496) = 100
    page = (out / "report.html").read_text()
    assert page.index("Findings") < page.index("Table 2a") and "only 30 questions" in page


def test_concentration_verdict_by_hand(study):
    from dataclasses import replace

    from analyses.stats import Estimate
    from analyses.study.findings import concentration

    _, results = study
    rows = results.ablations.rows
    k = max(r.k_requested for r in rows if r.group == "probe units")

    def verdict(probe_change, control_change):
        edited = [
            replace(r, change=probe_change)
            if r.group == "probe units"
            else replace(r, change=control_change)
            if r.group == "random units"
            else r
            for r in rows
        ]
        return concentration(replace(results, ablations=replace(results.ablations, rows=edited)))

    hurt = Estimate(-0.3, (-0.4, -0.2), 30)
    assert verdict(hurt, Estimate(0.0, (-0.05, 0.05), 30)) == "concentrated"
    assert verdict(hurt, Estimate(-0.25, (-0.35, -0.1), 30)) == "no evidence"
    no_probe = [r for r in rows if r.group != "probe units"]
    assert concentration(replace(results, ablations=replace(results.ablations, rows=no_probe))) == "untested"
    assert k == max(results.config.ablation_ks)


def test_strength_in_words():
    from analyses.stats import Estimate
    from analyses.study.findings import strength

    assert strength(Estimate(0.52, (0.45, 0.60), 100)) == "barely predicts"  # CI holds chance
    assert strength(Estimate(0.58, (0.52, 0.64), 100)) == "barely predicts"  # off chance, but by less than 0.1
    assert strength(Estimate(0.65, (0.55, 0.75), 100)) == "weakly predicts"
    assert strength(Estimate(0.85, (0.78, 0.91), 100)) == "predicts"
    assert strength(Estimate(0.39, (0.29, 0.49), 100)) == "weakly predicts, inversely,"
    assert strength(Estimate(0.70, (0.52, 0.86), 150)).startswith("is not shown")  # a CI that decides nothing


def test_masking_finding_reads_the_paired_difference(study):
    """Two marginal CIs that overlap while the paired top-minus-random difference excludes 0 (issue 22's token-level
    case, -0.083 [-0.158, -0.008]): the sentence follows the paired test; and the paired row is top minus random."""
    from dataclasses import replace

    from analyses.stats import Estimate
    from analyses.study.findings import masking

    _, results = study
    rows = {r.condition: r for r in results.ablations.group("patch masking")}
    for level in ("token", "pixel"):
        top, rand = (
            next(r for c, r in rows.items() if c.startswith(f"mask {k}") and c.endswith(f"({level})"))
            for k in ("top", "random")
        )
        paired = rows[f"top minus random ({level})"]
        assert paired.change.value == pytest.approx(top.acc_after - rand.acc_after)
        assert paired.change.n == top.change.n == len(top.after)
    made = [
        replace(r, change=Estimate(-0.05, (-0.12, 0.02), 120))
        if r.condition.startswith("mask top")
        else replace(r, change=Estimate(0.03, (-0.04, 0.10), 120))
        if r.condition.startswith("mask random")
        else replace(r, change=Estimate(-0.083, (-0.158, -0.008), 120))
        for r in results.ablations.rows
        if r.group == "patch masking"
    ]
    text = masking(replace(results, ablations=replace(results.ablations, rows=made))).answer
    assert "hurts more" in text and "no clear difference" not in text
    made = [
        replace(r, change=Estimate(-0.02, (-0.09, 0.05), 120)) if r.condition.startswith("top minus") else r
        for r in made
    ]
    text = masking(replace(results, ablations=replace(results.ablations, rows=made))).answer
    assert "no clear difference" in text and "hurts more" not in text


def test_token_f1_by_hand():
    from analyses.study.open_ended import token_f1

    assert token_f1("A red bus.", "The red bus on a street") == pytest.approx(2 * 1 * 0.5 / 1.5)  # P 2/2, R 2/4
    assert token_f1("blue", "red") == 0.0 and token_f1("", "red") == 0.0


def test_an_open_ended_benchmark_reports_answers_and_says_what_is_not_scored(tmp_path):
    """LLaVA-Bench files built from Shapes questions: answers and judge-free metrics, no right/wrong tables."""
    from analyses.data.scoring import vqa_normalise

    bench = shapes.write_benchmark(tmp_path / "shapes", 20, seed=SHAPES_EVAL_SEED)
    records = [json.loads(line) for line in bench.read_text().splitlines()]
    (tmp_path / "q.jsonl").write_text(
        "\n".join(
            json.dumps({"question_id": r["question_id"], "image": r["image"], "text": r["text"], "category": r["type"]})
            for r in records
        )
    )
    (tmp_path / "a.jsonl").write_text(
        "\n".join(json.dumps({"question_id": r["question_id"], "text": f"{r['label']} {r['label']}"}) for r in records)
    )
    result = CliRunner().invoke(
        app,
        [
            "vrp",
            "--benchmark",
            str(tmp_path / "q.jsonl"),
            "--annotations",
            str(tmp_path / "a.jsonl"),
            "--images",
            str(bench.parent / "images"),
            "--n",
            "20",
            "--k",
            "2",
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "out" / "tables.json").read_text())
    assert "judge model" in data["not_scored"] and "table6_predictors" not in data
    assert data["table7_benchmarks"][0]["format"] == "llava_bench" and data["table7_benchmarks"][0]["accuracy"] is None
    rows = [
        r for f in sorted((tmp_path / "out" / "extraction").glob("shard-*.json")) for r in json.loads(f.read_text())
    ]
    answers = data["open_ended_answers"]
    assert [a["answer"] for a in answers] == [r["prediction"] for r in rows] and all(r["correct"] is None for r in rows)
    # the reference repeats the label: F1 = 2PR/(P+R) with P = 1, R = 1/2 when the toy answers the label
    for a, r in zip(answers, rows):
        same = vqa_normalise(r["prediction"]) == vqa_normalise(r["label"].split()[0])
        assert a["token_f1"] == pytest.approx(2 / 3 if same else 0.0), (r["prediction"], r["label"])
    overall = data["open_ended_summary"][0]
    assert overall["n"] == 20 and overall["confidence"] == pytest.approx(np.mean([r["confidence"] for r in rows]))
    assert "Not scored" in (tmp_path / "out" / "report.html").read_text()


def test_circuit_detachment_and_monitor_by_hand(study):
    out, results = study
    ex = load(out / "extraction")
    correct, h = ex.correct, results.features.entropy
    delta = results.delta_entropy
    assert delta.delta_h_s.to_numpy() == pytest.approx(h[correct].mean(0) - h[~correct].mean(0))
    assert (delta.ci_low <= delta.delta_h_s).all() and (delta.delta_h_s <= delta.ci_high).all()
    change = results.entropy_change  # the paper's Delta H_s: layer l minus layer l-1
    steps = np.diff(h, axis=1)
    assert change.layer.tolist() == list(range(1, h.shape[1]))
    assert change.delta_h_s.to_numpy() == pytest.approx(steps.mean(0))
    assert change["delta_h_s (wrong)"].to_numpy() == pytest.approx(steps[~correct].mean(0))
    assert (change.ci_low <= change.delta_h_s).all() and (change.delta_h_s <= change.ci_high).all()
    assert "delta_h_s_by_layer" in json.loads((out / "tables.json").read_text())
    circuit = results.circuit
    values = ex.hidden[int(results.predictors.sparse.probe.layer)]
    unit = circuit.unit.iloc[0]
    assert unit == results.ablations.neurons[0]
    assert circuit["shift"].iloc[0] == pytest.approx(values[correct, unit].mean() - values[~correct, unit].mean())
    # the monitor: dense probe p(right) < tau flags an answer; precision = wrong among flagged
    dense = results.predictors["dense_probe"]
    flagged = 1 / (1 + np.exp(-dense.scores)) < results.config.flag_tau
    wrong = ~correct[results.predictors.split.test]
    monitor = results.accounting.monitor
    assert monitor["flagged"] == flagged.sum()
    assert monitor["precision@tau"] == pytest.approx((flagged & wrong).sum() / flagged.sum())
    # detachment: criterion 1 from the per-question entropies, criterion 3 from Table 3 and the stored maps
    rows = results.detachment.set_index("criterion")
    lock = 1 + int(np.argmin(h[:, 1 : max(2, (h.shape[1] + 1) // 2)].mean(0)))
    assert rows.loc["early entropy collapse", "value"] == pytest.approx((h[:, lock] - h[:, 0]).mean())
    share = np.array([[a.sum() for a in attn] for attn in ex.attention]).mean(0)
    half = h.shape[1] // 2
    reengage = half + int(np.argmax(share[half:]))
    commit = results.margins.separation_layer
    assert rows.loc["commitment before re-engagement", "holds"] == (commit is not None and commit < reengage)
    assert rows.loc["symbolic detachment", "holds"] == all(rows.holds.iloc[:3])
    if results.case is not None:  # Figure 6's question: a wrong test answer the probe flags, sharpest attention
        assert not correct[results.case] and results.case in results.predictors.split.test


def test_several_models_and_benchmarks_give_cross_family_tables(tmp_path):
    """Two toys x two benchmarks: four runs, Table 7 for every pair, and R_pb pooled over the runs against scipy
    on the concatenated per-question sharpness (H_s / log patches, mean over layers) and correctness."""
    from scipy import ndimage

    from analyses.attention_structure import top_mass_mask
    from analyses.study.many import normalised_sharpness

    bench = shapes.write_benchmark(tmp_path / "pope", 40, seed=SHAPES_EVAL_SEED + 1)
    result = CliRunner().invoke(
        app,
        [
            "vrp",
            "--model",
            "toy-llava",
            "--model",
            "toy-paligemma",
            "--benchmark",
            "shapes",
            "--benchmark",
            str(bench),
            "--images",
            str(bench.parent / "images"),
            "--n",
            "40",
            "--k",
            "2",
            "--n-resamples",
            "200",
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "out" / "tables.json").read_text())
    runs = ["toy-llava__shapes", "toy-llava__questions", "toy-paligemma__shapes", "toy-paligemma__questions"]
    assert [r["run"] for r in data["table7_benchmarks"]] == runs
    assert [m["model"] for m in data["table1_models"]] == ["toy-llava", "toy-paligemma"]
    scores, labels = [], []
    for run_name in runs:
        ex = load(tmp_path / "out" / run_name / "extraction")
        assert ex.config["max_new_tokens"] == 1  # each toy's own answer length
        scores.append(normalised_sharpness(ex))
        labels.append(ex.correct)
        grid = np.prod(ex.rows[0]["grid"])
        assert scores[-1][0] == pytest.approx(np.mean(ex.rows[0]["attention_entropy"]) / np.log(grid))
    rows = {(r["run"], r["measure"]): r for r in data["table2_attention_rpb_pooled"]}
    pooled = rows["pooled", "H_s / log patches"]
    expected = scipy_stats.pointbiserialr(np.concatenate(labels), np.concatenate(scores)).statistic
    assert pooled["n"] == 160 and pooled["r_pb"] == pytest.approx(expected)
    assert pooled["ci_low"] <= pooled["r_pb"] <= pooled["ci_high"]
    # the paper's first headline number: R_pb(C_k, y) pooled, C_k re-counted here with scipy's labelling
    components = []
    for run_name in runs:
        ex = load(tmp_path / "out" / run_name / "extraction")
        four = ndimage.generate_binary_structure(2, 1)
        components.append(
            [
                np.mean([ndimage.label(top_mass_mask(g.reshape(r["grid"]), 0.5), four)[1] for g in attn]) - 1
                for attn, r in zip(ex.attention, ex.rows)
            ]
        )
    expected = scipy_stats.pointbiserialr(np.concatenate(labels), np.concatenate(components)).statistic
    assert rows["pooled", "C_k - 1"]["r_pb"] == pytest.approx(expected) and rows["pooled", "C_k - 1"]["n"] == 160
    # Table 7 as the paper's: confidence and probe AUROC per model x benchmark, from each run's Table 6
    table7 = {r["run"]: r for r in data["table7_confidence_vs_probe"]}
    assert list(table7) == runs
    for run_name in runs:
        own = {
            r["key"]: r
            for r in json.loads((tmp_path / "out" / run_name / "tables.json").read_text())["table6_predictors"]
        }
        assert table7[run_name]["confidence auroc"] == own["confidence"]["auroc"]
        assert table7[run_name]["probe auroc"] == own["dense_probe"]["auroc"]
    assert (tmp_path / "out" / "compare.html").exists()


def test_annotations_must_pair_with_benchmarks():
    result = CliRunner().invoke(
        app, ["vrp", "--benchmark", "a.json", "--benchmark", "b.json", "--annotations", "x.json"]
    )
    assert result.exit_code != 0 and "1 --annotations for 2 --benchmark" in result.output


WORD_TOYS = [n for n in zoo.names() if zoo.get(n).card.get("answers") == "words"]


@pytest.mark.parametrize("name", WORD_TOYS)
def test_the_study_on_a_toy_that_answers_in_words(name, tmp_path):
    """The whole study to its report on answers of several tokens, each scored by its family's own rule."""
    from analyses.data.scoring import is_correct

    result = CliRunner().invoke(
        app,
        [
            "vrp",
            "--model",
            name,
            "--benchmark",
            "shapes-words",
            "--n",
            "150",
            "--k",
            "3",
            "--n-resamples",
            "200",
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert result.exit_code == 0, result.output
    ex = load(tmp_path / "out" / "extraction")
    assert ex.config["max_new_tokens"] == zoo.get(name).card["answer_tokens"] > 5  # the card's answer length
    lengths = np.array([r["answer_tokens"] for r in ex.rows])
    assert lengths.mean() > 3 and (lengths < ex.config["max_new_tokens"]).all()  # phrases, each ended by the model
    assert all(r["correct"] == is_correct(r["prediction"], r["golds"], r["metric"]) for r in ex.rows)
    assert {r["metric"] for r in ex.rows} == {"yesno", "count", "exact", "relation"}
    assert 0.5 < ex.correct.mean() < 0.98
    data = json.loads((tmp_path / "out" / "tables.json").read_text())
    assert data["table7_benchmarks"][0]["benchmark"] == "shapes-words"
    assert len(data["headline_comparisons"]) == 6 and (tmp_path / "out" / "report.html").exists()


MULTI_CROP_TOYS = [
    n for n in zoo.names() if zoo.get(n).family in ("llava_next", "llava_onevision", "idefics3", "smolvlm")
]


@pytest.mark.parametrize("name", MULTI_CROP_TOYS)
@pytest.mark.parametrize("view", ["base", "stitched"])
def test_the_study_on_a_multi_crop_toy(name, view, tmp_path):
    """The whole study to its report on a family that cuts an image into views (a base view and high-resolution
    crops): attention maps on the base view, or on the crops stitched where they sit in the picture."""
    model = HookedVLM.from_pretrained(name)
    result = CliRunner().invoke(
        app,
        [
            "vrp",
            "--model",
            name,
            "--n",
            "150",
            "--k",
            "3",
            "--n-resamples",
            "200",
            "--attention-view",
            view,
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert result.exit_code == 0, result.output
    ex = load(tmp_path / "out" / "extraction")
    image = shapes_examples(1, SHAPES_EVAL_SEED)[0]
    span = model.prepare(images=[image.load_image()], prompts=[image.text]).image_spans[0][0]
    assert len(span.all_views) > 1  # a multi-crop image indeed
    expected = span.base.grid if view == "base" else span.stitch(torch.ones(1, span.end), kind=None).shape[1:]
    assert tuple(ex.rows[0]["grid"]) == tuple(expected)
    assert 0.5 < ex.correct.mean() < 0.98
    data = json.loads((tmp_path / "out" / "tables.json").read_text())
    assert data["table1_models"][0]["family"] == zoo.get(name).family
    assert len(data["headline_comparisons"]) == 6 and (tmp_path / "out" / "report.html").exists()


def test_the_study_on_a_cross_attention_toy(tmp_path):
    """The whole study to its report on Llama-3.2-Vision's toy, whose image is the keys of its cross-attention
    layers: attention measures at those layers only, each map its tiles on the picture, masking at both levels."""
    from analyses import answers
    from analyses.attention_structure import answer_token_attention

    name = "toy-mllama"
    model = HookedVLM.from_pretrained(name)
    cross = list(model.cfg.cross_layers)
    result = CliRunner().invoke(
        app, ["vrp", "--model", name, "--n", "150", "--k", "3", "--n-resamples", "200", "--out", str(tmp_path / "out")]
    )
    assert result.exit_code == 0, result.output
    ex = load(tmp_path / "out" / "extraction")
    assert ex.attention_layers == cross and all(a.shape[0] == len(cross) for a in ex.attention)
    assert 0.5 < ex.correct.mean() < 0.98
    # question 0's stored map is the answer tokens' mean cross-attention row on its tiles, recomputed here
    example = shapes_examples(150, SHAPES_EVAL_SEED)[0]
    inputs = model.prepare(images=[example.load_image()], prompts=[example.text])
    names = [f"blocks.{l}.attn.hook_pattern_rows" for l in cross]
    generated = answers.generate_answers(model, inputs, names, ex.config["max_new_tokens"])
    grid, entropy = answer_token_attention(generated)[0]
    high, wide = inputs.key_spans[0][0].views[0].tiles
    assert tuple(ex.rows[0]["grid"]) == grid.shape[1:] == (high * 4, wide * 4)
    np.testing.assert_allclose(ex.attention[0], grid.reshape(len(cross), -1), atol=1e-5)
    np.testing.assert_allclose(ex.rows[0]["attention_entropy"], entropy, atol=1e-5)
    data = json.loads((tmp_path / "out" / "tables.json").read_text())
    assert {r["layer"] for r in data["table2_attention_rpb"]} == set(cross)
    levels = {r["condition"] for r in data["patch_masking"]}
    assert any("(token)" in c for c in levels) and any("(pixel)" in c for c in levels)
    detachment = {r["criterion"]: r for r in data["symbolic_detachment"]}
    assert "not defined" in detachment["dormant middle, late surge"]["measure"]
    assert len(data["headline_comparisons"]) == 6 and (tmp_path / "out" / "report.html").exists()
