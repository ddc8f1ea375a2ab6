"""The ``vlm-lens`` command: the outermost layer, the one module that ties core, adapters and analyses together.

    vlm-lens demo                       # the trained toy LLaVA, end to end, in seconds
    vlm-lens demo --family qwen2_vl     # a tiny random model of any registered family (model_adapters.SPECS)
    vlm-lens demo --model path/or/hub-id

Errors the user can fix (a bad file, setting, folder or model name: ``VLMLensError`` and ``OSError``)
print one line, ``error: <what and the fix>``, and exit with status 2; anything else is a bug in
vlm-lens and says so. ``--debug`` anywhere on the line shows the full traceback instead. Ctrl-C
exits with 130 and says how to resume.
"""

from __future__ import annotations

import json
import sys
import traceback
import warnings
from typing import TYPE_CHECKING

import typer

from vlm_lens.errors import VLMLensError, VLMLensWarning

if TYPE_CHECKING:
    from vlm_lens import HookedVLM

# torch, transformers and the analyses are imported inside the commands: --help, a usage error or a wrong setting
# is answered before they load (benchmarks/cli_startup.py measures it)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Mechanistic interpretability for vision-language models.",
)


def no_type_check(command):
    """Marks a command whose arguments typer parses and types: the tests' run-time type checker (jaxtyping's
    import hook, which skips anything decorated ``no_type_check``) leaves it alone, since typer hands it its own
    copy of click's Context. Not ``typing.no_type_check``: typer still reads the annotations."""
    return command


@app.callback()
def _commands(
    debug: bool = typer.Option(
        False, "--debug", help="show the full traceback of an error (anywhere on the command line)"
    ),
) -> None:
    """vlm-lens commands."""


def _warning_printer(python_show):
    """``warnings.showwarning`` for the command: ours as one line ``warning: ...``, others as Python shows them."""

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, VLMLensWarning):
            typer.echo(f"warning: {message}", err=True)
        else:
            python_show(message, category, filename, lineno, file, line)

    return show


INTERRUPTED = 130  # the shell's code for a process stopped by SIGINT
RESUME = "interrupted: run the same command again to resume where it stopped"


