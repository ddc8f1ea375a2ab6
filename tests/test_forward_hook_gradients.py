"""The attribution-patching idiom: a tensor a forward hook saved is the tensor the loss is differentiated through,
at every per-head name and at resid_mid (issue 24, item 3), with the forward's numbers unchanged."""

from __future__ import annotations

import pytest
import torch

NAMES = ("attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_z", "hook_resid_mid", "hook_resid_pre", "hook_mlp_out")


@pytest.mark.parametrize("suffix", NAMES)
def test_a_saved_activation_gets_the_gradient_backward_hooks_see(model, inputs, suffix):
    """Oracle: the gradient a backward hook at the same name receives (TL's bwd_hooks, itself tested against raw
    torch autograd), at a self-attention layer and, for a cross-attention family, at a cross layer."""
    layers = [0, *model.cfg.cross_layers[:1]]
    for layer in layers:
        name = f"blocks.{layer}.{suffix}"
        saved, seen = {}, {}

        def keep(act, hook, saved=saved):
            act.retain_grad()
            saved["act"] = act

        def grad(g, hook, seen=seen):
            seen["grad"] = g.detach().clone()

        with torch.no_grad():
            plain = model(inputs)
        for how in ("backward", "autograd.grad"):  # apart: a retained grad also accumulates under autograd.grad
            logits = model.run_with_hooks(inputs, fwd_hooks=[(name, keep)], bwd_hooks=[(name, grad)])
            assert torch.equal(logits.detach(), plain)  # keeping the tensor in the graph changes no number
            metric = logits[:, -1].float().logsumexp(-1).sum()
            if how == "backward":
                metric.backward()
                got = saved["act"].grad
                assert got is not None, f"{name}: the saved tensor is not in the graph"
            else:
                (got,) = torch.autograd.grad(metric, saved["act"])
            torch.testing.assert_close(got, seen["grad"], rtol=1e-5, atol=1e-7)
            assert seen["grad"].abs().sum() > 0
