"""The reliability monitor: selective prediction against brute force, calibration against sklearn, what it reads
against the cache, its risk against the same forward's, its files (fresh process, tampering), the checkpoint it
refuses, and the three commands end to end on a real study run."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from analyses import answers
from analyses.cli import main
from analyses.data import shapes
from analyses.data.examples import shapes_examples
from analyses.monitor import card as cards
from analyses.monitor import features as F
from analyses.monitor.monitor import ReliabilityMonitor, calibrate, choose_threshold, fit
from analyses.monitor.selective import accuracy_at_coverage, aurc, risk_coverage
from analyses.probes import stratified_split
from analyses.stats import auroc
from analyses.study.config import VRPConfig
from analyses.study.monitor_transfer import evaluate_run, transfer_table
from analyses.study.monitoring import Run, fit_run
from analyses.study.pipeline import run
from tests.conftest import FAMILIES, make_images, tiny
from vlm_lens import HookedVLM
from vlm_lens.errors import DataError, InputError

STUDY = dict(n=300, k=4, n_resamples=200, random_controls=1, seed=0)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("vrp-monitor")
    results = run(VRPConfig(**STUDY), out, progress=False)
    return out, results


@pytest.fixture(scope="module")
def toy():
    return HookedVLM.from_pretrained("toy-llava")


@pytest.fixture(scope="module")
def report(study, toy):
    return fit_run(study[0], "dense", model=toy)


# -- selective prediction ---------------------------------------------------------------------------------------
def _brute_force_curve(risk, correct):
    """Selective risk at each k averaged over every order of the tied risks: the definition, by enumeration."""
    n = len(risk)
    orders = [o for o in itertools.permutations(range(n)) if all(risk[a] <= risk[b] for a, b in itertools.pairwise(o))]
    curves = [[1 - np.mean([correct[i] for i in o[:k]]) for k in range(1, n + 1)] for o in orders]
    return np.mean(curves, axis=0)


@pytest.mark.parametrize("seed", range(6))
def test_risk_coverage_is_the_mean_over_every_order_of_ties(seed):
    rng = np.random.default_rng(seed)
    risk = rng.integers(0, 3, size=6).astype(float)  # many ties
    correct = rng.integers(0, 2, size=6)
    expected = _brute_force_curve(risk, correct)
    curve = risk_coverage(risk, correct)
    np.testing.assert_allclose(curve["selective_risk"], expected, atol=1e-12)
    np.testing.assert_allclose(aurc(risk, correct), expected.mean(), atol=1e-12)
    k = 4
    assert accuracy_at_coverage(risk, correct, k / 6) == pytest.approx(1 - expected[k - 1])


def test_selective_prediction_by_hand():
    correct = np.array([1, 0, 1, 1, 0])
    oracle = 1.0 - correct  # wrong answers riskiest: errors only once every right one is kept
    assert aurc(oracle, correct) == pytest.approx((0 + 0 + 0 + 1 / 4 + 2 / 5) / 5)
    assert aurc(np.zeros(5), correct) == pytest.approx(0.4)  # a constant score: the plain error rate throughout
    assert accuracy_at_coverage(oracle, correct, 0.6) == 1.0
    assert accuracy_at_coverage(-oracle, correct, 0.4) == 0.0  # the worst order keeps the wrong ones first
    with pytest.raises(InputError, match="coverage must be in"):
        accuracy_at_coverage(oracle, correct, 0)
    with pytest.raises(InputError, match="NaN"):
        aurc([0.1, float("nan")], [1, 0])


# -- calibration and threshold ----------------------------------------------------------------------------------
def test_calibration_is_sklearns():
    rng = np.random.default_rng(0)
    decision = rng.normal(size=200)
    correct = (decision + rng.normal(size=200) > 0).astype(int)
    from analyses.monitor.monitor import _fit_calibration

    x, y = _fit_calibration("platt", decision, correct)
    grid = np.linspace(-4, 4, 50)
    oracle = LogisticRegression(C=1e6, max_iter=1000).fit(decision[:, None], correct)
    np.testing.assert_allclose(calibrate("platt", x, y, grid), oracle.predict_proba(grid[:, None])[:, 1], atol=1e-9)
    x, y = _fit_calibration("isotonic", decision, correct)
    oracle = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(decision, correct)
    np.testing.assert_allclose(calibrate("isotonic", x, y, grid), oracle.predict(grid), atol=1e-12)


def test_threshold_keeps_the_target_coverage_or_reaches_the_precision():
    rng = np.random.default_rng(1)
    risk = rng.random(100)
    correct = (rng.random(100) > risk).astype(int)
    picked = choose_threshold(risk, correct, 0.8, None)
    assert (risk <= picked["threshold"]).sum() == 80
    picked = choose_threshold(risk, correct, None, 0.9)
    kept = risk <= picked["threshold"]
    assert picked["reached"] and correct[kept].mean() >= 0.9
    looser = np.sort(risk)[np.sort(risk) > picked["threshold"]]
    assert all(correct[risk <= t].mean() < 0.9 for t in looser)  # the largest coverage that reaches it
    assert not choose_threshold(risk, np.zeros(100, dtype=int) | (risk > 2), None, 0.5)["reached"]
    with pytest.raises(InputError, match="not both"):
        choose_threshold(risk, correct, 0.8, 0.9)


# -- fitting from arrays ------------------------------------------------------------------------------------------
def _planted(n=400, d=12, seed=0):
    rng = np.random.default_rng(seed)
    correct = rng.integers(0, 2, n)
    features = {l: rng.normal(size=(n, d)) for l in range(4)}
    features[2][:, 5] += 2.5 * (correct - 0.5)  # only layer 2 knows
    return features, correct


def test_a_planted_signal_is_found_on_its_layer_and_generalises():
    features, correct = _planted()
    split = stratified_split(correct, 0)
    monitor = fit(features, correct, split, {"name": "x"}, "dense", n_resamples=200)
    assert monitor.layers == (2,)
    test = monitor.metrics["test"]
    p = monitor.probability(features[2][split.test])
    assert test["auroc"] == pytest.approx(roc_auc_score(correct[split.test], p))
    assert test["auroc"] > 0.8
    val_risk = 1 - monitor.probability(features[2][split.val])
    assert (val_risk <= monitor.threshold).sum() == int(np.ceil(0.8 * len(split.val)))
    stacked = fit(features, correct, split, {"name": "x"}, "stacked", stacked_layers=3, n_resamples=0)
    assert stacked.layers == (1, 2, 3) and stacked.coef.shape == (36,)


def test_the_consistency_probe_is_fitted_without_gold_labels():
    """Its weights depend on the sampled support only: shuffling the gold labels changes the calibration and
    nothing of the probe."""
    features, correct = _planted()
    support = np.clip(0.5 + 0.4 * (correct - 0.5) + np.random.default_rng(3).normal(0, 0.1, len(correct)), 0, 1)
    split = stratified_split(correct, 0)
    a = fit(features, correct, split, {}, "consistency", support=support, n_resamples=0)
    shuffled = correct.copy()
    rng = np.random.default_rng(5)
    for part in (split.train, split.test):  # keep the split's classes where the split was drawn
        shuffled[part] = rng.permutation(shuffled[part])
    b = fit(features, shuffled, split, {}, "consistency", support=support, n_resamples=0)
    assert a.layers == b.layers == (2,)
    np.testing.assert_array_equal(a.coef, b.coef)
    assert a.intercept == b.intercept
    with pytest.raises(InputError, match="support"):
        fit(features, correct, split, {}, "consistency")


# -- what it reads, on every family ---------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_the_representations_are_the_caches_rows(family):
    model = tiny(family)
    inputs = model.prepare(images=make_images(), prompts=["is there a red square ?", "how many circles are here ?"])
    _, cache = model.run_with_cache(inputs)
    positions = answers.answer_positions(inputs)
    got = F.read(model, inputs, "query", [0, 1])
    want = torch.cat([cache["resid_post", l][torch.arange(2), positions] for l in (0, 1)], -1)
    np.testing.assert_allclose(got, want.float().numpy(), atol=1e-5)
    if model.cfg.cross_layers:
        with pytest.raises(InputError, match="cross-attention"):
            F.read(model, inputs, "image", [0])
        return
    for representation, name, layer in (("image", "blocks.1.hook_resid_post", 1), ("vision", "hook_embed", -1)):
        got = F.read(model, inputs, representation, [layer])
        want = torch.stack([cache[name][i, inputs.image_positions(i)].float().mean(0) for i in range(2)])
        np.testing.assert_allclose(got, want.numpy(), atol=1e-5)


def test_generate_gives_hfs_answers_and_the_risk_of_the_same_forward(report, toy):
    monitor = report.monitor
    hooks = lambda: [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in toy.modules()]  # noqa: E731
    examples = shapes_examples(6, seed=11)
    inputs = toy.prepare(images=[e.load_image() for e in examples], prompts=[e.text for e in examples])
    toy(inputs)  # transformers adds its own output-recording hooks on the first forward
    before = hooks()
    got = monitor.generate(toy, inputs, max_new_tokens=3)
    plain = answers.generate_answers(toy, inputs, max_new_tokens=3)
    assert got.texts == plain.texts and got.tokens == plain.tokens  # reading changes nothing
    np.testing.assert_allclose(got.risk, monitor.score(toy, inputs).risk, atol=1e-6)
    stored = answers.capture_at_answer(toy, inputs, [f"blocks.{monitor.layers[0]}.hook_resid_post"])
    by_hand = monitor.scores(stored[f"blocks.{monitor.layers[0]}.hook_resid_post"].numpy()).risk
    np.testing.assert_allclose(got.risk, by_hand, atol=1e-6)
    assert np.array_equal(got.flagged, got.risk > monitor.threshold)
    assert hooks() == before  # nothing left behind, transformers' own hooks kept


# -- from a study's run -----------------------------------------------------------------------------------------
def test_fit_run_uses_the_studys_split_and_its_numbers(study, report):
    out, results = study
    monitor = report.monitor
    assert report.signals["signal"].tolist()[0] == "dense" and report.signals["chosen"].sum() == 1
    r = Run.open(out)
    assert np.array_equal(r.split.test, results.predictors.split.test)
    stored = r.extraction.stored_layers("hidden")
    x = r.extraction.hidden[stored.index(monitor.layers[0])]
    p = monitor.probability(x[r.split.test])
    assert monitor.metrics["test"]["auroc"] == pytest.approx(roc_auc_score(r.correct[r.split.test], p))
    table6 = {p.key: p for p in results.predictors.rows}
    by = report.selective.set_index("scorer")
    assert by.loc["output confidence", "auroc"] == pytest.approx(table6["confidence"].estimate.value)
    assert by.loc["self-consistency (K=4)", "auroc"] == pytest.approx(table6["self_consistency"].estimate.value)
    row = report.consistency.iloc[0]
    assert row["passes_self_consistency"] == 5 and row["cost_ratio"] == pytest.approx(1 / 5)
    assert row["auroc_ratio"] == pytest.approx(row["probe_auroc"] / row["self_consistency_K4_auroc"])


def test_auto_chooses_the_best_representation_on_validation(study, toy):
    auto = fit_run(study[0], "auto", model=toy, compare=False)
    rows = auto.signals.set_index("signal")
    assert set(rows.index) >= {"dense", "image", "vision"}
    best = rows.loc[["dense", "image", "vision"], "validation_auroc"].idxmax()
    assert auto.monitor.signal == best and rows.loc[best, "chosen"]


def test_saved_monitor_scores_the_same_in_a_fresh_process_and_its_auroc_holds_on_fresh_questions(report, toy, tmp_path):
    """Saved, loaded by another Python and applied to a fresh Shapes sample (another seed): the same risks to
    1e-6, and an AUROC inside the CI of the card's test AUROC."""
    monitor = report.monitor
    monitor.save(tmp_path / "m")
    fresh = shapes.write_benchmark(tmp_path / "fresh", 300, seed=9)
    code = f"""
import json, sys
from analyses.data.benchmarks import load, to_examples
from analyses.evaluation import batches
from analyses.monitor.monitor import ReliabilityMonitor
from vlm_lens import HookedVLM
monitor = ReliabilityMonitor.load({str(tmp_path / "m")!r})
model = HookedVLM.from_pretrained("toy-llava")
examples = to_examples(load({str(fresh)!r}), {str(fresh.parent / "images")!r})
risk = []
for chunk, inputs in batches(model, examples, 50):
    risk += monitor.score(model, inputs).risk.tolist()
print(json.dumps(risk))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    fresh_risk = np.array(json.loads(out.stdout.strip().splitlines()[-1]))
    from analyses.data.benchmarks import load, to_examples
    from analyses.evaluation import batches

    examples = to_examples(load(fresh), fresh.parent / "images")
    here, predictions = [], []
    for _, inputs in batches(toy, examples, 50):
        here += monitor.score(toy, inputs).risk.tolist()
        predictions += answers.generate_answers(toy, inputs, max_new_tokens=1).texts
    np.testing.assert_allclose(fresh_risk, here, atol=1e-6)
    from analyses.data.scoring import correctness

    correct = np.array(correctness(examples, predictions), dtype=int)
    low, high = monitor.metrics["test"]["auroc_ci"]
    assert low <= auroc(-fresh_risk, correct, n_resamples=0).value <= high


# -- files and the checkpoint -----------------------------------------------------------------------------------
def test_a_tampered_monitor_is_refused(report, tmp_path):
    folder = report.monitor.save(tmp_path / "m")
    assert ReliabilityMonitor.load(folder).threshold == report.monitor.threshold
    tensors = folder / cards.TENSORS
    blob = bytearray(tensors.read_bytes())
    blob[-3] ^= 0xFF  # one weight's bits
    tensors.write_bytes(bytes(blob))
    with pytest.raises(DataError, match="does not match its card"):
        ReliabilityMonitor.load(folder)
    folder = report.monitor.save(tmp_path / "m2")
    card = json.loads((folder / cards.CARD).read_text())
    card["threshold"] = 0.99  # a looser monitor, by hand
    (folder / cards.CARD).write_text(json.dumps(card))
    with pytest.raises(DataError, match="edited after the monitor was saved"):
        ReliabilityMonitor.load(folder)
    (folder / cards.CARD).write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        ReliabilityMonitor.load(folder)
    (folder / cards.TENSORS).unlink()
    with pytest.raises(DataError, match="is missing"):
        ReliabilityMonitor.load(folder)


def test_another_checkpoint_is_refused_and_another_dtype_is_not(report, toy):
    monitor = report.monitor
    with pytest.raises(cards.MonitorMismatchError, match="cannot read 'toy-qwen2-vl'.*d_model"):
        monitor.check_model(HookedVLM.from_pretrained("toy-qwen2-vl"))
    monitor.check_model(HookedVLM.from_pretrained("toy-llava", dtype="bfloat16"))  # the same checkpoint
    other = HookedVLM.from_pretrained("toy-llava")
    other.hf_model.config.text_config.rope_parameters = {"rope_type": "default", "rope_theta": 123.0}
    with pytest.raises(cards.MonitorMismatchError, match="another configuration"):
        monitor.check_model(other)
    renamed = HookedVLM.from_pretrained("toy-llava")
    renamed.tokenizer.add_tokens(["<extra-token>"])
    with pytest.raises(cards.MonitorMismatchError, match="another tokenizer"):
        monitor.check_model(renamed)


# -- the command line ---------------------------------------------------------------------------------------------
def test_the_three_commands(study, tmp_path, capsys):
    out, _ = study
    assert main(["monitor", "fit", str(out), "--out", str(tmp_path / "m"), "--signal", "sparse", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "# Reliability monitor: sparse" in printed and "self-consistency (K=4)" in printed
    assert (tmp_path / "m" / "report.html").read_text().count("Plotly.newPlot") == 1
    assert main(["monitor", "eval", str(tmp_path / "m"), str(out), "--quiet", "--out", str(tmp_path / "e")]) == 0
    assert "test split" in capsys.readouterr().out
    assert (tmp_path / "e" / "risk_coverage.html").read_text().count("Plotly.newPlot") == 1
    fresh = shapes.write_benchmark(tmp_path / "fresh", 40, seed=4)
    args = ["monitor", "apply", str(tmp_path / "m"), "--model", "toy-llava", "--benchmark", str(fresh)]
    args += ["--images", str(fresh.parent / "images"), "--out", str(tmp_path / "answers.jsonl"), "--quiet"]
    assert main(args) == 0
    rows = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
    assert len(rows) == 40 and len({r["question_id"] for r in rows}) == 40
    assert set(rows[0]) == {"question_id", "answer", "risk", "flagged", "correct"}
    monitor = ReliabilityMonitor.load(tmp_path / "m")
    assert all(r["flagged"] == (r["risk"] > monitor.threshold) for r in rows)
    # interrupted after 15 answers and a half-written line: the same command finishes with the same lines
    whole = (tmp_path / "answers.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "answers.jsonl").write_text("".join(whole[:15]) + whole[15][:10])
    assert main(args) == 0
    resumed = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
    assert [(r["question_id"], r["answer"], r["correct"]) for r in resumed] == [
        (r["question_id"], r["answer"], r["correct"]) for r in rows
    ]  # (the risks of the last 25 were read in batches padded otherwise: equal to float32 rounding)
    np.testing.assert_allclose([r["risk"] for r in resumed], [r["risk"] for r in rows], atol=1e-6)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["monitor", "fit", "no/such/run", "--out", "m"], "RUN_DIR no/such/run: does not exist"),
        (["monitor", "fit", ".", "--out", "m", "--signal", "magic"], "--signal must be one of"),
        (["monitor", "eval", "no/such/monitor", "."], "MONITOR_DIR no/such/monitor: does not exist"),
        (["monitor", "apply", ".", "--model", "toy-lava", "--benchmark", "shapes", "--out", "a.jsonl"], "toy-llava"),
    ],
)
def test_command_line_errors_are_one_line(args, says, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and says in err and "Traceback" not in err


def test_fit_on_a_folder_that_is_not_a_run_and_apply_with_another_model(report, tmp_path, capsys):
    assert main(["monitor", "fit", str(tmp_path), "--out", str(tmp_path / "m")]) == 2
    assert "not a finished vlm-lens vrp run" in capsys.readouterr().err
    report.monitor.save(tmp_path / "m")
    fresh = shapes.write_benchmark(tmp_path / "fresh", 5, seed=4)
    args = ["monitor", "apply", str(tmp_path / "m"), "--model", "toy-qwen2-vl", "--benchmark", str(fresh)]
    assert main([*args, "--images", str(fresh.parent / "images"), "--out", str(tmp_path / "a.jsonl")]) == 2
    assert "cannot read 'toy-qwen2-vl'" in capsys.readouterr().err
    assert not (tmp_path / "a.jsonl").exists() or not (tmp_path / "a.jsonl").read_text()  # refused before answering


def test_transfer_table_says_why_another_models_run_cannot_be_scored(report, study, tmp_path):
    other = tmp_path / "qwen"
    run(VRPConfig(model="toy-qwen2-vl", n=120, k=2, n_resamples=50, random_controls=1), other, progress=False)
    table = transfer_table(report.monitor, [study[0], other]).set_index("model")
    assert table.loc["toy-llava", "questions"] == "test split"
    assert table.loc["toy-llava", "auroc"] == pytest.approx(report.monitor.metrics["test"]["auroc"])
    assert table.loc["toy-qwen2-vl", "note"].startswith("cannot apply: this monitor was fitted on 'toy-llava'")
    on_itself = evaluate_run(report.monitor, study[0])
    assert on_itself.rows == "test split" and len(on_itself.curves) == 4


def test_vrp_with_monitor_adds_its_tables_to_the_report(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["vrp", "--n", "150", "--k", "2", "--n-resamples", "50", "--quiet"]
    assert main([*args, "--monitor", "--monitor-signal", "stacked", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "### Reliability monitor: stacked" in printed and "#### selective" in printed
    data = json.loads((out / "tables.json").read_text())
    assert data["monitor"]["card"]["signal"] == "stacked"
    assert {r["scorer"] for r in data["monitor"]["selective"]} >= {"monitor: stacked", "output confidence"}
    page = (out / "report.html").read_text()
    assert "Selective prediction (test split)" in page and "AURC" in page
    monitor = ReliabilityMonitor.load(out / "monitor")
    assert monitor.metrics["test"]["auroc"] == pytest.approx(data["monitor"]["card"]["metrics"]["test"]["auroc"])
    assert main([*args, "--monitor", "--model", "toy-llava", "--model", "toy-qwen2-vl"]) == 2
    assert "--monitor fits on one model's run" in capsys.readouterr().err
