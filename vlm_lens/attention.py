"""Attention patterns without paying for eager attention everywhere.

transformers 5 looks up each layer's attention function by ``config._attn_implementation``
in its ``AttentionInterface`` registry. We register one wrapper per base implementation
(``"vlm_lens:sdpa"``, ``"vlm_lens:eager"``, ...), with the base's own mask function, and
point the language model's attention modules at it only while a hook session asks for
attention. The wrapper is stateless: what to compute arrives per call as a keyword argument
that the session's pre-hook on the attention module injects.

- No request: the base implementation runs unchanged.
- ``rows`` request: the base implementation computes the output (fast path kept); the
  eager softmax is computed only for the selected query rows: memory linear in sequence length.
  A hook that edits the rows has its edit applied: those rows' outputs are recomputed as
  edited rows @ values (the other rows keep the fast path's output).
- ``pattern`` or ``scores`` request: the layer runs eager attention so the full pattern (or the scores
  before softmax) can be read and edited.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

REQUEST_KWARG = "vlm_lens_attention"
PREFIX = "vlm_lens:"


@dataclass
class AttentionRequest:
    """What one layer's attention call should expose."""

    pattern: Callable[[Float[Tensor, "batch head query key"]], Tensor] | None = None
    scores: Callable[[Float[Tensor, "batch head query key"]], Tensor] | None = None  # before softmax (eager too)
    rows: Callable[[Float[Tensor, "batch head row key"]], Tensor] | None = None  # returns the (edited) rows
    # the queries / keys after rotary, [batch pos head d_head] (hook_rot_q / hook_rot_k); while generating with a
    # KV cache the keys are every cached position's
    rot_q: Callable[[Float[Tensor, "batch pos head d_head"]], Tensor] | None = None
    rot_k: Callable[[Float[Tensor, "batch pos kv_head d_head"]], Tensor] | None = None
    query_positions: Int[Tensor, "batch row"] | None = None  # None: the last query position
    differentiable_rows: bool = False  # a backward hook wants d/d(rows): the rows' outputs are computed from them
    # every position so far: a sliding-window layer's cache (Gemma 3) holds only the last keys while generating;
    # rows and patterns are padded on the left to it with zeros (the keys it can no longer see), so key k is position k
    key_length: int | None = None


def _padded(hook: Callable[[Tensor], Tensor], missing: int, fill: float = 0.0) -> Callable[[Tensor], Tensor]:
    """The hook sees rows over every position (``fill`` where the window has dropped the keys: 0 for weights, the
    dtype's minimum for scores); the layer, its own keys."""
    if missing <= 0:
        return hook

    def call(weights: Tensor) -> Tensor:
        full = torch.nn.functional.pad(weights, (missing, 0), value=fill)
        edited = hook(full)
        return weights if edited is full else edited[..., missing:]

    return call


def implementation_name(base: str) -> str:
    """Register (once) and return the wrapper's name for a base implementation."""
    name = PREFIX + base
    if name not in AttentionInterface._global_mapping:
        AttentionInterface.register(name, partial(attention_forward, base=base))
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[base])
    return name


def _base_function(base: str, module) -> Callable:
    if base == "eager":  # each family defines its own eager function beside its attention module
        return sys.modules[type(module).__module__].eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS[base]


def attention_forward(module, query, key, value, attention_mask, *args, base: str, **kwargs):
    request: AttentionRequest | None = kwargs.pop(REQUEST_KWARG, None)
    if (
        request is not None and request.rot_q is not None
    ):  # [batch head pos d_head] seen as TL's [batch pos head d_head]
        query = request.rot_q(query.transpose(1, 2)).transpose(1, 2)
    if request is not None and request.rot_k is not None:
        key = request.rot_k(key.transpose(1, 2)).transpose(1, 2)
    if request is None or (request.pattern is None and request.rows is None and request.scores is None):
        return _base_function(base, module)(module, query, key, value, attention_mask, *args, **kwargs)
    if request.pattern is not None or request.scores is not None:
        return _eager_with_pattern(module, query, key, value, attention_mask, request, base, **kwargs)
    out, weights = _base_function(base, module)(module, query, key, value, attention_mask, *args, **kwargs)
    rows_hook = request.rows
    assert rows_hook is not None  # the branches above leave only a rows request
    positions = _positions(request.query_positions, query)
    scaling = kwargs.get("scaling") or module.scaling
    rows, kv_len = _softmax_rows(module, query, key, attention_mask, positions, scaling, kwargs.get("softcap"), base)
    edited = _padded(rows_hook, (request.key_length or kv_len) - kv_len)(rows)
    if edited is not rows or request.differentiable_rows:  # recompute those rows' outputs from the (edited) weights
        values = _repeat_kv(value[:, :, :kv_len], getattr(module, "num_key_value_groups", 1))
        new = torch.matmul(edited, values).transpose(1, 2).to(out.dtype)  # batch row head d_head
        index = positions[:, :, None, None].expand(-1, -1, out.shape[2], out.shape[3])
        out = out.scatter(1, index, new)
    return out, weights


