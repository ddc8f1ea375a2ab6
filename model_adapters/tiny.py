"""Tiny random-init models of each family, built from transformers' own classes.

Each comes with the family's real processor classes around a small word-level tokenizer, so
the whole path real checkpoints take (processor, image spans, hooks) runs offline in seconds.
The toy zoo trains these; the tests check parity on them.

    >>> model, processor = tiny_llava(seed=0)
    >>> type(model).__name__, model.config.text_config.num_hidden_layers
    ('LlavaForConditionalGeneration', 2)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    CLIPImageProcessorPil,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PaliGemmaConfig,
    PaliGemmaForConditionalGeneration,
    PaliGemmaProcessor,
    PreTrainedTokenizerFast,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
    SiglipImageProcessorPil,
)

from model_adapters.qwen2_vl import Qwen2VLImageProcessor

# Words of the families' prompt templates, so templated prompts tokenize without <unk>.
TEMPLATE_WORDS = ("USER", ":", "ASSISTANT", "system", "user", "assistant", "You", "are", "a", "helpful", ".")
DEFAULT_WORDS = (
    "is", "there", "the", "in", "image", "?", "yes", "no", "how", "many", "what", "colour", "of", "left",
    "above", "red", "green", "blue", "square", "circle", "triangle", "0", "1", "2", "3", "4", "5",
)
SPECIALS = {
    "llava": ("<image>",),
    "paligemma": (),  # the processor adds <image> and its location / segmentation tokens
    "qwen2_vl": ("<|image_pad|>", "<|vision_start|>", "<|vision_end|>", "<|video_pad|>", "<|im_start|>", "<|im_end|>"),
}


def word_tokenizer(words: Sequence[str], specials: Sequence[str] = ()) -> PreTrainedTokenizerFast:
    """A whitespace/punctuation word-level tokenizer: <pad>=0, <unk>=1, <s>=2, </s>=3, specials, words."""
    vocab: dict[str, int] = {}
    for token in ("<pad>", "<unk>", "<s>", "</s>", *specials, *TEMPLATE_WORDS, *words):
        vocab.setdefault(token, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    backend.add_special_tokens(["<pad>", "<unk>", "<s>", "</s>", *specials])  # matched before pre-tokenizing
    extra = {"image_token": specials[0]} if specials else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        additional_special_tokens=list(specials),
        extra_special_tokens=extra,
    )


def _text(tokenizer, overrides: dict | None, **defaults) -> dict:
    base = dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=len(tokenizer), max_position_embeddings=512, initializer_range=0.02,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    return {**base, **defaults, **(overrides or {})}


def _build(cls, config, seed: int):
    torch.manual_seed(seed)
    return cls(config).eval()


def tiny_llava(words=DEFAULT_WORDS, *, seed=0, image_size=32, patch_size=8, text=None, vision=None, **config):
    tokenizer = word_tokenizer(words, SPECIALS["llava"])
    vision_config = dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, image_size=image_size, patch_size=patch_size, projection_dim=32)
    cfg = LlavaConfig(
        text_config=_text(tokenizer, text, model_type="llama"),
        vision_config={**vision_config, **(vision or {})},
        image_token_id=tokenizer.image_token_id,
        image_seq_length=(image_size // patch_size) ** 2,
        vision_feature_layer=-1,  # -2 would leave a 2-layer tower's last layer without gradient
        **config,
    )
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
    )
    return _build(LlavaForConditionalGeneration, cfg, seed), processor


def tiny_paligemma(words=DEFAULT_WORDS, *, seed=0, image_size=32, patch_size=8, text=None, vision=None, **config):
    tokenizer = word_tokenizer(words)
    image_processor = SiglipImageProcessorPil(size={"height": image_size, "width": image_size})
    image_processor.image_seq_length = (image_size // patch_size) ** 2
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)  # adds <image> etc.
    text_config = _text(tokenizer, text, model_type="gemma", num_key_value_heads=1, head_dim=16)
    vision_config = dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, image_size=image_size, patch_size=patch_size)
    cfg = PaliGemmaConfig(
        text_config=text_config,
        vision_config={**vision_config, **(vision or {})},
        image_token_id=processor.image_token_id,
        projection_dim=text_config["hidden_size"],
        **config,
    )
    return _build(PaliGemmaForConditionalGeneration, cfg, seed), processor


def tiny_qwen2_vl(words=DEFAULT_WORDS, *, seed=0, patch_size=4, min_pixels=16 * 16, max_pixels=32 * 32,
                  text=None, vision=None, **config):
    tokenizer = word_tokenizer(words, SPECIALS["qwen2_vl"])
    ids = tokenizer.convert_tokens_to_ids
    text_config = _text(tokenizer, text, model_type="qwen2_vl_text",
                        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})
    vision_config = dict(depth=2, embed_dim=32, hidden_size=text_config["hidden_size"], num_heads=2, mlp_ratio=2,
                         patch_size=patch_size, spatial_merge_size=2, temporal_patch_size=2, in_chans=3)
    cfg = Qwen2VLConfig(
        text_config=text_config,
        vision_config={**vision_config, **(vision or {})},
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        **config,
    )
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=patch_size, merge_size=2, temporal_patch_size=2,
        size={"shortest_edge": min_pixels, "longest_edge": max_pixels},
    )
    processor = Qwen2VLImageProcessor(image_processor=image_processor, tokenizer=tokenizer)
    return _build(Qwen2VLForConditionalGeneration, cfg, seed), processor


TINY = {"llava": tiny_llava, "paligemma": tiny_paligemma, "qwen2_vl": tiny_qwen2_vl}
