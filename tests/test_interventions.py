"""Edits through hook names equal the same edit made with a raw torch hook on the HF module."""

from __future__ import annotations

import torch


def raw_run(model, inputs, module_path, pre=False, fn=None):
    module = model.hf_model.get_submodule(module_path)
    if pre:
        handle = module.register_forward_pre_hook(lambda m, args: (fn(args[0]), *args[1:]))
    else:
        handle = module.register_forward_hook(
            lambda m, args, out: (fn(out[0]), *out[1:]) if isinstance(out, tuple) else fn(out)
        )
    try:
        with torch.no_grad():
            return model.hf_model(**inputs.tensors).logits
    finally:
        handle.remove()


def layer_path(model, layer, key):
    return f"{model.adapter.modules['layers']}.{layer}.{model.adapter.block_at(model.hf_model.config, layer)[key]}"


def test_zero_neurons_equals_raw_hook(model, inputs):
    neurons = [3, 7, 50]

    def zero(act, hook=None):
        act = act.clone()
        act[..., neurons] = 0
        return act

    with torch.no_grad():
        ours = model.run_with_hooks(inputs, fwd_hooks=[("blocks.1.mlp.hook_post", zero)])
    raw = raw_run(model, inputs, layer_path(model, 1, "mlp_down"), pre=True, fn=zero)
    assert torch.equal(ours, raw)
    with torch.no_grad():
        assert not torch.allclose(ours, model(inputs))


def test_zero_mlp_out_removes_the_mlp(model, inputs):
    zero = lambda act, hook=None: torch.zeros_like(act)  # noqa: E731
    with torch.no_grad():
        ours, cache = model.run_with_cache(
            inputs,
            fwd_hooks=[("blocks.0.hook_mlp_out", zero)],
            names_filter=["blocks.0.hook_resid_mid", "blocks.0.hook_resid_post"],
        )
    raw = raw_run(model, inputs, layer_path(model, 0, "mlp_out"), fn=zero)
    assert torch.equal(ours, raw)
    assert torch.equal(cache["resid_post", 0], cache["resid_mid", 0])


def test_resid_mid_edit_equals_adding_to_attention_output(model, inputs):
    direction = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model.run_with_hooks(inputs, fwd_hooks=[("blocks.0.hook_resid_mid", lambda a, h: a + direction)])
    raw = raw_run(model, inputs, layer_path(model, 0, "attn_out"), fn=lambda out: out + direction)
    assert torch.allclose(ours, raw, atol=1e-5)


def test_head_ablation_via_z_equals_raw(model, inputs):
    d_head = model.cfg.d_head

    def zero_head(act, hook):
        assert act.shape[-2:] == (model.cfg.n_heads, d_head)
        act = act.clone()
        act[..., 1, :] = 0
        return act

    def raw(x):
        x = x.clone()
        x[..., d_head : 2 * d_head] = 0
        return x

    with torch.no_grad():
        ours = model.run_with_hooks(inputs, fwd_hooks=[("blocks.1.attn.hook_z", zero_head)])
    assert torch.equal(ours, raw_run(model, inputs, layer_path(model, 1, "attn_o"), pre=True, fn=raw))


def test_resid_pre_edit_reaches_the_layer(model, inputs):
    add = lambda a, h=None: a * 0.5  # noqa: E731
    with torch.no_grad():
        ours = model.run_with_hooks(inputs, fwd_hooks=[("blocks.1.hook_resid_pre", add)])
    raw = raw_run(model, inputs, f"{model.adapter.modules['layers']}.1", pre=True, fn=add)
    assert torch.equal(ours, raw)


def test_transformer_lens_style_hook_functions(model, inputs):
    """A TransformerLens hook function (activation, hook) with hook.name and hook.layer() works unchanged."""
    seen = {}

    def tl_hook(resid, hook):
        seen[hook.name] = (hook.layer(), tuple(resid.shape))

    names = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    with torch.no_grad():
        model.run_with_hooks(inputs, fwd_hooks=[(lambda n: n in names, tl_hook)])
    assert {k: v[0] for k, v in seen.items()} == {names[0]: 0, names[1]: 1}
