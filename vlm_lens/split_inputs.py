"""TransformerLens's per-head split inputs (``use_attn_in``, ``use_split_qkv_input``) on an HF layer.

TL gives each head its own copy of the residual before ``ln1``: ``hook_attn_in`` [batch pos head d_model] feeds the
queries, keys and values alike, ``hook_q_input`` [batch pos head d_model], ``hook_k_input`` and ``hook_v_input``
[batch pos kv_head d_model] one projection each (``hook_q_input`` starts from ``hook_attn_in``'s result where both
are hooked). HF runs ``ln1`` and each projection once on the whole residual, so here the copies are made from
``ln1``'s input (stashed by a pre-hook) and the projection's output is corrected head by head::

    out + (project(ln1(edited)) - project(ln1(copy)))

``project`` applies the projection's own weight and bias per head, ``ln1`` its own forward (its hooks do not fire
again). Unedited, the correction is bitwise zero and the output is unchanged exactly; a hook's saved copy is in the
loss's graph, so its gradient is the one TL gives (d loss / d that head's input), and the residual's gradient is not
counted twice. An edit of ``ln1.hook_normalized`` stays in ``out``; an edit here adds what it changes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from vlm_lens.adapter import get_module
from vlm_lens.errors import HookNameError
from vlm_lens.hook_calls import RunState, run_chain

# the projection each split input feeds, by the adapter's block key
PROJECTIONS = ("attn_q", "attn_k", "attn_v")


def stash_hook(state: RunState, layer: int):
    """Forward pre-hook on ``ln1``: its input is the residual every head's copy starts from."""

    def hook(module, args, kwargs):
        state.split_in[layer] = {"x": args[0] if args else kwargs["hidden_states"]}

    return hook


def _copies(x: Tensor, heads: int) -> Tensor:  # batch pos head d_model, storage of its own (edits in place stay there)
    return x.unsqueeze(-2).expand(*x.shape[:-1], heads, x.shape[-1]).clone()


def projection_hook(
    state: RunState, layer: int, key: str, proj: nn.Linear, norm: nn.Module, heads: int, attn_chain: list, chain: list
):
    """Forward hook on one projection (``key`` in PROJECTIONS): its heads' inputs through the hooks, and the
    projection's output corrected by what they changed."""

    def project(inputs: Tensor) -> Tensor:  # batch pos head d_model -> batch pos head*d_head
        normed = norm.forward(inputs)
        w = proj.weight.view(heads, -1, proj.weight.shape[-1])
        out = torch.einsum("...hd,hed->...he", normed, w)
        if proj.bias is not None:
            out = out + proj.bias.view(heads, -1)
        return out.flatten(-2)

    def hook(module, args, output):
        stash = state.split_in[layer]
        x = stash["x"]
        if attn_chain:
            if "attn_in" not in stash:  # once per forward, shared by the three projections
                stash["attn_in"] = run_chain(attn_chain, _copies(x, heads), state)
            start = stash["attn_in"]
        else:
            start = _copies(x, heads)
        edited = run_chain(chain, start.clone(), state) if chain else start  # q's edit not in k's input
        return output + (project(edited) - project(_copies(x, heads)))

    return hook


def install(hf_model: Any, adapter: Any, layer_module: nn.Module, layer: int, chains: dict[str, list], state) -> list:
    """The handles of one layer's split-input hooks: ``chains`` maps "attn" (hook_attn_in) and the PROJECTIONS keys
    to their hook chains."""
    table = adapter.block_at(hf_model.config, layer)
    norm = get_module(layer_module, table["ln1"])
    projs = {key: get_module(layer_module, table[key]) for key in PROJECTIONS}
    attn = get_module(layer_module, table["attn"])
    head_dim = int(attn.head_dim)
    heads = {key: projs[key].weight.shape[0] // head_dim for key in PROJECTIONS}
    if chains["attn"] and heads["attn_k"] != heads["attn_q"]:
        raise HookNameError(
            f"blocks.{layer}.hook_attn_in: one copy per head cannot feed this layer's {heads['attn_k']} key/value "
            f"heads from {heads['attn_q']} query heads (grouped-query attention); hook blocks.{layer}.hook_q_input, "
            "hook_k_input and hook_v_input instead"
        )
    handles = [norm.register_forward_pre_hook(stash_hook(state, layer), with_kwargs=True)]
    for key in PROJECTIONS:
        if chains["attn"] or chains[key]:
            hook = projection_hook(state, layer, key, projs[key], norm, heads[key], chains["attn"], chains[key])
            handles.append(projs[key].register_forward_hook(hook))
    return handles
