"""The model's weights under TransformerLens's names and shapes, read from the HF modules.

    model.W_U                  # [d_model, vocab]      model.W_E     # [vocab, d_model]
    model.W_Q, model.W_K       # [layer, head, d_model, d_head]  (K and V repeated over a GQA group, as TL does)
    model.W_O                  # [layer, head, d_head, d_model]
    model.W_in, model.W_gate   # [layer, d_model, d_mlp]         model.W_out  # [layer, d_mlp, d_model]
    model.blocks[3].attn.W_Q   # [head, d_model, d_head]: one layer, no stacking

Biases a family lacks are zeros (TL's convention). The stacked properties build a new tensor on
each access (LLaVA-1.5-7B's W_Q: 32 x 4096 x 4096, 1 GiB in float16); ``blocks[l]`` reads one
layer as views of the HF weights. The final norm's gain is not folded into ``W_U``; Gemma's embedding
scale (sqrt(d_model)) is in ``W_E``, as TransformerLens has it, so ``W_E[ids]`` is ``hook_embed``.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float
from torch import Tensor, nn

from vlm_lens.adapter import get_module, layer_list
from vlm_lens.errors import LayerIndexError, VLMLensError

if TYPE_CHECKING:
    from vlm_lens.hosts import ModelHost as _Host
else:
    _Host = object


def _bias(linear: nn.Linear, size: int, like: Tensor) -> Tensor:
    return (
        linear.bias
        if getattr(linear, "bias", None) is not None
        else torch.zeros(size, dtype=like.dtype, device=like.device)
    )


def _factored(left: Tensor, right: Tensor):
    try:
        from transformer_lens import FactoredMatrix
    except ImportError:
        raise VLMLensError(
            "model.OV and model.QK are transformer_lens FactoredMatrix objects: pip install 'vlm-lens[interop]'"
        ) from None
    return FactoredMatrix(left, right)


class BlockWeights:
    """One layer's weights in TL's per-layer shapes: ``.attn.W_Q`` [head, d_model, d_head], ``.mlp.W_in``, ..."""

    def __init__(self, model, layer: int):
        block = layer_list(model.hf_model, model.adapter.modules["layers"])[layer]
        table, cfg = model.adapter.block_at(model.hf_model.config, layer), model.cfg
        part = lambda key: get_module(block, table[key])  # noqa: E731
        q, k, v, o = part("attn_q"), part("attn_k"), part("attn_v"), part("attn_o")
        group = cfg.n_heads // cfg.n_kv_heads

        def heads(linear: nn.Linear, n: int) -> Tensor:  # [n*d_head, d_model] -> [head, d_model, d_head]
            w = linear.weight.view(n, cfg.d_head, cfg.d_model).transpose(1, 2)
            return w.repeat_interleave(group, dim=0) if n != cfg.n_heads else w

        def head_bias(linear: nn.Linear, n: int) -> Tensor:
            b = _bias(linear, n * cfg.d_head, linear.weight).view(n, cfg.d_head)
            return b.repeat_interleave(group, dim=0) if n != cfg.n_heads else b

        self.module = block
        self._model, self._layer = model, layer
        self.ln1, self.ln2 = part("ln1"), part("ln2")  # the block's HF norms: block.ln1(resid) as the block computes it
        self.attn = SimpleNamespace(
            W_Q=heads(q, cfg.n_heads),
            W_K=heads(k, cfg.n_kv_heads),
            W_V=heads(v, cfg.n_kv_heads),
            W_O=o.weight.view(cfg.d_model, cfg.n_heads, cfg.d_head).permute(1, 2, 0),
            b_Q=head_bias(q, cfg.n_heads),
            b_K=head_bias(k, cfg.n_kv_heads),
            b_V=head_bias(v, cfg.n_kv_heads),
            b_O=_bias(o, cfg.d_model, o.weight),
        )
        gate, up, down = part("mlp_gate"), part("mlp_up"), part("mlp_down")
        self.mlp = SimpleNamespace(
            W_gate=gate.weight.T,
            W_in=up.weight.T,
            W_out=down.weight.T,
            b_in=_bias(up, cfg.d_mlp, up.weight),
            b_out=_bias(down, cfg.d_model, down.weight),
        )

    def __getattr__(self, name: str):
        """``blocks[l].hook_resid_pre`` and the block's other hook points, as TL's: the name's ``HookPoint``."""
        if name.startswith("hook_"):
            from vlm_lens.persistent import HookPoint

            full = f"blocks.{self._layer}.{name}"
            self._model.vocab.info(full)  # an unknown name: the vocabulary's error, with the closest names
            return HookPoint(self._model, full)
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")


class Blocks(Sequence):
    """``model.blocks``: each layer's weights, built when indexed (``blocks[l]`` reads one layer only)."""

    def __init__(self, model):
        self.model = model

    def __len__(self) -> int:
        return self.model.cfg.n_layers

    def __getitem__(self, layer):
        if isinstance(layer, slice):
            return [self[l] for l in range(len(self))[layer]]
        n = len(self)
        if not -n <= layer < n:
            raise LayerIndexError(f"layer {layer} is out of range: the model has {n} layers")
        return BlockWeights(self.model, layer % n)


