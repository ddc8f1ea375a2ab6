"""The attention-row capture and the full pattern, against HF's eager output_attentions."""

from __future__ import annotations

import copy

import pytest
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
        cross = layer in model.cfg.cross_layers  # keys: the image's tile patches, not the sequence's positions
        keys = ref[layer].shape[-1] if cross else inputs.input_ids.shape[1]
        assert (
            rows.shape == (inputs.batch_size, model.cfg.n_heads, 1, keys)
            and (keys != inputs.input_ids.shape[1]) == cross
        )
        for item in range(inputs.batch_size):
            if not cross:
                cols = inputs.image_positions(item)
                expected = ref[layer][item, :, last[item], cols]
                assert torch.allclose(rows[item, :, 0, cols], expected, atol=ATOL)
            assert torch.allclose(rows[item, :, 0], ref[layer][item, :, last[item]], atol=ATOL)


def test_rows_at_chosen_positions(model, inputs, eager_hf):
    ref = eager_attentions(eager_hf, inputs)
    middle = inputs.input_ids.shape[1] // 2  # an absolute position
    with torch.no_grad():
        _, cache = model.run_with_cache(
            inputs, names_filter=lambda n: n.endswith("attn.hook_pattern_rows"), query_positions=[-1, -3, middle]
        )
    last = inputs.last_positions()
    for layer in range(model.cfg.n_layers):  # every layer: sliding-window layers (Gemma 3) read their own mask
        for item in range(inputs.batch_size):
            for row, pos in enumerate([last[item], last[item] - 2, middle]):
                assert torch.allclose(cache["pattern_rows", layer][item, :, row], ref[layer][item, :, pos], atol=ATOL)


def test_full_pattern_equals_eager_at_real_rows(model, inputs, eager_hf):
    ref = eager_attentions(eager_hf, inputs)
    with torch.no_grad():
        _, cache = model.run_with_cache(inputs, names_filter=lambda n: n.endswith("attn.hook_pattern"))
    real = inputs.attention_mask.bool()
    for layer in range(model.cfg.n_layers):
        assert torch.allclose(
            cache["pattern", layer][real.nonzero(as_tuple=True)[0], :, real.nonzero(as_tuple=True)[1]],
            ref[layer][real.nonzero(as_tuple=True)[0], :, real.nonzero(as_tuple=True)[1]],
            atol=ATOL,
        )


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


def test_sliding_window_layers_rows_in_prefill_and_generation(family):
    """Families with sliding-window layers (Gemma 3), the window narrowed below the prompt: the rows equal eager
    attention in the prefill, and while generating (the cache then holds only the window) every step's row is
    padded back to full length, equal to the teacher-forced eager row at that position (zeros outside the window)."""
    from tests.conftest import PROMPTS, make_images, tiny

    model = tiny(family)
    if "sliding_attention" not in (getattr(model.hf_model.config.get_text_config(), "layer_types", None) or ()):
        pytest.skip(f"{family} has no sliding-window layers")
    model = tiny(family, text={"sliding_window": 6})
    inputs = model.prepare(images=make_images()[:1], prompts=PROMPTS[:1])
    names = [f"blocks.{l}.attn.hook_pattern_rows" for l in range(model.cfg.n_layers)]
    rows = {}

    def keep(act, hook):
        rows.setdefault(hook.step, {})[hook.layer()] = act[0, :, 0].clone()

    with torch.no_grad():
        generated = model.generate(inputs, max_new_tokens=3, fwd_hooks=[(n, keep) for n in names])
        eager = copy.deepcopy(model.hf_model)
        eager.set_attn_implementation("eager")
        tensors = {**inputs.tensors, "input_ids": generated, "attention_mask": torch.ones_like(generated)}
        for key in ("token_type_ids",):
            if key in tensors:
                extra = torch.full(
                    (1, generated.shape[1] - inputs.input_ids.shape[1]), model.adapter.answer_token_types.get(key, 0)
                )
                tensors[key] = torch.cat([inputs.tensors[key], extra], 1)
        ref = eager(**tensors, output_attentions=True).attentions
    last = inputs.input_ids.shape[1] - 1
    for step in range(3):
        for layer in range(model.cfg.n_layers):
            row = rows[step][layer]  # head key
            assert row.shape[-1] == last + step + 1  # every position so far, not only the window's
            assert torch.allclose(row, ref[layer][0, :, last + step, : last + step + 1], atol=ATOL), (step, layer)
    sliding = [
        l for l, kind in enumerate(model.hf_model.config.get_text_config().layer_types) if kind == "sliding_attention"
    ]
    assert (rows[2][sliding[0]][:, : last + 2 - 6] == 0).all()  # outside the window: no attention
