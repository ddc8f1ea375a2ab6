"""The idioms a TransformerLens user's own notebook reaches for, on every family, each against an oracle: TL's own
``ActivationCache`` over our cache dict and TL's ``get_act_name`` where TL defines the semantics, HF's loss and
tokenizer, the full cache indexed by hand, the HF modules' own parameters."""

from __future__ import annotations

import warnings

import pytest
import torch

from tests.conftest import make_images
from vlm_lens.adapter import layer_list
from vlm_lens.errors import HookNameError, InputError, VLMLensWarning

TL_KEYS = [
    ("pattern", 0, "attn"),  # TL's Main Demo
    ("normalized", 1, "ln2"),
    ("scale", 1, "ln1"),
    ("attn", 0),
    ("q", -1, "attn"),
    ("resid_pre", 1),
    ("post", 0, "mlp"),
    "scale",
    "normalized",
    "k1",
]


@pytest.fixture
def full_cache(model, inputs):
    with torch.no_grad():
        return model.run_with_cache(inputs, names_filter=lambda name: True)[1]


def test_tl_cache_keys_name_what_tl_names(model, full_cache):
    from transformer_lens import ActivationCache as TLCache

    try:
        from transformer_lens.utilities import get_act_name
    except ImportError:  # TransformerLens 3.x
        from transformer_lens.utils import get_act_name

    tl = TLCache(dict(full_cache), model)
    for key in TL_KEYS:
        assert full_cache[key] is tl[key], key
        parts = key if isinstance(key, tuple) else (key,)
        layer = (
            parts[1] + model.cfg.n_layers if len(parts) > 1 and parts[1] < 0 else (parts[1] if len(parts) > 1 else None)
        )
        assert model.vocab.resolve_key(key) == get_act_name(parts[0], layer, *parts[2:]), key
    with pytest.raises(HookNameError, match="does not have"):
        full_cache["nonsense", 0, "attn"]


def test_stack_activation_and_neuron_results_as_tl_computes_them(model, full_cache):
    from transformer_lens import ActivationCache as TLCache

    tl = TLCache(dict(full_cache), model)
    torch.testing.assert_close(
        full_cache.stack_activation("resid_post"), tl.stack_activation("resid_post"), atol=0, rtol=0
    )
    torch.testing.assert_close(
        full_cache.stack_activation("scale", 1, "ln1"), tl.stack_activation("scale", 1, "ln1"), atol=0, rtol=0
    )
    layer = model.cfg.n_layers - 1
    ours = full_cache.get_neuron_results(layer, neuron_slice=slice(0, 5), pos_slice=-1)
    torch.testing.assert_close(ours, tl.get_neuron_results(layer, neuron_slice=[0, 1, 2, 3, 4], pos_slice=-1))
    # by hand: every neuron's write summed is the MLP's down projection of hook_post
    every = full_cache.get_neuron_results(layer)
    w_down = model.blocks[layer].mlp.W_out
    torch.testing.assert_close(every.sum(-2), full_cache["post", layer] @ w_down, atol=1e-5, rtol=1e-4)


def test_head_results_with_the_remainder_sum_to_the_residual(model, full_cache):
    for layer in (0, model.cfg.n_layers):
        stack, labels = full_cache.stack_head_results(layer, pos_slice=-1, return_labels=True, incl_remainder=True)
        assert labels[-1] == "remainder" and len(labels) == stack.shape[0] == layer * model.cfg.n_heads + 1
        resid = full_cache["resid_pre", layer] if layer < model.cfg.n_layers else full_cache["resid_post", layer - 1]
        torch.testing.assert_close(stack.sum(0), resid[:, -1], atol=1e-5, rtol=1e-5)
    if not any(k.endswith("_post_norm") for k in model.adapter.block) and not model.cfg.cross_layers:
        from transformer_lens import ActivationCache as TLCache

        tl = TLCache(dict(full_cache), model)
        torch.testing.assert_close(
            full_cache.stack_head_results(pos_slice=-1, incl_remainder=True),
            tl.stack_head_results(pos_slice=-1, incl_remainder=True),
            atol=1e-5,
            rtol=1e-5,
        )