class Weights(_Host):  # its host, for the type checker only (vlm_lens.hosts)
    """Mixin for ``HookedVLM``: TL's weight properties (see the module docstring)."""

    @property
    def blocks(self) -> Blocks:
        return Blocks(self)

    def _stack(self, part: str, name: str) -> Tensor:
        return torch.stack([getattr(getattr(BlockWeights(self, l), part), name) for l in range(self.cfg.n_layers)])

    @property
    def ln_final(self) -> nn.Module:
        """The final norm, the HF module itself: ``model.unembed(model.ln_final(resid))`` is the logits (TL's)."""
        return get_module(self.hf_model, self.adapter.modules["final_norm"])

    @property
    def unembed(self) -> nn.Module:
        """The unembedding, the HF module itself (``lm_head``)."""
        return get_module(self.hf_model, self.adapter.modules["unembed"])

    def embed(self, tokens: Tensor) -> Float[Tensor, "... d_model"]:
        """TL's ``model.embed(tokens)``: ``W_E[tokens]``, the embeddings layer 0 receives for text tokens (an image
        token's place holds the projector's output instead, so ``hook_embed`` differs there)."""
        return self.W_E[tokens]

    @property
    def OV(self):
        """TL's OV circuit, a ``transformer_lens.FactoredMatrix`` [layer, head, d_model, d_model]: W_V @ W_O."""
        return _factored(self.W_V, self.W_O)

    @property
    def QK(self):
        """TL's QK circuit, a ``transformer_lens.FactoredMatrix`` [layer, head, d_model, d_model]: W_Q @ W_K^T,
        before rotary (as TL's for rotary models)."""
        return _factored(self.W_Q, self.W_K.transpose(-2, -1))

    @property
    def W_U(self) -> Float[Tensor, "d_model vocab"]:
        return get_module(self.hf_model, self.adapter.modules["unembed"]).weight.T

    @property
    def b_U(self) -> Float[Tensor, " vocab"]:
        unembed = get_module(self.hf_model, self.adapter.modules["unembed"])
        return _bias(unembed, self.cfg.d_vocab, unembed.weight)

    @property
    def W_E(self) -> Float[Tensor, "vocab d_model"]:
        """The token embeddings as layer 0 receives them (TL's): the embedding weight, times Gemma's sqrt(d_model)
        where the family scales at lookup (a new tensor then; elsewhere the weight itself)."""
        weight = get_module(self.hf_model, self.adapter.modules["embed"]).weight
        if self.adapter.embed_scale is None:
            return weight
        scale = torch.tensor(self.adapter.embed_scale(self.hf_model.config), dtype=weight.dtype)  # as Gemma casts it
        return weight * scale.to(weight.device)

    W_Q = property(lambda self: self._stack("attn", "W_Q"), doc="[layer, head, d_model, d_head]")
    W_K = property(lambda self: self._stack("attn", "W_K"), doc="[layer, head, d_model, d_head] (GQA: repeated)")
    W_V = property(lambda self: self._stack("attn", "W_V"), doc="[layer, head, d_model, d_head] (GQA: repeated)")
    W_O = property(lambda self: self._stack("attn", "W_O"), doc="[layer, head, d_head, d_model]")
    b_Q = property(lambda self: self._stack("attn", "b_Q"), doc="[layer, head, d_head]")
    b_K = property(lambda self: self._stack("attn", "b_K"), doc="[layer, head, d_head]")
    b_V = property(lambda self: self._stack("attn", "b_V"), doc="[layer, head, d_head]")
    b_O = property(lambda self: self._stack("attn", "b_O"), doc="[layer, d_model]")
    W_in = property(lambda self: self._stack("mlp", "W_in"), doc="[layer, d_model, d_mlp] (up_proj)")
    W_gate = property(lambda self: self._stack("mlp", "W_gate"), doc="[layer, d_model, d_mlp]")
    W_out = property(lambda self: self._stack("mlp", "W_out"), doc="[layer, d_mlp, d_model]")
    b_in = property(lambda self: self._stack("mlp", "b_in"), doc="[layer, d_mlp]")
    b_out = property(lambda self: self._stack("mlp", "b_out"), doc="[layer, d_model]")

    def accumulated_bias(
        self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True
    ) -> Float[Tensor, " d_model"]:
        """TL's: the biases the blocks below ``layer`` add to the residual (o_proj's, and down_proj's with
        ``include_mlp_biases``; ``mlp_input`` adds layer's own o_proj bias). Zeros for families without them."""
        bias = self.b_O[: layer + (1 if mlp_input else 0)].sum(0)
        return bias + self.b_out[:layer].sum(0) if include_mlp_biases else bias

    def tokens_to_residual_directions(self, tokens: int | str | Tensor) -> Float[Tensor, "... d_model"]:
        """The unembedding direction of each token (a token string must be one token): ``W_U[:, tokens].T``."""
        if isinstance(tokens, str):
            tokens = self.to_single_token(tokens)
        return self.W_U.T[tokens]
