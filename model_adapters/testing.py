"""What every family file exports beside its adapter: a test spec, and the pieces to build tiny models.

A ``FamilySpec`` says how to build a tiny random-init model of the family from transformers' own
classes with the family's real processor around a small word-level tokenizer, where the image
tokens must sit in a templated prompt, which grid an image should get, and the real-size
checkpoints whose configs the structure tests load on the ``meta`` device. The generic test
suite runs over every registered spec and never names a family.

    >>> from model_adapters import SPECS
    >>> model, processor = SPECS["llava"].tiny(seed=0)
    >>> type(model).__name__, model.config.text_config.num_hidden_layers
    ('LlavaForConditionalGeneration', 2)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers
from torch import nn
from transformers import PreTrainedTokenizerFast

# Words of the families' prompt templates, so templated prompts tokenize without <unk>.
TEMPLATE_WORDS = ("USER", ":", "ASSISTANT", "system", "user", "assistant", "You", "are", "a", "helpful", ".")
DEFAULT_WORDS = (
    "is",
    "there",
    "the",
    "in",
    "image",
    "?",
    "yes",
    "no",
    "how",
    "many",
    "what",
    "colour",
    "of",
    "left",
    "above",
    "red",
    "green",
    "blue",
    "square",
    "circle",
    "triangle",
    "0",
    "1",
    "2",
    "3",
    "4",
    "5",
)


@dataclass(frozen=True)
class RealSize:
    """A real checkpoint's sizes; its config.json lies in ``tests/configs/<config>/``."""

    config: str
    n_layers: int
    n_vision_layers: int
    d_model: int
    d_mlp: int
    n_heads: int
    d_head: int
    d_vocab: int
    d_vision: int


@dataclass(frozen=True)
class FamilySpec:
    """How the generic tests (and the toy zoo) build and check one family."""

    family: str
    # (words=..., seed=..., text={...}, vision={...}, **config) -> (HF model in eval mode, processor)
    tiny: Callable[..., tuple[nn.Module, Any]]
    # image_size -> tiny() keyword arguments for the zoo's toy (4 layers of width 128, 16 image tokens)
    toy: Callable[[int], dict]
    # (image, processor) -> the (rows, cols) patch grid the processor should give this image
    expected_grid: Callable[[Image.Image, Any], tuple[int, int]]
    image_first: bool = False  # image tokens open the sequence (no text before them)
    before_image: str | None = None  # the token right before each image's tokens, if the template puts one
    after_image: str | None = None  # the token right after them
    real: tuple[RealSize, ...] = ()
    # multi-crop families: (image, processor) -> [(view kind, grid)] the processor's own arithmetic gives
    expected_views: Callable[[Image.Image, Any], list[tuple[str, tuple[int, int]]]] | None = None
    # multi-crop families: processor -> the side in pixels of one crop (a picture of 1x2 crops is exactly 1x2 of them)
    crop_pixels: Callable[[Any], int] | None = None


def word_tokenizer(
    words: Sequence[str], specials: Sequence[str] = (), named: dict[str, str] | None = None
) -> PreTrainedTokenizerFast:
    """A whitespace/punctuation word-level tokenizer: <pad>=0, <unk>=1, <s>=2, </s>=3, specials, words.
    ``specials[0]`` is its ``image_token``; ``named`` gives more of them by attribute (Gemma 3's ``boi_token``)."""
    vocab: dict[str, int] = {}
    for token in ("<pad>", "<unk>", "<s>", "</s>", *specials, *TEMPLATE_WORDS, *words):
        vocab.setdefault(token, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    backend.add_special_tokens(["<pad>", "<unk>", "<s>", "</s>", *specials])  # matched before pre-tokenizing
    extra = ({"image_token": specials[0]} if specials else {}) | (named or {})
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        additional_special_tokens=list(specials),
        extra_special_tokens=extra,
    )


def text_config(tokenizer, overrides: dict | None, **defaults) -> dict:
    """A tiny language model's config: 2 layers of width 64, the tokenizer's vocabulary and special ids."""
    base = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=512,
        initializer_range=0.02,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return {**base, **defaults, **(overrides or {})}


def build(cls, config, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return cls(config).eval()


TOY_INIT = 0.1  # HF's default 0.02 leaves models this small at chance (measured)


def toy_text(**family) -> dict:
    """The zoo toys' language model: 4 layers of width 128 (family-specific extras merged in)."""
    return {
        **dict(
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=4,
            initializer_range=TOY_INIT,
        ),
        **family,
    }
