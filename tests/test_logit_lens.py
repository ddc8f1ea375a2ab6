"""Logit lens, truth margin and residual decomposition against hand computations and HF's logits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from analyses import answers as A
from analyses import decomposition as D
from analyses import logit_lens as L


def test_last_layer_lens_reproduces_logits(model, inputs):
    with torch.no_grad():
        logits, cache = model.run_with_cache(inputs)
    lens = L.logit_lens(model, cache)
    assert lens.shape == (model.cfg.n_layers, 2, model.cfg.d_vocab)
    assert torch.allclose(lens[-1], logits[:, -1].float(), atol=1e-5)


def test_truth_margin_by_hand():
    logits = torch.tensor([[2.0, 5.0, 1.0], [0.0, -1.0, 3.0]])
    assert L.truth_margin(logits, [[1], [0]]).tolist() == [3.0, -3.0]
    assert L.truth_margin(logits, [[0, 1], [1, 2]]).tolist() == [3.0, 3.0]  # max over references
    stacked = torch.stack([logits, logits * 2])  # [layer, batch, vocab]
    assert L.truth_margin(stacked, [[1], [0]]).tolist() == [[3.0, -3.0], [6.0, -6.0]]
    with pytest.raises(ValueError):
        L.truth_margin(logits, [[1]])


def test_reference_tokens(model):
    tok = model.tokenizer
    assert A.reference_token_ids(tok, ["yes"]) == [tok.convert_tokens_to_ids("yes")]
    assert A.reference_token_ids(tok, ["  3"]) == [tok.convert_tokens_to_ids("3")]
    assert A.reference_token_ids(tok, ["red square", "blue"]) == [
        tok.convert_tokens_to_ids("red"),
        tok.convert_tokens_to_ids("blue"),
    ]
    with pytest.raises(ValueError, match="no reference token"):
        A.reference_token_ids(tok, ["zebra"])


def test_margin_curves_against_scipy():
    rng = np.random.default_rng(0)
    margins = rng.normal(size=(3, 40))
    correct = rng.random(40) > 0.4
    margins[:, correct] += np.array([[0.1], [1.0], [3.0]])
    curves = L.margin_curves(margins, correct)
    row = curves[(curves.layer == 1) & (curves.group == "incorrect")].iloc[0]
    values = margins[1, ~correct]
    low, high = stats.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
    assert (row["mean"], row.ci_low, row.ci_high) == pytest.approx((values.mean(), low, high))
    summary = L.peak_and_separation(curves, margins)
    assert summary["peak_layer"] == 2
    assert summary["separation_layer"] in (1, 2)


def test_peak_is_where_right_and_wrong_separate_most_not_where_the_margin_is_largest():
    """Constructed trajectories: every answer's margin keeps growing (largest at the last layer), but
    right and wrong answers are furthest apart at layer 2, then wrong answers catch up (commitment)."""
    correct = np.array([True] * 6 + [False] * 6)
    right = np.array([0.0, 1.0, 3.0, 4.0, 6.0])
    wrong = np.array([0.0, 0.5, 0.5, 3.0, 5.5])
    jitter = np.linspace(-0.1, 0.1, 6)
    margins = np.concatenate([right[:, None] + jitter, wrong[:, None] + jitter], axis=1)  # [layer, n]
    summary = L.peak_and_separation(L.margin_curves(margins, correct), margins)
    assert summary["peak_layer"] == 2 and summary["gap_at_peak"] == pytest.approx(2.5)
    assert summary["max_margin_layer"] == 4
    assert summary["separation_layer"] == 1  # CIs of +-0.1 jitter stop overlapping at the 0.5 gap


def test_decomposition_sums_to_the_logit_difference(model, inputs):
    with torch.no_grad():
        logits, cache = model.run_with_cache(inputs)
    last = logits[:, -1]
    ref = last.argmax(-1).tolist()
    comp = last.argsort(-1)[:, -2].tolist()
    table = D.margin_contributions(model, cache, ref, comp)
    total = table.groupby("item").contribution.sum().to_numpy()
    expected = (last[[0, 1], ref] - last[[0, 1], comp]).numpy()
    assert np.allclose(total, expected, atol=1e-4)
    assert set(table.component) == {"embed", "attn", "mlp"}
    wide = D.layer_table(table)
    assert wide.cumulative.iloc[-1] == pytest.approx(expected.mean(), abs=1e-4)


def test_head_contributions_sum_to_the_attention_contribution(model, inputs):
    """Per layer, the heads' direct contributions plus W_O's bias (no head's) give the attention write's."""
    with torch.no_grad():
        logits, cache = model.run_with_cache(inputs)
    last = logits[:, -1]
    ref, comp = last.argmax(-1).tolist(), last.argsort(-1)[:, -2].tolist()
    heads = D.head_contributions(model, cache, ref, comp)
    assert len(heads) == 2 * model.cfg.n_layers * model.cfg.n_heads
    layers = D.margin_contributions(model, cache, ref, comp)
    attn = layers[layers.component == "attn"].set_index(["item", "layer"]).contribution
    summed = heads.groupby(["item", "layer"]).contribution.sum()
    assert all(D.output_projection(model, l).bias is None for l in range(model.cfg.n_layers))  # else add its share
    np.testing.assert_allclose(summed.to_numpy(), attn.loc[summed.index].to_numpy(), atol=1e-4)
    top = D.top_heads(heads, k=3)
    means = heads.groupby(["layer", "head"]).contribution.mean().sort_values(ascending=False)
    assert list(zip(top["layer"], top["head"])) == list(means.index[:3]) and top["mean"].tolist() == pytest.approx(
        means[:3].tolist()
    )


def test_mlp_share_by_hand():
    frame = pd.DataFrame(
        [
            {"item": 0, "layer": -1, "component": "embed", "contribution": 5.0},
            {"item": 0, "layer": 0, "component": "attn", "contribution": 1.0},
            {"item": 0, "layer": 0, "component": "mlp", "contribution": 3.0},
            {"item": 0, "layer": 1, "component": "attn", "contribution": 2.0},
            {"item": 0, "layer": 1, "component": "mlp", "contribution": 2.0},
        ]
    )
    assert D.mlp_share(frame, upto_layer=0) == pytest.approx(0.75)
    assert D.mlp_share(frame, upto_layer=1) == pytest.approx(5 / 8)


def test_update_norms_by_hand(model, inputs):
    with torch.no_grad():
        _, cache = model.run_with_cache(inputs)
    table = D.update_norms(model, cache)
    update = (cache["attn_out", 1] + cache["mlp_out", 1])[0].norm(dim=-1)
    image = inputs.image_positions(0)
    got = table[(table.item == 0) & (table.layer == 1) & (table.positions == "image")].update_norm.item()
    assert got == pytest.approx(update[image].mean().item(), rel=1e-5)


def test_dataset_margins_sign_matches_greedy_correctness(model):
    from analyses.data.examples import shapes_examples
    from analyses.evaluation import correct

    examples = shapes_examples(20, seed=4)
    evaluation_correct = correct
    margins, correct, competitors = L.dataset_margins(model, examples, batch_size=8)
    assert margins.shape == (model.cfg.n_layers, 20)
    # a positive margin is a gold token answered: always right; the converse holds where the rule reads the one token
    # as its word (counts, colours), not for POPE's yes/no reading, which takes any answer without "no" for yes
    assert correct[margins[-1] > 0].all()
    worded = np.array([e.metric != "yesno" for e in examples])
    assert worded.any() and np.array_equal((margins[-1] > 0)[worded], correct[worded])
    assert np.array_equal(correct, evaluation_correct(model, examples))
    assert len(competitors) == 20
