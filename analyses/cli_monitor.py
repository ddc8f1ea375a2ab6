"""``vlm-lens monitor``: fit a reliability monitor on a study's run, evaluate it on other runs, apply it.

    vlm-lens monitor fit runs/vrp-toy-llava --out runs/monitor            # dense probe; --signal auto|image|...
    vlm-lens monitor eval runs/monitor runs/vrp-toy-llava runs/other-run  # transfer table, one row per run
    vlm-lens monitor apply runs/monitor --model toy-llava --benchmark fresh/questions.jsonl --images fresh/images \\
        --out answers.jsonl                                               # one JSON line per question, with its risk

Part of the command line (``analyses.cli``): torch and the analyses load inside the commands, so ``--help`` and a
wrong option answer at once; every error a user can cause is one line and exit status 2.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

monitor_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="A reliability monitor: fit it on a run, evaluate it on others, apply it to new questions.",
)

SIGNAL_HELP = (
    "dense (default), sparse, stacked (answer-position residual), image (image tokens' residual), vision "
    "(projected vision features), consistency (trained on self-consistency support, no gold), or auto (the best "
    "on validation of dense, image and vision)"
)


def _check_folder(path: str, what: str) -> Path:
    from vlm_lens.errors import DataError

    folder = Path(path)
    if not folder.is_dir():
        raise DataError(f"{what} {path}: {'is a file, not a folder' if folder.exists() else 'does not exist'}")
    return folder


def _check_choice(value: str, name: str, choices) -> None:
    from vlm_lens.errors import InputError

    if value not in choices:
        raise InputError(f"--{name} must be one of {', '.join(choices)}, got {value!r}")


@monitor_app.command("fit")
def fit(
    run_dir: str = typer.Argument(..., help="a finished `vlm-lens vrp` run folder (its extraction and tables.json)"),
    out: str = typer.Option(..., help="folder for the monitor (monitor.safetensors, card.json, report.md/html)"),
    signal: str = typer.Option("dense", help=SIGNAL_HELP),
    calibration: str = typer.Option("platt", help="platt (a logistic curve) or isotonic, fitted on validation"),
    coverage: float | None = typer.Option(
        None, min=0.0, max=1.0, help="flag so that this share of validation answers is kept (default 0.8)"
    ),
    precision: float | None = typer.Option(
        None, min=0.0, max=1.0, help="instead: keep the most answers whose validation accuracy reaches this"
    ),
    quiet: bool = typer.Option(False, "--quiet", help="no progress lines"),
) -> None:
    """Fit a monitor on RUN_DIR's stored states and the study's split; save it with its card and report."""
    from analyses.monitor.signals import CALIBRATIONS, SIGNALS
    from vlm_lens.errors import InputError

    _check_choice(signal, "signal", [*SIGNALS, "auto"])
    _check_choice(calibration, "calibration", CALIBRATIONS)
    if coverage is not None and precision is not None:
        raise InputError("give --coverage or --precision, not both")
    folder = _check_folder(run_dir, "RUN_DIR")
    from analyses import plots
    from analyses.files import write_atomic
    from analyses.study.monitoring import fit_run

    report = fit_run(
        folder,
        signal,
        calibration=calibration,
        coverage=None if precision is not None else (0.8 if coverage is None else coverage),
        precision=precision,
        progress=not quiet,
    )
    target = report.monitor.save(out)
    text = report.markdown()
    write_atomic(target / "report.md", text)
    figure = plots.risk_coverage(report.curves, title=f"Risk-coverage, test split of {folder.name}")
    write_atomic(target / "report.html", figure.to_html(include_plotlyjs=True, full_html=True))
    typer.echo(text)
    typer.echo(f"monitor: {target} (monitor.safetensors, card.json); report: {target / 'report.html'}")


@monitor_app.command("eval")
def evaluate(
    monitor_dir: str = typer.Argument(..., help="a saved monitor folder"),
    run_dirs: list[str] = typer.Argument(..., help="run folders to score it on (other benchmarks, other samples)"),
    out: str | None = typer.Option(None, help="folder for transfer.md and risk_coverage.html (default: print only)"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress lines"),
) -> None:
    """Score a saved monitor on other runs: AUROC, AURC, accuracy at coverage, one row per run."""
    _check_folder(monitor_dir, "MONITOR_DIR")
    for run in run_dirs:
        _check_folder(run, "RUN_DIR")
    from analyses import formatting
    from analyses.monitor.monitor import ReliabilityMonitor
    from analyses.study.monitor_transfer import transfer_table

    monitor = ReliabilityMonitor.load(monitor_dir)
    curves: dict = {}
    table = transfer_table(monitor, run_dirs, progress=not quiet, curves=curves)
    text = (
        f"# Monitor {monitor_dir} ({monitor.signal}, fitted on {monitor.data.get('model')} / "
        f"{monitor.data.get('benchmark')}) on {len(run_dirs)} run(s)\n\n" + formatting.markdown(table) + "\n"
    )
    typer.echo(text)
    if out:
        from analyses import plots
        from analyses.files import write_atomic

        target = Path(out)
        target.mkdir(parents=True, exist_ok=True)
        write_atomic(target / "transfer.md", text)
        figures = [plots.risk_coverage(c, title=f"Risk-coverage on {run}") for run, c in curves.items()]
        page = "".join(f.to_html(full_html=False, include_plotlyjs=i == 0) for i, f in enumerate(figures))
        write_atomic(target / "risk_coverage.html", f"<!doctype html><html><body>{page}</body></html>")
        typer.echo(f"written: {target / 'transfer.md'} and {target / 'risk_coverage.html'}")


@monitor_app.command("apply")
def apply(
    monitor_dir: str = typer.Argument(..., help="a saved monitor folder"),
    model: str = typer.Option(..., help="the checkpoint the monitor was fitted on (zoo name, hub id or folder)"),
    benchmark: str = typer.Option(..., help="a questions file (any format vlm-lens vrp reads) or shapes"),
    out: str = typer.Option(..., help="answers.jsonl: one JSON line per question (resumed if it exists)"),
    images: str | None = typer.Option(None, help="folder of the benchmark's images"),
    annotations: str | None = typer.Option(None, help="VQAv2's annotations, if the benchmark needs them"),
    n: int | None = typer.Option(None, min=1, help="the first n questions (default: all)"),
    batch_size: int = typer.Option(16, min=1, help="questions per forward"),
    max_new_tokens: int | None = typer.Option(
        None, min=1, help="the longest answer, in tokens (default: as in the run the monitor was fitted on)"
    ),
    device: str | None = typer.Option(None, help="cpu, cuda, cuda:1, mps ..."),
    dtype: str | None = typer.Option(None, help="float32, bfloat16, float16 (default: the checkpoint's)"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress lines"),
) -> None:
    """Answer a benchmark's questions with the model, each with the monitor's risk and flag (JSON lines)."""
    from analyses.study.config import VRPConfig, default_answer_tokens
    from vlm_lens.zoo import check_name

    _check_folder(monitor_dir, "MONITOR_DIR")
    check_name(model)
    probe = VRPConfig(
        model=model, benchmark=benchmark, images=images, annotations=annotations, device=device, dtype=dtype
    )
    probe.check_files()  # the files exist, before torch loads
    from analyses.data import benchmarks
    from analyses.monitor.apply import answer, summary
    from analyses.monitor.monitor import ReliabilityMonitor
    from analyses.study import validate
    from vlm_lens import HookedVLM

    monitor = ReliabilityMonitor.load(monitor_dir)
    if n is None:
        n = len(benchmarks.load(benchmark, annotations)) if benchmark not in validate.BUILT_IN else 600
    cfg = VRPConfig(
        model=model, benchmark=benchmark, images=images, annotations=annotations, n=n, device=device, dtype=dtype
    )
    data = validate.load_benchmark(cfg, progress=not quiet)
    vlm = HookedVLM.from_pretrained(model, dtype=dtype, device=device)
    if max_new_tokens is None:
        max_new_tokens = int(monitor.data.get("max_new_tokens") or default_answer_tokens(model))
    rows = answer(monitor, vlm, data.examples, out, batch_size, max_new_tokens, progress=not quiet)
    typer.echo(json.dumps(summary(rows, monitor.threshold), indent=2))
    typer.echo(f"answers: {out}")
