"""Answers: where the model answers, and what it answered (whether it is right: ``analyses.data.scoring``).

Every table, predictor, ablation and notebook goes through this module and the scorer:

- **where**: ``answer_positions(inputs)`` (each item's last real token, where the answer is
  read) and ``at_answer`` / ``stack_at_answer`` to gather ``[batch pos ...]`` activations there.
- **what**: ``generate_answers(model, inputs, names, max_new_tokens)``, the greedy answer generated
  to a stop token, with each answer token's probability, activations at the answer position and
  the attention rows of every answer token; ``greedy_answers(model, logits, inputs)`` is the
  one-token shortcut.
- **how sure**: ``output_confidence``, the study's output confidence by question form: the
  probability of the token that decides a closed-form answer ("no" in "There is no dog."), the
  geometric mean of the tokens up to the first newline for a free-form one.
- **which tokens are the gold**: ``reference_token_ids``, the tokens the truth margin follows:
  the first token of every spelling of every gold that the benchmark's rule accepts.

    >>> from analyses.data.scoring import score
    >>> score("Yes, there is.", ["yes"], "yesno"), score("two", ["2"] * 3 + ["3"] * 7, "vqa")
    (1.0, 0.9)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from analyses.data.scoring import decisive_span, gold_forms
from vlm_lens import ActivationCache, HookedVLM, VLMInputs
from vlm_lens.errors import DataError, InputError

# --- where the answer is read, and what it is -------------------------------------------------------


def answer_positions(inputs: VLMInputs) -> Int[Tensor, " batch"]:
    """Each item's last real token: the position the next-token answer is read from."""
    return inputs.last_positions()


def at_answer(
    activation: Float[Tensor, "batch pos *rest"], positions: Int[Tensor, " batch"]
) -> Float[Tensor, batch * rest]:  # noqa: F821 (jaxtyping dims)
    """One row per item: ``activation[i, positions[i]]``."""
    batch = torch.arange(activation.shape[0], device=activation.device)
    return activation[batch, positions.to(activation.device)]


def stack_at_answer(
    cache: ActivationCache, alias: str, layers: Sequence[int] | None = None, positions: Tensor | None = None
) -> Float[Tensor, "layer batch *rest"]:
    """``cache[alias, l]`` at each item's answer position, stacked over ``layers`` (default: all cached)."""
    if positions is None:
        positions = answer_positions(cache.inputs)
    if layers is None:
        layers = range(cache.n_layers)
    return torch.stack([at_answer(cache[alias, layer], positions) for layer in layers])


def answer_logits(logits: Float[Tensor, "batch pos vocab"], inputs: VLMInputs) -> Float[Tensor, "batch vocab"]:
    """The logits each item answers from. Takes full logits, or the last position only (``logits_to_keep=1``)
    when every item's answer position is the last one (a left-padded batch)."""
    positions = answer_positions(inputs)
    seq = inputs.input_ids.shape[1]
    if logits.shape[1] == seq:
        return at_answer(logits, positions)
    if bool((positions == seq - 1).all()):
        return logits[:, -1]
    raise InputError(
        f"logits cover {logits.shape[1]} of {seq} positions but some answers are read before the end "
        "(right padding): pass the full logits, or pad on the left"
    )


def greedy_answers(
    model: HookedVLM, logits: Float[Tensor, "batch pos vocab"], inputs: VLMInputs
) -> tuple[list[int], list[str]]:
    """The greedy next token at each item's answer position: ids and decoded, stripped strings."""
    ids = answer_logits(logits, inputs).argmax(-1).tolist()
    return ids, [model.to_string(i).strip() for i in ids]


@dataclass
class AnswerActivations:
    """What one forward left behind at the answer positions: logits [batch, vocab] and, per hook name,
    the activation's row at each item's answer position ([batch, ...]). Attention rows
    (``attn.hook_pattern_rows``) are kept whole: they are already one row per item."""

    logits: Float[Tensor, "batch vocab"]
    store: dict[str, Tensor]
    inputs: VLMInputs
    vocab: object  # the model's hook vocabulary, for (alias, layer) keys

    def __getitem__(self, key) -> Tensor:
        return self.store[self.vocab.resolve_key(key)]

    def stack(self, alias: str, layers: Sequence[int]) -> Tensor:
        """[layer, batch, ...] for an alias such as "resid_post"."""
        return torch.stack([self[alias, layer] for layer in layers])

    def cache(self) -> ActivationCache:
        """The stored tensors as an ``ActivationCache`` (for the attention rows: ``image_grids(...cache())``)."""
        return ActivationCache(self.store, self.vocab, self.inputs)


