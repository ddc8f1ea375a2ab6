"""What a TransformerLens user types next, against independent oracles: gradients against
``torch.autograd.grad`` on the HF model, losses against HF's, weights against the HF projections,
early exit against the full run."""

from __future__ import annotations

import pytest
import torch
from torch.nn.functional import silu

from tests.conftest import make_images
from vlm_lens.errors import InputError


def labels_of(model, inputs) -> torch.Tensor:
    """Text tokens predicted from a real token: padding, image tokens and the token after padding ignored (-100)."""
    labels = inputs.input_ids.clone()
    for i, row in enumerate(inputs.attention_mask):
        first = int(row.nonzero()[0])
        labels[i, : first + 1] = -100
    labels[labels == model.cfg.image_token_id] = -100
    return labels


def post_norm(model, block, kind: str, x: torch.Tensor, layer: int = 1, inputs=None) -> torch.Tensor:
    """x (o_proj's or the MLP's output) as the residual receives it: through the block's own post-attention /
    post-MLP norm where the family has one (Gemma 3); times a cross-attention layer's tanh gate, the MLP's only at
    the rows whose cross-attention mask lets them see an image tile (Llama-3.2-Vision, as its decoder layer does)."""
    from vlm_lens.adapter import get_module

    table = model.adapter.block_at(model.hf_model.config, layer)
    path = table.get(f"{kind}_post_norm")
    x = x if path is None else get_module(block, path)(x)
    gate = table.get(f"{kind}_write_gate")
    if gate is None:
        return x
    x = getattr(block, gate).tanh() * x
    if kind == "mlp":
        x = x * inputs.tensors["cross_attention_mask"].flatten(2).any(-1)[..., None]
    return x


def hf_gradients(model, eager_hf, inputs, layer: int) -> dict[str, torch.Tensor]:
    """d(HF's loss)/d(activation) at one layer, with raw torch hooks on the eager copy of the model."""
    from vlm_lens.adapter import get_module, layer_list

    block = layer_list(eager_hf, model.adapter.modules["layers"])[layer]
    seen, handles = {}, []
    grab = lambda key: (
        lambda m, args, out=None: seen.__setitem__(
            key, args[0] if out is None else out[0] if isinstance(out, tuple) else out
        )
    )  # noqa: E731
    table = model.adapter.block_at(model.hf_model.config, layer)
    handles.append(block.register_forward_hook(grab("resid_post")))
    if layer in model.cfg.cross_layers:  # gated writes: ln2's input is the very tensor resid_mid (the residual too)
        handles.append(get_module(block, table["ln2"]).register_forward_pre_hook(grab("attn_out")))
    else:
        handles.append(get_module(block, table["attn_out"]).register_forward_hook(grab("attn_out")))
    handles.append(get_module(block, table["attn_o"]).register_forward_pre_hook(grab("z")))
    handles.append(get_module(block, table["mlp_down"]).register_forward_pre_hook(grab("post")))
    try:
        with torch.enable_grad():
            out = eager_hf(**inputs.tensors, labels=labels_of(model, inputs), output_attentions=True)
            keys = ["resid_post", "attn_out", "z", "post"]
            grads = torch.autograd.grad(out.loss, [seen[k] for k in keys] + [out.attentions[layer]])
    finally:
        for h in handles:
            h.remove()
    return dict(zip(keys + ["pattern"], grads)) | {"loss": out.loss}


