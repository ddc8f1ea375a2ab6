"""TransformerLens's conveniences on HookedVLM, kept out of its class: the config fields TL code reads, the
per-token loss, run_with_cache's ``pos_slice``, and generate's progress bar."""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from vlm_lens.adapter import Adapter, get_module
from vlm_lens.inputs import VLMInputs
from vlm_lens.resid import positions_of


def _rope(text) -> tuple[float | None, float]:
    """(theta, partial rotary factor) of a text config: transformers 5's ``rope_parameters`` (per layer type for
    Gemma 3: the full-attention layers'), else the older top-level fields."""
    params = getattr(text, "rope_parameters", None) or {}
    if "rope_theta" not in params and isinstance(params.get("full_attention"), dict):
        params = params["full_attention"]
    theta = params.get("rope_theta", getattr(text, "rope_theta", None))
    factor = params.get("partial_rotary_factor", getattr(text, "partial_rotary_factor", None)) or 1.0
    return (None if theta is None else float(theta)), float(factor)


def _tl_fields(hf_model: Any, adapter: Adapter, processor, layers, d_head: int) -> dict:
    text = hf_model.config.get_text_config()
    theta, factor = _rope(text)
    weights = [
        k for k in ("attn_q", "attn_k", "attn_v", "attn_o", "mlp_gate", "mlp_up", "mlp_down") if k in adapter.block
    ]
    n_params = sum(
        get_module(layer, adapter.block_at(hf_model.config, i)[k]).weight.numel()
        for i, layer in enumerate(layers)
        for k in weights
    )
    tokenizer = getattr(processor, "tokenizer", None)
    return dict(
        model_name=getattr(hf_model.config, "_name_or_path", "") or adapter.family,
        original_architecture=type(hf_model).__name__,
        tokenizer_name=getattr(tokenizer, "name_or_path", None) or None,
        gated_mlp="mlp_gate" in adapter.block,
        eps=float(getattr(text, "rms_norm_eps", None) or getattr(text, "layer_norm_eps", None) or 1e-6),
        rotary_dim=int(d_head * factor),
        rotary_base=theta,
        n_params=int(n_params),
        default_prepend_bos=bool(getattr(tokenizer, "add_bos_token", True)),
    )


def per_token_loss(
    logits: Float[Tensor, "batch pos vocab"], labels: Int[Tensor, "batch pos"]
) -> Float[Tensor, "batch pos_1"]:
    """TL's ``loss_per_token``: the next-token cross-entropy at each position i (predicting token i + 1), float32,
    0 where the label is ignored (-100, as HF's loss ignores it): HF's loss is its mean over the rest."""
    targets = labels[:, 1:].to(logits.device)
    losses = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="none"
    )
    return losses.view(targets.shape)


class _PositionSlicer:
    """run_with_cache's ``pos_slice``: an activation's position axis (an attention map's query axis) cut to the
    slice, read off the hook name's declared shape."""

    def __init__(self, vocab, inputs: VLMInputs, pos_slice, image_token_id: int):
        self.vocab, self.index = vocab, positions_of(pos_slice, inputs, image_token_id)

    def __call__(self, activation: Tensor, name: str) -> Tensor:
        dims = self.vocab.info(name.removesuffix("_grad")).spec.shape.split()
        axis = next((dims.index(d) for d in ("pos", "query") if d in dims), None)
        if axis is None or activation.ndim != len(dims):
            return activation
        index = self.index
        if isinstance(index, int):
            return activation.select(axis, index)
        if isinstance(index, slice):
            return activation[(slice(None),) * axis + (index,)]
        return activation.index_select(axis, torch.as_tensor(index, device=activation.device))


class _ProgressStreamer:
    """generate(verbose=True): a progress bar advanced once per new token (HF calls ``put`` with the prompt
    first, then each step's tokens)."""

    def __init__(self, total: int):
        from tqdm.auto import tqdm

        self.bar, self.prompt_seen = tqdm(total=total, desc="generate", unit="tok"), False

    def put(self, value) -> None:
        if self.prompt_seen:
            self.bar.update(1)
        self.prompt_seen = True

    def end(self) -> None:
        pass

    def close(self) -> None:
        self.bar.close()
