"""TransformerLens's per-head and norm hook points, persistent hooks, SAE splicing, the full residual
decomposition and TL's own tools (``transformer_lens.patching``, ``ActivationCache``) on HookedVLM, each
against an independent oracle: torch hooks on the HF modules, the config's eps, a hand-built SAE, or
the same edit made at another hook point."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from tests.conftest import make_images
from tests.test_hygiene import attn_impls, hook_census, warm
from tests.test_transformer_lens_surface import labels_of, post_norm
from vlm_lens.adapter import get_module, layer_list
from vlm_lens.errors import HookNameError, InputError

LAYER = 1


def module_outputs(model, keys: list[str], layer: int = LAYER) -> dict:
    """Outputs of the block's modules at ``keys`` (the adapter's table), with raw torch hooks."""
    block = layer_list(model.hf_model, model.adapter.modules["layers"])[layer]
    seen, handles = {}, []
    for key in keys:
        handles.append(
            get_module(block, model.adapter.block_at(model.hf_model.config, layer)[key]).register_forward_hook(
                lambda m, a, o, key=key: seen.__setitem__(key, o)
            )
        )
    return seen, handles


def test_q_k_v_scores_result_and_scale_hook_points_against_the_hf_modules(model, inputs):
    cfg = model.cfg
    eps = model.hf_model.config.get_text_config().rms_norm_eps
    seen, handles = module_outputs(model, ["attn_q", "attn_k", "attn_v", "attn_o"])
    names = [f"blocks.{LAYER}.attn.hook_{k}" for k in ("q", "k", "v", "attn_scores", "pattern", "result", "z")]
    names += [
        f"blocks.{LAYER}.ln1.hook_scale",
        f"blocks.{LAYER}.hook_resid_pre",
        f"blocks.{LAYER}.hook_attn_out",
        "ln_final.hook_scale",
        f"blocks.{cfg.n_layers - 1}.hook_resid_post",
    ]
    try:
        with torch.no_grad():
            logits, cache = model.run_with_cache(inputs, names_filter=names)
    finally:
        for h in handles:
            h.remove()
    assert set(model.cache_names(None)).isdisjoint(names[:6] + names[7:8])  # opt-in: not in the default cache
    for key, heads in (("q", cfg.n_heads), ("k", cfg.n_kv_heads), ("v", cfg.n_kv_heads)):
        act = cache[f"blocks.{LAYER}.attn.hook_{key}"]
        assert act.shape[-2:] == (heads, cfg.d_head)
        torch.testing.assert_close(act.flatten(-2), seen[f"attn_{key}"], atol=0, rtol=0)
    # the scale: sqrt(mean(x^2) + eps) with the config's eps, float32, [batch pos 1]
    for scale, resid in (
        (f"blocks.{LAYER}.ln1.hook_scale", f"blocks.{LAYER}.hook_resid_pre"),
        ("ln_final.hook_scale", f"blocks.{cfg.n_layers - 1}.hook_resid_post"),
    ):
        x = cache[resid].double()
        torch.testing.assert_close(
            cache[scale].double(), (x.pow(2).mean(-1, keepdim=True) + eps).sqrt(), atol=1e-6, rtol=1e-6
        )
    # scores: their softmax is the pattern; masked keys hold the dtype's minimum (a cross-attention layer's keys are
    # the image's tile patches: its padded tiles, as the cross-attention mask says)
    scores, pattern = cache[names[3]], cache[names[4]]
    real = inputs.attention_mask.bool()
    if LAYER in cfg.cross_layers:
        torch.testing.assert_close(torch.softmax(scores, -1), pattern, atol=1e-6, rtol=1e-5)
        tiles = inputs.tensors["cross_attention_mask"][:, -1].flatten(1).bool()  # batch image*tile: the last token's
        seen_keys = tiles.repeat_interleave(scores.shape[-1] // tiles.shape[1], 1)  # batch key
        assert not bool(seen_keys.all())  # an image of fewer tiles: its padding tiles' keys are masked
        last_row = scores[:, :, -1].transpose(1, 2)  # batch key head
        assert bool((last_row[~seen_keys] == torch.finfo(scores.dtype).min).all())
    else:
        torch.testing.assert_close(
            torch.softmax(scores, -1)[real[:, None, :, None].expand_as(scores)],
            pattern[real[:, None, :, None].expand_as(pattern)],
            atol=1e-6,
            rtol=1e-5,
        )
        padded = int((~real).sum(-1).argmax())  # the item with padding: its real queries never see the padded keys
        assert not bool(real[padded].all())
        last = int(inputs.last_positions()[padded])
        assert bool((scores[padded, :, last][:, ~real[padded]] == torch.finfo(scores.dtype).min).all())
    # the heads' results sum (with o_proj's bias) to o_proj's output, which (through a post-norm) attention adds
    result = cache[names[5]]
    assert result.shape[-2:] == (cfg.n_heads, cfg.d_model)
    torch.testing.assert_close(result.sum(-2) + model.b_O[LAYER], seen["attn_o"], atol=1e-5, rtol=1e-4)
    block = layer_list(model.hf_model, model.adapter.modules["layers"])[LAYER]
    torch.testing.assert_close(
        post_norm(model, block, "attn", seen["attn_o"], LAYER),
        cache[f"blocks.{LAYER}.hook_attn_out"],
        atol=1e-5,
        rtol=1e-4,
    )


def test_edits_at_the_new_points_equal_the_same_edit_made_elsewhere(model, inputs):
    cfg, head = model.cfg, 1
    z_name, result_name = f"blocks.{LAYER}.attn.hook_z", f"blocks.{LAYER}.attn.hook_result"

    def zero_head(act, hook):
        act = act.clone()
        act[:, :, head] = 0
        return act

    def zero_head_in_place(act, hook) -> None:  # TL's patching setters edit in place and may return nothing
        act[:, :, head] = 0

    def drop_key(act, hook, key=3):  # no query may attend to key 3
        act = act.clone()
        act[..., key] = torch.finfo(act.dtype).min
        return act

    def renormalise_without(act, hook, key=3):
        act = act.clone()
        act[..., key] = 0
        return act / act.sum(-1, keepdim=True)

    with torch.no_grad():
        logits = model(inputs)
        by_z = model.run_with_hooks(inputs, fwd_hooks=[(z_name, zero_head)])
        by_result = model.run_with_hooks(inputs, fwd_hooks=[(result_name, zero_head)])
        in_place = model.run_with_hooks(inputs, fwd_hooks=[(result_name, zero_head_in_place)])
        by_scores = model.run_with_hooks(inputs, fwd_hooks=[(f"blocks.{LAYER}.attn.hook_attn_scores", drop_key)])
        by_pattern = model.run_with_hooks(
            inputs, fwd_hooks=[(f"blocks.{LAYER}.attn.hook_pattern", renormalise_without)]
        )
        doubled = model.run_with_hooks(inputs, fwd_hooks=[("ln_final.hook_scale", lambda s, hook: s * 2)])
    real = inputs.attention_mask.bool()
    assert (by_z - logits)[real].abs().max() > 1e-3  # the edit matters
    torch.testing.assert_close(by_result[real], by_z[real], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(in_place[real], by_z[real], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(by_scores[real], by_pattern[real], atol=1e-5, rtol=1e-4)
    # twice the final rms halves the normalised residual, and the logits with it (less the bias)
    torch.testing.assert_close(doubled - model.b_U, (logits - model.b_U) / 2, atol=1e-5, rtol=1e-4)
    assert cfg.n_heads > head


def test_gradients_at_the_new_points_and_nothing_counted_twice(model, inputs):
    n = model.cfg.n_layers
    probe = [
        f"blocks.{LAYER}.attn.hook_result",
        "ln_final.hook_scale",
        f"blocks.{LAYER}.ln2.hook_scale",
        f"blocks.{LAYER}.attn.hook_q",
    ]
    base = ["ln_final.hook_normalized", f"blocks.{LAYER}.hook_attn_out", "blocks.0.hook_resid_pre"]
    _, plain = model.run_with_cache(inputs, names_filter=base, return_type="loss", incl_bwd=True)
    _, cache = model.run_with_cache(inputs, names_filter=base + probe, return_type="loss", incl_bwd=True)
    # hooks that only read leave every other gradient as it was (no path counted twice)
    torch.testing.assert_close(
        cache["blocks.0.hook_resid_pre_grad"], plain["blocks.0.hook_resid_pre_grad"], atol=1e-7, rtol=1e-5
    )
    # out = gain * x / s, so dL/ds = -sum(dL/dout * out) / s
    out, s = cache["ln_final.hook_normalized"], cache["ln_final.hook_scale"]
    expected = -(plain["ln_final.hook_normalized_grad"] * out).sum(-1, keepdim=True) / s
    torch.testing.assert_close(cache["ln_final.hook_scale_grad"], expected, atol=1e-6, rtol=1e-4)
    # hook_q's gradient, and hook_result's (d/d(o_proj's output) for every head): autograd through HF's own modules
    seen, handles = module_outputs(model, ["attn_q", "attn_o"])
    try:
        with torch.enable_grad():
            loss = model.hf_model(**inputs.tensors, labels=labels_of(model, inputs)).loss
            q_grad, o_grad = torch.autograd.grad(loss, [seen["attn_q"], seen["attn_o"]])
    finally:
        for h in handles:
            h.remove()
    torch.testing.assert_close(cache[f"blocks.{LAYER}.attn.hook_q_grad"].flatten(-2), q_grad, atol=1e-7, rtol=1e-4)
    grad = cache[f"blocks.{LAYER}.attn.hook_result_grad"]
    torch.testing.assert_close(grad, o_grad[:, :, None].expand_as(grad), atol=1e-7, rtol=1e-4)
    assert n > LAYER


def test_persistent_hooks_live_until_reset_and_leave_nothing(model, inputs):
    warm(model, inputs)
    before, impls = hook_census(model.hf_model), attn_impls(model)
    name = f"blocks.{LAYER}.hook_resid_post"
    fired = []
    steer = lambda act, hook: act + 0.5  # noqa: E731
    with torch.no_grad():
        steered = model.run_with_hooks(inputs, fwd_hooks=[(name, steer)])
        model.add_hook(name, steer)
        model.add_perma_hook("blocks.0.attn.hook_pattern_rows", lambda a, hook: fired.append(hook.step))
        model.add_hook("blocks.0.hook_mlp_out", lambda a, hook: None, dir="bwd")
        assert [len(model.hook_dict[name].fwd_hooks), len(model.hook_dict["blocks.0.hook_mlp_out"].bwd_hooks)] == [1, 1]
        torch.testing.assert_close(model(inputs), steered, atol=0, rtol=0)  # on every call...
        hf = model.hf_model(**inputs.tensors).logits  # ...and on the HF model itself
        torch.testing.assert_close(hf, steered, atol=0, rtol=0)
        _, cache = model.run_with_cache(inputs, names_filter=name)  # per-call hooks see the persistent edit
        assert fired == [0, 1, 2]  # hook.step counts forwards since the hook was added
        model.reset_hooks(direction="bwd")
        assert not model.hook_dict["blocks.0.hook_mlp_out"].bwd_hooks and model.hook_dict[name].fwd_hooks
        model.reset_hooks()
        unsteered = model(inputs)
        assert len(fired) == 4  # the permanent one survives reset_hooks()
        model.reset_hooks(including_permanent=True)
        model(inputs)
    assert len(fired) == 4
    assert (steered - unsteered).abs().max() > 1e-3
    torch.testing.assert_close(unsteered, model(inputs), atol=0, rtol=0)
    assert hook_census(model.hf_model) == before and attn_impls(model) == impls
    block = layer_list(model.hf_model, model.adapter.modules["layers"])[0]
    assert model.mod_dict["blocks.0.mlp.hook_post"] is get_module(block, model.adapter.block["mlp_down"])
    with pytest.raises(InputError, match="dir must be"):
        model.add_hook(name, steer, dir="sideways")
    assert hook_census(model.hf_model) == before


class TinySAE(nn.Module):
    """A SAELens-shaped SAE: relu(x W_enc + b_enc) W_dec + b_dec."""

    def __init__(self, d_in: int, d_sae: int, hook_name: str, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W_enc = nn.Parameter(torch.randn(d_in, d_sae, generator=g) / d_in**0.5)
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.W_dec = nn.Parameter(torch.randn(d_sae, d_in, generator=g) / d_sae**0.5)
        self.b_dec = nn.Parameter(torch.randn(d_in, generator=g) * 0.1)
        self.cfg = SimpleNamespace(d_in=d_in, d_sae=d_sae, hook_name=hook_name)

    def encode(self, x):
        return torch.relu(x @ self.W_enc + self.b_enc)

    def decode(self, acts):
        return acts @ self.W_dec + self.b_dec


def test_an_sae_spliced_in_with_its_features_as_hook_points(model, inputs):
    warm(model, inputs)
    before = hook_census(model.hf_model)
    host = f"blocks.{LAYER}.hook_resid_post"
    sae, feature = TinySAE(model.cfg.d_model, 48, host), 5
    acts_name = f"{host}.hook_sae_acts_post"
    with torch.no_grad():
        logits, clean = model.run_with_cache(inputs, names_filter=host)
        x = clean[host]
        replaced = model.run_with_hooks(inputs, fwd_hooks=[(host, lambda a, hook: sae.decode(sae.encode(a)))])

        def ablated(a, hook):  # by hand: the input plus the decoded difference of ablating the feature
            acts = sae.encode(a)
            edit = acts.clone()
            edit[..., feature] = 0
            return a + sae.decode(edit) - sae.decode(acts)

        by_hand = model.run_with_hooks(inputs, fwd_hooks=[(host, ablated)])

        try:
            assert model.add_sae(sae, use_error_term=True)[1] == acts_name  # the host comes from sae.cfg
            spliced, cache = model.run_with_cache(inputs)
            torch.testing.assert_close(spliced, logits, atol=1e-5, rtol=1e-5)  # the error term: output unchanged
            torch.testing.assert_close(cache[acts_name], sae.encode(x), atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(
                cache[f"{host}.hook_sae_error"], x - sae.decode(sae.encode(x)), atol=1e-6, rtol=1e-5
            )
            assert model.hook_shape(acts_name) == ("batch", "pos", "d_sae")

            def zero_feature(acts, hook):
                acts = acts.clone()
                acts[..., feature] = 0
                return acts

            edited = model.run_with_hooks(inputs, fwd_hooks=[(acts_name, zero_feature)])
            torch.testing.assert_close(edited, by_hand, atol=1e-5, rtol=1e-4)
            assert (edited - logits).abs().max() > 1e-4
            model.reset_saes()
            model.add_sae(sae, host, use_error_term=False)
            torch.testing.assert_close(model(inputs), replaced, atol=1e-5, rtol=1e-5)
        finally:
            model.reset_saes()
    # gradients at the features: recons = acts W_dec + b_dec, so dL/dacts = dL/drecons W_dec^T (where a feature is on)
    model.add_sae(sae, host, use_error_term=True)
    try:
        _, grads = model.run_with_cache(
            inputs, names_filter=[acts_name, f"{host}.hook_sae_recons"], return_type="loss", incl_bwd=True
        )
    finally:
        model.reset_saes()
    expected = grads[f"{host}.hook_sae_recons_grad"] @ sae.W_dec.detach().T
    torch.testing.assert_close(grads[acts_name + "_grad"], expected, atol=1e-7, rtol=1e-4)
    assert hook_census(model.hf_model) == before and acts_name not in model.hook_names()
    with pytest.raises(HookNameError):
        model.run_with_hooks(inputs, fwd_hooks=[(acts_name, lambda a, hook: None)])
    with pytest.raises(InputError, match="d_in=7"):
        model.add_sae(TinySAE(7, 4, host))
    with pytest.raises(InputError, match="no encode/decode"):
        model.add_sae(nn.Linear(2, 2), host)


def test_full_residual_decomposition_sums_to_the_residual(model, inputs):
    n, H = model.cfg.n_layers, model.cfg.n_heads
    with torch.no_grad():
        _, cache = model.run_with_cache(inputs)
        # every position: a cross-attention layer's MLP writes only at the rows that see an image (Llama-3.2-Vision)
        parts, labels = cache.get_full_resid_decomposition(return_labels=True)
        assert labels[:2] == ["L0H0", "L0H1"] and labels[n * H] == "L0N0" and labels[-2:] == ["embed", "bias"]
        assert len(labels) == n * H + n * model.cfg.d_mlp + len(model.vocab.injected_layers) + 2  # + DeepStack
        torch.testing.assert_close(parts.sum(0), cache["resid_post", -1], atol=1e-5, rtol=1e-4)
        mlps, mlp_labels = cache.get_full_resid_decomposition(LAYER, expand_neurons=False, return_labels=True)
        deepstack = [f"{l}_deepstack" for l in model.vocab.injected_layers if l < LAYER]
        assert mlp_labels[LAYER * H :] == [f"{l}_mlp_out" for l in range(LAYER)] + deepstack + ["embed", "bias"]
        torch.testing.assert_close(mlps.sum(0), cache["resid_pre", LAYER], atol=1e-5, rtol=1e-4)
        mid = cache.get_full_resid_decomposition(LAYER, mlp_input=True, expand_neurons=False)
        torch.testing.assert_close(mid.sum(0), cache["resid_mid", LAYER], atol=1e-5, rtol=1e-4)
        normed = cache.get_full_resid_decomposition(apply_ln=True, pos_slice=-1, expand_neurons=False)
        torch.testing.assert_close(normed.sum(0), cache["ln_final"][:, -1], atol=1e-5, rtol=1e-4)


def test_layer_zero_decomposes_into_the_embeddings_and_biases_alone(model, inputs):
    """TL's loop over layers 0..n starts at 0: no heads or neurons below it, an empty stack, and the residual
    entering layer 0 is the embeddings and the (zero) biases."""
    with torch.no_grad():
        _, cache = model.run_with_cache(inputs)
        heads, labels = cache.stack_head_results(layer=0, return_labels=True)
        assert labels == [] and heads.shape == (0, *cache["embed"].shape)
        assert cache.stack_head_results(0, pos_slice=-1).shape == (0, *cache["embed"][:, -1].shape)
        parts, labels = cache.get_full_resid_decomposition(layer=0, return_labels=True)
        assert labels == ["embed", "bias"]
        torch.testing.assert_close(parts.sum(0), cache["resid_pre", 0], atol=1e-6, rtol=1e-5)
        assert cache.get_full_resid_decomposition(layer=0, expand_neurons=False).shape[0] == 2


def test_compute_head_results_fills_the_cache_as_the_live_hook_point(model, inputs):
    n = model.cfg.n_layers
    with torch.no_grad():
        _, live = model.run_with_cache(inputs, names_filter=[f"blocks.{l}.attn.hook_result" for l in range(n)])
        _, cache = model.run_with_cache(inputs)
        assert "blocks.0.attn.hook_result" not in cache
        assert cache.compute_head_results() is None  # TL's: it fills the cache
        for l in range(n):
            torch.testing.assert_close(cache["result", l], live["result", l], atol=1e-5, rtol=1e-4)


def test_run_with_hooks_reset_hooks_end_false_leaves_the_hooks_on(model, inputs):
    calls = []
    with torch.no_grad():
        model.run_with_hooks(
            inputs, fwd_hooks=[("blocks.0.hook_resid_post", lambda a, h: calls.append(h.name))], reset_hooks_end=False
        )
        assert calls == ["blocks.0.hook_resid_post"]
        model(inputs)  # a plain forward afterwards: the hook is still there (TL's semantics)
        assert len(calls) == 2
        model.reset_hooks()
        model(inputs)
        assert len(calls) == 2
        model.run_with_hooks(inputs, fwd_hooks=[("blocks.0.hook_resid_post", lambda a, h: calls.append(h.name))])
        model(inputs)  # the default: gone after the call
        assert len(calls) == 3


def test_transformer_lens_patching_and_cache_run_on_hookedvlm_unchanged(model, inputs):
    from transformer_lens import ActivationCache as TLCache
    from transformer_lens import patching

    corrupted = model.prepare(images=make_images(seed=1), prompts=inputs.prompts)  # same layout, other pixels
    answer = int(model(inputs)[0, -1].argmax())
    metric = lambda logits: logits[:, -1, answer].mean()  # noqa: E731
    with torch.no_grad():
        _, clean = model.run_with_cache(inputs)
        table = patching.get_act_patch_resid_pre(model, corrupted, clean, metric)
        heads = patching.get_act_patch_attn_head_out_all_pos(model, corrupted, clean, metric)
    assert table.shape == (model.cfg.n_layers, inputs.shape[1]) and heads.shape == (
        model.cfg.n_layers,
        model.cfg.n_heads,
    )
    span = inputs.image_spans[0][0]
    for layer, pos in ((0, span.start), (LAYER, inputs.shape[1] - 1)):  # by hand: one cell each

        def patch(act, hook, pos=pos, layer=layer):
            act = act.clone()
            act[:, pos] = clean["resid_pre", layer][:, pos]
            return act

        with torch.no_grad():
            by_hand = metric(model.run_with_hooks(corrupted, fwd_hooks=[(f"blocks.{layer}.hook_resid_pre", patch)]))
        torch.testing.assert_close(table[layer, pos], by_hand, atol=1e-5, rtol=1e-5)
    first = min(spans[0].start for spans in inputs.image_spans)  # before the images, clean = corrupted: no effect
    with torch.no_grad():
        baseline = metric(model(corrupted))
    torch.testing.assert_close(table[:, :first], baseline.expand(model.cfg.n_layers, first), atol=1e-6, rtol=1e-6)
    if not model.cfg.cross_layers:
        assert (table - baseline).abs().max() > 1e-4  # somewhere, the clean image matters
    else:  # the image reaches the residual only through its first cross-attention layer: no resid_pre up to it knows
        first_cross = min(model.cfg.cross_layers)
        torch.testing.assert_close(
            table[: first_cross + 1], baseline.expand(first_cross + 1, table.shape[1]), atol=1e-6, rtol=1e-6
        )
    # TL's own ActivationCache over ours: the stacks that need no folded weights agree
    tl = TLCache(dict(clean), model)
    ours, labels = clean.decompose_resid(return_labels=True)
    kept = [i for i, label in enumerate(labels) if not label.endswith("_deepstack")]  # TL knows no DeepStack
    torch.testing.assert_close(tl.decompose_resid(), ours[kept], atol=0, rtol=0)
    # TL knows no norm after o_proj (Gemma 3), nor a gate on a cross-attention layer's write (Llama-3.2-Vision)
    if not any(key.endswith("_post_norm") for key in model.adapter.block) and not model.cfg.cross_layers:
        torch.testing.assert_close(
            tl.stack_head_results(pos_slice=-1), clean.stack_head_results(pos_slice=-1), atol=1e-6, rtol=1e-5
        )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_views_persistent_hooks_and_a_float32_sae_on_a_half_precision_model(family, dtype):
    from tests.conftest import PROMPTS, tiny

    model = tiny(family)
    model.hf_model.to(dtype)
    inputs = model.prepare(images=make_images(), prompts=PROMPTS)
    views = [f"blocks.{LAYER}.attn.hook_{k}" for k in ("q", "k", "v", "result")]
    views += [f"blocks.{LAYER}.ln1.hook_scale", "ln_final.hook_scale"]
    with torch.no_grad():
        plain = model(inputs)
        logits, cache = model.run_with_cache(inputs, names_filter=views)
        assert torch.equal(logits, plain)  # read-only views: bitwise unchanged in half precision too
        assert cache["ln_final.hook_scale"].dtype == torch.float32 and cache[views[3]].dtype == dtype
        frozen = model.run_with_hooks(inputs, fwd_hooks=[("ln_final.hook_scale", lambda s, hook: s.detach().clone())])
        assert torch.equal(frozen, plain)  # the same scale, a new tensor: the rescaling is exactly 1
        host = f"blocks.{LAYER}.hook_resid_post"
        model.add_sae(TinySAE(model.cfg.d_model, 16, host), use_error_term=True)
        model.add_hook(host, lambda a, hook: None)
        try:
            spliced = model(inputs)
        finally:
            model.reset_saes()
            model.reset_hooks()
    real = inputs.attention_mask.bool()
    # the float32 SAE's output (input + float32 rounding), cast back, rounds to the input: logits within an ulp
    assert spliced.dtype == dtype
    torch.testing.assert_close(spliced[real].float(), plain[real].float(), atol=1e-3, rtol=0)


def test_W_E_of_the_tokens_is_what_layer_0_receives_at_text_positions(model, inputs):
    """TL's W_E: on Gemma families the sqrt(d_model) the language model scales by at lookup is folded in."""
    with torch.no_grad():
        _, cache = model.run_with_cache(inputs, names_filter="hook_embed")
        for item, spans in enumerate(inputs.image_spans):
            image = {p for span in spans for p in span.positions}
            text = [
                p
                for p in range(inputs.input_ids.shape[1])
                if p not in image
                and inputs.tensors["attention_mask"][item, p]
                and inputs.input_ids[item, p] != model.cfg.image_token_id
            ]
            ids = inputs.input_ids[item, text]
            torch.testing.assert_close(model.W_E[ids], cache["embed"][item, text], atol=1e-6, rtol=1e-5)
