"""Greedy answers generated to a stop token: tokens as HF's own ``generate``, confidence and per-token
attention as a teacher-forced forward over prompt + answer computes them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analyses import answers
from analyses.attention_structure import answer_token_attention, spatial_entropy
from tests.conftest import PROMPTS, cross_grid_by_hand

STEPS = 4


def _hf_greedy(model, inputs, stop):
    out = model.hf_model.generate(
        **inputs.tensors, max_new_tokens=STEPS, do_sample=False, eos_token_id=[stop], pad_token_id=stop
    )
    return out[:, inputs.input_ids.shape[1] :].tolist()


@torch.no_grad()
def test_generated_answers_match_hf_and_a_teacher_forced_forward(model, images):
    inputs = model.prepare(images=images, prompts=PROMPTS)
    free = _hf_greedy(model, inputs, stop=model.tokenizer.pad_token_id)
    stop = free[0][2]  # a token item 0 emits at step 2: it stops there (or earlier)
    names = [f"blocks.{l}.attn.hook_pattern_rows" for l in range(model.cfg.n_layers)]
    generated = answers.generate_answers(model, inputs, names, STEPS, stop_ids=[stop])
    hf = _hf_greedy(model, inputs, stop)
    for row, tokens in zip(hf, generated.tokens):
        cut = row.index(stop) if stop in row else len(row)
        assert tokens == row[:cut]
    assert len(generated.tokens[0]) <= 2
    maps = answer_token_attention(generated)
    cross = bool(model.cfg.cross_layers)
    layers = list(model.cfg.cross_layers) or list(range(model.cfg.n_layers))  # where attention reads the image
    for item, (image, prompt) in enumerate(zip(images, PROMPTS)):
        tokens = generated.tokens[item]
        if not tokens:
            continue
        single = model.prepare(images=[image], prompts=[prompt])
        ids = torch.cat([single.input_ids, torch.tensor([tokens])], dim=1)
        tensors = {**single.tensors, "input_ids": ids, "attention_mask": torch.ones_like(ids)}
        for key in ("token_type_ids", "mm_token_type_ids"):  # answer tokens' type, as the adapter declares it
            if key in tensors:
                value = model.adapter.answer_token_types.get(key, 0)
                tensors[key] = torch.cat([tensors[key], torch.full((1, len(tokens)), value)], 1)
        for key in model.adapter.repeat_last_keys:  # e.g. the cross-attention mask: the last row, repeated
            tensors[key] = torch.cat([tensors[key], tensors[key][:, -1:].repeat_interleave(len(tokens), 1)], 1)
        forced = model.as_inputs(**tensors)
        last = single.input_ids.shape[1] - 1
        rows = list(range(last, last + len(tokens)))
        logits, cache = model.run_with_cache(forced, names_filter=names, query_positions=torch.tensor(rows))
        logprobs = torch.log_softmax(logits[0, rows].float(), -1)[torch.arange(len(tokens)), torch.tensor(tokens)]
        np.testing.assert_allclose(generated.probs[item], logprobs.exp().numpy(), rtol=1e-4)
        assert generated.geometric_mean[item] == pytest.approx(float(logprobs.mean().exp()), rel=1e-4)
        # Eq. 1: the map averaged over heads and the answer tokens, then its entropy
        if cross:  # the keys are the image's tiles: laid on the picture by hand
            entropy = [
                spatial_entropy(cross_grid_by_hand(model, single, 0, cache["pattern_rows", l][0].float().mean((0, 1))))
                for l in layers
            ]
        else:
            span = single.image_spans[0][0]
            keys = list(span.base.positions)  # a multi-crop image: its base view
            entropy = [
                spatial_entropy(
                    cache["pattern_rows", l][0][:, :, keys].float().mean((0, 1)).reshape(span.base.grid).numpy()
                )
                for l in layers
            ]
        np.testing.assert_allclose(maps[item][1], entropy, rtol=1e-4)


def test_an_answer_stops_at_its_stop_token_and_is_scored_whole():
    from analyses.data.examples import shapes_examples
    from vlm_lens import HookedVLM

    model = HookedVLM.from_pretrained("toy-llava")
    examples = shapes_examples(4, 1)
    inputs = model.prepare(images=[e.load_image() for e in examples], prompts=[e.text for e in examples])
    one = answers.generate_answers(model, inputs, max_new_tokens=1)
    three = answers.generate_answers(model, inputs, max_new_tokens=3, stop_ids=[model.tokenizer.eos_token_id])
    assert [t[:1] for t in three.tokens] == one.tokens and all(len(t) == 3 for t in three.tokens)
    assert three.texts[0] == model.tokenizer.decode(three.tokens[0]).strip()
    probs = torch.softmax(one.at_answer.logits.float(), -1).max(-1).values.tolist()
    assert [p[0] for p in one.probs] == pytest.approx(probs) and one.geometric_mean == pytest.approx(probs)


def test_spatial_entropy_of_the_answer_tokens_mean_map_by_hand():
    """Two answer tokens, each all on a different patch: Eq. 1 reads the averaged map (two patches, log 2), where
    the mean of per-token entropies would read 0."""
    from analyses.data.examples import shapes_examples
    from vlm_lens import HookedVLM

    model = HookedVLM.from_pretrained("toy-llava")
    example = shapes_examples(1, 3)[0]
    inputs = model.prepare(images=[example.load_image()], prompts=[example.text])
    span = inputs.image_spans[0][0]
    steps = []
    for patch in (0, 5):
        row = torch.zeros(1, 1, 1, inputs.input_ids.shape[1])
        row[..., span.start + patch] = 1.0
        steps.append({f"blocks.{l}.attn.hook_pattern_rows": row for l in range(model.cfg.n_layers)})
    at = answers.AnswerActivations(torch.zeros(1, 8), {}, inputs, model.vocab)
    generated = answers.GeneratedAnswers([[11, 12]], ["two tokens"], [[0.5, 0.5]], at, steps)
    ((grid, entropy),) = answer_token_attention(generated)
    np.testing.assert_allclose(entropy, np.log(2), rtol=1e-6)
    assert grid[0].ravel()[[0, 5]].tolist() == [0.5, 0.5]


@torch.no_grad()
def test_first_token_head_entropy_is_each_heads_map_from_a_plain_forward(model, images):
    from analyses.attention_structure import first_token_head_entropy

    inputs = model.prepare(images=images, prompts=PROMPTS)
    names = [f"blocks.{l}.attn.hook_pattern_rows" for l in range(model.cfg.n_layers)]
    generated = answers.generate_answers(model, inputs, names, 2)
    entropy = first_token_head_entropy(generated)
    last = inputs.input_ids.shape[1] - 1
    _, cache = model.run_with_cache(inputs, names_filter=names, query_positions=torch.tensor([last]))
    layers = list(model.cfg.cross_layers) or list(range(model.cfg.n_layers))  # a cross model: its cross layers
    for item, spans in enumerate(inputs.image_spans):
        base = spans[0].base
        assert entropy[item].shape == (len(layers), model.cfg.n_heads)
        for k, layer in enumerate(layers):
            rows = cache["pattern_rows", layer][item, :, 0].float()  # head key
            for head in range(model.cfg.n_heads):
                if model.cfg.cross_layers:
                    grid = cross_grid_by_hand(model, inputs, item, rows[head])
                else:
                    grid = rows[head, list(base.positions)].reshape(base.grid).numpy()
                assert entropy[item][k, head] == pytest.approx(spatial_entropy(grid), rel=1e-4, abs=1e-5)
