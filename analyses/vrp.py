"""The VLM Reliability Probe: the whole study for one model and one benchmark.

    vlm-lens vrp                                   # toy LLaVA on the Shapes benchmark
    vlm-lens vrp --model llava-hf/llava-1.5-7b-hf --benchmark pope.json --images val2014/

Steps: load the benchmark (missing images reported before any model work) -> resumable
extraction -> predictors and probes on a stratified split -> logit-lens peak and MLP share ->
probe-neuron and random-neuron ablations -> tables (Markdown + JSON) and ``report.html``.
Table numbers follow the study: 2 accuracy and attention-vs-correctness, 3 logit-lens peak and
MLP share, 4-5 probe-neuron and random ablations, 6 predictor AUROCs, 8 sample accounting,
9 method comparison.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from analyses import benchmarks, decomposition, interventions, logit_lens, probes, stats
from analyses.attention_structure import component_count, spatial_entropy
from analyses.evaluation import Example, batches, correctness, predict, shapes_examples
from analyses.extract import ExtractConfig, Extraction, extract, load
from vlm_lens import HookedVLM

SHAPES_EVAL_SEED = 123  # the default benchmark: Shapes questions no toy model trained on


@dataclass(frozen=True)
class VRPConfig:
    model: str = "toy-llava"
    benchmark: str = "shapes"  # "shapes", or a POPE/Shapes-format file (JSON lines or array)
    images: str | None = None  # image folder for a benchmark file
    n: int = 600
    k: int = 10
    top_p: float = 0.9
    temperature: float = 1.0
    seed: int = 0
    ablation_k: int = 8
    random_controls: int = 3
    n_resamples: int = 2000


def load_examples(cfg: VRPConfig) -> tuple[list[Example], dict]:
    """The benchmark's first ``n`` questions, and the sample accounting so far."""
    if cfg.benchmark == "shapes":
        return shapes_examples(cfg.n, SHAPES_EVAL_SEED), {"benchmark questions": cfg.n, "images missing": 0}
    if cfg.images is None:
        raise ValueError("a benchmark file needs --images, the folder holding its images")
    records = benchmarks.load_pope(cfg.benchmark)
    chosen = records[: cfg.n]
    benchmarks.check_images(chosen, cfg.images)  # raises, naming the missing ones, before any model work
    return benchmarks.to_examples(chosen, cfg.images), {"benchmark questions": len(records), "images missing": 0}