@torch.no_grad()
def capture_at_answer(model: HookedVLM, inputs: VLMInputs, names: Sequence[str], fwd_hooks=()) -> AnswerActivations:
    """Run ``inputs`` once, keeping only what the answer needs.

    Each named ``[batch, pos, ...]`` activation is cut to the answer positions inside its hook, so
    nothing of size positions x layers x width outlives one layer's forward, and only the last
    position's logits are computed (``logits_to_keep=1``; the batch must be left-padded). Peak
    memory is the model plus one batch's forward, whatever the sequence length or layer count.
    """
    positions = answer_positions(inputs)
    store: dict[str, Tensor] = {}

    def keep(activation: Tensor, hook) -> None:
        if hook.name.endswith("hook_pattern_rows"):
            store[hook.name] = activation.detach()
        else:
            store[hook.name] = at_answer(activation, positions).detach().clone()  # drop the whole-sequence tensor

    hooks = list(fwd_hooks) + [(name, keep) for name in names]
    logits = model.run_with_hooks(inputs, fwd_hooks=hooks, logits_to_keep=1)
    return AnswerActivations(answer_logits(logits, inputs), store, inputs, model.vocab)


def reference_token_ids(tokenizer, golds: Sequence[str], metric: str = "exact") -> list[int]:
    """The tokens that count as the gold answer for the truth margin (maximised over later).

    For every gold and every spelling of it that ``metric``'s rule accepts (``scoring.gold_forms``: as
    written, lower case, capitalised; a count in digits and in words), written alone and after a space
    (tokenizers differ on a leading space): the first content token (whitespace-only tokens and BOS
    skipped). Tokens the vocabulary lacks (unknown) are left out.
    """
    ids: list[int] = []
    for gold in dict.fromkeys(golds):
        for form in gold_forms(gold, metric):
            for spelled in (form, " " + form):
                tokens = tokenizer.encode(spelled, add_special_tokens=False)
                content = [t for t in tokens if t != tokenizer.bos_token_id and tokenizer.decode([t]).strip()]
                if content and content[0] != tokenizer.unk_token_id and content[0] not in ids:
                    ids.append(content[0])
    if not ids:
        raise DataError(
            f"no reference token for golds {list(golds)}: the tokenizer maps every spelling of them to "
            "unknown or empty tokens, so no truth margin can be read for this question; its vocabulary "
            "lacks the answer"
        )
    return ids


def output_confidence(
    tokenizer, tokens: Sequence[int], probs: Sequence[float], metric: str = "exact", closed_form: bool = False
) -> float:
    """The study's output confidence of one generated answer (``probs[t]``: the probability of ``tokens[t]``).

    Closed-form questions: the probability of the answer token, the token where the rule's reading is decided
    (``scoring.decisive_span``: POPE's "no" in "There is no dog.", the number in "There are three."), else the
    first token. Free-form questions: the geometric mean of the tokens' probabilities up to the first newline.
    An empty answer has the stop token's probability (``probs`` holds that one value)."""
    if not tokens:
        return float(probs[0])
    if len(probs) < len(tokens):
        raise InputError(f"{len(probs)} probabilities for {len(tokens)} answer tokens: give one per token")
    prefixes = [tokenizer.decode(list(tokens[: t + 1]), skip_special_tokens=True) for t in range(len(tokens))]
    if closed_form:
        span = decisive_span(prefixes[-1].strip(), metric)
        start = span[0] if span else 0
        lead = len(prefixes[-1]) - len(prefixes[-1].lstrip())  # the answer text is stripped; the prefixes are not
        index = next((t for t, text in enumerate(prefixes) if len(text.rstrip()) > lead + start), 0)
        return float(probs[index])
    cut = next((t for t, text in enumerate(prefixes) if "\n" in text.lstrip()), len(tokens))
    chosen = np.log(np.asarray(probs[: max(1, cut)], dtype=np.float64))
    return float(np.exp(chosen.mean()))


