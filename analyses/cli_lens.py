"""``vlm-lens lens train``: a tuned lens for a model, trained on Shapes questions, saved with its card.

    vlm-lens lens train --model toy-llava --out runs/tuned-lens          # prints the held-out KL by layer

Part of the command line (``analyses.cli``): torch loads inside the command.
"""

from __future__ import annotations

import typer

lens_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="The tuned lens: per-layer translators trained on the model's own residual streams.",
)


@lens_app.command("train")
def train_command(
    model: str = typer.Option("toy-llava", help="a zoo toy, hub id or local checkpoint"),
    out: str = typer.Option(..., help="folder for the lens (tuned_lens.safetensors, card.json)"),
    n: int = typer.Option(800, min=1, help="Shapes questions to train on (images and their prompts)"),
    held_out: int = typer.Option(200, min=1, help="fresh Shapes questions to measure the KL on"),
    steps: int = typer.Option(300, min=1, help="optimiser steps of one batch each"),
    batch_size: int = typer.Option(16, min=1, help="questions per step"),
    lr: float = typer.Option(1e-3, min=0.0, help="Adam's learning rate"),
    seed: int = typer.Option(0, min=0, help="data and initialisation seed"),
    device: str | None = typer.Option(None, help="cpu, cuda, ..."),
    dtype: str | None = typer.Option(None, help="float32, bfloat16, float16 (the model's; the lens is float32)"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress lines"),
) -> None:
    """Train a tuned lens for MODEL and print both lenses' held-out KL to the final distribution, by layer."""
    from vlm_lens.zoo import check_name

    check_name(model)
    import pandas as pd

    from analyses import formatting
    from analyses.data.examples import shapes_examples
    from analyses.tuned_lens import train
    from vlm_lens import HookedVLM

    vlm = HookedVLM.from_pretrained(model, dtype=dtype, device=device)
    lens = train(
        vlm,
        shapes_examples(n, seed=seed + 1),
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        held_out=shapes_examples(held_out, seed=seed + 1_000),
        progress=not quiet,
    )
    lens.training.update(model=model, data=f"Shapes, {n} questions (seed {seed + 1})")
    path = lens.save(out)
    table = pd.DataFrame(lens.training["held_out_kl"]).pivot(index="layer", columns="lens", values="kl")
    typer.echo("held-out KL(final || lens) in nats, by layer:\n" + formatting.markdown(table.reset_index()))
    typer.echo(f"tuned lens: {path}")
