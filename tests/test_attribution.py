"""Node attribution against analytic cases (a metric linear in the activation; completeness of integrated
gradients) and against real activation patching on the trained toys."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import pearsonr

from analyses.attribution.nodes import attribute, on_grid
from analyses.data.shapes import generate, image_of
from tests.conftest import FAMILIES, make_images, tiny
from vlm_lens import HookedVLM
from vlm_lens.errors import HookNameError, InputError


def _pair(model: HookedVLM, seed: int):
    """Clean and corrupted: one Shapes question about two scenes of the same size."""
    q = generate(2, seed=seed)
    images = [Image.fromarray(image_of(s, seed=seed)) for s in q]
    return (
        model.prepare(images=[images[0]], prompts=[q[0].text]),
        model.prepare(images=[images[1]], prompts=[q[0].text]),
    )


def _yes_minus_no(model: HookedVLM):
    yes, no = model.tokenizer.convert_tokens_to_ids(["yes", "no"])
    return lambda logits: logits[:, -1, yes].sum() - logits[:, -1, no].sum()


@pytest.fixture(scope="module")
def toy():
    return HookedVLM.from_pretrained("toy-llava")


def test_a_metric_linear_in_the_activation_is_decomposed_exactly_by_both_methods(toy):
    """The logits are linear in the final norm's output: the gradient method and one step of IG both give scores
    that sum to metric(clean) - metric(corrupted), and equal each other node by node."""
    clean, corrupted = _pair(toy, 5)
    metric = _yes_minus_no(toy)
    grad = attribute(toy, clean, corrupted, metric, at=["ln_final.hook_normalized"], method="gradient")
    ig = attribute(toy, clean, corrupted, metric, at=["ln_final.hook_normalized"], method="ig", steps=1)
    with torch.no_grad():
        by_hand = float(metric(toy(clean))) - float(metric(toy(corrupted)))
    assert grad.difference == pytest.approx(by_hand, abs=1e-5)
    assert grad.totals["ln_final.hook_normalized"] == pytest.approx(by_hand, abs=1e-4)
    np.testing.assert_allclose(grad.frame.score, ig.frame.score, atol=1e-5)


def test_integrated_gradients_are_complete_at_a_residual_layer_and_converge_with_steps(toy):
    clean, corrupted = _pair(toy, 5)
    metric = _yes_minus_no(toy)
    errors = [
        abs(
            attribute(toy, clean, corrupted, metric, at=["blocks.1.hook_resid_pre"], method="ig", steps=s).completeness[
                "blocks.1.hook_resid_pre"
            ]
        )
        for s in (2, 8, 64)
    ]
    assert errors[2] < errors[1] < errors[0]
    result = attribute(toy, clean, corrupted, metric, at=["blocks.1.hook_resid_pre"], method="ig", steps=64)
    assert abs(result.completeness["blocks.1.hook_resid_pre"]) < 1e-2 * abs(result.difference) + 1e-3
    assert result.frame.score.sum() == pytest.approx(result.totals["blocks.1.hook_resid_pre"], abs=1e-4)


def test_integrated_gradients_follow_real_patching_better_than_the_first_order_step():
    """Against real activation patching (each position of a residual layer set to its corrupted value, one at a
    time), over three toys, two layers and three scene pairs: IG's scores correlate with the real effects, and more
    than attribution patching's first-order estimates do."""
    ig_r, grad_r, ig_sign = [], [], []
    for name in ("toy-llava", "toy-paligemma", "toy-qwen2-vl"):
        model = HookedVLM.from_pretrained(name)
        metric = _yes_minus_no(model)
        for seed in range(3):
            clean, corrupted = _pair(model, seed)
            for layer in (1, 2):
                hook = f"blocks.{layer}.hook_resid_pre"
                with torch.no_grad():
                    _, cache = model.run_with_cache(corrupted, names_filter=lambda n, h=hook: n == h)
                    base = float(metric(model(clean)))
                    real = []
                    for p in range(clean.input_ids.shape[1]):

                        def patch(act, hook, p=p, cache=cache):
                            act = act.clone()
                            act[:, p] = cache[hook.name][:, p]
                            return act

                        real.append(base - float(metric(model.run_with_hooks(clean, fwd_hooks=[(hook, patch)]))))
                real = np.array(real)
                ig = attribute(model, clean, corrupted, metric, at=[hook], method="ig", steps=32).frame.score.to_numpy()
                grad = attribute(model, clean, corrupted, metric, at=[hook]).frame.score.to_numpy()
                ig_r.append(pearsonr(ig, real)[0])
                grad_r.append(pearsonr(grad, real)[0])
                moved = np.abs(real) > 1e-4
                ig_sign.append(np.mean(np.sign(ig[moved]) == np.sign(real[moved])))
    assert np.mean(ig_r) > 0.7 and np.mean(ig_r) > np.mean(grad_r) + 0.2, (np.mean(ig_r), np.mean(grad_r))
    assert np.mean(ig_sign) > 0.7, ig_sign


