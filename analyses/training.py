"""The toy VLM zoo: one tiny model per family, trained on the Shapes benchmark on a CPU.

Each toy keeps its family's defining trait (LLaVA: CLIP tower + MLP projector after the text
prefix; PaliGemma: SigLIP + linear projector, image tokens first with prefix attention;
Qwen2-VL: 2x2 patch merge and M-RoPE) and is small enough to train on two CPU cores.

Training reads the answer at the last prompt position, exactly where ``HookedVLM`` reads it at
inference: ``model.prepare(images, [question])`` then ``logits[:, -1]``. Fresh scenes every step
(seeded by step), a fixed step count and one thread make a run reproducible byte for byte.

    vlm-lens train-toy llava --steps 12000 --out runs/toy-llava

``answers="words"`` trains the answer in words instead (``shapes.spoken``: "yes , there is a red
circle .", "there are two circles .", "the blue one .", "on the left ."), teacher-forced to the
end-of-sequence token, on the words benchmark (``shapes.WORD_TYPES``), so generation stops by itself:

    vlm-lens train-toy llava --answers words --steps 12000 --out runs/toy-llava-words
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import no_type_check

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from analyses import evaluation
from analyses.data import shapes
from analyses.data.examples import shapes_examples
from model_adapters import SPECS
from vlm_lens import HookedVLM
from vlm_lens.errors import InputError
from vlm_lens.loading import check_device

TRAIN_SEED_OFFSET = 1_000  # step k trains on shapes.generate(batch, seed=TRAIN_SEED_OFFSET + k)
HELD_OUT_SEED = 7  # the model cards' held-out set (training never draws seeds below the offset)
ANSWER_STYLES = ("token", "words")  # the label as one token, or the answer in words to end of sequence


@no_type_check  # checks its own settings (the error contract): the tests' run-time type checker stays out
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
    answers: str = "token"  # one of ANSWER_STYLES

    def __post_init__(self):
        if self.answers not in ANSWER_STYLES:
            raise InputError(f"answers must be one of {ANSWER_STYLES}, got {self.answers!r}")
        if self.family not in SPECS:
            raise InputError(f"no family {self.family!r}; the adapters have {sorted(SPECS)}")
        for name, low in (
            ("steps", 1),
            ("batch_size", 1),
            ("warmup", 1),
            ("seed", 0),
            ("image_size", 16),
            ("eval_n", 1),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InputError(f"{name} must be an integer of at least {low}, got {value!r}")
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr < float("inf")):
            raise InputError(f"lr must be a positive learning rate, got {self.lr!r}")
        check_device(self.device)

    @property
    def types(self) -> tuple[str, ...]:
        return shapes.WORD_TYPES if self.answers == "words" else shapes.TYPES

    @property
    def words(self) -> tuple[str, ...]:
        return shapes.SPOKEN_WORDS if self.answers == "words" else shapes.WORDS


def build(family: str, seed: int = 0, image_size: int = 32, words: tuple[str, ...] = shapes.WORDS) -> HookedVLM:
    """An untrained toy of ``family``: its spec's toy recipe (4 language layers of width 128, a 2-layer
    vision tower, 16 image tokens at 32 px) around the Shapes vocabulary (``shapes.SPOKEN_WORDS`` for words)."""
    if family not in SPECS:
        raise InputError(f"no family {family!r}; the adapters have {sorted(SPECS)}")
    spec = SPECS[family]
    hf, processor = spec.tiny(words=words, seed=seed, **spec.toy(image_size))
    return HookedVLM.from_hf(hf, processor)


def answer_ids(model: HookedVLM, labels: list[str]) -> torch.Tensor:
    return torch.tensor([model.to_single_token(label) for label in labels])


def batch_inputs(model: HookedVLM, samples: list[shapes.Sample], seed: int, image_size: int):
    images = [Image.fromarray(shapes.image_of(s, seed, image_size)) for s in samples]
    return model.prepare(images=images, prompts=[s.text for s in samples])


def teacher_forced(model: HookedVLM, inputs, answers: list[str]) -> tuple[dict, torch.Tensor]:
    """The prompts (left-padded) followed by each answer's tokens and end of sequence, right-padded; and the
    targets: the next token at every answer position, -100 (ignored) at the prompt and the padding."""
    eos = model.tokenizer.eos_token_id
    return forced(model, inputs, [model.tokenizer(a, add_special_tokens=False)["input_ids"] + [eos] for a in answers])


def forced(model: HookedVLM, inputs, ids: list[list[int]]) -> tuple[dict, torch.Tensor]:
    """``teacher_forced`` for answers given as token ids. Per-token inputs are extended as for a generated token,
    as the adapter declares it (``answer_token_types``: PaliGemma's suffix 1, else 0; ``repeat_last_keys``: the
    cross-attention mask's last row), so each answer position's logits are the ones generation would compute."""
    width = max(map(len, ids))
    appended = torch.full((len(ids), width), model.tokenizer.pad_token_id)
    present = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):
        appended[i, : len(row)], present[i, : len(row)] = torch.tensor(row), 1
    tensors = dict(inputs.tensors)
    prompt = tensors["input_ids"].shape[1]
    types = model.adapter.answer_token_types
    for name, value in list(tensors.items()):
        if name == "input_ids":
            extra = appended
        elif name == "attention_mask":
            extra = present
        elif name in ("token_type_ids", "mm_token_type_ids"):
            extra = torch.full_like(present, types.get(name, 0))
        elif name in model.adapter.repeat_last_keys:
            extra = value[:, -1:].repeat_interleave(width, 1)
        elif value.dim() >= 2 and value.shape[:2] == (len(ids), prompt):
            raise InputError(
                f"teacher forcing does not know how to extend the model input {name!r} over the answer; "
                "declare it in the adapter's answer_token_types or repeat_last_keys"
            )
        else:
            continue
        tensors[name] = torch.cat([value, extra.to(value)], dim=1)
    targets = torch.full(tensors["input_ids"].shape, -100)
    targets[:, prompt - 1 : -1] = torch.where(present.bool(), appended, -100)
    return tensors, targets


def loss_of(model: HookedVLM, samples: list[shapes.Sample], inputs, answers: str) -> torch.Tensor:
    hf = model.hf_model
    if answers == "token":
        logits = hf(**inputs.tensors).logits[:, -1]
        return torch.nn.functional.cross_entropy(
            logits, answer_ids(model, [s.label for s in samples]).to(logits.device)
        )
    tensors, targets = teacher_forced(model, inputs, [shapes.spoken(s) for s in samples])
    logits = hf(**{k: v.to(hf.device) for k, v in tensors.items()}).logits
    return torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), targets.flatten().to(logits.device), ignore_index=-100
    )


def train(cfg: TrainConfig, progress: bool = True) -> tuple[HookedVLM, list[float]]:
    torch.manual_seed(cfg.seed)
    model = build(cfg.family, cfg.seed, cfg.image_size, cfg.words)
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
        samples = shapes.generate(cfg.batch_size, seed=seed, size=cfg.image_size, types=cfg.types)
        inputs = batch_inputs(model, samples, seed, cfg.image_size).to(cfg.device)
        loss = loss_of(model, samples, inputs, cfg.answers)
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


def longest_answer(types: tuple[str, ...], tokenizer, n: int = 4_000) -> int:
    """Tokens in the longest spoken answer of the words benchmark, end of sequence included."""
    samples = shapes.generate(n, HELD_OUT_SEED, types=types)
    return 1 + max(len(tokenizer(shapes.spoken(s), add_special_tokens=False)["input_ids"]) for s in samples)


def evaluate(
    model: HookedVLM, n: int = 4_000, seed: int = HELD_OUT_SEED, image_size: int = 32, answers: str = "token"
) -> dict[str, float]:
    """Held-out accuracy (percent) per question family, per scoring rule (``metric:yesno``, ...) and overall;
    answers in words are generated greedily to end of sequence and scored by each family's own rule."""
    types = shapes.WORD_TYPES if answers == "words" else shapes.TYPES
    examples = shapes_examples(n, seed, image_size, types=types)
    tokens = longest_answer(types, model.tokenizer) if answers == "words" else 1
    hits = defaultdict(list)
    for example, right in zip(examples, evaluation.correct(model, examples, batch_size=200, max_new_tokens=tokens)):
        for key in (example.type, f"metric:{example.metric}", "all"):
            hits[key].append(right)
    return {k: round(100 * float(np.mean(v)), 2) for k, v in sorted(hits.items())}


def save(model: HookedVLM, out: Path, cfg: TrainConfig, losses: list[float], seconds: float) -> dict:
    """Weights (safetensors), tokenizer and processor, and the model card (card.json + README.md)."""
    out.mkdir(parents=True, exist_ok=True)
    model.hf_model.save_pretrained(out)
    model.processor.save_pretrained(out)
    accuracy = evaluate(model, cfg.eval_n, HELD_OUT_SEED, cfg.image_size, cfg.answers)
    tokens = longest_answer(cfg.types, model.tokenizer) if cfg.answers == "words" else 1
    card = {
        "family": cfg.family,
        "hf_class": type(model.hf_model).__name__,
        "parameters": sum(p.numel() for p in model.hf_model.parameters()),
        "language_layers": model.cfg.n_layers,
        "d_model": model.cfg.d_model,
        "vision_layers": model.cfg.n_vision_layers,
        "image_size": cfg.image_size,
        # the study generates this many tokens at most: one (trained on one-token answers, never to stop), or
        # the longest answer in words and its end of sequence
        "answer_tokens": tokens,
        "answers": cfg.answers,
        "benchmark": "shapes-words" if cfg.answers == "words" else "shapes",
        "training": {
            **cfg.__dict__,
            "samples_seen": cfg.steps * cfg.batch_size,
            "data_seeds": "fresh scenes each step: "
            f"shapes.generate({cfg.batch_size}, seed={TRAIN_SEED_OFFSET} + {cfg.seed}*10^7 + step)",
            "final_loss_100": round(float(np.mean(losses[-100:])), 4),
            "cpu_seconds": round(seconds),
            "threads": torch.get_num_threads(),
        },
        "held_out": {"seed": HELD_OUT_SEED, "n": cfg.eval_n, "accuracy": accuracy},
    }
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    rows = "\n".join(f"| {k} | {v:.1f} |" for k, v in accuracy.items())
    name = f"toy-{cfg.family.replace('_', '-')}" + ("-words" if cfg.answers == "words" else "")
    said = (
        'answers in words (`shapes.spoken`: "yes , there is a red circle .", "there are two circles .", '
        '"the blue one .", "on the left ."), generated greedily to end of sequence and scored by each family\'s '
        "rule (`metric:` rows: POPE's yes/no reading, the integer named, the colour named, the relation named)"
        if cfg.answers == "words"
        else "one-token answers (the label word)"
    )
    flags = " --answers words" if cfg.answers == "words" else ""
    (out / "README.md").write_text(
        f"# {name}\n\nA toy {cfg.family} ({card['hf_class']}, {card['parameters']:,} parameters, "
        f"{model.cfg.n_layers} language layers of width {model.cfg.d_model}) trained on the {card['benchmark']} benchmark "
        f"for {cfg.steps:,} steps of {cfg.batch_size} fresh questions (seed {cfg.seed}), {said}.\n\n"
        f"Held-out accuracy (seed {HELD_OUT_SEED}, {cfg.eval_n:,} questions):\n\n| type | accuracy % |\n|---|---|\n{rows}\n\n"
        f"Reproduce: `vlm-lens train-toy {cfg.family}{flags} --steps {cfg.steps} --seed {cfg.seed}`.\n"
    )
    return card


def train_and_save(cfg: TrainConfig, out: Path, progress: bool = True) -> dict:
    torch.set_num_threads(1)  # determinism: the same thread count gives the same weights
    start = time.process_time()
    model, losses = train(cfg, progress)
    return save(model, out, cfg, losses, time.process_time() - start)
