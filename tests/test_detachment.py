"""Symbolic detachment's criteria on synthetic curves shaped like the paper's two exemplars: LLaVA (attention
sharpens early, then diffuses; the visual stream is dormant mid-network and surges in the last layers; the
answer commits before attention returns to the image) meets all three; PaliGemma (none of it) meets none."""

from __future__ import annotations

import numpy as np
import pytest

from analyses.study.circuit import detachment_criteria

LAYERS, N = 24, 200


def _per_question(curve, rng, noise=0.15):
    return np.asarray(curve)[None, :] + noise * rng.normal(size=(N, LAYERS))


def _llava(rng):
    layer = np.arange(LAYERS)
    entropy = np.where(layer < 4, 4.0 - 0.7 * layer, 1.2 + 0.08 * (layer - 4))  # lock early, then diffuse
    writes = np.concatenate([np.full(8, 10.0), np.full(8, 1.5), np.linspace(8, 20, 8)])  # dormant middle, late surge
    share = np.concatenate([np.full(12, 0.3), np.full(8, 0.1), [0.2, 0.4, 0.6, 0.5]])  # back to the image at layer 22
    return _per_question(entropy, rng), writes, _per_question(share, rng, 0.02), 14


def _paligemma(rng):
    return (
        _per_question(np.full(LAYERS, 3.0), rng),
        np.full(LAYERS, 6.0),
        _per_question(np.full(LAYERS, 0.3), rng, 0.02),
        None,
    )


def test_the_llava_shape_meets_all_three():
    table = detachment_criteria(*_llava(np.random.default_rng(0)), n_resamples=2000).set_index("criterion")
    assert table.holds.all(), table
    assert table.loc["early entropy collapse", "value"] == pytest.approx(1.2 - 4.0, abs=0.05)  # layer 4 minus layer 0
    assert "layer 4" in table.loc["early entropy collapse", "measure"]


def test_the_paligemma_shape_meets_none():
    table = detachment_criteria(*_paligemma(np.random.default_rng(1)), n_resamples=2000).set_index("criterion")
    assert not table.holds.any(), table


def test_a_late_collapse_or_late_quiet_is_not_the_papers_pattern():
    """What the earlier criteria took for detachment: H_s lower late than early with no early drop, and image
    writes quiet only in the last third (no dormant middle, no surge)."""
    rng = np.random.default_rng(2)
    entropy, _, share, commit = _llava(rng)
    falling = _per_question(np.linspace(3.0, 3.0, LAYERS) - np.r_[np.zeros(16), np.linspace(0, 2, 8)], rng)
    quiet_late = np.r_[np.full(16, 10.0), np.full(8, 2.0)]
    table = detachment_criteria(falling, quiet_late, share, commit, n_resamples=2000).set_index("criterion")
    assert not table.loc["early entropy collapse", "holds"] and not table.loc["dormant middle, late surge", "holds"]
    assert table.loc["commitment before re-engagement", "holds"] and not table.loc["symbolic detachment", "holds"]


def test_a_cross_attention_model_names_its_cross_layers_and_leaves_the_writes_undefined():
    """Columns at model layers 3, 8, ..., 38 (Llama-3.2-Vision-11B's cross layers): the lock and the re-engagement
    are named as those model layers, and with no image tokens to write to the middle criterion does not hold."""
    rng = np.random.default_rng(3)
    cross = [3, 8, 13, 18, 23, 28, 33, 38]
    entropy = np.array([4.0, 2.0, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5])[None, :] + 0.05 * rng.normal(size=(N, 8))
    share = np.array([0.3, 0.2, 0.2, 0.1, 0.1, 0.2, 0.6, 0.3])[None, :] + 0.01 * rng.normal(size=(N, 8))
    table = detachment_criteria(entropy, None, share, 20, n_resamples=500, layers=cross).set_index("criterion")
    collapse = table.loc["early entropy collapse"]
    assert "layer 13" in collapse.measure and "H_s (layer 3)" in collapse.measure and collapse.holds  # column 2
    assert collapse.value == pytest.approx(1.0 - 4.0, abs=0.05)
    assert "layer 33 of most attention" in table.loc["commitment before re-engagement", "measure"]  # column 6
    assert table.loc["commitment before re-engagement", "value"] == 33 - 20
    assert (
        not table.loc["dormant middle, late surge", "holds"]
        and "not defined" in table.loc["dormant middle, late surge", "measure"]
    )
    assert not table.loc["symbolic detachment", "holds"]
    one = detachment_criteria(entropy[:, :1], None, share[:, :1], 1, n_resamples=100, layers=[1])
    assert "one layer only" in one.set_index("criterion").loc["early entropy collapse", "measure"]