def test_nodes_say_where_they_sit_in_the_picture(toy):
    clean, corrupted = _pair(toy, 5)
    result = attribute(
        toy, clean, corrupted, _yes_minus_no(toy), at=["blocks.2.hook_resid_pre", "blocks.1.attn.hook_z"]
    )
    span = clean.image_spans[0][0]
    rows = result.frame[(result.frame.hook == "blocks.2.hook_resid_pre") & result.frame.image.notna()]
    assert sorted(rows.position) == span.positions
    for row in rows.itertuples():
        assert span.position_of(int(row.image_row), int(row.image_col)) == row.position
    grid = on_grid(result, "blocks.2.hook_resid_pre")
    assert grid.shape == span.grid
    assert grid[1, 2] == pytest.approx(float(rows[(rows.image_row == 1) & (rows.image_col == 2)].score.iloc[0]))
    heads = result.frame[result.frame.hook == "blocks.1.attn.hook_z"]
    assert len(heads) == clean.input_ids.shape[1] * toy.cfg.n_heads and set(heads["index"]) == set(range(4))
    only_image = attribute(toy, clean, corrupted, _yes_minus_no(toy), at=["blocks.2.hook_resid_pre"], positions="image")
    assert sorted(only_image.frame.position) == span.positions


def test_neurons_are_nodes_of_their_own(toy):
    clean, corrupted = _pair(toy, 5)
    result = attribute(toy, clean, corrupted, _yes_minus_no(toy), at=["blocks.3.mlp.hook_post"], positions=[-1 % 29])
    assert len(result.frame) == toy.cfg.d_mlp and list(result.frame["index"]) == list(range(toy.cfg.d_mlp))


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_is_attributed_and_linear_sites_are_exact(family):
    model = tiny(family)
    images = make_images()
    prompt = "is there a red square ?"
    clean = model.prepare(images=[images[0]], prompts=[prompt])
    corrupted = model.prepare(images=[images[0].transpose(Image.FLIP_LEFT_RIGHT)], prompts=[prompt])
    metric = lambda logits: logits[:, -1, :5].sum()  # noqa: E731
    result = attribute(model, clean, corrupted, metric, at=["ln_final.hook_normalized", "blocks.0.hook_resid_pre"])
    assert result.totals["ln_final.hook_normalized"] == pytest.approx(result.difference, abs=1e-3)
    assert np.isfinite(result.frame.score).all()


def test_what_attribution_refuses(toy):
    clean, corrupted = _pair(toy, 5)
    metric = _yes_minus_no(toy)
    with pytest.raises(InputError, match="method must be one of"):
        attribute(toy, clean, corrupted, metric, at=["hook_embed"], method="shapley")
    with pytest.raises(InputError, match="steps must be"):
        attribute(toy, clean, corrupted, metric, at=["hook_embed"], method="ig", steps=0)
    with pytest.raises(HookNameError):
        attribute(toy, clean, corrupted, metric, at=["blocks.1.hook_resid_pree"])
    with pytest.raises(InputError, match="language-model hooks"):
        attribute(toy, clean, corrupted, metric, at=["vision.blocks.0.hook_resid_post"])
    with pytest.raises(InputError, match="scalar tensor"):
        attribute(toy, clean, corrupted, lambda logits: logits[:, -1, :2], at=["hook_embed"])
    longer = toy.prepare(images=[make_images()[0]], prompts=["is there a red square in the image , please ?"])
    with pytest.raises(InputError, match="same prompt length"):
        attribute(toy, clean, longer, metric, at=["hook_embed"])
    with pytest.raises(InputError, match="no scores at image"):
        on_grid(attribute(toy, clean, corrupted, metric, at=["hook_embed"], positions="text"), "hook_embed")


def test_the_patch_figure_is_symmetric_about_zero(toy):
    from analyses import plots

    clean, corrupted = _pair(toy, 5)
    grid = on_grid(
        attribute(toy, clean, corrupted, _yes_minus_no(toy), at=["blocks.2.hook_resid_pre"]), "blocks.2.hook_resid_pre"
    )
    fig = plots.patch_scores(Image.fromarray(image_of(generate(1, seed=5)[0], seed=5)), grid)
    heat = fig.data[1]
    assert heat.zmin == -heat.zmax == -float(np.abs(grid).max()) and np.array_equal(np.asarray(heat.z), grid)


# -- edges --------------------------------------------------------------------------------------------------------
from analyses.attribution.edges import Graph, edge_attribution, faithfulness, path_patch, run_circuit  # noqa: E402


