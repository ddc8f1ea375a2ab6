"""HookedVLM's numbers equal HuggingFace's own, for every family, with and without hooks."""

from __future__ import annotations

import inspect

import pytest
import torch

from tests.conftest import make_images
from vlm_lens import HookedVLM

ATOL = 1e-5


def hf_forward(model: HookedVLM, inputs, **kwargs):
    with torch.no_grad():
        return model.hf_model(**inputs.tensors, **kwargs)


def test_logits_equal_hf(model, inputs):
    ref = hf_forward(model, inputs)
    with torch.no_grad():
        assert torch.equal(model(inputs), ref.logits)
        assert torch.equal(model(**inputs.tensors), ref.logits)  # HF keyword tensors work too


def test_batch_mixes_prompt_lengths_and_images(model, inputs):
    mask = inputs.attention_mask
    assert (mask.sum(1)[0] != mask.sum(1)[1]).item(), "the fixture should pad one prompt"
    assert inputs.padding_side == "left"
    # Each item on its own gives the same last-token logits as inside the padded batch.
    with torch.no_grad():
        batched = model(inputs)[:, -1]
        for i, image in enumerate(make_images()):
            single = model.prepare(images=[image], prompts=[inputs.prompts[i]])
            assert torch.allclose(model(single)[0, -1], batched[i], atol=1e-4)


def test_hidden_states_equal_hf(model, inputs):
    ref = hf_forward(model, inputs, output_hidden_states=True)
    with torch.no_grad():
        _, cache = model.run_with_cache(inputs, names_filter=lambda n: "resid" in n)
    n = model.cfg.n_layers
    assert len(ref.hidden_states) == n + 1
    assert torch.equal(cache["resid_pre", 0], ref.hidden_states[0])
    for layer in range(n - 1):  # HF's hidden state l + 1 is block l's output (before any DeepStack addition)
        assert torch.equal(cache["resid_post", layer], ref.hidden_states[layer + 1])
    # HF's last hidden state is after the final norm.
    norm = model.hf_model.get_submodule(model.adapter.modules["final_norm"])
    assert torch.allclose(norm(cache["resid_post", n - 1]), ref.hidden_states[n], atol=ATOL)


def test_noop_hooks_on_every_name_change_nothing(model, inputs):
    ref = hf_forward(model, inputs, output_hidden_states=True)
    seen = []

    def identity(act, hook):
        seen.append(hook.name)
        return act.clone()  # a real replacement, not a no-op by omission

    with torch.no_grad():
        logits = model.run_with_hooks(inputs, fwd_hooks=[(name, identity) for name in model.hook_names()])
    assert set(seen) == set(model.hook_names())
    # hook_pattern routes attention through eager: equal to the sdpa forward to float tolerance
    # at every real position (padding rows are fully masked; sdpa and eager fill them differently)
    real = inputs.attention_mask.bool()
    assert (logits - ref.logits)[real].abs().max().item() <= ATOL


def test_embed_is_resid_pre_zero(model, inputs):
    with torch.no_grad():
        _, cache = model.run_with_cache(inputs, names_filter=["hook_embed", "blocks.0.hook_resid_pre"])
    assert torch.equal(cache["hook_embed"], cache["resid_pre", 0])


def test_residual_decomposition_is_exact(model, inputs):
    with torch.no_grad():
        _, cache = model.run_with_cache(inputs)
    total = cache["resid_pre", 0].clone()
    for layer in range(model.cfg.n_layers):
        pre, attn, mlp = cache["resid_pre", layer], cache["attn_out", layer], cache["mlp_out", layer]
        assert torch.allclose(cache["resid_mid", layer], pre + attn, atol=ATOL)
        assert torch.allclose(cache["resid_post", layer], pre + attn + mlp, atol=ATOL)
        total = total + attn + mlp
        if layer in model.vocab.injected_layers:  # visual features added between blocks (Qwen3-VL's DeepStack)
            added = cache["deepstack", layer]
            text = inputs.input_ids != model.cfg.image_token_id
            assert added[text].abs().max() == 0 and added[~text].abs().max() > 0  # at the image tokens only
            assert torch.allclose(cache["resid_pre", layer + 1], cache["resid_post", layer] + added, atol=ATOL)
            total = total + added
        elif layer + 1 < model.cfg.n_layers:
            assert torch.equal(cache["resid_pre", layer + 1], cache["resid_post", layer])
    # at every position, image positions included
    assert torch.allclose(total, cache["resid_post", -1], atol=1e-4)
    image_pos = inputs.image_positions(0)
    assert torch.allclose(total[0, image_pos], cache["resid_post", -1][0, image_pos], atol=1e-4)