def main(argv: list[str] | None = None) -> int:
    """The ``vlm-lens`` entry point: the exit status (0, 2 for a fixable error, 1 for a bug, 130 when interrupted)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    try:
        with warnings.catch_warnings():  # restored on return: main() may be called in a longer-lived process
            warnings.simplefilter("default", VLMLensWarning)  # the command always says what may mislead
            warnings.showwarning = _warning_printer(warnings.showwarning)
            code = app(args=args, prog_name="vlm-lens", standalone_mode=False)  # errors reach the handlers below
        if code == INTERRUPTED:  # typer turns Ctrl-C (KeyboardInterrupt) into this return code, silently
            typer.echo(RESUME, err=True)
        return code if isinstance(code, int) else 0  # --help, or a command's own exit code
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except typer.Exit as e:
        return e.exit_code
    except (KeyboardInterrupt, typer.Abort):  # Ctrl-C outside the command itself
        typer.echo(RESUME, err=True)
        return INTERRUPTED
    except typer.TyperException as e:  # a usage error: an unknown option, a value of the wrong type or range
        command = next((a for a in args if not a.startswith("-")), None)
        commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
        where = (
            f"vlm-lens {command} --help lists its options"
            if command in commands
            else "vlm-lens --help lists the commands"
        )
        message = " ".join(e.format_message().split()) if hasattr(e, "format_message") else str(e)
        typer.echo(f"error: {message} ({where})", err=True)
        return getattr(e, "exit_code", 2)
    except (VLMLensError, OSError) as e:
        if debug:
            traceback.print_exc()
        typer.echo(f"error: {e}", err=True)
        return 2
    except Exception as e:  # noqa: BLE001 - the last line of defence: say it is a bug, show how to report it
        if debug:
            traceback.print_exc()
        typer.echo(
            f"error: {type(e).__name__}: {e}\nthis is a bug in vlm-lens: please report it with the output of the "
            "same command run with --debug",
            err=True,
        )
        return 1
    return 0


def _demo_model(family: str | None, model: str | None) -> HookedVLM:
    from vlm_lens import HookedVLM

    if family is not None and model is not None:
        raise typer.BadParameter("give --family (a tiny random model) or --model, not both")
    if family is None:
        return HookedVLM.from_pretrained(model or DEMO_MODEL)
    from model_adapters import SPECS

    if family not in SPECS:
        raise typer.BadParameter(f"family must be one of {sorted(SPECS)}")
    hf, processor = SPECS[family].tiny(seed=0)
    return HookedVLM.from_hf(hf, processor)


DEMO_MODEL = "toy-llava"  # trained: its answer means something, unlike a random tiny model's


@app.command()
def demo(
    family: str | None = typer.Option(
        None, help="a tiny random model of this family instead (any of model_adapters.SPECS)"
    ),
    model: str | None = typer.Option(None, help=f"a zoo toy, hub id or local checkpoint (default {DEMO_MODEL})"),
    prompt: str | None = typer.Option(
        None, help="your own question, about a random-noise image (default: a Shapes one)"
    ),
    seed: int = typer.Option(5, min=0, help="seed of the Shapes question and its image (or of the noise image)"),
) -> None:
    """Run one image and question through a hooked model: spans, attention to the image, logit lens."""
    import numpy as np
    import torch
    from PIL import Image

    from analyses.attention_structure import image_grids
    from analyses.data.shapes import generate, image_of
    from analyses.logit_lens import logit_lens

    vlm = _demo_model(family, model)
    gold = None
    if prompt is None:  # a Shapes question, with the answer it should get
        question = generate(1, seed=seed)[0]
        image, prompt, gold = Image.fromarray(image_of(question, seed=seed)), question.text, question.label
    else:
        rng = np.random.RandomState(seed)
        image = Image.fromarray(rng.randint(0, 255, (64, 64, 3), dtype=np.uint8))
    inputs = vlm.prepare(images=[image], prompts=[prompt])
    with torch.no_grad():
        logits, cache = vlm.run_with_cache(
            inputs, names_filter=lambda n: n.endswith(("hook_resid_post", "pattern_rows"))
        )
        lens = logit_lens(vlm, cache)[:, 0].argmax(-1).tolist()
    span = inputs.image_spans[0][0]
    if vlm.cfg.cross_layers:  # the image is the keys of its cross-attention layers; elsewhere, its <|image|> token
        to_image = [
            1.0
            if l in vlm.cfg.cross_layers
            else float(cache["pattern_rows", l][0, :, -1, span.positions].sum(-1).mean())
            for l in range(vlm.cfg.n_layers)
        ]
    else:
        to_image = image_grids(cache)[0].sum(axis=(1, 2))  # [layer]: share of the answer's attention on the image
    typer.echo(f"model: {vlm.cfg.family}, {vlm.cfg.n_layers} language layers, {vlm.cfg.n_vision_layers} vision layers")
    if vlm.cfg.cross_layers:
        typer.echo(
            f"the image enters through cross-attention at layers {list(vlm.cfg.cross_layers)} (all their "
            "attention is to it); at the other layers the column is attention to its <|image|> token"
        )
    typer.echo(
        f"prompt tokens: {inputs.input_ids.shape[1]}; image tokens {span.start}..{span.end - 1} on a {span.grid[0]}x{span.grid[1]} grid"
    )
    typer.echo(f"question: {prompt}")
    typer.echo(f"next token: {vlm.to_string(int(logits[0, -1].argmax()))!r}" + (f" (gold: {gold!r})" if gold else ""))
    typer.echo(f"{'layer':>5}  {'attention to image':>18}  logit-lens top token")
    for layer in range(vlm.cfg.n_layers):
        typer.echo(f"{layer:>5}  {to_image[layer]:>18.3f}  {vlm.to_string(lens[layer])!r}")


@app.command()
def shapes(
    out: str = typer.Option(..., help="folder for questions.jsonl and images/"),
    n: int = typer.Option(1000, min=1, help="number of questions (one scene each)"),
    seed: int = typer.Option(0, min=0, help="seed: the same seed writes the same benchmark"),
    size: int = typer.Option(32, min=16, help="image side in pixels"),
) -> None:
    """Write the Shapes benchmark in POPE's JSON-lines format (plus a ``type`` field)."""
    from analyses.data.shapes import write_benchmark

    path = write_benchmark(out, n, seed, size)
    typer.echo(f"wrote {n} questions to {path} and their images to {path.parent / 'images'}")