def _attention_features(ex: Extraction) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per sample: H_s and C_k per layer, and the concatenated per-layer spatial vectors."""
    entropy, components, vectors = [], [], []
    for attn, row in zip(ex.attention, ex.rows):
        grids = attn.reshape(attn.shape[0], *row["grid"])
        entropy.append([spatial_entropy(g) for g in grids])
        components.append([component_count(g, 0.5) for g in grids])
        vectors.append(attn.ravel())
    return np.array(entropy), np.array(components), np.array(vectors)


def predictor_table(ex: Extraction, cfg: VRPConfig) -> tuple[pd.DataFrame, dict]:
    """Table 6 (and what Tables 4, 5 and 9 need): every predictor's test AUROC with a bootstrap CI."""
    correct = ex.correct
    split = probes.stratified_split(correct, cfg.seed)
    test = split.test
    entropy, components, vectors = _attention_features(ex)
    rows, extra = [], {"split": {k: len(getattr(split, k)) for k in ("train", "val", "test")}}

    def add(method, signal, passes, scores):
        est = stats.auroc(np.asarray(scores)[test], correct[test], cfg.n_resamples, cfg.seed)
        rows.append({"method": method, "signal": signal, "forward passes": passes, "auroc": est.value,
                     "ci_low": est.ci[0], "ci_high": est.ci[1], "n_test": len(test)})
        extra.setdefault("scores", {})[method] = np.asarray(scores)[test].tolist()

    add("output confidence", "max softmax", "1", [r["confidence"] for r in ex.rows])
    add("logit entropy", "-entropy", "1", [-r["entropy"] for r in ex.rows])
    # The margin needs the gold answer, and at the last layer its sign *is* correctness: choose among the
    # earlier layers (on validation), and read it as a diagnostic of where the answer forms, not a monitor.
    margins = ex.margins
    val_auc = [stats.auroc(margins[l][split.val], correct[split.val], n_resamples=0).value for l in range(len(margins) - 1)]
    best = int(np.nanargmax(val_auc))
    add(f"truth margin (layer {best})", "logit lens, needs the gold", "1", margins[best])
    dense = probes.layerwise_probe(ex.hidden, correct, "l2", seed=cfg.seed, n_resamples=cfg.n_resamples)
    sparse = probes.layerwise_probe(ex.neurons, correct, "l1", C=0.1, seed=cfg.seed, n_resamples=cfg.n_resamples)
    stacked = probes.stacked_probe(ex.hidden, correct, seed=cfg.seed, n_resamples=cfg.n_resamples)
    for name, result, features in (("dense probe (L2, residual)", dense, ex.hidden[dense.best_layer]),
                                   ("sparse probe (L1, MLP neurons)", sparse, ex.neurons[sparse.best_layer]),
                                   ("stacked probe (last 5 layers)", stacked,
                                    np.concatenate([ex.hidden[l] for l in stacked.probe.layer], axis=1))):
        add(f"{name} @L{result.probe.layer}", "hidden states", "1", result.probe.decision(features))
    add(f"self-consistency (K={cfg.k})", "majority support", f"1 + {cfg.k} decodes", [r["consistency"] for r in ex.rows])
    add("attention entropy (mean over layers)", "-H_s", "1", -entropy.mean(1))
    for kind, label in (("mlp", "ensemble attention probe (MLP)"), ("gbt", "attention stress test (GBT)"), ("rf", "attention stress test (RF)")):
        features = np.concatenate([vectors, entropy, components], axis=1) if kind != "mlp" else vectors
        est = probes.classifier_probe(features, correct, kind, cfg.seed, cfg.n_resamples)
        rows.append({"method": label, "signal": "attention maps", "forward passes": "1", "auroc": est.value,
                     "ci_low": est.ci[0], "ci_high": est.ci[1], "n_test": len(test)})
    extra.update(dense=dense, sparse=sparse, best_margin_layer=best, entropy=entropy, components=components, test=test)
    return pd.DataFrame(rows), extra


def attention_table(ex: Extraction, entropy: np.ndarray, components: np.ndarray, cfg: VRPConfig) -> pd.DataFrame:
    """Table 2's right half: point-biserial R between attention sharpness and correctness, per layer."""
    rows = []
    for layer in range(entropy.shape[1]):
        for measure, values in (("H_s", entropy[:, layer]), ("C_k - 1", components[:, layer] - 1)):
            if np.std(values) == 0:
                rows.append({"layer": layer, "measure": measure, "r_pb": float("nan"), "ci_low": float("nan"), "ci_high": float("nan")})
                continue
            est = stats.point_biserial(values, ex.correct, cfg.n_resamples, cfg.seed)
            rows.append({"layer": layer, "measure": measure, "r_pb": est.value, "ci_low": est.ci[0], "ci_high": est.ci[1]})
    return pd.DataFrame(rows)


@torch.no_grad()
def margin_building(model: HookedVLM, examples: list[Example], ex: Extraction, n: int = 100) -> tuple[pd.DataFrame, dict]:
    """Table 3: logit-lens peak and separation layers, and the MLP share of the margin up to the peak."""
    curves = logit_lens.margin_curves(ex.margins, ex.correct)
    summary = logit_lens.peak_and_separation(curves, ex.margins)
    frames = []
    subset = examples[:n]
    for start, (chunk, inputs) in zip(range(0, len(subset), 50), batches(model, subset, 50)):
        logits, cache = model.run_with_cache(inputs, names_filter=lambda n: "resid" in n or n.endswith(("attn_out", "mlp_out")))
        last = logits[torch.arange(len(chunk)), inputs.last_positions()].float()
        refs = [logit_lens.reference_token_ids(model.tokenizer, [e.label])[0] for e in chunk]
        others = last.clone()
        others[torch.arange(len(chunk)), refs] = float("-inf")
        table = decomposition.margin_contributions(model, cache, refs, others.argmax(-1).tolist())
        table["item"] += start
        frames.append(table)
    contributions = pd.concat(frames, ignore_index=True)
    summary["mlp_share_at_peak"] = decomposition.mlp_share(contributions, summary["peak_layer"])
    summary["mean_margin_at_peak"] = float(ex.margins[summary["peak_layer"]].mean())
    return curves, {**summary, "contributions": decomposition.layer_table(contributions)}


