"""Self-consistency: K sampled answers that share one prefill, and the support of the majority answer.

The prompt (image included) runs once; the K samples continue from copies of its KV cache, so
the cost of K samples is one prefill plus K short decodes, not K full generations. Sampling is
nucleus sampling with temperature, seeded.

    >>> majority_support(["yes", "Yes.", "no", "yes"])
    ('yes', 0.75)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch
from torch import Tensor

from analyses.answers import canonicalise
from vlm_lens import HookedVLM, VLMInputs


def nucleus_probs(logits: Tensor, temperature: float = 1.0, top_p: float = 0.9) -> Tensor:
    """The distribution nucleus sampling draws from: softmax(logits / T) cut to the smallest top-p set."""
    if temperature <= 0:
        raise ValueError("temperature must be positive (use greedy decoding for T -> 0)")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p is in (0, 1], got {top_p}")
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    before = sorted_probs.cumsum(-1) - sorted_probs  # mass of the tokens ranked above each one
    sorted_probs = sorted_probs.masked_fill(before >= top_p, 0.0)
    kept = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return kept / kept.sum(-1, keepdim=True)


@torch.no_grad()
def sample_ids(
    model: HookedVLM,
    inputs: VLMInputs,
    k: int = 10,
    max_new_tokens: int = 1,
    temperature: float = 1.0,
    top_p: float = 0.9,
    seed: int = 0,
) -> Tensor:
    """[k, new_tokens] sampled continuations of one prompt (a batch of one); one prefill shared by all."""
    if inputs.batch_size != 1 or not bool(inputs.attention_mask.all()):
        raise ValueError(f"sampling takes one unpadded prompt at a time, got a batch of {inputs.batch_size}")
    generator = torch.Generator(device=model.device).manual_seed(seed)
    out = model.hf_model(**inputs.tensors, use_cache=True)
    logits = out.logits[:, -1].expand(k, -1)
    cache = out.past_key_values
    eos = model.tokenizer.eos_token_id
    tokens = torch.multinomial(nucleus_probs(logits, temperature, top_p), 1, generator=generator)
    sequences = [tokens]
    if max_new_tokens > 1:
        # A lone prompt has no padding, so each family derives its decode positions from the cache
        # (Qwen2-VL: + its stored M-RoPE delta; PaliGemma: 1-indexed) exactly as in its generate().
        cache.batch_repeat_interleave(k)
        for _ in range(max_new_tokens - 1):
            step = model.hf_model(input_ids=tokens, past_key_values=cache, use_cache=True)
            tokens = torch.multinomial(nucleus_probs(step.logits[:, -1], temperature, top_p), 1, generator=generator)
            sequences.append(tokens)
            if eos is not None and bool((torch.cat(sequences, 1) == eos).any(1).all()):
                break
    return torch.cat(sequences, dim=1)


def sample_answers(model: HookedVLM, inputs: VLMInputs, k: int = 10, **kwargs) -> list[str]:
    """K sampled answers, decoded up to end-of-sequence (see ``sample_ids`` for the arguments)."""
    eos = model.tokenizer.eos_token_id
    texts = []
    for row in sample_ids(model, inputs, k, **kwargs).tolist():
        if eos is not None and eos in row:
            row = row[: row.index(eos)]
        texts.append(model.tokenizer.decode(row, skip_special_tokens=True).strip())
    return texts


def majority_support(answers: Sequence[str]) -> tuple[str, float]:
    """The most common canonicalised answer and the share of samples that gave it."""
    if not answers:
        raise ValueError("no answers to vote over")
    counts = Counter(canonicalise(a) for a in answers)
    answer, n = max(counts.items(), key=lambda kv: (kv[1], kv[0]))
    return answer, n / len(answers)