def _positions(query_positions: Tensor | None, query: Tensor) -> Tensor:
    batch, q_len = query.shape[0], query.shape[2]
    if query_positions is None or q_len == 1:  # decode steps answer from their only query
        return torch.full((batch, 1), q_len - 1, dtype=torch.long, device=query.device)
    return query_positions.to(query.device)


def _repeat_kv(x: Tensor, groups: int) -> Tensor:
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def _keep_mask(
    attention_mask: Tensor | None, q_idx: Tensor, kv_len: int, module, base: str, q_len: int
) -> tuple[Bool[Tensor, "b h row key"] | Float[Tensor, "b h row key"] | None, int]:
    """The mask rows for query indices q_idx [batch, row], and how many keys the base attends over.

    Mirrors the base implementation: sdpa with no mask is causal (top-left aligned, keys cut to
    the query length when longer); eager with no mask attends everywhere.
    """
    if attention_mask is None:
        causal = base != "eager" and q_len > 1 and getattr(module, "is_causal", True)
        if not causal:
            return None, kv_len
        kv_len = min(kv_len, q_len)
        keys = torch.arange(kv_len, device=q_idx.device)
        return (keys[None, None, None, :] <= q_idx[:, None, :, None]), kv_len
    mask = attention_mask[..., :kv_len]
    batch = q_idx.shape[0]
    mask = mask.expand(batch, mask.shape[1], mask.shape[2], mask.shape[3])
    index = q_idx[:, None, :, None].expand(batch, mask.shape[1], q_idx.shape[1], mask.shape[3])
    return torch.gather(mask, 2, index), kv_len


def _apply(scores: Tensor, mask: Tensor | None, softcap: float | None) -> Tensor:
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if mask is None:
        return scores
    if mask.dtype == torch.bool:
        return scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return scores + mask


def _softmax_rows(module, query, key, attention_mask, positions, scaling, softcap, base) -> tuple[Tensor, int]:
    q_len = query.shape[2]
    mask, kv_len = _keep_mask(attention_mask, positions, key.shape[2], module, base, q_len)
    keys = _repeat_kv(key[:, :, :kv_len], getattr(module, "num_key_value_groups", 1))
    index = positions[:, None, :, None].expand(query.shape[0], query.shape[1], positions.shape[1], query.shape[3])
    q_rows = torch.gather(query, 2, index)
    scores = _apply(torch.matmul(q_rows, keys.transpose(2, 3)) * scaling, mask, softcap)
    return torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype), kv_len


def _eager_with_pattern(module, query, key, value, attention_mask, request, base, **kwargs):
    q_len, kv_len = query.shape[2], key.shape[2]
    groups = getattr(module, "num_key_value_groups", 1)
    all_rows = torch.arange(q_len, device=query.device).expand(query.shape[0], q_len)
    mask, kv_len = _keep_mask(attention_mask, all_rows, kv_len, module, base, q_len)
    keys = _repeat_kv(key[:, :, :kv_len], groups)
    values = _repeat_kv(value[:, :, :kv_len], groups)
    scaling = kwargs.get("scaling") or module.scaling
    scores = _apply(torch.matmul(query, keys.transpose(2, 3)) * scaling, mask, kwargs.get("softcap"))
    missing = (request.key_length or kv_len) - kv_len
    if request.scores is not None:
        scores = _padded(request.scores, missing, torch.finfo(scores.dtype).min)(scores)
    pattern = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    if request.rows is not None:
        positions = _positions(request.query_positions, query)
        index = positions[:, None, :, None].expand(pattern.shape[0], pattern.shape[1], positions.shape[1], kv_len)
        rows = torch.gather(pattern, 2, index)
        edited = _padded(request.rows, missing)(rows)
        if edited is not rows:  # the rows hook runs first: the pattern hook sees its edit
            pattern = pattern.scatter(2, index, edited)
    if request.pattern is not None:
        pattern = _padded(request.pattern, missing)(pattern)
    dropout = kwargs.get("dropout", 0.0)
    pattern = torch.nn.functional.dropout(pattern, p=dropout, training=module.training)
    out = torch.matmul(pattern, values).transpose(1, 2).contiguous()
    return out, pattern