def test_batch_slices_and_autodiff_as_tl(model, full_cache):
    from transformer_lens import ActivationCache as TLCache

    tl = TLCache(dict(full_cache), model)
    for batch_slice in (1, slice(0, 1)):
        ours, theirs = full_cache.apply_slice_to_batch_dim(batch_slice), tl.apply_slice_to_batch_dim(batch_slice)
        torch.testing.assert_close(ours["resid_post", 0], theirs["resid_post", 0], atol=0, rtol=0)
        torch.testing.assert_close(ours["resid_post", 0], full_cache["resid_post", 0][batch_slice], atol=0, rtol=0)
    with pytest.raises(InputError, match="batch_slice"):
        full_cache.apply_slice_to_batch_dim("first")
    before = torch.is_grad_enabled()
    try:
        with pytest.warns(VLMLensWarning, match="global grad mode"):
            full_cache.toggle_autodiff(False)
        assert not torch.is_grad_enabled()
    finally:
        torch.set_grad_enabled(before)


def test_run_with_cache_pos_slice_and_remove_batch_dim_against_the_full_cache(model, inputs):
    names = ["blocks.0.hook_resid_post", "blocks.0.attn.hook_pattern", "blocks.0.attn.hook_z", "ln_final.hook_scale"]
    with torch.no_grad():
        _, full_cache = model.run_with_cache(inputs, names_filter=names)  # the same run, every position kept
        _, last = model.run_with_cache(inputs, names_filter=names, pos_slice=-1)
        _, some = model.run_with_cache(inputs, names_filter=names, pos_slice=[1, 3])
    torch.testing.assert_close(last["resid_post", 0], full_cache["resid_post", 0][:, -1], atol=0, rtol=0)
    torch.testing.assert_close(last["z", 0], full_cache["z", 0][:, -1], atol=0, rtol=0)
    torch.testing.assert_close(last["scale"], full_cache["scale"][:, -1], atol=0, rtol=0)
    torch.testing.assert_close(some["resid_post", 0], full_cache["resid_post", 0][:, [1, 3]], atol=0, rtol=0)
    if "blocks.0.attn.hook_pattern" in full_cache:  # the query axis of [batch head query key]
        torch.testing.assert_close(last["pattern", 0], full_cache["pattern", 0][:, :, -1], atol=0, rtol=0)
    one = model.prepare(images=make_images()[:1], prompts=inputs.prompts[:1])
    with torch.no_grad():
        _, flat = model.run_with_cache(one, names_filter=names[:1], remove_batch_dim=True)
        _, image = model.run_with_cache(one, names_filter=names[:1], pos_slice="image")
        _, batched = model.run_with_cache(one, names_filter=names[:1])
    torch.testing.assert_close(flat["resid_post", 0], batched["resid_post", 0][0], atol=0, rtol=0)
    is_image = (one.input_ids[0] == model.cfg.image_token_id).nonzero().flatten()
    torch.testing.assert_close(image["resid_post", 0], batched["resid_post", 0][:, is_image], atol=0, rtol=0)
    with pytest.raises(InputError, match="batch of one"):
        model.run_with_cache(inputs, remove_batch_dim=True)


