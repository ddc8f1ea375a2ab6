"""Self-consistency sampling on a constructed distribution and against HF's generation."""

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


def test_multi_token_samples_from_a_shared_prefill_match_hf_greedy(model):
    inputs = model.prepare(images=make_images()[:1], prompts=PROMPTS[:1])
    tiny_p = C.sample_answers(model, inputs, k=3, max_new_tokens=4, top_p=1e-6, seed=0)  # only the argmax survives
    with torch.no_grad():
        greedy = model.hf_model.generate(**inputs.tensors, max_new_tokens=4, do_sample=False)
    text = model.tokenizer.decode(greedy[0, inputs.input_ids.shape[1]:], skip_special_tokens=True).strip()
    eos = model.tokenizer.eos_token_id
    new = greedy[0, inputs.input_ids.shape[1]:].tolist()
    if eos in new:
        text = model.tokenizer.decode(new[: new.index(eos)], skip_special_tokens=True).strip()
    assert tiny_p == [text] * 3


def test_majority_support():
    assert C.majority_support(["2", "two", "Two.", "3"]) == ("2", 0.75)
    with pytest.raises(ValueError):
        C.majority_support([])
