"""The attention-row capture and the full pattern, against HF's eager output_attentions."""

from __future__ import annotations

import torch

ATOL = 1e-5


def eager_attentions(eager_hf, inputs):
    with torch.no_grad():
        return eager_hf(**inputs.tensors, output_attentions=True).attentions


def test_rows_equal_eager_attentions_at_image_columns(model, inputs, eager_hf):
    ref = eager_attentions(eager_hf, inputs)
    with torch.no_grad():
        logits, cache = model.run_with_cache(inputs, names_filter=lambda n: n.endswith("hook_pattern_rows"))
        fast = model.hf_model(**inputs.tensors).logits
    assert torch.equal(logits, fast), "capturing rows must keep the model's own attention implementation"
    last = inputs.last_positions()
    for layer in range(model.cfg.n_layers):
        rows = cache["pattern_rows", layer]
        assert rows.shape == (inputs.batch_size, model.cfg.n_heads, 1, inputs.input_ids.shape[1])
        for item in range(inputs.batch_size):
            cols = inputs.image_positions(item)
            expected = ref[layer][item, :, last[item], cols]
            assert torch.allclose(rows[item, :, 0, cols], expected, atol=ATOL)
            assert torch.allclose(rows[item, :, 0], ref[layer][item, :, last[item]], atol=ATOL)


def test_rows_at_chosen_positions(model, inputs, eager_hf):
    ref = eager_attentions(eager_hf, inputs)
    with torch.no_grad():
        _, cache = model.run_with_cache(inputs, names_filter="blocks.1.attn.hook_pattern_rows", query_positions=[-1, -3, 20])
    last = inputs.last_positions()
    for item in range(inputs.batch_size):
        for row, pos in enumerate([last[item], last[item] - 2, 20]):
            assert torch.allclose(cache["pattern_rows", 1][item, :, row], ref[1][item, :, pos], atol=ATOL)


def test_full_pattern_equals_eager_at_real_rows(model, inputs, eager_hf):
    ref = eager_attentions(eager_hf, inputs)
    with torch.no_grad():
        _, cache = model.run_with_cache(inputs, names_filter=lambda n: n.endswith("attn.hook_pattern"))
    real = inputs.attention_mask.bool()
    for layer in range(model.cfg.n_layers):
        assert torch.allclose(cache["pattern", layer][real.nonzero(as_tuple=True)[0], :, real.nonzero(as_tuple=True)[1]],
                              ref[layer][real.nonzero(as_tuple=True)[0], :, real.nonzero(as_tuple=True)[1]], atol=ATOL)


def test_default_cache_leaves_full_pattern_out(model, inputs):
    with torch.no_grad():
        _, cache = model.run_with_cache(inputs)
    assert not any(name.endswith("attn.hook_pattern") for name in cache)
    assert "blocks.0.attn.hook_pattern_rows" in cache


def test_editing_the_pattern_changes_the_output(model, inputs):
    """A zero pattern at a layer is the same as zeroing that layer's attention write (no o_proj bias)."""
    zero = lambda act, hook: torch.zeros_like(act)  # noqa: E731
    with torch.no_grad():
        plain = model(inputs)
        by_pattern = model.run_with_hooks(inputs, fwd_hooks=[("blocks.1.attn.hook_pattern", zero)])
        by_attn_out = model.run_with_hooks(inputs, fwd_hooks=[("blocks.1.hook_attn_out", zero)])
    real = inputs.attention_mask.bool()
    assert not torch.allclose(plain[real], by_pattern[real], atol=1e-3)
    assert torch.allclose(by_pattern[real], by_attn_out[real], atol=ATOL)


def test_attention_implementation_restored(model, inputs):
    config = model.hf_model.get_submodule(model.adapter.modules["layers"])[0].self_attn.config
    before = config._attn_implementation
    with model.hooks([("blocks.0.attn.hook_pattern_rows", lambda a, h: None)], inputs=inputs):
        assert config._attn_implementation == "vlm_lens:" + before
    assert config._attn_implementation == before


def test_nested_sessions_share_the_routing(model, inputs, eager_hf):
    ref = eager_attentions(eager_hf, inputs)
    config = model.hf_model.get_submodule(model.adapter.modules["layers"])[0].self_attn.config
    before = config._attn_implementation
    with model.hooks([("blocks.0.attn.hook_pattern_rows", lambda a, h: None)], inputs=inputs):
        with torch.no_grad():
            _, cache = model.run_with_cache(inputs, names_filter="blocks.1.attn.hook_pattern_rows")
        assert config._attn_implementation == "vlm_lens:" + before
    assert config._attn_implementation == before
    last = inputs.last_positions()
    assert torch.allclose(cache["pattern_rows", 1][0, :, 0], ref[1][0, :, last[0]], atol=ATOL)
