"""Each intervention against a raw torch hook doing the same on the HF module; controls change nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from analyses import evaluation as E
from analyses import interventions as I
from analyses import patch_masking as PM
from analyses import patching as P
from analyses.data.examples import shapes_examples
from analyses.stats import paired_bootstrap_diff
from tests.conftest import PROMPTS, make_images
from vlm_lens.errors import InputError, UnsupportedModelError


def raw(model, inputs, path, fn, pre=False):
    module = model.hf_model.get_submodule(path)
    if pre:
        handle = module.register_forward_pre_hook(lambda m, args: (fn(args[0]), *args[1:]))
    else:
        handle = module.register_forward_hook(
            lambda m, a, out: (fn(out[0]), *out[1:]) if isinstance(out, tuple) else fn(out)
        )
    try:
        with torch.no_grad():
            return model.hf_model(**inputs.tensors).logits
    finally:
        handle.remove()


def block(model, layer, key=None):
    base = f"{model.adapter.modules['layers']}.{layer}"
    return base if key is None else f"{base}.{model.adapter.block_at(model.hf_model.config, layer)[key]}"


@pytest.mark.parametrize("mode,value", [("zero", None), ("clamp", 2.5), ("scale", 3.0), ("mean", None)])
def test_neuron_edits_equal_raw_hooks(model, inputs, mode, value):
    idx = [1, 9, 30]
    means = torch.arange(model.cfg.d_mlp, dtype=torch.float32) / 100
    ours = I.apply(model, inputs, I.neurons(1, idx, mode, value=value, means=means))

    def edit(x):
        x = x.clone()
        x[..., idx] = {"zero": 0.0, "clamp": value, "mean": means[idx]}.get(mode, x[..., idx] * value if value else 0)
        return x

    assert torch.equal(ours, raw(model, inputs, block(model, 1, "mlp_down"), edit, pre=True))


def test_controls_that_change_nothing_change_nothing(model, inputs):
    with torch.no_grad():
        plain = model(inputs)
    assert torch.equal(I.apply(model, inputs, I.NOTHING), plain)
    assert torch.equal(I.apply(model, inputs, I.neurons(0, [3, 4], "scale", value=1.0)), plain)
    assert torch.equal(I.apply(model, inputs, I.neurons(0, [], "zero")), plain)


def test_random_neurons_are_seeded_and_avoid_excluded(model):
    exclude = [0, 1, 2]
    pool = np.setdiff1d(np.arange(model.cfg.d_mlp), exclude)
    for seed in (3, 4):
        drawn = I.random_neurons(model, 1, k=5, seed=seed, exclude=exclude)
        oracle = sorted(np.random.default_rng(seed).choice(pool, size=5, replace=False).tolist())
        assert list(drawn.indices) == oracle and drawn.layer == 1 and f"seed {seed}" in drawn.name
    assert I.random_neurons(model, 1, 5, seed=3).indices != I.random_neurons(model, 1, 5, seed=4).indices
    everything_else = I.random_neurons(model, 1, k=model.cfg.d_mlp - 3, seed=0, exclude=exclude)
    assert sorted(everything_else.indices) == pool.tolist()  # all but the excluded
    residual = I.random_neurons(model, 1, k=5, seed=0, site="resid")
    assert residual.site == "resid" and max(residual.indices) < model.cfg.d_model
    with pytest.raises(ValueError, match="cannot draw"):
        I.random_neurons(model, 1, k=model.cfg.d_mlp, seed=0, exclude=[0])


def test_interventions_are_data():
    a = I.neurons(2, [5, 1], "clamp", value=3.0)
    assert a == I.Neurons(layer=2, indices=(5, 1), mode="clamp", value=3.0) and hash(a) == hash(
        I.neurons(2, (5, 1), "clamp", 3.0)
    )
    combined = a + I.mlp_bypass(1, "image") + I.NOTHING
    assert combined.parts == (a, I.MLPBypass(1, "image"))
    assert combined.name == "clamp 2 neurons @L2 + bypass MLP @L1 (image)"
    with pytest.raises(ValueError, match="mode"):
        I.neurons(0, [1], "erase")
    with pytest.raises(ValueError, match="needs a value"):
        I.neurons(0, [1], "clamp")


def test_residual_unit_edits_equal_raw_hooks(model, inputs):
    idx = [0, 7]
    ours = I.apply(model, inputs, I.neurons(1, idx, "zero", site="resid"))

    def edit(x):
        x = x.clone()
        x[..., idx] = 0
        return x

    assert torch.equal(ours, raw(model, inputs, block(model, 1), edit))


@pytest.mark.parametrize("where", ["all", "image", "text"])
def test_mlp_bypass_equals_raw(model, inputs, where):
    # the positions by hand, not by the code under test: image tokens from the spans, text = the other real tokens
    real = inputs.tensors["attention_mask"].bool()
    image = torch.zeros_like(real)
    for item, spans in enumerate(inputs.image_spans):
        for span in spans:
            image[item, list(span.positions)] = True
    mask = {"all": real, "image": image & real, "text": real & ~image}[where]
    assert image.any() and (real & ~image).any()
    ours = I.apply(model, inputs, I.mlp_bypass(0, where))
    expected = raw(model, inputs, block(model, 0, "mlp_out"), lambda x: x * (~mask).unsqueeze(-1))
    assert torch.equal(ours, expected)


def test_head_ablation_equals_raw(model, inputs):
    d = model.cfg.d_head

    def zero(x):
        x = x.clone()
        x[..., 0:d] = 0
        x[..., 2 * d : 3 * d] = 0
        return x

    ours = I.apply(model, inputs, I.head_ablation(1, [0, 2]))
    assert torch.equal(ours, raw(model, inputs, block(model, 1, "attn_o"), zero, pre=True))


def test_attention_knockout_equals_masking_before_softmax(model, inputs, eager_hf):
    """Oracle: HF's own eager forward, each layer's attention mask (causal, prefix or M-RoPE, as the family
    builds it) edited to block the last token's attention to the image before the softmax."""
    ours = I.apply(model, inputs, I.attention_knockout(layers=range(model.cfg.n_layers)))
    last = inputs.last_positions()

    def block_image(module, args, kwargs):
        mask = kwargs["attention_mask"].clone()  # [batch, 1, query, key]; eager: additive floats
        for item in range(inputs.batch_size):
            mask[item, :, last[item], inputs.image_positions(item)] = torch.finfo(mask.dtype).min
        return args, {**kwargs, "attention_mask": mask}

    def silence(module, args, output):  # a cross-attention layer: every key is the image's, the row reads nothing
        out = output[0].clone()
        out[torch.arange(inputs.batch_size), last] = 0
        return (out, *output[1:])

    layers = eager_hf.get_submodule(model.adapter.modules["layers"])
    handles = [
        layer.get_submodule(model.adapter.block_at(model.hf_model.config, l)["attn"]).register_forward_hook(silence)
        if l in model.cfg.cross_layers
        else layer.get_submodule(model.adapter.block["attn"]).register_forward_pre_hook(block_image, with_kwargs=True)
        for l, layer in enumerate(layers)
    ]
    try:
        with torch.no_grad():
            expected = eager_hf(**inputs.tensors).logits
    finally:
        for handle in handles:
            handle.remove()
    assert torch.allclose(ours[:, -1], expected[:, -1], atol=1e-5)
    with torch.no_grad():
        assert not torch.allclose(ours[:, -1], model(inputs)[:, -1], atol=1e-4)


