"""Answers: where the model answers, what it answered, and whether that is right.

Every table, predictor, ablation and notebook goes through this module, so "correct" means
one thing everywhere:

- **where**: ``answer_positions(inputs)`` (each item's last real token, where the answer is
  read) and ``at_answer`` / ``stack_at_answer`` to gather ``[batch pos ...]`` activations there.
- **what**: ``generate_answers(model, inputs, names, max_new_tokens)``, the greedy answer generated
  to a stop token, with its confidence (the geometric mean of the answer tokens' probabilities),
  activations at the answer position and the attention rows of every answer token;
  ``greedy_answers(model, logits, inputs)`` is the one-token shortcut.
- **right or wrong**: ``score(prediction, golds, metric)`` canonicalises the prediction (the
  study's Eq. 4) and applies the benchmark's rule: ``"exact"`` compares canonical forms with
  every gold; ``"vqa"`` is the official VQA accuracy (answer normalisation, min(#humans/3, 1),
  leave-one-out); ``"count"`` compares the first integer; ``"relation"`` the first spatial
  relation named; ``"open"`` (LLaVA-Bench) is not scored here: it needs a judge model. ``is_correct`` turns a score into the binary label; ``correctness`` does a list.
- **which tokens are the gold**: ``reference_token_ids``, the tokens the truth margin follows.

    >>> canonicalise("Yes, there is.")
    'yes'
    >>> score("Yes", ["yes "]), score("There are two dogs", ["2"]), score("no", ["Yes"])
    (1.0, 1.0, 0.0)
    >>> vqa_accuracy("two", ["2"] * 4 + ["3"] * 6), vqa_accuracy("two", ["2"] * 3 + ["3"] * 7)
    (1.0, 0.9)
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from vlm_lens import ActivationCache, HookedVLM, VLMInputs
from vlm_lens.errors import DataError

# A VQA answer counts as correct from this accuracy on: at least two of ten humans gave it
# (leave-one-out average 0.6; one human gives 0.3). Exact-match scores are 0 or 1.
CORRECT_AT = 0.5
METRICS = ("exact", "vqa", "count", "relation", "open")

# --- canonicalisation (Eq. 4) --------------------------------------------------------------------

NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12",
}
ARTICLES = ("a", "an", "the")
_YES = {"yes", "yeah", "yep", "true", "correct"}
_NO = {"no", "nope", "false", "incorrect"}


def canonicalise(answer: str) -> str:
    """Lower-case, strip punctuation and articles, collapse yes/no, extract integers (number words too)."""
    text = re.sub(r"[^\w\s]", " ", answer.lower())
    words = [w for w in text.split() if w not in ARTICLES]
    if not words:
        return ""
    if words[0] in _YES:
        return "yes"
    if words[0] in _NO:
        return "no"
    numbers = [NUMBER_WORDS.get(w, w) for w in words if w.isdigit() or w in NUMBER_WORDS]
    if numbers:
        return str(int(numbers[0]))
    return " ".join(words)


# --- the official VQA answer normalisation and accuracy ----------------------------------------------

_CONTRACTED = (
    "ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't haven't he'd "
    "he'd've he'll he's how'd how'll how's i'd i'd've i'm i've isn't it'd it'd've it'll it's let's ma'am mightn't "
    "mightn't've might've mustn't must've needn't not've o'clock oughtn't 'ow's'at shan't she'd she'd've she'll "
    "she's should've shouldn't shouldn't've somebody'd somebody'd've somebody'll somebody's someone'd someone'd've "
    "someone'll someone's something'd something'd've something'll that's there'd there'd've there're there's "
    "they'd they'd've they'll they're they've 'twas wasn't we'd we'd've we'll we're we've weren't what'll what're "
    "what's what've when's where'd where's where've who'd who'd've who'll who's who've why'll why're why's won't "
    "would've wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've you'll you're you've"
).split()


def _contraction_map() -> dict[str, str]:
    """Every spelling with some apostrophes dropped -> the proper contraction (as the VQA tools map them)."""
    table = {}
    for word in _CONTRACTED:
        parts = word.split("'")
        for keep in itertools.product((False, True), repeat=len(parts) - 1):
            if all(keep):
                continue
            spelled = parts[0] + "".join(("'" if k else "") + p for k, p in zip(keep, parts[1:]))
            table.setdefault(spelled, word)
    return table


CONTRACTIONS = _contraction_map()
_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_DIGITS = re.compile(r"(\d)(,)(\d)")
_DIGIT_MAP = {k: v for k, v in NUMBER_WORDS.items() if k not in ("eleven", "twelve")}


def vqa_normalise(answer: str) -> str:
    """The VQA evaluation's normalisation: punctuation, periods, number words, articles, contractions."""
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    out = text
    for p in _PUNCT:
        if (p + " " in text or " " + p in text) or _COMMA_DIGITS.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    out = _PERIOD.sub("", out)
    words = [_DIGIT_MAP.get(w, w) for w in out.lower().split()]
    words = [CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES]
    return " ".join(words)


