"""The VLM Reliability Probe: the whole study for one model and one benchmark.

    vlm-lens vrp                                   # toy LLaVA on the Shapes benchmark
    vlm-lens vrp --model llava-hf/llava-1.5-7b-hf --benchmark pope.json --images val2014/

Steps: check the output folder, the benchmark and its images (``validate``, before any model work) -> resumable
extraction -> predictors and probes on one stratified split -> logit-lens peak and MLP share ->
probe-neuron and random-neuron ablations -> tables (Markdown + JSON) and ``report.html``. Each
step takes the config and the typed results of the steps before it (``analyses.study.results``).
Table numbers follow the study: 2 accuracy and attention-vs-correctness, 3 logit-lens peak and
MLP share, 4-5 probe-neuron and random ablations, 6 predictor AUROCs, 8 sample accounting,
9 method comparison.
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext
from pathlib import Path

import pandas as pd

from analyses import stats
from analyses.data import benchmarks
from analyses.data.examples import Example
from analyses.data.scoring import OPEN_ENDED
from analyses.progress import Progress
from analyses.study import circuit, headline, validate
from analyses.study.causal import ablation_table, margin_building
from analyses.study.config import VRPConfig
from analyses.study.distributed import Ranks
from analyses.study.extract import Extraction, check_resumable, extract, load
from analyses.study.files import RunLock
from analyses.study.open_ended import OpenEndedResults, open_ended
from analyses.study.predictors import attention_features, attention_table, predictor_table
from analyses.study.results import Accounting, Accuracy, Setup, StudyResults
from analyses.study.validate import BUILT_IN
from vlm_lens import HookedVLM
from vlm_lens.errors import DataError, VLMLensWarning

MIN_PER_CLASS = 5  # right and wrong answers each: fewer cannot be split three ways with both in every split


def is_open(ex: Extraction) -> bool:
    """An open-ended benchmark (LLaVA-Bench): no answer can be called right or wrong without a judge model."""
    metrics = {r["metric"] for r in ex.rows}
    if OPEN_ENDED in metrics and len(metrics) > 1:
        raise DataError(f"a run mixes open-ended questions with scored ones ({sorted(metrics)}): run them separately")
    return metrics == {OPEN_ENDED}


def accuracy_table(ex: Extraction) -> Accuracy:
    frame = pd.DataFrame({"type": [r["type"] for r in ex.rows], "correct": ex.correct})
    rows = [{"type": "all", "n": len(frame), "accuracy": frame.correct.mean()}]
    rows += [{"type": t, "n": len(p), "accuracy": p.correct.mean()} for t, p in frame.groupby("type")]
    ece, bins = stats.expected_calibration_error([r["confidence"] for r in ex.rows], ex.correct)
    return Accuracy(pd.DataFrame(rows), ece, bins)


def setup_tables(model: HookedVLM, examples: list[Example], ex: Extraction, cfg: VRPConfig, questions: int) -> Setup:
    """Table 1 (the model) and Table 7 (the benchmark) of this run."""
    c = model.cfg
    grid = ex.rows[0]["grid"]
    described = {
        "model": cfg.model,
        "family": c.family,
        "hf_class": type(model.hf_model).__name__,
        "parameters": sum(p.numel() for p in model.hf_model.parameters()),
        "dtype": str(model.dtype).removeprefix("torch."),
        "language_layers": c.n_layers,
        "d_model": c.d_model,
        "d_mlp": c.d_mlp,
        "heads": c.n_heads,
        "vision_layers": c.n_vision_layers,
        "image_tokens (first image)": grid[0] * grid[1],
    }
    built_in = cfg.benchmark in BUILT_IN
    benchmark = cfg.benchmark if built_in else Path(cfg.benchmark).name
    form = cfg.benchmark if built_in else cfg.format or benchmarks.detect_format(cfg.benchmark)
    metrics = sorted({e.metric for e in examples})
    return Setup(
        described,
        {
            "benchmark": benchmark,
            "format": form,
            "questions in file": questions,
            "questions used": len(ex.rows),
            "metric": ", ".join(metrics),
            "accuracy": None if is_open(ex) else float(ex.correct.mean()),
        },
    )


def analyse(
    model: HookedVLM,
    examples: list[Example],
    ex: Extraction,
    cfg: VRPConfig,
    questions: int,
    progress: bool | Progress = False,
    out: str | Path | None = None,
) -> StudyResults:
    """Every table from a finished extraction (the model is needed again for the causal checks), each stage said
    on ``progress`` (``analyses.progress``). With ``cfg.lens == "tuned"`` every margin is read through a tuned lens
    (``analyses.study.lenses``; one trained here is saved in ``out/tuned_lens``)."""
    progress = Progress.of(progress)
    lenses = None
    if cfg.lens == "tuned":
        if out is None and cfg.tuned_lens is None:
            raise DataError("lens tuned trains a tuned lens and saves it in the run folder: give out= (or tuned_lens)")
        from analyses.study.lenses import through_tuned_lens

        with progress.stage("margins through the tuned lens"):
            ex, lenses = through_tuned_lens(model, examples, ex, cfg, out or ".", progress)
    with progress.stage("attention features"):
        features = attention_features(ex, cfg)
    with progress.stage("predictors: probes over the layers, bootstrap CIs"):
        predictors = predictor_table(ex, features, cfg)
    split = predictors.split
    accounting = Accounting(
        questions,
        0,
        len(ex.rows),
        int(ex.correct.sum()),
        len(split.train),
        len(split.val),
        len(split.test),
        circuit.monitor_precision(predictors, ex.correct, cfg.flag_tau),
    )
    with progress.stage("margin building: the test split's writes by layer"):
        margins = margin_building(model, examples, ex, cfg)
    with progress.stage(f"causal checks: re-answering the {len(split.test)} test questions", unit="pass") as stage:
        ablations = ablation_table(model, examples, ex, predictors, cfg, stage)
    with progress.stage("circuit, headline and robustness tables"):
        return StudyResults(
            config=cfg,
            accuracy=accuracy_table(ex),
            attention=attention_table(ex, features, cfg),
            features=features,
            margins=margins,
            ablations=ablations,
            predictors=predictors,
            accounting=accounting,
            setup=setup_tables(model, examples, ex, cfg, questions),
            circuit=circuit.circuit_table(ex, predictors, ablations),
            delta_entropy=circuit.delta_entropy(features, ex.correct, cfg),
            detachment=circuit.symbolic_detachment(ex, features, margins, cfg, cross=bool(model.cfg.cross_layers)),
            entropy_change=circuit.entropy_change(features, ex.correct, cfg),
            case=circuit.case_study(ex, features, predictors),
            headline=headline.comparisons(ex, features, predictors, ablations, cfg),
            dbscan=headline.dbscan_robustness(ex, features, cfg),
            probe_seeds=headline.probe_seeds(ex, cfg),
            top_heads_attention=headline.top_heads_attention(ex, margins, cfg),
            lenses=lenses,
        )


def load_model(cfg: VRPConfig, ranks: Ranks) -> HookedVLM:
    """The study's model on its device and in its dtype (each torchrun rank on its own GPU)."""
    if cfg.device_map is not None and ranks.world_size > 1:
        raise DataError(
            "--device-map spreads one model over all GPUs; under torchrun each rank has its own GPU: "
            "use --device cuda with torchrun, or --device-map without it"
        )
    return HookedVLM.from_pretrained(
        cfg.model, dtype=cfg.dtype, device=ranks.device(cfg.device), device_map=cfg.device_map
    )