def test_backward_hooks_and_cached_gradients_equal_autograd_on_the_hf_model(model, eager_hf, inputs):
    layer = 1
    names = {
        f"blocks.{layer}.hook_resid_post": "resid_post",
        f"blocks.{layer}.hook_resid_mid": "attn_out",
        f"blocks.{layer}.mlp.hook_post": "post",
        f"blocks.{layer}.attn.hook_pattern_rows": "pattern",
    }
    loss, cache = model.run_with_cache(
        inputs, names_filter=list(names) + [f"blocks.{layer}.attn.hook_z"], return_type="loss", incl_bwd=True
    )
    ref = hf_gradients(model, eager_hf, inputs, layer)
    torch.testing.assert_close(loss, ref["loss"], atol=1e-5, rtol=1e-5)
    for name, key in names.items():
        expected = ref[key][:, :, -1:] if key == "pattern" else ref[key]  # the rows: the last query position
        torch.testing.assert_close(cache[name + "_grad"], expected, atol=1e-6, rtol=1e-4, msg=name)
    z_grad = ref["z"].view(*cache[f"blocks.{layer}.attn.hook_z"].shape)  # per head
    torch.testing.assert_close(cache[f"blocks.{layer}.attn.hook_z_grad"], z_grad, atol=1e-6, rtol=1e-4)


def test_a_backward_hook_can_replace_the_gradient(model, inputs):
    last = model.cfg.n_layers - 1
    seen = {}
    zero = lambda grad, hook: torch.zeros_like(grad)  # noqa: E731
    keep = lambda grad, hook: seen.__setitem__(hook.name, grad.clone())  # noqa: E731
    with torch.enable_grad():
        loss = model.run_with_hooks(
            inputs,
            return_type="loss",
            bwd_hooks=[(f"blocks.{last}.hook_resid_post", zero), ("blocks.0.hook_resid_pre", keep)],
        )
        loss.backward()  # after the call returns: the hooks ride on this forward's tensors
    assert seen["blocks.0.hook_resid_pre"].abs().max() == 0  # everything reaches the loss through the last layer


def test_keyword_only_hooks_as_transformer_lens_writes_them(model, inputs):
    names = []

    def tl_hook(activation, *, hook):
        names.append(hook.name)

    model.run_with_hooks(inputs, fwd_hooks=[("blocks.0.hook_resid_post", tl_hook)])
    assert names == ["blocks.0.hook_resid_post"]


