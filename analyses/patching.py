"""Activation patching / causal tracing over the image (after ROME's causal tracing).

1. Clean run: cache the residual stream at every layer.
2. Corrupted run: Gaussian noise on the image-token embeddings (``hook_embed``), its scale
   ``noise`` times the standard deviation of the clean image embeddings; the same noise for
   every run (seeded).
3. Restored runs: the corrupted run with one (layer, position) - or one (layer, image span) -
   of ``resid_post`` copied from the clean run. Its indirect effect is
   p_restored(answer) - p_corrupted(answer).

Restored runs for one layer go as one batch (one row per patched position), in chunks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from jaxtyping import Float

from vlm_lens import HookedVLM, VLMInputs
from vlm_lens.errors import InputError


@dataclass
class TraceResult:
    effects: Float[np.ndarray, "layer unit"]  # p_restored - p_corrupted
    units: list[str]  # token strings per position, or span names
    image_units: list[int]  # which units are image tokens / spans
    answer_id: int
    p_clean: float
    p_corrupted: float
    positions: list[list[int]] = field(default_factory=list)  # each unit's sequence positions (item 0)


@torch.no_grad()
def causal_trace(
    model: HookedVLM,
    inputs: VLMInputs,
    answer_id: int | None = None,
    noise: float = 3.0,
    seed: int = 0,
    by: str = "position",
    chunk: int = 64,
) -> TraceResult:
    """Indirect effect of restoring each (layer, position) - ``by="position"`` - or each (layer, image span)."""
    if by not in ("position", "span"):
        raise InputError(f"by must be 'position' or 'span', got {by!r}")
    clean_logits, cache = model.run_with_cache(
        inputs, names_filter=lambda n: n.endswith("hook_resid_post") or n == "hook_embed"
    )
    if answer_id is None:
        answer_id = int(clean_logits[0, -1].argmax())
    image_pos = inputs.image_positions(0)
    embed = cache["hook_embed"]
    generator = torch.Generator().manual_seed(seed)
    scale = noise * embed[0, image_pos].float().std()
    delta = torch.randn((len(image_pos), embed.shape[-1]), generator=generator) * scale

    def corrupt(act, hook):
        if hook.step > 0:
            return None
        act = act.clone()
        act[:, image_pos] += delta.to(act.device, act.dtype)
        return act

    prob = lambda logits: torch.softmax(logits[:, -1].float(), -1)[:, answer_id]  # noqa: E731
    p_clean = float(prob(clean_logits)[0])
    p_corrupted = float(prob(model.run_with_hooks(inputs, fwd_hooks=[("hook_embed", corrupt)]))[0])

    seq = inputs.input_ids.shape[1]
    real = inputs.attention_mask[0].bool().nonzero().flatten().tolist()
    if by == "position":
        units = [[p] for p in real]
        names = [model.to_string(int(inputs.input_ids[0, p])) for p in real]
        image_units = [i for i, p in enumerate(real) if p in set(image_pos)]
    else:
        units = [span.positions for span in inputs.image_spans[0]]
        names = [f"image {span.image}" for span in inputs.image_spans[0]]
        image_units = list(range(len(units)))

    effects = np.zeros((model.cfg.n_layers, len(units)))
    for layer in range(model.cfg.n_layers):
        clean = cache["resid_post", layer]
        for start in range(0, len(units), chunk):
            part = units[start : start + chunk]
            batch = model.repeat(inputs, len(part))
            mask = torch.zeros(len(part), seq, 1, dtype=torch.bool)
            for row, positions in enumerate(part):
                mask[row, positions] = True

            def restore(act, hook, mask=mask, clean=clean):
                return torch.where(mask.to(act.device), clean.expand_as(act), act)

            logits = model.run_with_hooks(
                batch, fwd_hooks=[("hook_embed", corrupt), (f"blocks.{layer}.hook_resid_post", restore)]
            )
            effects[layer, start : start + len(part)] = (prob(logits) - p_corrupted).cpu().numpy()
    return TraceResult(effects, names, image_units, answer_id, p_clean, p_corrupted, units)