def ablation_table(model: HookedVLM, examples: list[Example], extra: dict, cfg: VRPConfig) -> pd.DataFrame:
    """Tables 4-5: zeroing the sparse probe's top-k neurons vs k random neurons of the same layer, on the test split."""
    sparse = extra["sparse"]
    chosen = probes.selected_neurons(sparse.probe).head(cfg.ablation_k)
    layer = int(sparse.probe.layer)
    test_examples = [examples[i] for i in extra["test"]]
    before = correctness(test_examples, predict(model, test_examples))
    conditions = []
    if len(chosen):
        conditions.append(("probe neurons", interventions.neurons(layer, chosen["index"].tolist(), "zero")))
    for seed in range(cfg.random_controls):
        conditions.append((f"random control {seed}", interventions.random_neurons(
            model, layer, max(1, len(chosen)), seed=cfg.seed + seed, exclude=chosen["index"].tolist())))
    rows = []
    for kind, intervention in conditions:
        after = correctness(test_examples, predict(model, test_examples, intervention))
        est = stats.paired_bootstrap_diff(np.array(before, float), np.array(after, float), cfg.n_resamples, cfg.seed)
        rows.append({"condition": kind, "intervention": intervention.name, "layer": layer, "k": max(1, len(chosen)),
                     "acc_before": float(np.mean(before)), "acc_after": float(np.mean(after)),
                     "diff": est.value, "ci_low": est.ci[0], "ci_high": est.ci[1], "n": len(before)})
    return pd.DataFrame(rows)


def accuracy_table(ex: Extraction) -> pd.DataFrame:
    frame = pd.DataFrame({"type": [r["type"] for r in ex.rows], "correct": ex.correct})
    rows = [{"type": "all", "n": len(frame), "accuracy": frame.correct.mean()}]
    rows += [{"type": t, "n": len(p), "accuracy": p.correct.mean()} for t, p in frame.groupby("type")]
    return pd.DataFrame(rows)


def run(cfg: VRPConfig, out: str | Path, progress: bool = True) -> dict:
    """Run the study; write tables and the report into ``out``; return the tables."""
    from analyses import report  # plotting is imported only by those who plot

    out = Path(out)
    examples, accounting = load_examples(cfg)
    model = HookedVLM.from_pretrained(cfg.model)
    extract_cfg = ExtractConfig(cfg.model, cfg.benchmark, cfg.n, k=cfg.k, top_p=cfg.top_p,
                                temperature=cfg.temperature, seed=cfg.seed)
    ex = load(extract(model, examples, out / "extraction", extract_cfg, progress))
    predictors, extra = predictor_table(ex, cfg)
    attention = attention_table(ex, extra["entropy"], extra["components"], cfg)
    curves, building = margin_building(model, examples, ex)
    ablations = ablation_table(model, examples, extra, cfg)
    accuracy = accuracy_table(ex)
    ece, _ = stats.expected_calibration_error([r["confidence"] for r in ex.rows], ex.correct)
    accuracy["ece (output confidence)"] = [ece] + [float("nan")] * (len(accuracy) - 1)
    accounting.update({"extracted": len(ex.rows), "correct": int(ex.correct.sum()), "incorrect": int((~ex.correct).sum()),
                       **{f"{k} split": v for k, v in extra["split"].items()}})
    tables = {
        "config": asdict(cfg),
        "table2_accuracy": accuracy,
        "table2_attention_rpb": attention,
        "table3_logit_lens": pd.DataFrame([{k: v for k, v in building.items() if k != "contributions"}]),
        "table4_5_ablations": ablations,
        "table6_predictors": predictors,
        "table8_accounting": pd.DataFrame([accounting]),
        "table9_methods": predictors[["method", "signal", "forward passes", "auroc"]],
    }
    report.write(out, tables, curves=curves, contributions=building["contributions"], extraction=ex,
                 examples=examples, extra=extra)
    return tables
