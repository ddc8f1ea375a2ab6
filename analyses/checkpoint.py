"""Which checkpoint a fitted object (a reliability monitor, a tuned lens) belongs to, and the files it is kept in.

Weights fitted on one checkpoint's states mean something only for that checkpoint. ``fingerprint(model)`` records
it: the family, the HF class, the sizes, a sha256 of the config with the fields that do not change the computation
left out (name, dtype, attention implementation) and one of the tokenizer's vocabulary; ``check`` refuses another
model, one line naming both (``CheckpointMismatchError``).

On disk an object is a folder of two files: a safetensors file for the numbers and ``card.json`` for the rest. Each
holds the other's digest (the card the sha256 of the tensor file, the tensor file's metadata the sha256 of the
card's other fields), so an edit of either is refused on loading. No pickles.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save

from analyses.files import sha256, write_atomic
from vlm_lens import HookedVLM, zoo
from vlm_lens.errors import DataError

CARD = "card.json"
# config fields that do not change what the model computes
_UNHASHED = {"dtype", "torch_dtype", "transformers_version", "name_or_path", "use_cache", "output_attentions"}
SIZES = ("family", "architecture", "n_layers", "d_model", "d_vocab")


class CheckpointMismatchError(DataError):
    """A fitted object (monitor, tuned lens) applied to a model it was not fitted on."""


def _config_digest(config) -> str:
    def kept(value):
        if isinstance(value, dict):
            return {str(k): kept(v) for k, v in value.items() if not str(k).startswith("_") and k not in _UNHASHED}
        return value

    text = json.dumps(kept(config.to_dict()), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _tokenizer_digest(tokenizer) -> str:
    vocab = sorted(tokenizer.get_vocab().items())
    text = json.dumps([vocab, sorted(getattr(tokenizer, "all_special_tokens", []))])
    return hashlib.sha256(text.encode()).hexdigest()


def fingerprint(model: HookedVLM) -> dict:
    """The checkpoint a monitor reads: name, family, HF class, sizes, and digests of its config and tokenizer."""
    c = model.cfg
    toys = {zoo.resolve(name): name for name in zoo.names()}  # a zoo toy by its name, not its folder here
    return {
        "name": toys.get(c.model_name, c.model_name),
        "family": c.family,
        "architecture": type(model.hf_model).__name__,
        "n_layers": c.n_layers,
        "d_model": c.d_model,
        "d_vocab": c.d_vocab,
        "config_sha256": _config_digest(model.hf_model.config),
        "tokenizer_sha256": _tokenizer_digest(model.tokenizer),
    }


def _sizes(print_: dict) -> str:
    return (
        f"{print_['family']}, {print_['n_layers']} layers, d_model {print_['d_model']}, vocabulary {print_['d_vocab']}"
    )


def check(fitted: dict, model: HookedVLM, what: str = "monitor") -> None:
    """Refuse ``model`` unless it is the checkpoint ``fitted`` (a fingerprint) describes; ``what`` names the
    fitted object in the message."""
    now = fingerprint(model)
    who = f"fitted on {fitted['name']!r} ({_sizes(fitted)})"
    if any(fitted[k] != now[k] for k in SIZES):
        raise CheckpointMismatchError(
            f"this {what} was {who} and cannot read {now['name']!r} ({_sizes(now)}): its weights are for that "
            f"model's states; fit a {what} on this model"
        )
    for key, part in (("config_sha256", "configuration"), ("tokenizer_sha256", "tokenizer")):
        if fitted[key] != now[key]:
            raise CheckpointMismatchError(
                f"this {what} was {who}; {now['name']!r} has the same sizes but another {part} (a different "
                f"checkpoint): its numbers would not mean what its card says; fit one on this model"
            )


def _card_digest(card: dict) -> str:
    text = json.dumps({k: v for k, v in card.items() if k != "tensors_sha256"}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def write(folder: str | Path, tensors: dict[str, np.ndarray], card: dict, fmt: str, tensors_file: str) -> Path:
    """``folder/<tensors_file>`` and ``folder/card.json`` (its ``format`` field ``fmt``), each written whole, each
    naming the other's digest."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DataError(f"{folder} is a file: the monitor is saved into a folder (give a new or existing folder)")
    folder.mkdir(parents=True, exist_ok=True)
    card = {"format": fmt, **{k: v for k, v in card.items() if k not in ("format", "tensors_sha256")}}
    blob = save({k: np.ascontiguousarray(v) for k, v in tensors.items()}, metadata={"card_sha256": _card_digest(card)})
    write_atomic(folder / tensors_file, blob)
    card["tensors_sha256"] = hashlib.sha256(blob).hexdigest()
    write_atomic(folder / CARD, json.dumps(card, indent=2) + "\n")
    return folder


def read(folder: str | Path, fmt: str, tensors_file: str, what: str) -> tuple[dict[str, np.ndarray], dict]:
    """The tensors and the card of a saved ``what`` (its card's format ``fmt``), refused with one line if either
    is missing or was edited."""
    folder = Path(folder)
    tensors_path, card_path = folder / tensors_file, folder / CARD
    for path in (tensors_path, card_path):
        if not path.is_file():
            raise DataError(f"{path} is missing: {folder} is not a saved {what}")
    try:
        card = json.loads(card_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{card_path} is not valid JSON ({e}): the {what} was damaged; fit it again") from None
    if not isinstance(card, dict) or card.get("format") != fmt:
        found = card.get("format") if isinstance(card, dict) else type(card).__name__
        raise DataError(f"{card_path} is not a vlm-lens {what} card (format {found!r}, this vlm-lens reads {fmt})")
    if sha256(tensors_path) != card.get("tensors_sha256"):
        raise DataError(
            f"{tensors_path} does not match its card (sha256 differs): it was changed or damaged after it was saved; "
            f"fit the {what} again"
        )
    try:
        with safe_open(str(tensors_path), "np") as f:
            stored = (f.metadata() or {}).get("card_sha256")
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iteration
    except SafetensorError as e:
        raise DataError(f"{tensors_path} is not a readable safetensors file ({e}); fit the {what} again") from None
    if stored != _card_digest(card):
        raise DataError(
            f"{card_path} was edited after the {what} was saved (its fields no longer match the digest in "
            f"{tensors_file}); fit the {what} again rather than editing its card"
        )
    return tensors, card