def vqa_accuracy(prediction: str, answers: list[str]) -> float:
    """Official VQA accuracy: min(#matching humans / 3, 1), averaged over the 10 leave-one-out subsets."""
    if not answers:
        raise ValueError("VQA accuracy needs the human answers")
    pred = vqa_normalise(prediction)
    gold = [vqa_normalise(a) for a in answers]
    scores = []
    for i in range(len(gold)):
        others = gold[:i] + gold[i + 1 :]
        scores.append(min(1.0, sum(a == pred for a in others) / 3))
    return sum(scores) / len(scores)


# --- the one scorer ---------------------------------------------------------------------------------


RELATIONS = ("in front of", "on top of", "next to", "left", "right", "above", "below", "under", "behind", "inside",
             "on", "in")  # longer phrases first: "in front of" is not "in"
_RELATION_WORDS = {"beneath": "below", "underneath": "under", "over": "above", "beside": "next to", "within": "inside"}
OPEN_ENDED = "open"


def relation(answer: str) -> str | None:
    """The first spatial relation an answer names ("The cup is to the left of the plate" -> "left")."""
    words = re.sub(r"[^\w\s]", " ", answer.lower()).split()
    words = [_RELATION_WORDS.get(w, w) for w in words]
    for start in range(len(words)):
        for phrase in RELATIONS:
            parts = phrase.split()
            if words[start : start + len(parts)] == parts:
                return phrase
    return None


def score(prediction: str, golds: Sequence[str] | str, metric: str = "exact") -> float:
    """Credit for ``prediction``: 1.0 / 0.0 for ``"exact"``, ``"count"`` and ``"relation"``, the VQA accuracy
    for ``"vqa"``. ``"open"`` answers (LLaVA-Bench) need a judge model and are refused."""
    golds = [golds] if isinstance(golds, str) else list(golds)
    if not golds:
        raise ValueError("scoring needs at least one gold answer")
    answer = canonicalise(prediction)
    if metric == "exact":
        return float(answer in {canonicalise(g) for g in golds})
    if metric == "vqa":
        return vqa_accuracy(answer, golds)
    if metric == "count":
        return float(answer.isdigit() and any(canonicalise(g) == answer for g in golds))
    if metric == "relation":
        named = relation(prediction)
        return float(named is not None and named in {relation(g) for g in golds})
    if metric == OPEN_ENDED:
        raise ValueError("open-ended answers (LLaVA-Bench) are scored by a judge model, which vlm-lens does not run; "
                         "the study reports their answers and judge-free metrics instead")
    raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")


def is_correct(prediction: str, golds: Sequence[str] | str, metric: str = "exact", threshold: float = CORRECT_AT) -> bool:
    return score(prediction, golds, metric) >= threshold


def correctness(examples: Sequence, predictions: Sequence[str], threshold: float = CORRECT_AT) -> list[bool]:
    """Binary correctness of each prediction against its example's golds and metric."""
    if len(examples) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions for {len(examples)} examples")
    return [is_correct(p, e.golds, e.metric, threshold) for p, e in zip(predictions, examples)]


# --- where the answer is read, and what it is -------------------------------------------------------


def answer_positions(inputs: VLMInputs) -> Int[Tensor, " batch"]:
    """Each item's last real token: the position the next-token answer is read from."""
    return inputs.last_positions()


def at_answer(activation: Float[Tensor, "batch pos *rest"], positions: Int[Tensor, " batch"]) -> Float[Tensor, "batch *rest"]:
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
    raise ValueError(f"logits cover {logits.shape[1]} of {seq} positions but some answers are read before the end "
                     "(right padding): pass the full logits, or pad on the left")


def greedy_answers(model: HookedVLM, logits: Float[Tensor, "batch pos vocab"], inputs: VLMInputs) -> tuple[list[int], list[str]]:
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