def test_final_norm_and_unembed_reproduce_logits(model, inputs):
    with torch.no_grad():
        logits, cache = model.run_with_cache(
            inputs, names_filter=["blocks.1.hook_resid_post", "ln_final.hook_normalized"]
        )
        norm = model.hf_model.get_submodule(model.adapter.modules["final_norm"])
        unembed = model.hf_model.get_submodule(model.adapter.modules["unembed"])
        assert torch.allclose(unembed(norm(cache["resid_post", -1])), logits, atol=ATOL)
        assert torch.allclose(unembed(cache["ln_final"]), logits, atol=ATOL)


def test_vision_and_projector_hooks_match_hf(model, inputs):
    if model.cfg.cross_layers:  # the projected features are the cross-attention's keys and values, not tokens
        vision = model.hf_model.get_submodule(model.adapter.modules["vision_layers"].rsplit(".", 2)[0])
        takes = inspect.signature(vision.forward).parameters
        with torch.no_grad():
            _, cache = model.run_with_cache(inputs, names_filter=lambda n: n.startswith(("vision", "projector")))
            states = vision(**{k: v for k, v in inputs.tensors.items() if k in takes}).last_hidden_state
            projected = model.hf_model.get_submodule(model.adapter.modules["projector"])(states)
        assert torch.equal(cache["projector"], projected)
        return
    takes = inspect.signature(model.hf_model.model.get_image_features).parameters
    image_tensors = {key: value for key, value in inputs.tensors.items() if key in takes and key != "input_ids"}
    with torch.no_grad():
        _, cache = model.run_with_cache(
            inputs,
            names_filter=lambda n: n.startswith(("vision", "projector", "hook_embed")) or n.endswith("hook_deepstack"),
        )
        output = model.hf_model.model.get_image_features(**image_tensors)
        feats = output.pooler_output  # HF's own image features
        feats = torch.cat(list(feats)) if isinstance(feats, (list, tuple)) else feats.flatten(0, 1)
    for layer in model.vocab.injected_layers:  # DeepStack: what is added after layer l is HF's l-th deepstack feature
        added = torch.cat([cache["deepstack", layer][i, inputs.image_positions(i)] for i in range(inputs.batch_size)])
        assert torch.allclose(added, torch.cat(list(output.deepstack_features[layer])), atol=ATOL)
    projected = cache["projector"].reshape(-1, cache["projector"].shape[-1])
    # HF's image features are exactly what sits at the image tokens entering layer 0 (LLaVA-NeXT's newlines included)
    image_token = inputs.input_ids == model.hf_model.config.image_token_id
    at_images = torch.cat([cache["hook_embed"][i, image_token[i]] for i in range(inputs.batch_size)])
    assert torch.allclose(at_images, feats, atol=ATOL)
    if not any(s.views for spans in inputs.image_spans for s in spans):  # one view: the projector's output, as is
        assert torch.allclose(projected, feats, atol=ATOL)
        flat = torch.cat([cache["hook_embed"][i, inputs.image_positions(i)] for i in range(inputs.batch_size)])
        assert torch.equal(flat, projected)
    else:  # several views: each image's base view is one of the projector's [view, patch, d] rows, unchanged
        for i, spans in enumerate(inputs.image_spans):
            for span in spans:
                base = cache["hook_embed"][i, list(span.base.positions)]
                assert any(torch.equal(base, row) for row in cache["projector"]), f"item {i}: base view not projected"


def envoy(root, path: str):
    """nnsight's proxy of the module at a dotted path."""
    for part in path.split("."):
        root = getattr(root, part)
    return root


