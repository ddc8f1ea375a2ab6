"""Hooks of a cross-attention layer's writes (Llama-3.2-Vision), where no module outputs them.

Such a layer adds ``tanh(g_attn) * cross_attn(x)`` to the residual, then ``tanh(g_mlp) * rows * mlp(x)``: the
gates and the row mask apply outside any module, so what the residual receives is read as a difference of
residuals and edited there::

    hook_attn_out (and hook_cross_attn_out) = resid_mid - resid_pre   (read at ln2's input)
    hook_resid_mid                          = resid_mid
    hook_mlp_out                            = resid_post - resid_mid  (read at the layer's output)

An edit of ``hook_attn_out`` or ``hook_resid_mid`` changes ln2's input (what the MLP reads) and, by the same amount,
the layer's output (the residual carried past the MLP); an edit of ``hook_mlp_out`` changes the layer's output.
Each returns ``x + (edited - (x - base))``: bitwise ``x`` when nothing is edited, and differentiable through the
edited write, so backward hooks see the gradient the residual carries.
"""

from __future__ import annotations

from vlm_lens.hook_calls import RunState, run_chain


def mid_hook(state: RunState, layer: int, attn_chain: list, mid_chain: list):
    """Forward pre-hook on the layer's ln2: its input is resid_mid."""

    def hook(module, args, kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        mid = x
        if attn_chain:
            base = state.resid_pre[layer]
            write = run_chain(attn_chain, x - base, state)
            mid = x + (write - (x - base))
        if mid_chain:
            mid = run_chain(mid_chain, mid, state)
        state.cross_mid[layer] = mid
        state.cross_delta[layer] = None if mid is x else mid - x
        if mid is x:
            return None
        return ((mid, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": mid})

    return hook


def out_hook(state: RunState, layer: int, mlp_chain: list):
    """Forward hook on the layer: what an edit of resid_mid changed is carried on; then the MLP's write."""

    def hook(module, args, output):
        out = output[0] if isinstance(output, tuple) else output
        delta = state.cross_delta.get(layer)
        new = out if delta is None else out + delta
        if mlp_chain:
            mid = state.cross_mid[layer]
            write = run_chain(mlp_chain, new - mid, state)
            new = new + (write - (new - mid))
        if new is out:
            return None
        return (new, *output[1:]) if isinstance(output, tuple) else new

    return hook