def test_loss_per_token_averages_to_hf_loss(model, inputs):
    with torch.no_grad():
        loss = model(inputs, return_type="loss")
        per_token = model(inputs, return_type="loss", loss_per_token=True)
        logits, both = model(inputs, return_type="both", loss_per_token=True)
    labels = model._labels(inputs)[:, 1:]
    assert per_token.shape == (inputs.batch_size, inputs.shape[1] - 1) and logits.shape[:2] == inputs.shape
    assert bool((per_token[labels == -100] == 0).all()) and bool((per_token[labels != -100] > 0).all())
    torch.testing.assert_close(per_token.sum() / (labels != -100).sum(), loss.float(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both, per_token, atol=0, rtol=0)
    with pytest.raises(InputError, match="loss_per_token"):
        model(inputs, loss_per_token=True)


def test_generate_tl_options(model):
    one = model.prepare(images=make_images()[:1], prompts=["how many"])
    eos = model.tokenizer.eos_token_id
    if eos is None:
        pytest.skip(f"{model.cfg.family}'s toy tokenizer has no end-of-sequence token")
    likely_eos = {(eos,): 100.0}  # HF's sequence_bias: the model all but always says EOS
    with torch.no_grad():
        stopped = model.generate(one, max_new_tokens=5, sequence_bias=likely_eos)
        going = model.generate(one, max_new_tokens=5, sequence_bias=likely_eos, stop_at_eos=False)
        text = model.generate(one, max_new_tokens=5, return_type="str", verbose=True)
        tokens = model.generate(one, max_new_tokens=5)
    prompt = one.input_ids.shape[1]
    assert stopped.shape[1] == prompt + 1 and int(stopped[0, -1]) == eos
    assert going.shape[1] == prompt + 5 and bool((going[0, prompt:] == eos).all())
    assert text == model.tokenizer.batch_decode(tokens, skip_special_tokens=True)
    with pytest.raises(InputError, match="return_type"):
        model.generate(one, return_type="text")


def test_to_tokens_and_image_aware_str_tokens(model, inputs):
    images = make_images()
    torch.testing.assert_close(model.to_tokens(inputs.prompts, images), inputs.input_ids, atol=0, rtol=0)
    text = model.to_tokens("how many")
    assert (
        text.shape[0] == 1
        and text[0].tolist()[-2:] == model.tokenizer.encode("how many", add_special_tokens=False)[-2:]
    )
    labelled = model.to_str_tokens(inputs)
    for item, (row, spans) in enumerate(zip(labelled, inputs.image_spans)):
        plain = model.tokenizer.convert_ids_to_tokens(inputs.input_ids[item].tolist())
        placed = {}
        for span in spans:
            for view in span.all_views:
                for pos in view.positions:
                    words = row[pos].strip("<>").split()
                    assert words[:2] == ["image", str(span.image)], row[pos]
                    r, c = int(words[-2][1:]), int(words[-1][1:])
                    assert view.position_of(r, c) == pos  # the label's row and column lead back to its position
                    placed[pos] = row[pos]
        assert all(row[p] == plain[p] for p in range(len(row)) if p not in placed)
    assert (
        model.to_str_tokens(inputs.prompts[0], images=images[:1])[0]
        == model.to_str_tokens(model.prepare(images=images[:1], prompts=inputs.prompts[:1]))[0]
    )


def test_config_fields_tl_code_reads(model):
    cfg, hf = model.cfg, model.hf_model
    text = hf.config.get_text_config()
    assert cfg.original_architecture == type(hf).__name__ and cfg.model_name
    assert cfg.eps == text.rms_norm_eps and cfg.final_rms and not cfg.parallel_attn_mlp
    assert cfg.gated_mlp and cfg.rotary_dim == cfg.d_head and cfg.rotary_base is not None and cfg.rotary_base > 0
    layers = layer_list(hf, model.adapter.modules["layers"])
    projections = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    by_name = sum(
        p.numel()
        for layer in layers
        for name, p in layer.named_parameters()
        if name.endswith(tuple(f"{k}.weight" for k in projections))
    )
    assert cfg.n_params == by_name > 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reading the fields warns of nothing
        _ = (cfg.tokenizer_name, cfg.default_prepend_bos, cfg.use_attn_result)


def test_modules_tl_calls_on_a_residual(model, inputs, full_cache):
    real = inputs.attention_mask.bool()  # padding positions hold whatever attention made of nothing
    with torch.no_grad():
        logits = model(inputs)
        again = model.unembed(model.ln_final(full_cache["resid_post", -1]))
    torch.testing.assert_close(again[real], logits[real], atol=1e-5, rtol=1e-5)  # TL's unembed(ln_final(resid))
    block = model.blocks[1]
    with torch.no_grad():
        ln1, ln2 = block.ln1(full_cache["resid_pre", 1]), block.ln2(full_cache["resid_mid", 1])
    torch.testing.assert_close(ln1[real], full_cache["ln1", 1][real], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ln2[real], full_cache["ln2", 1][real], atol=1e-6, rtol=1e-6)
    text = inputs.input_ids[inputs.input_ids != model.cfg.image_token_id][:4]
    torch.testing.assert_close(model.embed(text), model.W_E[text], atol=0, rtol=0)
    point = block.hook_resid_pre
    assert point.name == "blocks.1.hook_resid_pre" and point.layer() == 1
    seen = []
    point.add_hook(lambda act, hook: seen.append(hook.name))
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        model.reset_hooks()
    assert seen == ["blocks.1.hook_resid_pre"]
    with pytest.raises(HookNameError):
        _ = block.hook_resid_nowhere


def test_ov_and_qk_circuits_are_tl_factored_matrices(model):
    from transformer_lens import FactoredMatrix

    ov, qk = model.OV, model.QK
    assert isinstance(ov, FactoredMatrix) and isinstance(qk, FactoredMatrix)
    cfg = model.cfg
    assert ov.shape == qk.shape == (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_model)
    layer, head = cfg.n_layers - 1, 1
    block = model.blocks[layer].attn
    torch.testing.assert_close(ov.AB[layer, head], block.W_V[head] @ block.W_O[head], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(qk.AB[layer, head], block.W_Q[head] @ block.W_K[head].T, atol=1e-6, rtol=1e-5)


def _layer_table(model, layer):
    block = layer_list(model.hf_model, model.adapter.modules["layers"])[layer]
    return block, model.adapter.block_at(model.hf_model.config, layer)


def test_rotated_queries_and_keys_give_hf_eager_attention(model, inputs, eager_hf):
    from vlm_lens.adapter import get_module

    layer = 0  # no family's toy makes layer 0 cross-attention or windowed below the prompt's length
    names = [f"blocks.{layer}.attn.hook_rot_q", f"blocks.{layer}.attn.hook_rot_k"]
    with torch.no_grad():
        logits = model(inputs)
        same, cache = model.run_with_cache(inputs, names_filter=names)
        eager = eager_hf(**inputs.tensors, output_attentions=True).attentions[layer]
    torch.testing.assert_close(same, logits, atol=0, rtol=0)  # read, they change nothing
    q, k = cache[names[0]], cache[names[1]]  # [batch pos head d_head], [batch pos kv_head d_head]
    k = k.repeat_interleave(q.shape[2] // k.shape[2], dim=2)
    attn = get_module(*[_layer_table(model, layer)[0], _layer_table(model, layer)[1]["attn"]])
    item = int(inputs.attention_mask.sum(1).argmax())  # the longest item: its last row sees every position
    scores = torch.einsum("hd,khd->hk", q[item, -1], k[item]) * attn.scaling
    visible = inputs.attention_mask[item].bool()
    by_hand = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)
    torch.testing.assert_close(by_hand, eager[item, :, -1], atol=1e-5, rtol=1e-4)
    # an edit: a zero query attends uniformly over what the row can see
    with torch.no_grad():
        _, zeroed = model.run_with_cache(
            inputs,
            names_filter=[f"blocks.{layer}.attn.hook_pattern"],
            fwd_hooks=[(names[0], lambda act, hook: torch.zeros_like(act))],
        )
    row = zeroed["pattern", layer][item, :, -1]
    torch.testing.assert_close(row, (visible / visible.sum()).expand_as(row).to(row.dtype), atol=1e-6, rtol=1e-5)


def test_mlp_in_and_pre_linear_as_tl_defines_them(model, inputs):
    from vlm_lens.adapter import get_module

    layer = 0
    block, table = _layer_table(model, layer)
    seen = {}
    handle = get_module(block, table["mlp_up"]).register_forward_hook(lambda m, a, o: seen.__setitem__("up", o))
    try:
        with torch.no_grad():
            _, cache = model.run_with_cache(inputs, names_filter=[f"blocks.{layer}.mlp.hook_pre_linear"])
    finally:
        handle.remove()
    torch.testing.assert_close(cache["blocks.0.mlp.hook_pre_linear"], seen["up"], atol=0, rtol=0)
    names = [f"blocks.{layer}.hook_resid_mid", f"blocks.{layer}.hook_mlp_out", f"blocks.{layer}.hook_resid_post"]
    with torch.no_grad():
        _, clean = model.run_with_cache(inputs, names_filter=names)
        _, edited = model.run_with_cache(
            inputs, names_filter=names, fwd_hooks=[(f"blocks.{layer}.hook_mlp_in", lambda act, hook: act * 0)]
        )
        zeros = torch.zeros_like(clean["resid_mid", layer])
        mlp_of_nothing = get_module(block, table["mlp_out"])(get_module(block, table["ln2"])(zeros))
    # the MLP alone saw zeros; the residual it adds to did not
    torch.testing.assert_close(edited["resid_mid", layer], clean["resid_mid", layer], atol=0, rtol=0)
    if not any(k.endswith("_post_norm") for k in model.adapter.block):
        torch.testing.assert_close(edited["mlp_out", layer], mlp_of_nothing, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(
        edited["resid_post", layer], edited["resid_mid", layer] + edited["mlp_out", layer], atol=1e-5, rtol=1e-5
    )


SPLIT = ("hook_attn_in", "hook_q_input", "hook_k_input", "hook_v_input")


def test_split_inputs_are_each_heads_copy_and_change_nothing_unedited(model, inputs):
    layer = 0  # never a cross-attention layer on the toys
    names = [f"blocks.{layer}.{name}" for name in SPLIT]
    if model.cfg.n_key_value_heads != model.cfg.n_heads:
        names = names[1:]  # hook_attn_in: see the grouped-query test below
    with torch.no_grad():
        clean, cache = model.run_with_cache(inputs, names_filter=[*names, f"blocks.{layer}.hook_resid_pre"])
        again = model(inputs)
    torch.testing.assert_close(clean, again, atol=0, rtol=0)  # hooked unedited: the logits bitwise unchanged
    resid = cache["resid_pre", layer]
    for name in names:
        heads = model.cfg.n_heads if name.endswith(("attn_in", "q_input")) else model.cfg.n_key_value_heads
        assert cache[name].shape == (*resid.shape[:2], heads, model.cfg.d_model)
        torch.testing.assert_close(cache[name], resid.unsqueeze(-2).expand_as(cache[name]), atol=0, rtol=0)


@pytest.mark.parametrize("which", ["q", "k", "v"])
def test_a_split_input_edit_is_a_hand_patch_of_one_heads_projection(model, inputs, which):
    """The oracle: a raw torch hook that puts proj(ln1(edited input)) into one head's slice of the projection."""
    from vlm_lens.adapter import get_module

    layer, head = 0, 1 if which == "q" else model.cfg.n_key_value_heads - 1
    block, table = _layer_table(model, layer)
    proj, norm = get_module(block, table[f"attn_{which}"]), get_module(block, table["ln1"])
    d_head, noise = model.cfg.d_head, torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(3))

    def edit(act, hook):
        act[:, -1, head] += noise  # in place, as TL users write it
        return None

    def hand(module, args, output):
        x = args[0].clone()
        x[:, -1] += noise
        out = output.clone()
        out[..., head * d_head : (head + 1) * d_head] = torch.nn.functional.linear(
            norm.forward(x), proj.weight, proj.bias
        )[..., head * d_head : (head + 1) * d_head]
        return out

    with torch.no_grad():
        ours = model.run_with_hooks(inputs, fwd_hooks=[(f"blocks.{layer}.hook_{which}_input", edit)])
        handles = [norm.register_forward_pre_hook(lambda m, a: m.__dict__.__setitem__("_x", a[0]))]
        handles.append(proj.register_forward_hook(lambda m, a, o: hand(m, (norm._x,), o)))
        try:
            oracle = model(inputs)
        finally:
            for handle in handles:
                handle.remove()
            del norm._x
        clean = model(inputs)
    assert not torch.allclose(ours, clean)
    torch.testing.assert_close(ours, oracle, atol=1e-5, rtol=1e-4)


def test_split_input_gradients_add_up_to_the_attentions_share_of_the_residuals(model, inputs):
    """d loss / d resid_pre = d loss / d resid_mid (the skip) + the sum over every head's q, k and v input."""
    layer, grads = 0, {}

    def keep(act, hook):
        grads[hook.name] = act.clone()

    names = [f"blocks.{layer}.{n}" for n in ("hook_resid_pre", "hook_resid_mid", *SPLIT[1:])]
    logits = model.run_with_hooks(inputs, bwd_hooks=[(name, keep) for name in names])
    logits[:, -1].logsumexp(-1).sum().backward()
    model.hf_model.zero_grad(set_to_none=True)
    heads = sum(grads[f"blocks.{layer}.{n}"].sum(-2) for n in SPLIT[1:])
    torch.testing.assert_close(grads[names[0]], grads[names[1]] + heads, atol=1e-5, rtol=1e-4)
    assert heads.abs().sum() > 0


def _zero_head(act, hook):
    act[:, :, 0] = 0
    return None


def test_attn_in_on_grouped_query_attention_says_why_not(model, inputs):
    if model.cfg.n_key_value_heads == model.cfg.n_heads:
        pytest.skip(f"{model.cfg.family}'s toy has as many key/value heads as query heads")
    assert "blocks.0.hook_attn_in" not in model.hook_names()
    with pytest.raises(HookNameError, match="grouped-query attention") as raised:
        model.run_with_hooks(inputs, fwd_hooks=[("blocks.0.hook_attn_in", _zero_head)])
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_attn_in_feeds_queries_keys_and_values_alike(family, images):
    from tests.conftest import tiny

    model = tiny(family, text={"num_key_value_heads": 4})  # every toy is grouped-query: one without
    assert model.cfg.n_key_value_heads == model.cfg.n_heads
    inputs = model.prepare(images=images, prompts=["is there a red square in the image ?", "how many"])
    with torch.no_grad():
        ours = model.run_with_hooks(inputs, fwd_hooks=[("blocks.0.hook_attn_in", _zero_head)])
        three = model.run_with_hooks(inputs, fwd_hooks=[(f"blocks.0.{n}", _zero_head) for n in SPLIT[1:]])
        clean = model(inputs)
    assert not torch.allclose(ours, clean)
    torch.testing.assert_close(ours, three, atol=0, rtol=0)


def test_cross_attention_layers_say_they_have_no_split_inputs(model, inputs):
    if not model.cfg.cross_layers:
        pytest.skip(f"{model.cfg.family} has no cross-attention layers")
    name = f"blocks.{model.cfg.cross_layers[0]}.hook_k_input"
    with pytest.raises(HookNameError, match="cross-attention layer") as raised:
        model.run_with_hooks(inputs, fwd_hooks=[(name, lambda act, hook: None)])
    assert "\n" not in str(raised.value)


def test_cache_logit_lens_is_tl_4s_reading_the_real_norm_and_unembedding(model, inputs, full_cache):
    pytest.importorskip("transformer_lens.tools.analysis.logit_lens", reason="cache.logit_lens is TL 4's")
    with torch.no_grad():
        logits = model(inputs)
        lens = full_cache.logit_lens()  # every entry, the last position
        hand = torch.stack(
            [model.unembed(model.ln_final(full_cache["resid_pre", l][:, -1])) for l in range(model.cfg.n_layers)]
        )
    n = model.cfg.n_layers
    assert lens.labels == [*(f"{l}_pre" for l in range(n)), "final_post"]
    torch.testing.assert_close(lens.values[-1], logits[:, -1], atol=1e-4, rtol=1e-4)  # HF's own logits
    torch.testing.assert_close(lens.values[:-1], hand, atol=1e-4, rtol=1e-4)


def test_cache_logit_lens_reads_the_image_positions(model):
    pytest.importorskip("transformer_lens.tools.analysis.logit_lens", reason="cache.logit_lens is TL 4's")
    one = model.prepare(images=make_images()[:1], prompts=["is there a red square in the image ?"])
    with torch.no_grad():
        _, cache = model.run_with_cache(one)
        image = cache.logit_lens(positions="image", layers=[1], top_k=3)
        at = (one.input_ids[0] == model.cfg.image_token_id).nonzero()[:, 0]
        by_hand = model.unembed(model.ln_final(cache["resid_pre", 1][:, at]))
    assert image.labels == ["1_pre"] and image.values.shape == (1, 1, len(at), 3)
    assert torch.equal(image.readout.top_ids[0], by_hand.topk(3, dim=-1).indices)


def test_cache_logit_lens_on_a_filtered_cache_names_what_is_missing(model, inputs):
    pytest.importorskip("transformer_lens.tools.analysis.logit_lens", reason="cache.logit_lens is TL 4's")
    with torch.no_grad():
        _, cache = model.run_with_cache(inputs, names_filter=["blocks.0.hook_resid_pre"])
    with pytest.raises(InputError, match="was not cached") as raised:
        cache.logit_lens()
    assert "\n" not in str(raised.value)
