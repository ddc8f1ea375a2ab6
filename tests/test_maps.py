"""Maps over the picture (``analyses.maps``) and a unit's top images (``analyses.top_images``).

Oracles: a brute-force scan (each question alone through ``run_with_cache``) for the top images, the SAE's own
``encode`` on the cached residual for a latent, ``on_grid`` and the causal trace's effects placed by hand for the maps,
each menu choice against the trace it shows, and a real headless Chromium for the pages."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from analyses.attribution import attribute, on_grid
from analyses.data.examples import shapes_examples
from analyses.maps import attribution_view, map_view, patching_view, unit_view
from analyses.patching import causal_trace
from analyses.top_images import top_activating
from tests.browser import coloured_share, draw
from vlm_lens import HookedVLM
from vlm_lens.errors import InputError, InputIndexError

HOOK = "blocks.2.mlp.hook_post"


@pytest.fixture(scope="module")
def toy():
    return HookedVLM.from_pretrained("toy-llava")


@pytest.fixture(scope="module")
def questions():
    return shapes_examples(24, seed=3)


def brute_force(model, examples, hook, value_of) -> list[tuple[float, int, np.ndarray]]:
    """(max over the first image's patches, index, grid) for each question run alone."""
    out = []
    for i, example in enumerate(examples):
        inputs = model.prepare(images=[example.load_image()], prompts=[example.text])
        _, cache = model.run_with_cache(inputs, names_filter=lambda n: n == hook)
        span = inputs.image_spans[0][0]
        values = value_of(cache[hook][0])  # pos
        grid = values[span.start : span.end].reshape(span.grid).numpy()
        out.append((float(grid.max()), i, grid))
    return sorted(out, key=lambda e: (-e[0], e[1]))


def test_a_neurons_top_images_are_the_brute_force_scans(toy, questions):
    top = top_activating(toy, questions, HOOK, unit=17, k=5, batch_size=7)  # batches cut across the top
    want = brute_force(toy, questions, HOOK, lambda a: a[:, 17].float())[:5]
    assert top.frame.example.tolist() == [i for _, i, _ in want]
    np.testing.assert_allclose(top.frame["max"], [m for m, _, _ in want], atol=1e-5)
    for grid, (_, _, expected) in zip(top.grids, want):
        np.testing.assert_allclose(grid, expected, atol=1e-5)
    first = top.frame.iloc[0]
    assert want[0][2][first.row, first.col] == pytest.approx(first["max"], abs=1e-6)
    assert top.frame.text.tolist() == [questions[i].text for _, i, _ in want]
    again = top_activating(toy, questions, HOOK, unit=17, k=5, batch_size=24)
    assert again.frame.example.tolist() == top.frame.example.tolist()


class ToySAE(nn.Module):
    def __init__(self, d_in: int, d_sae: int = 32):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.W_enc = nn.Parameter(torch.randn(d_in, d_sae, generator=generator) / d_in**0.5)
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.W_dec = nn.Parameter(torch.randn(d_sae, d_in, generator=generator) / d_sae**0.5)

    def encode(self, x):
        return torch.relu(x @ self.W_enc + self.b_enc)

    def decode(self, acts):
        return acts @ self.W_dec


def test_an_sae_latents_top_images_are_its_encoders(toy, questions):
    sae = ToySAE(toy.cfg.d_model)
    host = "blocks.1.hook_resid_post"
    want = brute_force(toy, questions, host, lambda a: sae.encode(a.float())[:, 5].detach())[:4]
    toy.add_sae(sae, host, use_error_term=True)
    try:
        top = top_activating(toy, questions, f"{host}.hook_sae_acts_post", unit=5, k=4)
    finally:
        toy.reset_saes()
    assert top.frame.example.tolist() == [i for _, i, _ in want]
    np.testing.assert_allclose(top.grids[0], want[0][2], atol=1e-5)
    fig = unit_view(top)
    heat = [t for t in fig.data if t.type == "heatmap"]
    assert len(heat) == 4 and np.allclose(heat[1].z, top.grids[1])
    assert "#1 · max" in fig.layout.annotations[0].text


def test_unit_and_hook_errors(toy, questions):
    with pytest.raises(InputIndexError, match=r"unit must be in 0\.\."):
        top_activating(toy, questions, HOOK, unit=10**6)
    with pytest.raises(InputError, match="need a hook of \\[batch, pos, units\\]"):
        top_activating(toy, questions, "blocks.0.attn.hook_pattern", unit=0)
    with pytest.raises(InputError, match="k must be"):
        top_activating(toy, questions, HOOK, unit=0, k=0)


def test_the_attribution_view_shows_each_hooks_grid(toy, questions):
    clean, corrupted = questions[0], questions[1]
    prep = lambda e: toy.prepare(images=[e.load_image()], prompts=[clean.text])  # noqa: E731
    metric = lambda logits: logits[0, -1].max()  # noqa: E731
    hooks = ["blocks.0.hook_resid_pre", "blocks.2.hook_resid_pre", "blocks.2.attn.hook_z"]
    result = attribute(toy, prep(clean), prep(corrupted), metric, at=hooks, method="gradient", positions="image")
    fig = attribution_view(result, clean.load_image())
    heat = [t for t in fig.data if t.type == "heatmap"]
    assert [t.name for t in heat] == hooks
    for trace in heat:
        np.testing.assert_allclose(np.asarray(trace.z, dtype=float), on_grid(result, trace.name))
        assert trace.zmin == -trace.zmax  # a symmetric scale: white at zero
    buttons = fig.layout.updatemenus[0].buttons
    for k, button in enumerate(buttons):
        assert button.args[0]["visible"] == [True] + [j == k for j in range(len(hooks))]
        assert hooks[k] in button.args[1]["title"]


def test_the_patching_view_places_each_patchs_effect(toy, questions):
    example = questions[2]
    inputs = toy.prepare(images=[example.load_image()], prompts=[example.text])
    trace = causal_trace(toy, inputs)
    fig = patching_view(trace, inputs, example.load_image())
    span = inputs.image_spans[0][0]
    heat = [t for t in fig.data if t.type == "heatmap"]
    assert len(heat) == toy.cfg.n_layers
    real = inputs.attention_mask[0].bool().nonzero().flatten().tolist()
    for layer, trace_z in enumerate(heat):
        z = np.asarray(trace_z.z, dtype=float)
        for r in range(span.grid[0]):
            for c in range(span.grid[1]):
                assert z[r, c] == pytest.approx(trace.effects[layer, real.index(span.position_of(r, c))])
    with pytest.raises(InputError, match="by='position'"):
        patching_view(causal_trace(toy, inputs, by="span"), inputs, example.load_image())


def test_map_view_errors(questions):
    with pytest.raises(InputError, match="at least one map"):
        map_view(questions[0].load_image(), {})
    with pytest.raises(InputError, match="not a patch grid"):
        map_view(questions[0].load_image(), {"flat": np.zeros(4)})


def test_the_maps_draw_in_a_real_headless_browser(toy, questions, tmp_path):
    top = top_activating(toy, questions[:8], HOOK, unit=17, k=4)
    dom, pixels = draw(unit_view(top), tmp_path)
    assert "plot-container plotly" in dom and "#1 · max" in dom
    assert coloured_share(pixels) > 0.02
    grid = np.arange(16.0).reshape(4, 4) - 8
    dom, pixels = draw(map_view(questions[0].load_image(), {"a": grid, "b": -grid}), tmp_path)
    assert "plot-container plotly" in dom and "updatemenu" in dom
    assert coloured_share(pixels) > 0.02
