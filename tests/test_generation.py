"""Generation with hooks: equal to HF's greedy generate when hooks do nothing; hooks see each step."""

from __future__ import annotations

import torch


def test_generate_with_noop_hooks_equals_hf_greedy(model, inputs):
    steps = []

    def watch(act, hook):
        steps.append((hook.step, act.shape[1]))

    with torch.no_grad():
        ref = model.hf_model.generate(**inputs.tensors, max_new_tokens=5, do_sample=False)
        ours = model.generate(inputs, max_new_tokens=5, fwd_hooks=[("blocks.0.hook_resid_post", watch)])
    assert torch.equal(ours, ref)
    n_steps = ref.shape[1] - inputs.input_ids.shape[1]
    assert [s for s, _ in steps] == list(range(n_steps))
    assert steps[0][1] == inputs.input_ids.shape[1] and all(length == 1 for _, length in steps[1:])


def test_hooks_act_at_every_step(model, inputs):
    direction = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(1)) * 5
    path = f"{model.adapter.modules['layers']}.1"
    handle = model.hf_model.get_submodule(path).register_forward_hook(lambda m, a, out: out + direction)
    try:
        with torch.no_grad():
            raw = model.hf_model.generate(**inputs.tensors, max_new_tokens=4, do_sample=False)
    finally:
        handle.remove()
    with torch.no_grad():
        ours = model.generate(
            inputs, max_new_tokens=4, fwd_hooks=[("blocks.1.hook_resid_post", lambda a, h: a + direction)]
        )
    assert torch.equal(ours, raw)
