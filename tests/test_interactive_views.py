"""The attention view: every head's rows against the cache and the generation's own capture, the figure's menu
against its traces, and the page drawn by a real headless browser."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from analyses.answers import generate_answers
from analyses.data.shapes import generate, image_of
from analyses.views import answer_attention, attention_view, token_labels
from tests.browser import coloured_share, draw
from tests.conftest import FAMILIES, cross_grid_by_hand, make_images, tiny
from vlm_lens import HookedVLM


@pytest.fixture(scope="module")
def words():
    model = HookedVLM.from_pretrained("toy-llava-words")
    q = generate(1, seed=5)[0]
    image = Image.fromarray(image_of(q, seed=5))
    return model, image, model.prepare(images=[image], prompts=[q.text])


@pytest.mark.parametrize("family", FAMILIES)
def test_the_first_answer_tokens_rows_are_the_caches(family):
    model = tiny(family)
    inputs = model.prepare(images=make_images(), prompts=["is there a red square ?", "how many circles ?"])
    if model.cfg.cross_layers:  # the image is at the cross layers' keys: its tiles laid out by hand
        maps, tokens = answer_attention(model, inputs, item=1, max_new_tokens=1)
        _, cache = model.run_with_cache(inputs)
        assert maps.shape[1] == len(model.cfg.cross_layers)
        for k, layer in enumerate(sorted(model.cfg.cross_layers)):
            row = cache["pattern_rows", layer][1, :, -1].float().mean(0)
            np.testing.assert_allclose(maps[0, k].mean(0), cross_grid_by_hand(model, inputs, 1, row), atol=1e-5)
        fig = attention_view(model, inputs, item=1, max_new_tokens=1)
        assert [a.text for a in fig.layout.annotations] == [f"layer {l}" for l in sorted(model.cfg.cross_layers)]
        return
    maps, tokens = answer_attention(model, inputs, item=1, max_new_tokens=1)
    _, cache = model.run_with_cache(inputs)
    span = inputs.image_spans[1][0]
    rows = torch.stack([cache["pattern_rows", l][1, :, -1, : span.end] for l in range(model.cfg.n_layers)])
    np.testing.assert_allclose(maps[0], span.stitch(rows.float(), kind="base").numpy(), atol=1e-5)
    assert len(tokens) == 1


def test_every_answer_tokens_rows_match_the_generations_own_capture(words):
    model, _, inputs = words
    maps, tokens = answer_attention(model, inputs, max_new_tokens=9)
    names = [f"blocks.{l}.attn.hook_pattern_rows" for l in range(model.cfg.n_layers)]
    plain = generate_answers(model, inputs, names, max_new_tokens=9)
    assert [model.to_string(t) for t in plain.tokens[0]] == tokens and len(tokens) > 3
    span = inputs.image_spans[0][0]
    for t in range(len(tokens)):
        mean = torch.stack([plain.attention[t][n][0, 0, -1, : span.end] for n in names])  # heads averaged there
        np.testing.assert_allclose(maps[t].mean(1), span.stitch(mean, kind="base").numpy(), atol=1e-5)


def test_the_menu_shows_one_choice_at_every_layer(words):
    model, image, inputs = words
    maps, tokens = answer_attention(model, inputs, max_new_tokens=9)
    fig = attention_view(model, inputs, image=image, max_new_tokens=9)
    layers, heads = model.cfg.n_layers, model.cfg.n_heads
    buttons = fig.layout.updatemenus[0].buttons
    assert len(buttons) == len(tokens) * (heads + 1)
    heatmaps = [t for t in fig.data if t.type == "heatmap"]
    assert len(heatmaps) == len(buttons) * layers and sum(t.type == "image" for t in fig.data) == layers
    for k in (0, 3, len(buttons) - 1):
        shown = [t for t, v in zip(fig.data, buttons[k].args[0]["visible"]) if v and t.type == "heatmap"]
        assert len(shown) == layers
        token, choice = divmod(k, heads + 1)
        want = maps[token].mean(1) if choice == 0 else maps[token][:, choice - 1]
        for l, trace in enumerate(shown):
            np.testing.assert_allclose(np.asarray(trace.z), want[l], atol=1e-6)
        assert repr(tokens[token]) in buttons[k].label


def test_the_view_draws_in_a_real_headless_browser(words, tmp_path):
    model, image, inputs = words
    fig = attention_view(model, inputs, image=image.resize((128, 128), Image.NEAREST), max_new_tokens=2)
    dom, pixels = draw(fig, tmp_path)
    assert "plot-container plotly" in dom and "mean of heads" in dom  # drawn, with its menu
    assert coloured_share(pixels) > 0.02


def test_token_labels_name_every_image_patch(words):
    from analyses.views import token_labels

    model, _, inputs = words
    labels = token_labels(model, inputs)
    span = inputs.image_spans[0][0]
    assert len(labels) == inputs.input_ids.shape[1]
    for p in span.positions:
        _, row, col = span.locate(p)
        assert labels[p] == f"<img 0 {row},{col}>"
    assert labels[span.end] == model.tokenizer.convert_ids_to_tokens(int(inputs.input_ids[0, span.end]))


def test_the_lens_grid_reads_each_layer_through_either_lens(words):
    from analyses.logit_lens import read_out
    from analyses.tuned_lens import TunedLens
    from analyses.views import lens_grid

    model, _, inputs = words
    fig = lens_grid(model, inputs, TunedLens.identity(model), positions="all")
    logit, tuned = fig.data
    names = [f"blocks.{l}.hook_resid_post" for l in range(model.cfg.n_layers)]
    with torch.no_grad():
        logits, cache = model.run_with_cache(inputs, names_filter=lambda n: n in names)
    probs = torch.softmax(read_out(model, torch.stack([cache[n][0] for n in names])), -1)
    np.testing.assert_allclose(np.asarray(logit.z), probs.max(-1).values.numpy(), atol=1e-5)
    np.testing.assert_allclose(np.asarray(tuned.z), np.asarray(logit.z), atol=1e-5)  # the identity lens
    np.testing.assert_allclose(np.asarray(logit.z)[-1], torch.softmax(logits[0].float(), -1).max(-1).values, atol=1e-5)
    assert logit.visible and not tuned.visible
    assert [b.args[0]["visible"] for b in fig.layout.updatemenus[0].buttons] == [[True, False], [False, True]]
    text_only = lens_grid(model, inputs)
    assert len(text_only.data) == 1 and not any(x.split(": ", 1)[1].startswith("<img") for x in text_only.data[0].x)


def test_several_images_in_one_prompt_each_drawn_and_named(words):
    model, image, _ = words
    other = Image.fromarray(image_of(generate(1, seed=6)[0], seed=6))
    inputs = model.prepare(images=[[image, other]], prompts=["is there a green triangle in the image ?"])
    first, second = inputs.image_spans[0]
    assert (first.label, second.label, first.end <= second.start) == ("image 0", "image 1", True)
    maps, _ = answer_attention(model, inputs, image=1, max_new_tokens=1)
    _, cache = model.run_with_cache(inputs)
    rows = torch.stack([cache["pattern_rows", l][0, :, -1, : second.end] for l in range(model.cfg.n_layers)])
    np.testing.assert_allclose(maps[0], second.stitch(rows.float(), kind="base").numpy(), atol=1e-5)
    fig = attention_view(model, inputs, image=other, image_index=1, max_new_tokens=1)
    assert fig.layout.title.text.endswith("(image 1)")
    labels = token_labels(model, inputs)
    assert labels[first.start] == "<img 0 0,0>" and labels[second.start] == "<img 1 0,0>"
