"""Sessions remove exactly what they added, also when a hook or the forward raises."""

from __future__ import annotations

import pytest
import torch

HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_backward_hooks",
    "_backward_pre_hooks",
)


def warm(model, inputs) -> None:
    """transformers installs its own output-capturing hooks, for good, on a model's first forward."""
    with torch.no_grad():
        model.hf_model(**inputs.tensors)


def hook_census(module: torch.nn.Module) -> dict:
    return {(name, d): tuple(getattr(m, d)) for name, m in module.named_modules() for d in HOOK_DICTS if getattr(m, d)}


def attn_impls(model) -> list:
    return [
        m.config._attn_implementation for m in model.hf_model.modules() if hasattr(m, "config") and hasattr(m, "q_proj")
    ]


class Boom(RuntimeError):
    pass


def boom(act, hook):
    raise Boom(hook.name)


@pytest.mark.parametrize(
    "where", ["blocks.1.hook_mlp_out", "blocks.0.attn.hook_pattern", "vision.blocks.0.hook_resid_post"]
)
def test_exception_in_hook_leaves_exactly_the_hooks_before(model, inputs, where):
    # A hook the user added themselves, and transformers' own, must survive.
    warm(model, inputs)
    mine = model.hf_model.get_submodule(model.adapter.modules["final_norm"]).register_forward_hook(lambda *a: None)
    before, impls = hook_census(model.hf_model), attn_impls(model)
    assert before, "the census should see at least the user's own hook"
    fwd_hooks = [(name, lambda a, h: None) for name in model.hook_names()] + [(where, boom)]
    with pytest.raises(Boom):
        model.run_with_hooks(inputs, fwd_hooks=fwd_hooks)
    with pytest.raises(Boom):
        model.generate(inputs, max_new_tokens=2, fwd_hooks=fwd_hooks)
    with pytest.raises(Boom):
        with model.hooks(fwd_hooks, inputs=inputs):
            model.hf_model(**inputs.tensors)
    assert hook_census(model.hf_model) == before
    assert attn_impls(model) == impls
    mine.remove()


def test_exception_in_forward_cleans_up(model, inputs):
    warm(model, inputs)
    before = hook_census(model.hf_model)
    bad = dict(inputs.tensors)
    bad["pixel_values"] = bad["pixel_values"][..., :5]  # the HF forward itself fails
    with pytest.raises((RuntimeError, ValueError)):
        with model.hooks(
            [("blocks.0.hook_resid_post", lambda a, h: None), ("blocks.0.attn.hook_pattern_rows", lambda a, h: None)]
        ):
            model.hf_model(**bad)
    assert hook_census(model.hf_model) == before


def test_context_manager_adds_and_removes(model, inputs):
    warm(model, inputs)
    before = hook_census(model.hf_model)
    with model.hooks([("blocks.0.hook_resid_post", lambda a, h: None)]):
        during = hook_census(model.hf_model)
        assert len(during) > len(before)
    assert hook_census(model.hf_model) == before


def test_unused_hook_points_cost_nothing(model, inputs):
    warm(model, inputs)
    before = hook_census(model.hf_model)
    with model.hooks([("blocks.1.hook_resid_post", lambda a, h: None)]):
        added = {k: v for k, v in hook_census(model.hf_model).items() if before.get(k) != v}
    # one hook on the layer, one step counter on the model: nothing anywhere else
    assert sorted(k[0] for k in added) == ["", f"{model.adapter.modules['layers']}.1"]