def check_answers(ex: Extraction) -> None:
    """The probes' stratified splits need right and wrong answers in every split: say so before sklearn does."""
    right = int(ex.correct.sum())
    fewest = min(right, len(ex.rows) - right)
    if fewest < MIN_PER_CLASS:
        raise DataError(
            f"{right} of {len(ex.rows)} answers are right and {len(ex.rows) - right} wrong: the probes and "
            f"their CIs need at least {MIN_PER_CLASS} of each; run more questions (--n) or a benchmark "
            "the model gets wrong more often (the extraction is kept: a larger --n needs a new --out)"
        )


def run(
    cfg: VRPConfig,
    out: str | Path,
    progress: bool | Progress = True,
    allow_outside_images: bool = False,
    data: validate.Dataset | None = None,
    monitor: str | None = None,
) -> StudyResults | OpenEndedResults | None:
    """Run the study; write tables and the report into ``out``; return the results.

    Before any model work, ``validate.prepare`` checks the output folder, the benchmark and every image
    (``DataError`` says what to fix) and warns when ``n`` is too small for the study's splits. One run at a
    time writes into ``out`` (``files.RunLock``). An open-ended benchmark (LLaVA-Bench) gives
    ``OpenEndedResults``: answers and judge-free metrics. Under ``torchrun`` every rank extracts its share of
    the shards; rank 0 then analyses and reports (and returns the results), the other ranks return None.
    ``data``: the benchmark as ``validate.prepare`` returned it, when the caller has checked it already.
    ``monitor``: a signal name (``analyses.monitor.SIGNALS`` or "auto"): also fit a reliability monitor on the run
    (``analyses.study.monitoring``), save it in ``out/monitor`` and add its tables to the report."""
    from analyses.study import report  # plotting is imported only by those who plot

    out = Path(out)
    progress = Progress.of(progress)
    data = data or validate.prepare(cfg, out, allow_outside_images, progress.enabled)  # (given: checked by the caller)
    examples, questions = data.examples, data.questions
    if any(e.metric != OPEN_ENDED for e in examples):  # open-ended runs have no splits
        for message in cfg.size_warnings():
            warnings.warn(message, VLMLensWarning, stacklevel=2)
    ranks = Ranks.from_env(cfg.device)
    lock = RunLock(out) if ranks.is_main else nullcontext()  # the ranks of one torchrun share the folder
    try:
        with lock:
            if getattr(lock, "stale", None):
                warnings.warn(
                    f"{out}: took over the lock of an earlier run that was killed (pid {lock.stale.get('pid')}); "
                    "resuming where it stopped",
                    VLMLensWarning,
                    stacklevel=2,
                )
            check_resumable(
                out / "extraction", cfg, data.digests
            )  # other settings or data: refused before the model loads
            with progress.stage(f"loading {cfg.model}"):
                model = load_model(cfg, ranks)
            cfg.check_against(model.cfg.n_layers)
            if cfg.tuned_lens is not None:  # another checkpoint's lens is refused before any extraction
                from analyses.tuned_lens import TunedLens

                TunedLens.load(cfg.tuned_lens).check_model(model)
            folder = extract(model, examples, out / "extraction", cfg, progress, ranks, data.digests, data.files)
            if not ranks.is_main:
                return None
            ex = load(folder)
            if is_open(ex):  # LLaVA-Bench: answers and judge-free metrics only
                results = open_ended(ex, [e.text for e in examples], setup_tables(model, examples, ex, cfg, questions))
                report.write_open(out, results, cfg)
                return results
            check_answers(ex)
            results = analyse(model, examples, ex, cfg, questions, progress, out)
            monitored = None
            if monitor is not None:
                from analyses.study.monitoring import Run, fit_run

                monitored = fit_run(out, monitor, model=model, progress=progress, run=Run.of(out, cfg, ex))
                monitored.monitor.save(out / "monitor")
            with progress.stage("report: tables.md, tables.json, report.html"):
                report.write(out, results, ex, examples, monitored)
            return results
    finally:
        ranks.close()
