"""The toy VLM zoo: one tiny model per family, trained on the Shapes benchmark on a CPU.

Each toy keeps its family's defining trait (LLaVA: CLIP tower + MLP projector after the text
prefix; PaliGemma: SigLIP + linear projector, image tokens first with prefix attention;
Qwen2-VL: 2x2 patch merge and M-RoPE) and is small enough to train on two CPU cores.

Training reads the answer at the last prompt position, exactly where ``HookedVLM`` reads it at
inference: ``model.prepare(images, [question])`` then ``logits[:, -1]``. Fresh scenes every step
(seeded by step), a fixed step count and one thread make a run reproducible byte for byte.

    vlm-lens train-toy llava --steps 12000 --out runs/toy-llava
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from analyses import evaluation
from analyses.data import shapes
from analyses.data.examples import shapes_examples
from model_adapters import SPECS
from vlm_lens import HookedVLM
TRAIN_SEED_OFFSET = 1_000  # step k trains on shapes.generate(batch, seed=TRAIN_SEED_OFFSET + k)
HELD_OUT_SEED = 7  # the model cards' held-out set (training never draws seeds below the offset)


@dataclass(frozen=True)
class TrainConfig:
    family: str
    steps: int = 12_000
    batch_size: int = 32
    lr: float = 4e-4
    warmup: int = 200
    seed: int = 0
    image_size: int = 32
    eval_n: int = 4_000
    device: str = "cpu"


def build(family: str, seed: int = 0, image_size: int = 32) -> HookedVLM:
    """An untrained toy of ``family``: its spec's toy recipe (4 language layers of width 128, a 2-layer
    vision tower, 16 image tokens at 32 px) around the Shapes vocabulary."""
    if family not in SPECS:
        raise ValueError(f"no family {family!r}; the adapters have {sorted(SPECS)}")
    spec = SPECS[family]
    hf, processor = spec.tiny(words=shapes.WORDS, seed=seed, **spec.toy(image_size))
    return HookedVLM.from_hf(hf, processor)


def answer_ids(model: HookedVLM, labels: list[str]) -> torch.Tensor:
    return torch.tensor([model.to_single_token(label) for label in labels])


def batch_inputs(model: HookedVLM, samples: list[shapes.Sample], seed: int, image_size: int):
    images = [Image.fromarray(shapes.image_of(s, seed, image_size)) for s in samples]
    return model.prepare(images=images, prompts=[s.text for s in samples])


def train(cfg: TrainConfig, progress: bool = True) -> tuple[HookedVLM, list[float]]:
    torch.manual_seed(cfg.seed)
    model = build(cfg.family, cfg.seed, cfg.image_size)
    hf = model.hf_model.to(cfg.device).train()
    optimiser = torch.optim.AdamW(hf.parameters(), lr=cfg.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser,
        lambda step: min(1.0, (step + 1) / cfg.warmup) * 0.5 * (1 + np.cos(np.pi * min(step, cfg.steps) / cfg.steps)),
    )
    losses = []
    bar = tqdm(range(cfg.steps), desc=f"train {cfg.family}", disable=not progress, mininterval=5)
    for step in bar:
        seed = TRAIN_SEED_OFFSET + cfg.seed * 10_000_000 + step
        samples = shapes.generate(cfg.batch_size, seed=seed, size=cfg.image_size)
        inputs = batch_inputs(model, samples, seed, cfg.image_size).to(cfg.device)
        logits = hf(**inputs.tensors).logits[:, -1]
        loss = torch.nn.functional.cross_entropy(logits, answer_ids(model, [s.label for s in samples]).to(cfg.device))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        losses.append(loss.item())
        if step % 100 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-100:]):.3f}")
    hf.cpu().eval()
    return model, losses


def evaluate(model: HookedVLM, n: int = 4_000, seed: int = HELD_OUT_SEED, image_size: int = 32) -> dict[str, float]:
    """Held-out accuracy (percent) per question family and overall."""
    examples = shapes_examples(n, seed, image_size)
    hits = defaultdict(list)
    for example, right in zip(examples, evaluation.correct(model, examples, batch_size=200)):
        hits[example.type].append(right)
        hits["all"].append(right)
    return {k: round(100 * float(np.mean(v)), 2) for k, v in sorted(hits.items())}


def save(model: HookedVLM, out: Path, cfg: TrainConfig, losses: list[float], seconds: float) -> dict:
    """Weights (safetensors), tokenizer and processor, and the model card (card.json + README.md)."""
    out.mkdir(parents=True, exist_ok=True)
    model.hf_model.save_pretrained(out)
    model.processor.save_pretrained(out)
    accuracy = evaluate(model, cfg.eval_n, HELD_OUT_SEED, cfg.image_size)
    card = {
        "family": cfg.family,
        "hf_class": type(model.hf_model).__name__,
        "parameters": sum(p.numel() for p in model.hf_model.parameters()),
        "language_layers": model.cfg.n_layers,
        "d_model": model.cfg.d_model,
        "vision_layers": model.cfg.n_vision_layers,
        "image_size": cfg.image_size,
        "answer_tokens": 1,  # trained on one-token answers, never to stop: the study generates one token
        "training": {**cfg.__dict__, "samples_seen": cfg.steps * cfg.batch_size, "data_seeds": "fresh scenes each step: "
                     f"shapes.generate({cfg.batch_size}, seed={TRAIN_SEED_OFFSET} + {cfg.seed}*10^7 + step)",
                     "final_loss_100": round(float(np.mean(losses[-100:])), 4), "cpu_seconds": round(seconds), "threads": torch.get_num_threads()},
        "held_out": {"seed": HELD_OUT_SEED, "n": cfg.eval_n, "accuracy": accuracy},
    }
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    rows = "\n".join(f"| {k} | {v:.1f} |" for k, v in accuracy.items())
    (out / "README.md").write_text(
        f"# toy-{cfg.family.replace('_', '-')}\n\nA toy {cfg.family} ({card['hf_class']}, {card['parameters']:,} parameters, "
        f"{model.cfg.n_layers} language layers of width {model.cfg.d_model}) trained on the Shapes benchmark "
        f"for {cfg.steps:,} steps of {cfg.batch_size} fresh questions (seed {cfg.seed}).\n\n"
        f"Held-out accuracy (seed {HELD_OUT_SEED}, {cfg.eval_n:,} questions):\n\n| type | accuracy % |\n|---|---|\n{rows}\n\n"
        "Reproduce: `vlm-lens train-toy " + cfg.family + f" --steps {cfg.steps} --seed {cfg.seed}`.\n"
    )
    return card


def train_and_save(cfg: TrainConfig, out: Path, progress: bool = True) -> dict:
    torch.set_num_threads(1)  # determinism: the same thread count gives the same weights
    start = time.process_time()
    model, losses = train(cfg, progress)
    return save(model, out, cfg, losses, time.process_time() - start)