def reference_token_ids(tokenizer, golds: Sequence[str], closed_form: bool | None = None) -> list[int]:
    """The tokens that count as the gold answer for the truth margin.

    Closed-form answers (yes/no, integers): the answer's token, in lower case and capitalised
    (checkpoints differ in casing), maximised over later. Open-ended answers: the first content
    token of each gold (leading whitespace-only tokens and BOS skipped).
    """
    ids: list[int] = []
    for gold in golds:
        text = gold.strip()
        if not text:
            raise ValueError("an empty gold answer has no reference token")
        is_closed = text.lower() in ("yes", "no") or text.isdigit() if closed_form is None else closed_form
        variants = {text.lower(), text.capitalize()} if is_closed else {text}
        for variant in sorted(variants):
            tokens = tokenizer.encode(variant, add_special_tokens=False)
            content = [t for t in tokens if t != tokenizer.bos_token_id and tokenizer.decode([t]).strip()]
            if content and content[0] != tokenizer.unk_token_id and content[0] not in ids:
                ids.append(content[0])
    if not ids:
        raise DataError(f"no reference token for golds {list(golds)}: the tokenizer maps them all to unknown or empty "
                        "tokens, so no truth margin can be read for this question; its vocabulary lacks the answer")
    return ids


@dataclass
class GeneratedAnswers:
    """Greedy answers generated to a stop token, and what their generation left behind.

    ``tokens[i]`` are item i's answer tokens (the stop token excluded); ``confidence[i]`` the geometric
    mean of their probabilities (the stop token's probability for an empty answer); ``at_answer``
    the named activations at the answer position (the prompt's last token) and the first token's
    logits; ``attention[t][name]`` the head-averaged attention row ``[batch, 1, 1, key]`` of
    the t-th generation step: the query that produced answer token t (steps beyond an item's
    answer belong to other items)."""

    tokens: list[list[int]]
    texts: list[str]
    confidence: list[float]
    at_answer: AnswerActivations
    attention: list[dict[str, Tensor]]

    @property
    def lengths(self) -> list[int]:
        """Answer tokens per item: the rows of ``attention`` that belong to it (at least the first)."""
        return [max(1, len(t)) for t in self.tokens]


def stop_token_ids(model: HookedVLM) -> list[int]:
    """The tokens that end an answer: the generation config's end-of-sequence ids, else the tokenizer's."""
    eos = getattr(getattr(model.hf_model, "generation_config", None), "eos_token_id", None)
    ids = [eos] if isinstance(eos, int) else list(eos or [])
    if model.tokenizer.eos_token_id is not None and model.tokenizer.eos_token_id not in ids:
        ids.append(model.tokenizer.eos_token_id)
    if not ids:
        raise ValueError("the model declares no end-of-sequence token: pass stop_ids")
    return ids


@torch.no_grad()
def generate_answers(model: HookedVLM, inputs: VLMInputs, names: Sequence[str] = (), max_new_tokens: int = 16,
                     stop_ids: Sequence[int] | None = None, fwd_hooks=()) -> GeneratedAnswers:
    """Greedy answers to the first stop token (``stop_token_ids`` by default), or ``max_new_tokens``.

    One ``generate`` call with hooks: the ``names`` activations are cut to the answer position in
    the prefill (as ``capture_at_answer`` does); ``attn.hook_pattern_rows`` names are kept at every
    step, averaged over heads, so the attention of each of the T answer tokens costs one row per
    layer. ``fwd_hooks`` (an intervention's) run first, at every step. Memory: the model, one batch's
    KV cache and ``max_new_tokens`` rows per layer.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    stops = list(stop_ids) if stop_ids is not None else stop_token_ids(model)
    positions = answer_positions(inputs)
    store: dict[str, Tensor] = {}
    steps: list[dict[str, Tensor]] = []

    def keep(activation: Tensor, hook) -> None:
        if hook.name.endswith("hook_pattern_rows"):
            while len(steps) <= hook.step:
                steps.append({})
            steps[hook.step][hook.name] = activation.detach().float().mean(1, keepdim=True)
        elif hook.step == 0:
            store[hook.name] = at_answer(activation, positions).detach().clone()

    generated = model.generate(inputs, max_new_tokens=max_new_tokens, fwd_hooks=[*fwd_hooks, *((n, keep) for n in names)],
                               eos_token_id=stops, pad_token_id=stops[0], output_logits=True,
                               return_dict_in_generate=True)
    new = generated.sequences[:, inputs.input_ids.shape[1] :].tolist()
    logprobs = torch.stack([torch.log_softmax(step.float(), -1) for step in generated.logits], 1)  # batch step vocab
    tokens, texts, confidence = [], [], []
    for i, row in enumerate(new):
        length = next((t for t, token in enumerate(row) if token in stops), len(row))
        tokens.append(row[:length])
        texts.append(model.tokenizer.decode(row[:length], skip_special_tokens=True).strip())
        chosen = row[: max(1, length)]  # an empty answer: the stop token's own probability
        confidence.append(float(logprobs[i, torch.arange(len(chosen)), torch.tensor(chosen)].mean().exp()))
    first = AnswerActivations(generated.logits[0], store, inputs, model.vocab)
    return GeneratedAnswers(tokens, texts, confidence, first, steps)