@dataclass
class GeneratedAnswers:
    """Greedy answers generated to a stop token, and what their generation left behind.

    ``tokens[i]`` are item i's answer tokens (the stop token excluded); ``probs[i]`` their probabilities
    (the stop token's, for an empty answer: ``output_confidence`` reads them); ``at_answer``
    the named activations at the answer position (the prompt's last token) and the first token's
    logits; ``attention[t][name]`` the head-averaged attention row ``[batch, 1, 1, key]`` of
    the t-th generation step: the query that produced answer token t (steps beyond an item's
    answer belong to other items)."""

    tokens: list[list[int]]
    texts: list[str]
    probs: list[list[float]]
    at_answer: AnswerActivations
    attention: list[dict[str, Tensor]]
    # per ``attn.hook_pattern_rows`` name: [batch, head, 1, key], the first answer token's row of every head
    first_heads: dict[str, Tensor] = field(default_factory=dict)

    @property
    def lengths(self) -> list[int]:
        """Answer tokens per item: the rows of ``attention`` that belong to it (at least the first)."""
        return [max(1, len(t)) for t in self.tokens]

    @property
    def geometric_mean(self) -> list[float]:
        """Per item, the geometric mean of all its answer tokens' probabilities (not the study's confidence:
        ``output_confidence`` is)."""
        return [float(np.exp(np.log(np.asarray(p, dtype=np.float64)).mean())) for p in self.probs]


def answer_length(tokens: Sequence[int], stop_ids: Sequence[int]) -> int:
    """How many of a generation's new ``tokens`` are the answer: those before the first stop token (all, if none).

    >>> answer_length([5, 9, 2, 7], stop_ids=[2])
    2
    """
    return next((t for t, token in enumerate(tokens) if token in stop_ids), len(tokens))


def stop_token_ids(model: HookedVLM) -> list[int]:
    """The tokens that end an answer: the generation config's end-of-sequence ids, else the tokenizer's."""
    eos = getattr(getattr(model.hf_model, "generation_config", None), "eos_token_id", None)
    ids = [eos] if isinstance(eos, int) else list(eos or [])
    if model.tokenizer.eos_token_id is not None and model.tokenizer.eos_token_id not in ids:
        ids.append(model.tokenizer.eos_token_id)
    if not ids:
        raise InputError("the model declares no end-of-sequence token: pass stop_ids")
    return ids


@torch.no_grad()
def generate_answers(
    model: HookedVLM,
    inputs: VLMInputs,
    names: Sequence[str] = (),
    max_new_tokens: int = 16,
    stop_ids: Sequence[int] | None = None,
    fwd_hooks=(),
) -> GeneratedAnswers:
    """Greedy answers to the first stop token (``stop_token_ids`` by default), or ``max_new_tokens``.

    One ``generate`` call with hooks: the ``names`` activations are cut to the answer position in
    the prefill (as ``capture_at_answer`` does); ``attn.hook_pattern_rows`` names are kept at every
    step, averaged over heads, so the attention of each of the T answer tokens costs one row per
    layer. ``fwd_hooks`` (an intervention's) run first, at every step. Memory: the model, one batch's
    KV cache and ``max_new_tokens`` rows per layer.
    """
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    stops = list(stop_ids) if stop_ids is not None else stop_token_ids(model)
    positions = answer_positions(inputs)
    store: dict[str, Tensor] = {}
    steps: list[dict[str, Tensor]] = []
    heads: dict[str, Tensor] = {}

    def keep(activation: Tensor, hook) -> None:
        if hook.name.endswith("hook_pattern_rows"):
            while len(steps) <= hook.step:
                steps.append({})
            steps[hook.step][hook.name] = activation.detach().float().mean(1, keepdim=True)
            if hook.step == 0:  # the row that produced the first answer token, every head
                heads[hook.name] = activation[:, :, -1:].detach().float().clone()
        elif hook.step == 0:
            store[hook.name] = at_answer(activation, positions).detach().clone()

    generated = model.generate(
        inputs,
        max_new_tokens=max_new_tokens,
        fwd_hooks=[*fwd_hooks, *((n, keep) for n in names)],
        eos_token_id=stops,
        pad_token_id=stops[0],
        output_logits=True,
        return_dict_in_generate=True,
    )
    new = generated.sequences[:, inputs.input_ids.shape[1] :].tolist()
    logprobs = torch.stack([torch.log_softmax(step.float(), -1) for step in generated.logits], 1)  # batch step vocab
    tokens, texts, probs = [], [], []
    for i, row in enumerate(new):
        length = answer_length(row, stops)
        tokens.append(row[:length])
        texts.append(model.tokenizer.decode(row[:length], skip_special_tokens=True).strip())
        chosen = row[: max(1, length)]  # an empty answer: the stop token's own probability
        probs.append(logprobs[i, torch.arange(len(chosen)), torch.tensor(chosen)].exp().tolist())
    first = AnswerActivations(generated.logits[0], store, inputs, model.vocab)
    return GeneratedAnswers(tokens, texts, probs, first, steps, heads)