def test_nnsight_oracle_per_layer(model, inputs):
    nnsight = pytest.importorskip("nnsight")
    traced = nnsight.NNsight(model.hf_model)
    modules = model.adapter.modules
    saved, cross = {}, {}
    with torch.no_grad(), traced.trace(**inputs.tensors):
        vision = envoy(traced, modules["vision_layers"])
        for layer in range(model.cfg.n_vision_layers):
            out = vision[layer].output
            saved[f"vision.blocks.{layer}.hook_resid_post"] = (out[0] if isinstance(out, tuple) else out).save()
        layers = envoy(traced, modules["layers"])
        for layer in range(model.cfg.n_layers):
            block, block_paths = layers[layer], model.adapter.block_at(model.hf_model.config, layer)
            saved[f"blocks.{layer}.hook_resid_pre"] = block.input.save()
            attn_out = envoy(
                block, block_paths["attn_out"]
            ).output  # attention's (out, weights), or a post-norm's tensor
            attn_out = (attn_out[0] if isinstance(attn_out, tuple) else attn_out).save()
            if layer in model.cfg.cross_layers:  # gated writes: what ln2 reads is resid_mid
                cross[layer] = (attn_out, envoy(block, block_paths["ln2"]).input.save())
            else:
                saved[f"blocks.{layer}.hook_attn_out"] = attn_out
            saved[f"blocks.{layer}.mlp.hook_post"] = envoy(block, block_paths["mlp_down"]).input.save()
            if layer not in model.cfg.cross_layers:
                saved[f"blocks.{layer}.hook_mlp_out"] = envoy(block, block_paths["mlp_out"]).output.save()
            saved[f"blocks.{layer}.hook_resid_post"] = block.output.save()
    names = list(saved) + [
        f"blocks.{l}.{h}"
        for l in cross
        for h in ("hook_attn_out", "hook_cross_attn_out", "hook_resid_mid", "hook_mlp_out")
    ]
    with torch.no_grad():
        _, cache = model.run_with_cache(inputs, names_filter=names)
    for name, value in saved.items():
        assert torch.allclose(cache[name], value, atol=ATOL), name
    for layer, (attn_out, mid) in cross.items():  # the residual's differences, and HF's own tanh gate on attention
        gate = model.hf_model.get_parameter(
            f"{modules['layers']}.{layer}.{model.adapter.cross_block['attn_write_gate']}"
        )
        assert torch.equal(cache["resid_mid", layer], mid)
        assert torch.equal(cache["attn_out", layer], mid - saved[f"blocks.{layer}.hook_resid_pre"])
        assert torch.equal(cache["cross_attn_out", layer], cache["attn_out", layer])
        assert torch.allclose(cache["attn_out", layer], gate.tanh() * attn_out, atol=ATOL)
        assert torch.equal(cache["mlp_out", layer], saved[f"blocks.{layer}.hook_resid_post"] - mid)


def test_editing_what_is_added_between_blocks(model, inputs):
    """hook_deepstack (Qwen3-VL): zeroing it equals feeding block l's output on to block l + 1 unchanged, done
    with raw torch hooks on the HF modules; a no-op hook changes nothing."""
    if not model.vocab.injected_layers:
        pytest.skip(f"{model.cfg.family} adds nothing between its blocks")
    layer = model.vocab.injected_layers[0]
    blocks = model.hf_model.get_submodule(model.adapter.modules["layers"])
    seen = {}
    handles = [
        blocks[layer].register_forward_hook(lambda m, a, out: seen.__setitem__("out", out)),
        blocks[layer + 1].register_forward_pre_hook(
            lambda m, args, kwargs: (
                ((seen["out"], *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": seen["out"]})
            ),
            with_kwargs=True,
        ),
    ]
    try:
        with torch.no_grad():
            expected = model.hf_model(**inputs.tensors).logits
    finally:
        for h in handles:
            h.remove()
    name = f"blocks.{layer}.hook_deepstack"
    with torch.no_grad():
        zeroed = model.run_with_hooks(inputs, fwd_hooks=[(name, lambda a, hook: torch.zeros_like(a))])
        same = model.run_with_hooks(inputs, fwd_hooks=[(name, lambda a, hook: a.clone())])
        plain = model(inputs)
    assert torch.allclose(zeroed, expected, atol=ATOL) and (zeroed - plain).abs().max() > 1e-4
    assert torch.equal(same, plain)
