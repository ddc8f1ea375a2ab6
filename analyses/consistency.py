"""Self-consistency: K sampled answers per question from one shared prefill, and the majority's support.

A batch of questions runs through the model once (the prefill). Each question's K first tokens
are drawn from that prefill's logits; then, for each of the K samples, the whole batch continues
from a copy of the prefill's KV cache until every row emits a stop token (end of sequence by
default) or ``max_new_tokens``. So K samples cost one prefill plus short decodes, not K full
generations. Sampling is nucleus sampling with temperature; each question draws from its own
generator (seeded by ``seeds[i]``), so its samples do not depend on which questions share its
batch. Decoding goes through HF's ``generate``, which gives each family its decode positions
(M-RoPE included).

Memory: a decode holds the batch's KV cache twice (the prefill's and the sample's copy);
``sample_batches`` splits a question list into batches of at most ``rows // k`` questions.

    >>> majority_support(["yes", "Yes.", "no", "yes"])
    ('yes', 0.75)
"""

from __future__ import annotations

import copy
import inspect
from collections import Counter
from collections.abc import Sequence

import torch
from torch import Tensor
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from analyses.answers import answer_logits
from analyses.data.scoring import reading
from vlm_lens import HookedVLM, VLMInputs
from vlm_lens.errors import InputError


def nucleus_probs(logits: Tensor, temperature: float = 1.0, top_p: float = 0.9) -> Tensor:
    """The distribution nucleus sampling draws from: softmax(logits / T) cut to the smallest top-p set."""
    if temperature <= 0:
        raise InputError("temperature must be positive (use greedy decoding for T -> 0)")
    if not 0 < top_p <= 1:
        raise InputError(f"top_p is in (0, 1], got {top_p}")
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    before = sorted_probs.cumsum(-1) - sorted_probs  # mass of the tokens ranked above each one
    sorted_probs = sorted_probs.masked_fill(before >= top_p, 0.0)
    kept = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return kept / kept.sum(-1, keepdim=True)


class _Sampler(LogitsProcessor):
    """Nucleus sampling as a logits processor for HF's greedy ``generate``: each row draws its token
    with its question's generator and every other token is masked, so greedy picks the draw.
    Rows that already stopped draw nothing, so a question's draws never depend on its batch."""

    def __init__(self, generators, temperature: float, top_p: float, prompt_length: int, stops: Tensor):
        self.generators, self.temperature, self.top_p = generators, temperature, top_p
        self.prompt_length, self.stops = prompt_length, stops

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        probs = nucleus_probs(scores, self.temperature, self.top_p)
        stopped = torch.isin(input_ids[:, self.prompt_length :], self.stops).any(-1)
        chosen = torch.full((scores.shape[0],), int(self.stops[0]), dtype=torch.long, device=scores.device)
        for row, generator in enumerate(self.generators):
            if not bool(stopped[row]):
                chosen[row] = torch.multinomial(probs[row].cpu(), 1, generator=generator).item()
        masked = torch.full_like(scores, float("-inf"))
        return masked.scatter(1, chosen[:, None], 0.0)


@torch.no_grad()
def prefill(model: HookedVLM, inputs: VLMInputs, logits_to_keep: int = 1):
    """The batch's forward with its KV cache, at the positions HF's ``generate`` gives a left-padded batch (counted
    over real tokens, by the model's own ``_prepare_position_ids_for_generation``): a continuation decoded from
    this cache by ``generate`` then sees every token where a generation from scratch would. (Left to the model,
    the prefill would count padding: relative positions would be off by the padding length for the rest.)"""
    tensors = dict(inputs.tensors)
    if "position_ids" in inspect.signature(model.hf_model.forward).parameters:
        tensors["position_ids"] = model.hf_model._prepare_position_ids_for_generation(inputs.input_ids, dict(tensors))
    return model.hf_model(**tensors, use_cache=True, logits_to_keep=logits_to_keep)