def test_loss_and_return_types_equal_hf(model, inputs):
    labels = labels_of(model, inputs)
    with torch.no_grad():
        ref = model.hf_model(**inputs.tensors, labels=labels)
        loss = model(inputs, return_type="loss")
        logits, both_loss = model(inputs, return_type="both")
    torch.testing.assert_close(loss, ref.loss, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(both_loss, ref.loss, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(logits, ref.logits, atol=1e-6, rtol=1e-6)
    assert model(inputs, return_type=None) is None
    with pytest.raises(InputError, match="return_type must be one of"):
        model(inputs, return_type="probs")


def test_stop_at_layer_returns_the_residual_entering_it(model, inputs):
    n = model.cfg.n_layers
    with torch.no_grad():
        _, cache = model.run_with_cache(inputs, names_filter=lambda name: "resid" in name)
        fired = []
        for layer in range(n):
            resid = model.run_with_hooks(
                inputs,
                stop_at_layer=layer,
                fwd_hooks=[
                    (
                        lambda name: name.endswith("resid_pre") or name == "hook_embed",
                        lambda a, hook: fired.append(hook.name),
                    )
                ],
            )
            torch.testing.assert_close(resid, cache["resid_pre", layer], atol=0, rtol=0)
            assert fired == ["hook_embed"] + [f"blocks.{l}.hook_resid_pre" for l in range(layer)]  # layer l never runs
            fired.clear()
        final, partial = model.run_with_cache(
            inputs,
            stop_at_layer=n,
            names_filter=lambda name: name.startswith("blocks.") and name.endswith("resid_post"),
        )
    torch.testing.assert_close(final, cache["resid_post", n - 1], atol=0, rtol=0)
    assert len(partial) == n  # cached up to the stop, the last layer's output included
    with pytest.raises(InputError, match=f"stop_at_layer must be in 0..{n}"):
        model(inputs, stop_at_layer=n + 1)


def test_weights_reproduce_the_hf_projections_and_the_cache(model, inputs):
    from vlm_lens.adapter import get_module, layer_list

    layer, cfg = 1, model.cfg
    block = layer_list(model.hf_model, model.adapter.modules["layers"])[layer]
    q_out = {}
    table = model.adapter.block_at(model.hf_model.config, layer)
    handle = get_module(block, table["attn_q"]).register_forward_hook(lambda m, a, o: q_out.setdefault("q", o))
    try:
        with torch.no_grad():
            logits, cache = model.run_with_cache(inputs)
    finally:
        handle.remove()
    ln1, ln2 = cache["ln1", layer], cache["ln2", layer]
    w = model.blocks[layer]
    assert model.W_Q.shape == (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head)
    assert model.W_O.shape == (cfg.n_layers, cfg.n_heads, cfg.d_head, cfg.d_model)
    q = torch.einsum("bpd,hde->bphe", ln1, model.W_Q[layer]) + model.b_Q[layer]
    torch.testing.assert_close(q.flatten(-2), q_out["q"], atol=1e-5, rtol=1e-5)
    # the last position's z: its attention row (rows cache) over V built from W_V, per head (a cross-attention
    # layer's values are built from the projected image features, image by image, tile by tile)
    source = ln1 if layer not in cfg.cross_layers else cache["projector"].reshape(ln1.shape[0], -1, cfg.d_model)
    v = torch.einsum("bpd,hde->bhpe", source, w.attn.W_V) + w.attn.b_V[None, :, None]
    z_last = torch.einsum("bhk,bhke->bhe", cache["pattern_rows", layer][:, :, 0], v)
    torch.testing.assert_close(z_last, cache["z", layer][:, -1], atol=1e-5, rtol=1e-4)
    attn_out = torch.einsum("bphe,hed->bpd", cache["z", layer], w.attn.W_O) + w.attn.b_O
    torch.testing.assert_close(
        post_norm(model, block, "attn", attn_out, layer), cache["attn_out", layer], atol=1e-5, rtol=1e-4
    )
    torch.testing.assert_close(ln2 @ model.W_gate[layer], cache["pre", layer], atol=1e-5, rtol=1e-4)
    mlp_out = cache["post", layer] @ model.W_out[layer] + model.b_out[layer]
    torch.testing.assert_close(
        post_norm(model, block, "mlp", mlp_out, layer, inputs), cache["mlp_out", layer], atol=1e-5, rtol=1e-4
    )
    if cfg.act_fn == "silu":  # LLaVA's and Qwen's MLP: silu(gate) * up
        torch.testing.assert_close(
            silu(cache["pre", layer]) * (ln2 @ model.W_in[layer]), cache["post", layer], atol=1e-5, rtol=1e-4
        )
    torch.testing.assert_close(cache["ln_final"] @ model.W_U + model.b_U, logits, atol=1e-5, rtol=1e-4)
    token = int(logits[0, -1].argmax())
    torch.testing.assert_close(model.tokens_to_residual_directions(token), model.W_U[:, token])


def test_the_model_is_a_module_with_transformer_lens_config_fields(model, inputs):
    cfg, hf = model.cfg, model.hf_model
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in hf.parameters())
    assert set(model.state_dict()) == {f"hf_model.{k}" for k in hf.state_dict()}
    assert model.to("cpu") is model and cfg.device == torch.device("cpu") and cfg.dtype == torch.float32
    text = hf.config.get_text_config()
    assert (cfg.n_ctx, cfg.n_key_value_heads, cfg.normalization_type) == (
        text.max_position_embeddings,
        text.num_key_value_heads,
        "RMS",
    )
    tokens = model.to_str_tokens(inputs.input_ids)  # ids alone: the tokenizer's strings (VLMInputs label images)
    assert len(tokens) == 2 and len(tokens[0]) == inputs.input_ids.shape[1]
    span = inputs.image_spans[0][0]
    assert {tokens[0][i] for i in span.positions} == {model.tokenizer.convert_ids_to_tokens(cfg.image_token_id)}


def test_the_cache_as_an_analysis_api(model, inputs):
    from analyses.logit_lens import logit_lens

    n, t, u = model.cfg.n_layers, 3, 5
    with torch.no_grad():
        logits, cache = model.run_with_cache(inputs)
        resid, labels = cache.accumulated_resid(apply_ln=True, pos_slice=-1, return_labels=True)
        assert labels == [f"{l}_pre" for l in range(n)] + ["final_post"]
        lens = resid @ model.W_U  # the logit lens: layer l's output is the residual entering layer l + 1
        torch.testing.assert_close(lens[1:], logit_lens(model, cache), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(lens[-1] + model.b_U, logits[:, -1], atol=1e-4, rtol=1e-4)
        # the linearised final norm on the whole final residual is the norm itself
        final = cache.apply_ln_to_stack(cache["resid_post", -1][None])[0]
        torch.testing.assert_close(final, cache["ln_final"], atol=1e-5, rtol=1e-4)

        parts, names = cache.decompose_resid(return_labels=True)
        assert names[:3] == ["embed", "0_attn_out", "0_mlp_out"] and len(names) == 2 * n + 1 + len(
            model.vocab.injected_layers
        )
        torch.testing.assert_close(parts.sum(0), cache["resid_post", -1], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(cache.decompose_resid(layer=1).sum(0), cache["resid_pre", 1], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(
            cache.decompose_resid(layer=1, mlp_input=True).sum(0), cache["resid_mid", 1], atol=1e-5, rtol=1e-4
        )
        attrs = cache.logit_attrs(cache.decompose_resid(pos_slice=-1), tokens=t, incorrect_tokens=u, pos_slice=-1)
        difference = (logits[:, -1, t] - model.b_U[t]) - (logits[:, -1, u] - model.b_U[u])
        torch.testing.assert_close(attrs.sum(0), difference, atol=1e-4, rtol=1e-4)
        # per-item tokens ([batch]) at every position: each item's own direction, at each of its positions
        right, wrong = logits[:, -1].argmax(-1), logits[:, -1].argmin(-1)
        per_item = cache.logit_attrs(cache.decompose_resid(), tokens=right, incorrect_tokens=wrong)
        items = torch.arange(len(right))
        expected = (logits[items, :, right] - model.b_U[right][:, None]) - (
            logits[items, :, wrong] - model.b_U[wrong][:, None]
        )
        assert per_item.shape == (len(names), *logits.shape[:2])
        torch.testing.assert_close(per_item.sum(0), expected, atol=1e-4, rtol=1e-4)

        heads, head_labels = cache.stack_head_results(return_labels=True, pos_slice=-1)
        H = model.cfg.n_heads
        assert heads.shape[0] == n * H and head_labels[H] == "L1H0"
        for l in range(n):
            torch.testing.assert_close(
                heads[l * H : (l + 1) * H].sum(0) + model.b_O[l], cache["attn_out", l][:, -1], atol=1e-5, rtol=1e-4
            )
        neurons, neuron_labels = cache.stack_neuron_results(1, return_labels=True, pos_slice=-1)
        assert neuron_labels[:2] == ["L0N0", "L0N1"]
        torch.testing.assert_close(neurons.sum(0) + model.b_out[0], cache["mlp_out", 0][:, -1], atol=1e-5, rtol=1e-4)

        with pytest.raises(InputError, match="needs items that share one layout"):
            cache.accumulated_resid(pos_slice="image")  # two prompts of different lengths
        one = model.prepare(images=make_images()[:1], prompts=["how many"])
        _, single = model.run_with_cache(one)
        image_tokens = one.input_ids[0] == model.cfg.image_token_id  # (LLaVA-NeXT's newlines are image tokens too)
        torch.testing.assert_close(
            single.accumulated_resid(pos_slice="image")[0], single["resid_pre", 0][:, image_tokens], atol=0, rtol=0
        )
        assert single.remove_batch_dim()["resid_post", 0].shape == single["resid_post", 0].shape[1:]
