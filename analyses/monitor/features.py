"""What a monitor reads: one representation of each question, taken in the forward that answers it.

Three kinds, after HALP (2026), each a ``[batch, d_model]`` row per question:

- ``query``: the residual stream at the answer position (the prompt's last token, where the first answer token is
  read) after decoder layer ``l``: what the study's probes read, stored in every run's extraction;
- ``image``: the residual stream after layer ``l`` averaged over the question's image-token positions;
- ``vision``: the projected vision-tower features before any decoder layer (``hook_embed`` at the image
  positions: the projector's output where it replaces the image tokens), averaged.

A ``Reader`` hooks the sites, keeps only those rows (nothing of size positions x layers outlives its layer), and
reads them in the prefill only (``hook.step`` 0, or -1 outside ``generate``): a monitor's risk comes from the
same forward pass that produces the answer's first token, before it is generated.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from analyses.answers import answer_positions, at_answer
from analyses.evaluation import batches
from analyses.progress import Progress
from vlm_lens import HookedVLM
from vlm_lens.errors import InputError
from vlm_lens.inputs import VLMInputs

REPRESENTATIONS = {
    "query": "the answer position's residual stream",
    "image": "the residual stream averaged over the image tokens",
    "vision": "the projected vision features averaged over the image tokens (before any decoder layer)",
}
EMBED = -1  # the layer index of ``hook_embed`` (the vision representation)


def site(representation: str, layer: int) -> str:
    """The hook a representation reads at ``layer`` (``EMBED`` for the vision representation)."""
    return "hook_embed" if representation == "vision" else f"blocks.{layer}.hook_resid_post"


def check_representation(model: HookedVLM, representation: str, layers: Sequence[int]) -> None:
    """Refuse what this model cannot give: an unknown kind, a layer it lacks, image tokens it does not have."""
    if representation not in REPRESENTATIONS:
        raise InputError(f"representation must be one of {sorted(REPRESENTATIONS)}, got {representation!r}")
    if representation != "query" and model.cfg.cross_layers:
        raise InputError(
            f"the {representation!r} representation averages the image's tokens, and {model.cfg.family} has none in "
            "its sequence (the image enters through cross-attention): use the 'query' representation"
        )
    bad = [l for l in layers if not (l == EMBED if representation == "vision" else 0 <= l < model.cfg.n_layers)]
    if bad:
        where = f"layer {EMBED} (hook_embed)" if representation == "vision" else f"layers 0..{model.cfg.n_layers - 1}"
        raise InputError(f"the {representation!r} representation is read at {where}, not at {bad}")


class Reader:
    """Hooks that keep one row per question at each layer of one representation, in the prefill only."""

    def __init__(self, model: HookedVLM, representation: str, layers: Sequence[int], inputs: VLMInputs):
        check_representation(model, representation, layers)
        self.representation, self.layers = representation, list(layers)
        self.store: dict[int, Tensor] = {}
        if representation == "query":
            self._positions = answer_positions(inputs)
        else:
            mask = torch.zeros(inputs.input_ids.shape, dtype=torch.float32)
            for item in range(inputs.batch_size):
                positions = inputs.image_positions(item)
                if not positions:
                    raise InputError(f"question {item} of the batch has no image tokens to average")
                mask[item, positions] = 1.0
            self._mask = mask / mask.sum(1, keepdim=True)

    def _keep(self, layer: int):
        def keep(activation: Tensor, hook) -> None:
            if hook.step > 0:  # a decode step of generate: the prefill was read already
                return
            if self.representation == "query":
                row = at_answer(activation, self._positions)
            else:
                row = torch.einsum("bp,bpd->bd", self._mask.to(activation.device), activation.float())
            self.store[layer] = row.detach().float().cpu()

        return keep

    def hooks(self) -> list:
        return [(site(self.representation, l), self._keep(l)) for l in self.layers]

    def features(self) -> Float[np.ndarray, "batch width"]:
        """The kept rows, the layers side by side (one layer: ``[batch, d_model]``)."""
        missing = [l for l in self.layers if l not in self.store]
        if missing:
            raise InputError(f"nothing was read at layers {missing}: run the model with this reader's hooks first")
        return torch.cat([self.store[l] for l in self.layers], dim=-1).numpy()


@torch.no_grad()
def read(model: HookedVLM, inputs: VLMInputs, representation: str, layers: Sequence[int]) -> np.ndarray:
    """``[batch, len(layers) * d_model]``: one forward, stopped after the last layer read."""
    reader = Reader(model, representation, layers, inputs)
    last = max(reader.layers)
    stop = last + 1 if last + 1 < model.cfg.n_layers else None
    model.run_with_hooks(inputs, fwd_hooks=reader.hooks(), return_type=None, stop_at_layer=stop)
    return reader.features()


@torch.no_grad()
def collect(
    model: HookedVLM,
    examples: Sequence,
    representation: str,
    layers: Sequence[int],
    batch_size: int = 16,
    progress: bool | Progress = False,
) -> dict[int, np.ndarray]:
    """Per layer, ``[n, d_model]`` over ``examples`` (``analyses.data.examples.Example``), a batch at a time."""
    progress = Progress.of(progress)
    parts: list[np.ndarray] = []
    with progress.stage(f"reading the {representation} representation", total=len(examples), unit="question") as bar:
        for chunk, inputs in batches(model, list(examples), batch_size):
            parts.append(read(model, inputs, representation, layers))
            bar.advance(len(chunk))
    stacked = np.concatenate(parts)
    width = stacked.shape[1] // len(layers)
    return {l: stacked[:, i * width : (i + 1) * width] for i, l in enumerate(layers)}
