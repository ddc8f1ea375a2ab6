"""The tuned lens for VLMs (Belrose et al., 2023): one affine translator per layer, trained so that the residual
stream read through it predicts the model's own final distribution.

The logit lens reads layer ``l``'s residual ``h`` through the model's final norm and unembedding; early layers'
residuals are not in the basis the unembedding expects, so their logit-lens distributions are poor guesses of the
final one. The tuned lens reads ``h + A_l h + b_l`` instead, with ``A_l``, ``b_l`` trained to minimise
``KL(final || lens_l)`` over the positions of real inputs (image tokens and text alike), the model frozen. At zero
(``TunedLens.identity``) it is the logit lens; the last layer keeps the identity, where the logit lens is already
the model's logits.

    lens = train(model, shapes_examples(800, seed=3), steps=300)          # one batch in memory at a time
    lens.save("runs/tuned-lens")                                          # safetensors + card.json
    lens = TunedLens.load("runs/tuned-lens")                              # refuses another checkpoint
    logits, cache = model.run_with_cache(inputs)
    tuned_lens(model, cache, lens)                                        # [layer, batch, vocab], as logit_lens
    kl_by_layer(model, examples, lens)                                    # both lenses' KL to the final, per layer
    logit_lens.dataset_margins(model, examples, lens=lens)                # the truth-margin curves through it
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from analyses import checkpoint, lenses
from analyses.answers import stack_at_answer
from analyses.evaluation import batches
from analyses.logit_lens import final_norm, unembed
from analyses.progress import Progress
from vlm_lens import ActivationCache, HookedVLM
from vlm_lens.errors import InputError

FORMAT = "vlm-lens-tuned-lens/1"
TENSORS = "tuned_lens.safetensors"


@dataclass
class TunedLens:
    """Per layer ``l`` of the residual stream after block ``l``: ``h -> h + h @ weight[l].T + bias[l]``."""

    weight: Float[Tensor, "layer d_model d_model"]
    bias: Float[Tensor, "layer d_model"]
    model: dict  # analyses.checkpoint.fingerprint of the checkpoint it was trained on
    training: dict = field(default_factory=dict)  # steps, data, held-out KL per layer

    @classmethod
    def identity(cls, model: HookedVLM) -> TunedLens:
        """All translators zero: the logit lens."""
        n, d = model.cfg.n_layers, model.cfg.d_model
        return cls(torch.zeros(n, d, d), torch.zeros(n, d), checkpoint.fingerprint(model))

    def translate(self, resid: Float[Tensor, "layer ... d_model"]) -> Float[Tensor, "layer ... d_model"]:
        """Each layer's residuals through its translator (float32)."""
        if resid.shape[0] != self.weight.shape[0] or resid.shape[-1] != self.weight.shape[-1]:
            raise InputError(
                f"the lens has {self.weight.shape[0]} layers of width {self.weight.shape[-1]}, the residuals are "
                f"{list(resid.shape)} ([layer, ..., d_model])"
            )
        h = resid.float()
        w, b = self.weight.to(h.device), self.bias.to(h.device)
        flat = h.reshape(h.shape[0], -1, h.shape[-1])
        moved = flat + torch.einsum("lnd,led->lne", flat, w) + b[:, None]
        return moved.reshape(h.shape)

    def at(self, layer: int, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        """One layer's residuals through its translator (float32)."""
        h = resid.float()
        return h + h @ self.weight[layer].to(h.device).T + self.bias[layer].to(h.device)

    def check_model(self, model: HookedVLM) -> None:
        checkpoint.check(self.model, model, "tuned lens")

    def save(self, folder: str | Path) -> Path:
        tensors = {"weight": self.weight.float().numpy(), "bias": self.bias.float().numpy()}
        return checkpoint.write(folder, tensors, {"model": self.model, "training": self.training}, FORMAT, TENSORS)

    @classmethod
    def load(cls, folder: str | Path) -> TunedLens:
        """A saved lens, or a zoo toy's shipped one by the toy's name (``analyses.lenses``); refused with one line if
        a file is missing, edited or of another format."""
        tensors, card = checkpoint.read(lenses.folder(folder), FORMAT, TENSORS, "tuned lens")
        return cls(
            torch.from_numpy(tensors["weight"]), torch.from_numpy(tensors["bias"]), card["model"], card["training"]
        )


def _read(model: HookedVLM, resid: Tensor) -> Tensor:
    """Residual vectors through the model's own final norm and unembedding, in the model's dtype, float32 out
    (``logit_lens.read_out`` with the gradient kept, for training)."""
    return unembed(model)(final_norm(model)(resid.to(model.dtype))).float()


def tuned_lens(
    model: HookedVLM, cache: ActivationCache, lens: TunedLens, positions: Tensor | None = None
) -> Float[Tensor, "layer batch vocab"]:
    """Per-layer logits at one position per item (default: each item's last real token), through the lens."""
    lens.check_model(model)
    with torch.no_grad():
        return _read(model, lens.translate(stack_at_answer(cache, "resid_post", positions=positions)))


def kl(final_logits: Tensor, logits: Tensor) -> Tensor:
    """``KL(softmax(final) || softmax(logits))`` over the last axis, in nats."""
    p = torch.log_softmax(final_logits.float(), -1)
    q = torch.log_softmax(logits.float(), -1)
    return (p.exp() * (p - q)).sum(-1)


def _residuals(model: HookedVLM, inputs) -> tuple[Tensor, Tensor]:
    """Every real position's residual after each block [layer, n, d] and the final logits there [n, vocab]."""
    names = [f"blocks.{l}.hook_resid_post" for l in range(model.cfg.n_layers)]
    with torch.no_grad():
        logits, cache = model.run_with_cache(inputs, names_filter=lambda n: n in names)
    real = inputs.attention_mask.bool()
    resid = torch.stack([cache[n][real] for n in names]).float()
    return resid, logits[real].float()


def train(
    model: HookedVLM,
    examples: Sequence,
    steps: int = 300,
    batch_size: int = 16,
    lr: float = 1e-3,
    seed: int = 0,
    held_out: Sequence | None = None,
    progress: bool | Progress = False,
) -> TunedLens:
    """Translators trained with Adam on ``KL(final || lens_l)`` over every real position of ``examples``
    (``analyses.data.examples.Example``), cycling through them a batch at a time; the model is frozen and one
    batch's residuals are in memory at a time. ``held_out`` examples, if given, record both lenses' KL per layer
    in ``lens.training``."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InputError(f"steps must be a whole number of at least 1, got {steps!r}")
    if not examples:
        raise InputError("train the tuned lens on at least one example")
    torch.manual_seed(seed)
    lens = TunedLens.identity(model)
    last = model.cfg.n_layers - 1  # the last layer's lens is the model's own read-out: kept the identity
    weight = torch.zeros_like(lens.weight[:last]).requires_grad_(True)
    bias = torch.zeros_like(lens.bias[:last]).requires_grad_(True)
    optimiser = torch.optim.Adam([weight, bias], lr=lr)
    for p in model.hf_model.parameters():
        p.requires_grad_(False)
    progress = Progress.of(progress)
    chunks = list(range(0, len(examples), batch_size))
    try:
        with progress.stage("training the tuned lens", total=steps, unit="step") as bar:
            for step in range(steps):
                start = chunks[step % len(chunks)]
                ((_, inputs),) = batches(model, examples[start : start + batch_size], batch_size)
                resid, final = _residuals(model, inputs)
                h = resid[:last]
                moved = h + torch.einsum("lnd,led->lne", h, weight) + bias[:, None]
                loss = kl(final.expand(last, *final.shape), _read(model, moved)).mean()
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                bar.advance()
    finally:
        for p in model.hf_model.parameters():
            p.requires_grad_(True)
    lens.weight[:last] = weight.detach()
    lens.bias[:last] = bias.detach()
    lens.training = {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "examples": len(examples)}
    if held_out:
        table = kl_by_layer(model, held_out, lens, batch_size)
        lens.training["held_out_kl"] = table.to_dict(orient="records")
    return lens


def kl_by_layer(model: HookedVLM, examples: Sequence, lens: TunedLens, batch_size: int = 16) -> pd.DataFrame:
    """Per layer and lens (``logit``, ``tuned``): the mean KL to the final distribution over every real position
    of ``examples``, in nats, with its standard error and the number of positions."""
    lens.check_model(model)
    values: dict[str, list[Tensor]] = {"logit": [], "tuned": []}
    for _, inputs in batches(model, list(examples), batch_size):
        resid, final = _residuals(model, inputs)
        with torch.no_grad():
            values["logit"].append(kl(final.expand(len(resid), *final.shape), _read(model, resid)))
            values["tuned"].append(kl(final.expand(len(resid), *final.shape), _read(model, lens.translate(resid))))
    rows = []
    for name, parts in values.items():
        per = torch.cat(parts, dim=1).numpy()  # layer, positions
        for layer, v in enumerate(per):
            rows.append(
                {
                    "layer": layer,
                    "lens": name,
                    "kl": float(v.mean()),
                    "se": float(v.std() / np.sqrt(len(v))),
                    "n": len(v),
                }
            )
    return pd.DataFrame(rows)