@app.command("train-toy")
def train_toy(
    family: str = typer.Argument(..., help="a registered family: llava, paligemma, qwen2_vl, ..."),
    out: str | None = typer.Option(None, help="output folder (default runs/toy-<family>)"),
    steps: int = typer.Option(12_000, help="optimiser steps of 32 fresh questions"),
    seed: int = typer.Option(0, help="initialisation and data seed"),
    device: str = typer.Option("cpu", help="cpu or cuda: a GPU is faster; bytes then differ from a CPU run"),
    answers: str = typer.Option(
        "token",
        help="'token': the label as one token; 'words': the answer in words "
        '("yes , there is a red circle .") to end of sequence, on the shapes-words benchmark',
    ),
) -> None:
    """Train a toy model of FAMILY on Shapes and write weights, processor and model card."""
    from pathlib import Path

    from analyses.training import TrainConfig, train_and_save

    suffix = "-words" if answers == "words" else ""
    target = Path(out or f"runs/toy-{family.replace('_', '-')}{suffix}")
    card = train_and_save(TrainConfig(family=family, steps=steps, seed=seed, device=device, answers=answers), target)
    typer.echo(json.dumps(card["held_out"], indent=2))


def _benchmarks(benchmark: list[str], annotations: list[str], images: list[str], formats: list[str]) -> list[dict]:
    """Each --benchmark with its annotations (none, or one per benchmark), images and format (one for all, or one
    per benchmark)."""

    def spread(values: list[str], name: str, shared: bool = True) -> list[str | None]:
        if not values:
            return [None] * len(benchmark)
        if len(values) == len(benchmark):
            return values
        if shared and len(values) == 1:
            return values * len(benchmark)
        raise typer.BadParameter(
            f"{len(values)} --{name} for {len(benchmark)} --benchmark: give "
            + ("one, or " if shared else "")
            + "one per benchmark"
        )

    return [
        {"benchmark": b, "annotations": a, "images": i, "format": f}
        for b, a, i, f in zip(
            benchmark,
            spread(annotations, "annotations", shared=False),
            spread(images, "images"),
            spread(formats, "format"),
        )
    ]


def with_study_options(command):
    """``command`` with one keyword option per ``analyses.study.config.OPTIONS`` setting, typed and explained from
    that one definition. Each defaults to unset (None): a setting not typed comes from ``--config``, else from
    VRPConfig's default, and VRPConfig checks every value (one validation for all three ways in)."""
    import dataclasses
    import inspect

    from analyses.study.config import OPTIONS, VRPConfig

    fields = {f.name: f for f in dataclasses.fields(VRPConfig)}
    kinds = {"int": int, "float": float, "str": str}
    signature = inspect.signature(command)
    added = []
    for name, help in OPTIONS.items():
        field = fields[name]
        kind = kinds[str(field.type).split(" | ")[0]]
        shown = "" if field.default is None else f" (default {field.default})"
        added.append(
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                annotation=kind | None,
                default=typer.Option(None, help=help + shown, show_default=False),
            )
        )
    kept = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    command.__signature__ = signature.replace(parameters=[*kept, *added])
    command.__annotations__ = {**command.__annotations__, **{p.name: p.annotation for p in added}}
    return command


