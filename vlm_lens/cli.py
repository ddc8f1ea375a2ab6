"""The ``vlm-lens`` command: the one module that ties core, adapters and analyses together.

    vlm-lens demo                       # a tiny random LLaVA, end to end, in seconds
    vlm-lens demo --family qwen2_vl --model path/or/hub-id
"""

from __future__ import annotations

import json

import numpy as np
import torch
import typer
from PIL import Image

from vlm_lens import HookedVLM

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Mechanistic interpretability for vision-language models.")


@app.callback()
def main() -> None:
    """vlm-lens commands."""


def _demo_model(family: str, model: str | None) -> HookedVLM:
    if model is not None:
        return HookedVLM.from_pretrained(model)
    from model_adapters.tiny import TINY

    if family not in TINY:
        raise typer.BadParameter(f"family must be one of {sorted(TINY)}")
    hf, processor = TINY[family](seed=0)
    return HookedVLM.from_hf(hf, processor)


@app.command()
def demo(
    family: str = typer.Option("llava", help="tiny random model of this family (llava, paligemma, qwen2_vl)"),
    model: str = typer.Option(None, help="a hub id or local checkpoint instead of the tiny model"),
    prompt: str = typer.Option("is there a red square in the image ?", help="the question"),
    seed: int = typer.Option(0, help="seed of the random test image"),
) -> None:
    """Run one image and question through a hooked model: spans, attention to the image, logit lens."""
    vlm = _demo_model(family, model)
    rng = np.random.RandomState(seed)
    image = Image.fromarray(rng.randint(0, 255, (64, 64, 3), dtype=np.uint8))
    inputs = vlm.prepare(images=[image], prompts=[prompt])
    with torch.no_grad():
        logits, cache = vlm.run_with_cache(inputs, names_filter=lambda n: n.endswith(("hook_resid_post", "pattern_rows")))
        norm = vlm.hf_model.get_submodule(vlm.adapter.modules["final_norm"])
        unembed = vlm.hf_model.get_submodule(vlm.adapter.modules["unembed"])
        lens = [unembed(norm(cache["resid_post", l][0, -1])).argmax().item() for l in range(vlm.cfg.n_layers)]
    span = inputs.image_spans[0][0]
    typer.echo(f"model: {vlm.cfg.family}, {vlm.cfg.n_layers} language layers, {vlm.cfg.n_vision_layers} vision layers")
    typer.echo(f"prompt tokens: {inputs.input_ids.shape[1]}; image tokens {span.start}..{span.end - 1} on a {span.grid[0]}x{span.grid[1]} grid")
    typer.echo(f"next token: {vlm.to_string(int(logits[0, -1].argmax()))!r}")
    typer.echo(f"{'layer':>5}  {'attention to image':>18}  logit-lens top token")
    for layer in range(vlm.cfg.n_layers):
        to_image = cache["pattern_rows", layer][0, :, 0, span.start : span.end].sum(-1).mean().item()
        typer.echo(f"{layer:>5}  {to_image:>18.3f}  {vlm.to_string(lens[layer])!r}")


@app.command()
def shapes(
    out: str = typer.Option(..., help="folder for questions.jsonl and images/"),
    n: int = typer.Option(1000, help="number of questions (one scene each)"),
    seed: int = typer.Option(0, help="seed: the same seed writes the same benchmark"),
    size: int = typer.Option(32, help="image side in pixels"),
) -> None:
    """Write the Shapes benchmark in POPE's JSON-lines format (plus a ``type`` field)."""
    from analyses.shapes import write_benchmark

    path = write_benchmark(out, n, seed, size)
    typer.echo(f"wrote {n} questions to {path} and their images to {path.parent / 'images'}")


@app.command("train-toy")
def train_toy(
    family: str = typer.Argument(..., help="llava, paligemma or qwen2_vl"),
    out: str = typer.Option(None, help="output folder (default runs/toy-<family>)"),
    steps: int = typer.Option(12_000, help="optimiser steps of 32 fresh questions"),
    seed: int = typer.Option(0, help="initialisation and data seed"),
    device: str = typer.Option("cpu", help="cpu or cuda: a GPU is faster; bytes then differ from a CPU run"),
) -> None:
    """Train a toy model of FAMILY on Shapes and write weights, processor and model card."""
    from pathlib import Path

    from analyses.zoo import TrainConfig, train_and_save

    target = Path(out or f"runs/toy-{family.replace('_', '-')}")
    card = train_and_save(TrainConfig(family=family, steps=steps, seed=seed, device=device), target)
    typer.echo(json.dumps(card["held_out"], indent=2))


@app.command()
def vrp(
    model: str = typer.Option("toy-llava", help="a zoo name, a hub id or a local checkpoint"),
    benchmark: str = typer.Option("shapes", help="'shapes' or a POPE/Shapes-format questions file"),
    images: str = typer.Option(None, help="folder of the benchmark's images"),
    n: int = typer.Option(600, help="number of questions"),
    k: int = typer.Option(10, help="self-consistency samples per question"),
    seed: int = typer.Option(0, help="seed of splits, sampling and bootstraps"),
    out: str = typer.Option(None, help="output folder (default runs/vrp-<model>)"),
    compare: list[str] = typer.Option(None, help="instead of running: lay these run folders side by side"),
) -> None:
    """The reliability study: tables (Markdown + JSON) and report.html, resumable if interrupted."""
    from pathlib import Path

    from analyses import report
    from analyses.vrp import VRPConfig, run

    if compare:
        path = report.compare([Path(c) for c in compare], Path(out or "runs/compare"))
        typer.echo(path.read_text())
        typer.echo(f"written: {path} and {path.with_suffix('.html')}")
        return
    target = Path(out or f"runs/vrp-{Path(model).name}")
    run(VRPConfig(model=model, benchmark=benchmark, images=images, n=n, k=k, seed=seed), target)
    typer.echo((target / "tables.md").read_text())
    typer.echo(f"report: {target / 'report.html'}")


if __name__ == "__main__":
    app()
