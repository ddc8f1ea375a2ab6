"""Several models and benchmarks in one command: one study per (model, benchmark), then the tables
that span them.

    vlm-lens vrp --model A --model B --benchmark pope.json --benchmark vqa_q.json ...

Each pair runs into its own folder (``<out>/<model>__<benchmark>``, resumable as any run) and
``<out>`` gets ``tables.json`` / ``tables.md`` / ``compare.html`` with Table 1 (every model),
every benchmark with each model's accuracy, Table 7 as the paper's (output confidence beside the
dense probe's AUROC per model and benchmark) and the cross-family attention result: the
point-biserial R between attention structure and correctness pooled over all runs, with its
bootstrap CI, beside each run's own. Sharpness is pooled as normalised spatial entropy,
H_s / log(patches), and C_k - 1 as a count, each averaged over layers, so grids of different sizes
(576 LLaVA patches, 256 PaliGemma, a varying number for Qwen2-VL) share one scale.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from analyses.attention_structure import component_count
from analyses.files import write_atomic
from analyses.study import report, validate
from analyses.study.config import VRPConfig
from analyses.study.extract import Extraction, load
from analyses.study.headline import rpb_with_ci
from analyses.study.validate import BUILT_IN
from vlm_lens.errors import DataError


def run_name(model: str, benchmark: str) -> str:
    return f"{Path(model).name}__{benchmark if benchmark in BUILT_IN else Path(benchmark).stem}"


def normalised_sharpness(ex: Extraction) -> np.ndarray:
    """Per question: H_s / log(patches), averaged over layers (0: all attention on one patch; 1: uniform)."""
    return np.array([np.mean(r["attention_entropy"]) / np.log(r["grid"][0] * r["grid"][1]) for r in ex.rows])


def mean_components(ex: Extraction, top_mass: float) -> np.ndarray:
    """Per question: C_k - 1 averaged over layers (a count, on each question's own grid)."""
    return np.array(
        [
            np.mean([component_count(g.reshape(r["grid"]), top_mass) for g in attn]) - 1
            for attn, r in zip(ex.attention, ex.rows)
        ]
    )


def pooled_attention(folders: dict[str, Path], cfg: VRPConfig) -> pd.DataFrame:
    """R_pb between attention structure and correctness per run and pooled over every run, with bootstrap CIs:
    normalised H_s and C_k - 1 (the paper's R_pb(C_k, y), its first headline number), each averaged over layers."""
    rows, pooled = [], {"H_s / log patches": ([], []), "C_k - 1": ([], [])}
    for name, folder in folders.items():
        ex = load(folder / "extraction")
        if any(r["correct"] is None for r in ex.rows):
            continue  # an open-ended benchmark: no labels
        for measure, values in (
            ("H_s / log patches", normalised_sharpness(ex)),
            ("C_k - 1", mean_components(ex, cfg.top_mass)),
        ):
            pooled[measure][0].append(values)
            pooled[measure][1].append(ex.correct)
            rows.append({"run": name, "measure": measure, **rpb_with_ci(values, ex.correct, cfg)})
    for measure, (scores, labels) in pooled.items():
        if len(scores) > 1:
            rows.append(
                {
                    "run": "pooled",
                    "measure": measure,
                    **rpb_with_ci(np.concatenate(scores), np.concatenate(labels), cfg),
                }
            )
    return pd.DataFrame(rows)


def confidence_vs_probe(data: dict[str, dict]) -> pd.DataFrame:
    """Table 7 as the paper's: per model x benchmark, accuracy, and the test AUROC (95% CI) of output confidence
    beside the dense probe's: where the cheap signal falls short of the hidden state."""
    rows = []
    for name, d in data.items():
        if "table6_predictors" not in d:
            continue  # open-ended: nothing scored
        by_key = {r["key"]: r for r in d["table6_predictors"]}
        conf, probe = by_key["confidence"], by_key["dense_probe"]
        rows.append(
            {
                "model": d["config"]["model"],
                "benchmark": d["table7_benchmarks"][0]["benchmark"],
                "run": name,
                "accuracy": d["table7_benchmarks"][0]["accuracy"],
                "confidence auroc": conf["auroc"],
                "confidence ci_low": conf["ci_low"],
                "confidence ci_high": conf["ci_high"],
                "probe": probe["method"],
                "probe auroc": probe["auroc"],
                "probe ci_low": probe["ci_low"],
                "probe ci_high": probe["ci_high"],
                "probe minus confidence": probe["auroc"] - conf["auroc"],
                "n_test": probe["n_test"],
            }
        )
    return pd.DataFrame(rows)


def _cross_tables(folders: dict[str, Path], data: dict[str, dict], cfg: VRPConfig) -> dict[str, pd.DataFrame]:
    models = pd.DataFrame([d["table1_models"][0] for d in data.values()]).drop_duplicates(subset=["model"])
    benchmarks = pd.DataFrame(
        [{"run": name, "model": d["config"]["model"], **d["table7_benchmarks"][0]} for name, d in data.items()]
    )
    return {
        "table1_models": models,
        "table7_benchmarks": benchmarks,
        "table7_confidence_vs_probe": confidence_vs_probe(data),
        "table2_attention_rpb_pooled": pooled_attention(folders, cfg),
    }


def run_many(
    settings: dict,
    models: list[str],
    benchmarks: list[dict],
    out: str | Path,
    progress: bool = True,
    allow_outside_images: bool = False,
) -> dict:
    """One study per (model, benchmark): ``settings`` are the shared ``VRPConfig`` fields, ``benchmarks`` the
    benchmark/annotations/images/format fields of each. Returns the cross-run tables (also written to ``out``).
    Every run's folder, benchmark and images are checked before the first model loads."""
    from analyses.study.pipeline import run

    out = Path(out)
    planned = {}
    for model in models:
        for bench in benchmarks:
            name = run_name(model, bench["benchmark"])
            if name in planned:
                raise DataError(f"two runs would share the folder {name}: give models and benchmarks distinct names")
            cfg = VRPConfig(**{**settings, **bench, "model": model})  # each model resolves its own answer length
            planned[name] = (cfg, validate.prepare(cfg, out / name, allow_outside_images, progress))
    folders = {}
    for name, (cfg, checked) in planned.items():
        run(cfg, out / name, progress, allow_outside_images, data=checked)
        folders[name] = out / name
    data = {name: json.loads((folder / "tables.json").read_text()) for name, folder in folders.items()}
    tables = _cross_tables(folders, data, cfg)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(
        out / "tables.json",
        json.dumps({k: f.replace({np.nan: None}).to_dict(orient="records") for k, f in tables.items()}, indent=1),
    )
    md = "\n".join(
        f"### {report.TITLES.get(k, k)}\n\n{f.to_markdown(index=False, floatfmt='.3f')}\n" for k, f in tables.items()
    )
    write_atomic(out / "tables.md", md)
    scored = [folders[name] for name, d in data.items() if "table6_predictors" in d]
    if len(scored) > 1:
        report.compare(scored, out)  # per-family columns of accuracy, AUROCs, logit lens, ablations
    return tables