def test_token_patch_mask_equals_raw_embedding_edit(model, inputs):
    cells = [[0, 3, 5], [1]]
    if model.cfg.cross_layers:  # the image is the cross layers' keys: the cells hide projected tile patches
        ours = I.apply(model, inputs, PM.token_mask(inputs, cells, fill="mean"))
        vision = model.hf_model.config.vision_config
        side = vision.image_size // vision.patch_size
        wide = [2, 2]  # the two toy images: 2x2 and 1x2 tiles (checked in test_attention_structure's hand oracle)

        def edit_features(x):  # x: [batch*image*tile, patch (class first), d]: tile-major per item
            x = x.clone()
            tiles = inputs.tensors["aspect_ratio_mask"].shape[-1]
            per_item = x.view(inputs.batch_size, -1, x.shape[-1])
            for item, item_cells in enumerate(cells):
                real = int(inputs.tensors["aspect_ratio_mask"][item, 0].sum())
                patches = [t * (side * side + 1) + 1 + k for t in range(real) for k in range(side * side)]
                hidden = []
                for c in item_cells:
                    r, col = divmod(c, wide[item] * side)
                    hidden.append(
                        (r // side * wide[item] + col // side) * (side * side + 1) + 1 + r % side * side + col % side
                    )
                per_item[item, hidden] = per_item[item, patches].mean(0)
            assert tiles * (side * side + 1) == per_item.shape[1]
            return x

        assert torch.equal(ours, raw(model, inputs, "model.multi_modal_projector", edit_features))
        with torch.no_grad():
            assert not torch.allclose(ours, model(inputs))
        return
    ours = I.apply(model, inputs, PM.token_mask(inputs, cells, fill="mean"))

    def hidden(span, cell):  # the base cell's token, and every crop token over the same part of the picture
        g_rows, g_cols = span.grid
        r, c = divmod(cell, g_cols)
        out = [span.base.positions[cell]]
        if [v for v in span.views if v.kind != "base"]:  # crops, placed by stitch: a grid of each token's position
            placed = span.stitch(torch.arange(span.end, dtype=torch.float64)).long()
            R, C = placed.shape
            rows = range(r * R // g_rows, -(-(r + 1) * R // g_rows))
            cols = range(c * C // g_cols, -(-(c + 1) * C // g_cols))
            out += [int(placed[i, j]) for i in rows for j in cols]
        return out

    def edit(x):
        x = x.clone()
        for item, item_cells in enumerate(cells):
            span = inputs.image_spans[item][0]  # cells index the base view; the mean is over every patch token
            x[item, [p for c in item_cells for p in hidden(span, c)]] = x[item, span.positions].mean(0)
        return x

    assert torch.equal(ours, raw(model, inputs, block(model, 0), edit, pre=True))


def test_pixel_patch_mask_partitions_each_image_into_its_cells(model, inputs):
    """Whatever the family's pixel layout: each cell paints its own equal-size block grey, cells never
    overlap, masking a set paints exactly the union of its cells, and the cells of all images cover every pixel."""
    if model.adapter.fill_patches is None:  # multi-crop families: a cell's pixels are resized into several crops
        with pytest.raises(UnsupportedModelError, match="use token-level masking"):
            PM.pixel_mask(model, inputs, [[0], []])
        return
    before = inputs.tensors["pixel_values"]
    real = torch.ones_like(before, dtype=torch.bool)  # every pixel a cell's, but a cross model's padding tiles
    if model.cfg.cross_layers:
        real = inputs.tensors["aspect_ratio_mask"].bool()[..., None, None, None].expand_as(before)

    def changed(cells):
        return PM.pixel_mask(model, inputs, cells).tensors["pixel_values"] != before

    spans = inputs.key_spans if model.cfg.cross_layers else inputs.image_spans  # a cross model's stitched tiles
    every = [list(range(s[0].stitch(torch.zeros(s[0].end)).numel())) for s in spans]
    assert not changed([[], []]).any()
    image0, image1, both = changed([every[0], []]), changed([[], every[1]]), changed(every)
    assert torch.equal(both, real) and not (image0 & image1).any() and torch.equal(image0 | image1, both)
    singles = torch.stack([changed([[c], []]) for c in every[0]])
    assert len({int(m.sum()) for m in singles}) == 1  # equal blocks (noise images: no pixel is grey already)
    assert int(singles.sum(0).max()) == 1 and torch.equal(singles.any(0), image0)  # disjoint, covering image 0
    assert torch.equal(changed([[0, 5], []]), singles[0] | singles[5])
    grey = PM._grey(model.processor).to(before.dtype)
    painted = PM.pixel_mask(model, inputs, every).tensors["pixel_values"]
    assert set(painted.unique().tolist()) <= set(grey.tolist())
    with torch.no_grad():
        assert not torch.equal(model(PM.pixel_mask(model, inputs, [[0, 5], [2]])), model(inputs))


def test_choose_cells_top_and_random():
    grids = np.array([[[0.1, 0.5], [0.3, 0.1]]])
    assert PM.choose_cells(grids, 0.5, "top") == [[1, 2]]
    assert PM.choose_cells(grids, 0.5, "random", seed=1) == PM.choose_cells(grids, 0.5, "random", seed=1)
    assert len(PM.choose_cells(grids, 0.3, "random")[0]) == 1
    mixed = [np.arange(4.0).reshape(2, 2), np.arange(12.0).reshape(3, 4)]  # items with grids of their own sizes
    assert PM.choose_cells(mixed, 0.5, "top") == [[2, 3], [6, 7, 8, 9, 10, 11]]


def test_paired_bootstrap_against_scipy():
    rng = np.random.default_rng(0)
    before = rng.random(300) < 0.7
    after = before & (rng.random(300) < 0.85)
    est = paired_bootstrap_diff(before, after, n_resamples=10_000, seed=0)
    ref = stats.bootstrap(
        (after.astype(float) - before,), np.mean, n_resamples=10_000, method="percentile", random_state=0
    )
    assert est.value == pytest.approx(after.mean() - before.mean())
    assert est.ci == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high), abs=0.01)


def test_evaluate_intervention_table(model):
    examples = shapes_examples(12, seed=3)
    table = E.evaluate_intervention(
        model, examples, I.mlp_bypass(0), control=I.neurons(0, [1], "scale", value=1.0), n_resamples=200
    )
    assert set(table.condition) == {"bypass MLP @L0 (all)", "scale 1 neurons @L0"}
    control = table[(table.condition == "scale 1 neurons @L0") & (table.type == "all")].iloc[0]
    assert control["diff"] == 0 and control.acc_before == control.acc_after


def test_causal_trace_restoring_the_last_state_gives_the_clean_answer(model):
    inputs = model.prepare(images=make_images()[:1], prompts=PROMPTS[:1])
    result = P.causal_trace(model, inputs, noise=3.0, seed=0)
    last = len(result.units) - 1
    assert result.effects[-1, last] == pytest.approx(result.p_clean - result.p_corrupted, abs=1e-6)
    assert len(result.image_units) == len(inputs.image_spans[0][0].positions)  # patch tokens (no separators)
    silent = P.causal_trace(model, inputs, noise=0.0)
    assert np.allclose(silent.effects, 0, atol=1e-6)
    spans = P.causal_trace(model, inputs, by="span")
    assert spans.effects.shape == (model.cfg.n_layers, 1)


@pytest.mark.parametrize(
    "make, says",
    [
        (lambda m: I.neurons(0, [m.cfg.d_mlp], "zero"), r"neuron indices \[\d+\] outside the model's \d+ MLP neurons"),
        (lambda m: I.neurons(0, [m.cfg.d_model], "zero", site="resid"), r"outside the model's \d+ residual units"),
        (lambda m: I.neurons(m.cfg.n_layers, [0], "zero"), r"layer \[\d+\] outside the model's \d+ language layers"),
        (lambda m: I.HeadAblation(0, (m.cfg.n_heads,)), r"heads \[\d+\] outside the model's \d+ attention heads"),
        (lambda m: I.mlp_bypass(m.cfg.n_layers), r"outside the model's \d+ language layers"),
        (lambda m: I.attention_knockout([0], query_positions=[-10_000]), r"query positions \[-10000\] fall outside"),
        (lambda m: I.image_embedding_edit([[0]]), r"positions for 1 items, but the batch has 2"),
    ],
)
def test_indices_outside_the_model_are_refused_before_a_hook_runs(model, inputs, make, says):
    with pytest.raises(InputError, match=says):
        make(model).hooks(model, inputs)


@pytest.mark.parametrize(
    "make, says",
    [
        (lambda: I.neurons(0, [-1], "zero"), "must be non-negative"),
        (lambda: I.neurons(0, [1.7], "zero"), "must be whole numbers, got 1.7"),
        (lambda: I.HeadAblation(0, (-2,)), "heads must be non-negative"),
        (lambda: I.image_embedding_edit([[-1]]), "positions must be non-negative"),
        (lambda: I.neurons(0, [1], "clamp"), "needs a value"),
    ],
)
def test_negative_or_fractional_indices_are_refused_not_reinterpreted(make, says):
    with pytest.raises(InputError, match=says):
        make()
    assert I.neurons(0, [np.int64(3), 2.0], "zero").indices == (3, 2)  # numpy ints and whole floats are fine