@app.command(context_settings={"allow_extra_args": True})
@no_type_check  # its arguments are typer's, parsed and typed by typer
@with_study_options
def vrp(
    ctx: typer.Context,
    model: list[str] = typer.Option(
        ["toy-llava"],
        help="a zoo name, a hub id or a local checkpoint; repeat for several models (cross-family tables)",
    ),
    benchmark: list[str] = typer.Option(
        ["shapes"],
        help="'shapes', 'shapes-words' (a family answered by a relation "
        "phrase added) or a questions file: POPE, VQAv2, TextVQA, LLaVA-Bench, "
        "counting/spatial or Shapes (format read from the content); repeat for several "
        "(Table 7)",
    ),
    annotations: list[str] | None = typer.Option(
        None, help="VQAv2's annotations file, or LLaVA-Bench's reference answers (one per --benchmark)"
    ),
    format: list[str] | None = typer.Option(
        None,
        "--format",
        help="force the benchmark format: pope, counting, vqav2, textvqa, llava_bench (one, or one per --benchmark)",
    ),
    images: list[str] | None = typer.Option(
        None, help="folder of the benchmark's images (one, or one per --benchmark)"
    ),
    out: str | None = typer.Option(None, help="output folder (default runs/vrp-<model>)"),
    config: str | None = typer.Option(
        None, help="a JSON file of study settings (any VRPConfig field); options given on the command line override it"
    ),
    compare: list[str] | None = typer.Option(
        None,
        help="instead of running: lay these run folders side by side (--compare A B C, or --compare A --compare B)",
    ),
    quiet: bool = typer.Option(
        False, "--quiet", help="no progress (stage lines and bars on a terminal, JSON lines on stderr otherwise)"
    ),
    monitor: bool = typer.Option(
        False, "--monitor", help="also fit a reliability monitor, save it in OUT/monitor, add its tables to the report"
    ),
    monitor_signal: str = typer.Option("dense", help="the monitor's signal (vlm-lens monitor fit --help lists them)"),
    allow_outside_images: bool = typer.Option(
        False,
        "--allow-outside-images",
        help="let benchmark records name images outside --images (absolute paths, ../); refused by default",
    ),
    **settings,
) -> None:
    """The reliability study: tables (Markdown + JSON) and report.html, resumable if interrupted.

    Any other study setting (VRPConfig field) goes in a --config file.
    Several GPUs: torchrun --nproc_per_node=N --no-python -- vlm-lens vrp ... --device cuda"""
    from pathlib import Path

    from analyses.study.config import VRPConfig
    from vlm_lens.zoo import check_name

    if ctx.args and not compare:
        raise typer.BadParameter(f"unexpected arguments {ctx.args}; run folders to compare follow --compare")
    if compare:
        from analyses.study import report

        runs = [Path(c) for c in [*compare, *ctx.args]]  # --compare A B: typer keeps A, the rest arrive as extra args
        path = report.compare(runs, Path(out or "runs/compare"))
        typer.echo(path.read_text())
        typer.echo(f"written: {path} and {path.with_suffix('.html')}")
        return
    benches = _benchmarks(benchmark, annotations or [], images or [], format or [])
    typed = lambda name: getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"  # noqa: E731
    # (by name: typer may carry its own copy of click's ParameterSource enum)
    options = {k: v for k, v in settings.items() if v is not None}  # typed on the command line
    if config:  # the file's settings, overridden by the options typed on the command line
        VRPConfig.from_file(config)  # checked as a whole before anything runs
        options = {**json.loads(Path(config).read_text()), **options}
        options = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
        if not typed("model") and "model" in options:
            model = [options["model"]]
        if not typed("benchmark") and "benchmark" in options:
            benches = [{k: options.get(k) for k in ("benchmark", "annotations", "images", "format")}]
    options = {k: v for k, v in options.items() if k not in ("model", "benchmark", "annotations", "images", "format")}
    if monitor:
        from analyses.monitor.signals import SIGNALS
        from vlm_lens.errors import InputError

        if monitor_signal not in [*SIGNALS, "auto"]:
            raise InputError(f"--monitor-signal must be one of {', '.join([*SIGNALS, 'auto'])}, got {monitor_signal!r}")
        if len(model) > 1 or len(benches) > 1:
            raise InputError("--monitor fits on one model's run: give one --model and one --benchmark")
    if len(model) > 1 or len(benches) > 1:
        for name in model:
            check_name(name)
        for bench in benches:
            VRPConfig(**options, **bench, model=model[0]).check_files()
        from analyses.study.many import run_many

        target = Path(out or "runs/vrp-many")
        run_many(options, model, benches, target, progress=not quiet, allow_outside_images=allow_outside_images)
        typer.echo((target / "tables.md").read_text())
        typer.echo(f"per-run reports: {target}/<model>__<benchmark>/report.html")
        return
    cfg = VRPConfig(**options, **benches[0], model=model[0])  # every setting checked before torch loads
    check_name(cfg.model)
    cfg.check_files()
    from analyses.study.pipeline import run

    target = Path(out or f"runs/vrp-{Path(cfg.model).name}")
    if (
        run(
            cfg,
            target,
            progress=not quiet,
            allow_outside_images=allow_outside_images,
            monitor=monitor_signal if monitor else None,
        )
        is None
    ):  # a torchrun rank other than 0: rank 0 reports
        return
    typer.echo((target / "tables.md").read_text())
    typer.echo(f"report: {target / 'report.html'}")


def _add_groups() -> None:
    from analyses.cli_lens import lens_app  # typer alone: torch loads inside their commands
    from analyses.cli_monitor import monitor_app

    app.add_typer(monitor_app, name="monitor")
    app.add_typer(lens_app, name="lens")


_add_groups()


if __name__ == "__main__":
    sys.exit(main())