@pytest.mark.parametrize("family", FAMILIES)
def test_a_circuit_of_every_edge_is_the_clean_run_and_of_none_the_corrupted(family):
    """Edge patching's two ends, on every family: keeping every edge changes nothing; cutting every edge makes each
    reader see the corrupted residual, so the run is the corrupted run."""
    model = tiny(family)
    images = make_images()
    clean = model.prepare(images=[images[0]], prompts=["is there a red square ?"])
    corrupted = model.prepare(images=[images[0].transpose(Image.FLIP_LEFT_RIGHT)], prompts=["is there a red square ?"])
    metric = lambda logits: logits[:, -1, :5].sum()  # noqa: E731
    if model.cfg.cross_layers:
        with pytest.raises(InputError, match="cross-attention"):
            run_circuit(model, clean, corrupted, metric, [])
        return
    with torch.no_grad():
        high, low = float(metric(model(clean))), float(metric(model(corrupted)))
    graph = Graph(model.cfg.n_layers)
    assert run_circuit(model, clean, corrupted, metric, graph.edges()) == pytest.approx(high, abs=1e-4)
    if any(n.endswith("hook_deepstack") for n in model.hook_names()):
        return  # Qwen3-VL adds the image's features into later layers beside the writers: no edge carries them
    assert run_circuit(model, clean, corrupted, metric, []) == pytest.approx(low, abs=1e-4)


def test_path_patching_one_edge_is_a_hand_patch_of_its_receivers_input(toy):
    """embed -> mlp1 cut by hand: the MLP of layer 1 reads its input minus the embeddings' clean-minus-corrupted
    difference, nothing else changes."""
    clean, corrupted = _pair(toy, 5)
    metric = _yes_minus_no(toy)
    with torch.no_grad():
        _, c = toy.run_with_cache(clean, names_filter=lambda n: n == "hook_embed")
        _, k = toy.run_with_cache(corrupted, names_filter=lambda n: n == "hook_embed")
        delta = c["hook_embed"] - k["hook_embed"]
        by_hand = float(metric(toy(clean))) - float(
            metric(toy.run_with_hooks(clean, fwd_hooks=[("blocks.1.hook_mlp_in", lambda a, hook: a - delta)]))
        )
    assert path_patch(toy, clean, corrupted, metric, "embed", "mlp1") == pytest.approx(by_hand, abs=1e-5)


def test_eap_ig_follows_real_path_patching_better_than_eap():
    ig_r, eap_r = [], []
    for name in ("toy-llava", "toy-paligemma", "toy-qwen2-vl"):
        model = HookedVLM.from_pretrained(name)
        metric = _yes_minus_no(model)
        for seed in (0, 5):
            clean, corrupted = _pair(model, seed)
            edges = Graph(model.cfg.n_layers).edges()
            real = np.array([path_patch(model, clean, corrupted, metric, u, v) for u, v in edges])
            ig = edge_attribution(model, clean, corrupted, metric, "eap-ig", steps=8)
            eap = edge_attribution(model, clean, corrupted, metric, "eap")
            assert list(zip(ig.frame.sender, ig.frame.receiver)) == edges
            ig_r.append(pearsonr(ig.frame.score, real)[0])
            eap_r.append(pearsonr(eap.frame.score, real)[0])
    assert np.mean(ig_r) > 0.7 and np.mean(ig_r) > np.mean(eap_r) + 0.2, (ig_r, eap_r)


def test_the_faithfulness_curve_runs_each_circuit(toy):
    clean, corrupted = _pair(toy, 5)
    metric = _yes_minus_no(toy)
    scores = edge_attribution(toy, clean, corrupted, metric, "eap-ig", steps=4)
    n = len(Graph(toy.cfg.n_layers).edges())
    curve = faithfulness(toy, clean, corrupted, metric, scores, [0, 10, n])
    assert curve.faithfulness.iloc[0] == pytest.approx(0.0, abs=1e-5)
    assert curve.faithfulness.iloc[-1] == pytest.approx(1.0, abs=1e-5)
    middle = run_circuit(toy, clean, corrupted, metric, scores.top(10))
    assert curve.metric.iloc[1] == pytest.approx(middle)


def test_what_edges_refuse(toy):
    clean, corrupted = _pair(toy, 5)
    metric = _yes_minus_no(toy)
    with pytest.raises(InputError, match="method must be one of"):
        edge_attribution(toy, clean, corrupted, metric, "acdc")
    with pytest.raises(InputError, match="no edge of this model"):
        path_patch(toy, clean, corrupted, metric, "mlp2", "attn1")
    with pytest.raises(InputError, match="not edges of this model"):
        run_circuit(toy, clean, corrupted, metric, [("embed", "nowhere")])


def test_the_circuit_figure_draws_each_edge_by_its_score():
    import pandas as pd

    from analyses import plots

    edges = pd.DataFrame(
        {"sender": ["embed", "attn0", "mlp1"], "receiver": ["attn0", "mlp1", "logits"], "score": [2.0, -1.0, 0.5]}
    )
    fig = plots.circuit(edges)
    lines = [t for t in fig.data if t.mode == "lines"]
    assert len(lines) == 3
    assert [t.line.color for t in lines] == ["#d62728", "#1f77b4", "#d62728"]  # red for, blue against
    assert lines[0].line.width > lines[1].line.width > lines[2].line.width
    assert list(lines[2].x) == [1, 2]  # mlp1 at layer 1, the logits after the last layer drawn