def sample_ids(
    model: HookedVLM,
    inputs: VLMInputs,
    k: int = 10,
    max_new_tokens: int = 1,
    temperature: float = 1.0,
    top_p: float = 0.9,
    seed: int | Sequence[int] = 0,
    stop_ids: Sequence[int] | None = None,
) -> Tensor:
    """[batch * k, new_tokens] sampled continuations, question i's in rows [i*k, (i+1)*k).

    ``inputs`` is a left-padded batch (``model.prepare``'s default). The batch is prefilled once; each
    question's K first tokens are drawn from that prefill, and each of the K continuations decodes
    from a copy of the batch's KV cache through HF's own ``generate`` (which gives every family its
    decode positions), sampling with a logits processor. ``seed`` is one seed per question, or an
    int (question i then uses ``seed + i``). A row stops at the first of ``stop_ids`` (default: the
    tokenizer's end of sequence) and repeats it afterwards.
    """
    if k < 1 or max_new_tokens < 1:
        raise InputError(f"k and max_new_tokens must be at least 1, got {k} and {max_new_tokens}")
    batch = inputs.batch_size
    if inputs.padding_side != "left" and bool((inputs.attention_mask[:, -1] == 0).any()):
        raise InputError("sampling continues after each prompt's last token: pad on the left (model.prepare's default)")
    seeds = [seed + i for i in range(batch)] if isinstance(seed, int) else list(seed)
    if len(seeds) != batch:
        raise InputError(f"{len(seeds)} seeds for a batch of {batch} questions")
    generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
    stops = torch.tensor(
        list(stop_ids) if stop_ids is not None else [model.tokenizer.eos_token_id], device=model.device
    )

    out = prefill(model, inputs)
    probs = nucleus_probs(answer_logits(out.logits, inputs), temperature, top_p).cpu()
    first = torch.stack(
        [torch.multinomial(probs[i], k, replacement=True, generator=g) for i, g in enumerate(generators)]
    )
    first = first.to(model.device)  # [batch, k]
    if max_new_tokens == 1:
        return first.reshape(batch * k, 1)
    ids, mask = inputs.input_ids, inputs.attention_mask
    config = GenerationConfig(
        max_new_tokens=max_new_tokens - 1, do_sample=False, eos_token_id=stops.tolist(), pad_token_id=int(stops[0])
    )  # a clean config: no checkpoint defaults (penalties...)
    # per-token tensors a continuation extends (Llama-3.2-Vision's cross_attention_mask): the sampled token's row too
    extended = {
        key: torch.cat([inputs.tensors[key], inputs.tensors[key][:, -1:]], dim=1)
        for key in model.adapter.repeat_last_keys
        if key in inputs.tensors
    }
    continuations = []
    for j in range(k):
        prompt = torch.cat([ids, first[:, j : j + 1]], dim=1)
        sampler = _Sampler(generators, temperature, top_p, ids.shape[1], stops)
        generated = model.hf_model.generate(
            input_ids=prompt,
            attention_mask=torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1),
            past_key_values=copy.deepcopy(out.past_key_values),
            generation_config=config,
            logits_processor=LogitsProcessorList([sampler]),
            **extended,
        )
        continuations.append(generated[:, ids.shape[1] :])
    width = max(c.shape[1] for c in continuations)
    rows = torch.stack(
        [torch.nn.functional.pad(c, (0, width - c.shape[1]), value=int(stops[0])) for c in continuations], 1
    )
    rows = rows.reshape(batch * k, width)  # question-major: question i's samples in rows [i*k, (i+1)*k)
    stopped = torch.cumsum(torch.isin(rows, stops).long(), dim=1) > 0
    after_stop = torch.cat([torch.zeros_like(stopped[:, :1]), stopped[:, :-1]], dim=1)
    return torch.where(after_stop, int(stops[0]), rows)  # past a row's first stop: the stop token


def decode_samples(model: HookedVLM, ids: Tensor, stop_ids: Sequence[int] | None = None) -> list[str]:
    """Each row's text up to (not including) its first stop token."""
    stops = set(stop_ids) if stop_ids is not None else {model.tokenizer.eos_token_id}
    texts = []
    for row in ids.tolist():
        cut = next((i for i, t in enumerate(row) if t in stops), len(row))
        texts.append(model.tokenizer.decode(row[:cut], skip_special_tokens=True).strip())
    return texts


def sample_answers(model: HookedVLM, inputs: VLMInputs, k: int = 10, **kwargs) -> list[list[str]]:
    """K sampled answers for each question of the batch (arguments as for ``sample_ids``)."""
    texts = decode_samples(model, sample_ids(model, inputs, k, **kwargs), kwargs.get("stop_ids"))
    return [texts[i * k : (i + 1) * k] for i in range(inputs.batch_size)]


def sample_batches(n_questions: int, k: int, rows: int, most: int | None = None) -> list[range]:
    """Question ranges of at most ``most`` questions (the prefill's batch) whose K samples fit ``rows`` rows of
    KV cache (at least one question each)."""
    size = max(1, min(rows // k, most or n_questions))
    return [range(start, min(start + size, n_questions)) for start in range(0, n_questions, size)]


def majority_support(answers: Sequence[str], metric: str = "exact") -> tuple[str, float]:
    """The most common answer and the share of samples that gave it, answers grouped by what ``metric``'s rule
    reads from them (``scoring.reading``: "Yes." and "Yes, there is one." are one vote under "yesno")."""
    if not answers:
        raise InputError("no answers to vote over")
    counts = Counter(reading(a, metric) for a in answers)
    answer, n = max(counts.items(), key=lambda kv: (kv[1], kv[0]))
    return answer, n / len(answers)
