"""The analyses on the trained one-token toys: they run end to end for each family and make sense."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from analyses import attention_structure as A
from analyses import interventions as I
from analyses import logit_lens as L
from analyses import patching as P
from analyses.data.examples import shapes_examples
from analyses.evaluation import correct, evaluate_intervention
from analyses.patch_masking import patch_masking
from analyses.stats import paired_bootstrap_diff
from vlm_lens import HookedVLM, zoo

N = 160


@pytest.fixture(scope="module", params=[n for n in zoo.names() if zoo.get(n).card.get("answers", "token") == "token"])
def toy(request):
    torch.set_num_threads(1)
    return HookedVLM.from_pretrained(request.param), shapes_examples(N, seed=51)


def test_last_layer_margin_has_the_sign_of_correctness(toy):
    model, examples = toy
    margins, correct, _ = L.dataset_margins(model, examples)
    assert np.isfinite(margins).all()
    assert np.array_equal(margins[-1] > 0, correct)
    assert 0.5 < correct.mean() < 0.98
    curves = L.margin_curves(margins, correct)
    final = curves[curves.layer == model.cfg.n_layers - 1].set_index("group")["mean"]
    assert final["correct"] > 0 > final["incorrect"]


def test_bypassing_every_mlp_hurts(toy):
    model, examples = toy
    everything = I.NOTHING
    for layer in range(model.cfg.n_layers):
        everything = everything + I.mlp_bypass(layer)
    table = evaluate_intervention(model, examples, everything, n_resamples=500)
    overall = table[table.type == "all"].iloc[0]
    assert overall.ci_high < 0, overall


def test_attention_maps_and_trace_are_finite(toy):
    model, examples = toy
    inputs = model.prepare(images=[e.load_image() for e in examples[:8]], prompts=[e.text for e in examples[:8]])
    maps = A.image_attention(model, inputs)
    assert np.isfinite(maps.entropy()).all()
    expected = [[ndimage.label(A.top_mass_mask(g, 0.5))[1] for g in layer] for layer in maps.grids]
    assert maps.components(0.5).tolist() == expected  # scipy's 4-neighbour labelling of the same masks
    single = model.prepare(images=[examples[0].load_image()], prompts=[examples[0].text])
    trace = P.causal_trace(model, single, by="span")
    assert np.isfinite(trace.effects).all() and trace.p_clean > trace.p_corrupted - 0.5


@pytest.mark.parametrize("level", ["token", "pixel"])
def test_masking_the_most_attended_patches_hurts_more_than_random(toy, level):
    """On every toy (measured: 0.10-0.26 more accuracy lost), the paired difference's CI excludes zero."""
    model, examples = toy
    if level == "pixel" and model.adapter.fill_patches is None:
        pytest.skip(
            f"the {model.adapter.family} adapter does not say where a patch's pixels lie (fill_patches): "
            "token level only, as the study does"
        )
    after = {}
    for rank in ("top", "random"):
        transform, intervention = patch_masking(0.3, rank, level, "mean")
        after[rank] = correct(model, examples, intervention or I.NOTHING, transform=transform)
    gap = paired_bootstrap_diff(np.array(after["random"], float), np.array(after["top"], float), 2000, seed=0)
    assert gap.ci[1] < 0, gap  # top-masked accuracy minus random-masked accuracy
