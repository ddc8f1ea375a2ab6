"""Self-consistency sampling on a constructed distribution and against HF's generation, batched."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analyses import consistency as C
from tests.conftest import PROMPTS, make_images


def test_nucleus_distribution_by_hand():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.allclose(C.nucleus_probs(logits, 1.0, 0.7), torch.tensor([[0.5 / 0.8, 0.3 / 0.8, 0, 0]]))
    assert torch.allclose(C.nucleus_probs(logits, 1.0, 1.0), torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    sharp = C.nucleus_probs(logits, 0.5, 1.0)
    expected = torch.tensor([0.25, 0.09, 0.0225, 0.0025])
    assert torch.allclose(sharp, (expected / expected.sum())[None])


def test_samples_follow_the_models_distribution(model):
    inputs = model.prepare(images=make_images()[:1], prompts=PROMPTS[:1])
    with torch.no_grad():
        probs = C.nucleus_probs(model(inputs)[:, -1], temperature=0.7, top_p=0.8)[0]
    ids = C.sample_ids(model, inputs, k=4000, temperature=0.7, top_p=0.8, seed=1)
    counts = np.bincount(ids[:, 0].numpy(), minlength=model.cfg.d_vocab)
    assert np.abs(counts / 4000 - probs.numpy()).max() < 0.03
    assert C.sample_answers(model, inputs, k=20, seed=5) == C.sample_answers(model, inputs, k=20, seed=5)


def hf_greedy(model, inputs, max_new_tokens: int) -> list[list[int]]:
    with torch.no_grad():
        out = model.hf_model.generate(**inputs.tensors, max_new_tokens=max_new_tokens, do_sample=False)
    return out[:, inputs.input_ids.shape[1] :].tolist()


def test_batched_multi_token_samples_from_one_prefill_match_hf_greedy(model, inputs):
    """A left-padded batch of two questions, K=3 rows each, 4 new tokens; with top_p tiny only the argmax
    survives, so every row must equal HF's own greedy generation of its question."""
    ids = C.sample_ids(model, inputs, k=3, max_new_tokens=4, top_p=1e-6, seed=0, stop_ids=[-1])  # no stop token
    expected = hf_greedy(model, inputs, 4)
    assert ids.shape == (6, 4)
    assert ids.tolist() == [expected[0]] * 3 + [expected[1]] * 3


def test_rows_stop_at_a_stop_token_and_decoding_ends_when_all_have(model, inputs):
    greedy = hf_greedy(model, inputs, 3)
    stop = greedy[0][1]  # question 0's second greedy token
    ids = C.sample_ids(model, inputs, k=2, max_new_tokens=3, top_p=1e-6, stop_ids=[stop])
    for row, question in zip(ids.tolist(), (0, 0, 1, 1)):
        want = greedy[question]
        cut = next((i for i, t in enumerate(want) if t == stop), None)
        if cut is None:
            assert row == want[: len(row)]
        else:  # stops there, then repeats the stop token while other rows go on
            assert row[: cut + 1] == want[: cut + 1] and set(row[cut:]) == {stop}
    texts = C.decode_samples(model, ids, [stop])
    cut = greedy[0].index(stop)
    assert texts[0] == model.tokenizer.decode(greedy[0][:cut], skip_special_tokens=True).strip()


def test_a_questions_samples_do_not_depend_on_its_batch(model, images):
    """Question 1 sampled alone (seed 7) and inside a batch (its seed 7) gives the same samples."""
    together = model.prepare(images=images, prompts=PROMPTS)
    alone = model.prepare(images=images[1:], prompts=PROMPTS[1:])
    batched = C.sample_answers(model, together, k=6, max_new_tokens=2, seed=[3, 7])
    single = C.sample_answers(model, alone, k=6, max_new_tokens=2, seed=[7])
    assert batched[1] == single[0]


def test_sample_batches_bound_the_rows():
    assert [list(r) for r in C.sample_batches(7, k=3, rows=6)] == [[0, 1], [2, 3], [4, 5], [6]]
    assert [list(r) for r in C.sample_batches(2, k=10, rows=4)] == [[0], [1]]  # one question even over the bound
    assert [list(r) for r in C.sample_batches(5, k=2, rows=64, most=2)] == [[0, 1], [2, 3], [4]]  # the prefill's batch


def test_majority_support():
    assert C.majority_support(["2", "two", "Two.", "3"]) == ("2", 0.75)
    with pytest.raises(ValueError):
        C.majority_support([])


def test_a_generation_continued_from_the_prefill_sees_hf_greedys_logits(model, inputs):
    """The one-prefill sampler continues HF's ``generate`` from the prefill's cache: at every step its logits must
    be HF greedy's own, the left-padded item included (a prefill that counted padding positions would be off)."""
    import copy

    from transformers import GenerationConfig

    with torch.no_grad():
        greedy = model.hf_model.generate(
            **inputs.tensors, max_new_tokens=3, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
        out = C.prefill(model, inputs)
        torch.testing.assert_close(out.logits[:, -1], greedy.logits[0], atol=1e-5, rtol=1e-5)
        length = inputs.input_ids.shape[1]
        mask = torch.cat([inputs.attention_mask, torch.ones_like(inputs.attention_mask[:, :1])], 1)
        extended = {
            key: torch.cat([inputs.tensors[key], inputs.tensors[key][:, -1:]], 1)  # the cross-attention mask
            for key in model.adapter.repeat_last_keys
        }
        continued = model.hf_model.generate(
            input_ids=greedy.sequences[:, : length + 1],
            attention_mask=mask,
            past_key_values=copy.deepcopy(out.past_key_values),
            output_logits=True,
            generation_config=GenerationConfig(max_new_tokens=2, do_sample=False),
            return_dict_in_generate=True,
            **extended,
        )
    # 5e-4: a prefill counting the padding is off by 1.5e-3 to 2.5e-3 on these models; PaliGemma's continuation
    # differs from its from-scratch greedy by 1.7e-4 at every item, padded or not (noticed, not explained)
    for step in range(2):
        torch.testing.assert_close(continued.logits[step], greedy.logits[step + 1], atol=5e-4, rtol=0)
