"""Llama-3.2-Vision (transformers' ``MllamaForConditionalGeneration``): the image enters through cross-attention.

The vision tower (32 local and 8 global layers at 560 px, patch 14) encodes each image as up to 4 tiles of
1 + 40x40 patches (a class token first), in the arrangement of the supported aspect ratio closest to the
picture's (``aspect_ratio_ids``); the projector maps them to the language model's width. The text holds one
``<|image|>`` token per image and no image features: every 5th language layer (3, 8, ..., 38 of 40) is a
cross-attention layer, whose attention takes its queries from the text and its keys and values from the
projected image features, and whose attention and MLP writes are each scaled by tanh of a learned gate (the
MLP's also by the rows that see an image: text before the first image is masked out). The other layers are
plain self-attention Llama layers.

So the image has no positions in the residual stream: ``image_spans`` are the ``<|image|>`` tokens (1x1 each),
``blocks.{l}.attn.*`` of a cross-attention layer are its cross-attention (``hook_k`` / ``hook_v`` and the
pattern's keys run over the image's tile patches: image, tile, patch, padded tiles masked), and
``blocks.{l}.hook_attn_out`` / ``hook_cross_attn_out`` is what the gated cross-attention adds to the residual.
``key_spans`` says where each image's tiles sit among those keys (``VLMInputs.key_spans``: one "tile" view per
real tile, class tokens and padding tiles left out), so attention maps and their structure are read at the
cross-attention layers, a key row laid on the picture tile by tile (``attention_structure.image_layers``,
``image_grids``); token-level patch masking edits the projected tile patches (``KeyFeatureEdit`` at
``projector.hook_out``) and pixel-level masking greys a tile's pixels (``fill_tile_patches``). The logit lens,
decompositions, probes, ablations, patching of text positions and self-consistency apply unchanged.
"""

from __future__ import annotations

import torch
from transformers import (
    MllamaConfig,
    MllamaForConditionalGeneration,
    MllamaImageProcessorPil,
    MllamaProcessor,
)
from transformers.models.mllama.image_processing_pil_mllama import (
    get_all_supported_aspect_ratios,
)

from model_adapters.common import LANGUAGE_MODEL, PRE_NORM_BLOCK
from model_adapters.llava import toy as llava_toy
from model_adapters.testing import (
    DEFAULT_WORDS,
    FamilySpec,
    RealSize,
    build,
    text_config,
    word_tokenizer,
)
from vlm_lens.adapter import Adapter, register
from vlm_lens.errors import ImageTokenMismatchError, InputError
from vlm_lens.spans import ImageSpan, View

SPECIALS = ("<|image|>", "<|python_tag|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")

CROSS_BLOCK = {
    **PRE_NORM_BLOCK,
    "attn": "cross_attn",
    "attn_q": "cross_attn.q_proj",
    "attn_k": "cross_attn.k_proj",
    "attn_v": "cross_attn.v_proj",
    "attn_o": "cross_attn.o_proj",
    "attn_out": "cross_attn",  # before its gate: what the residual adds is hooked as a difference (vlm_lens.hooks)
    "attn_write_gate": "cross_attn_attn_gate",
    "mlp_write_gate": "cross_attn_mlp_gate",
}


def image_spans(config, input_ids, tensors) -> list[list[ImageSpan]]:
    """One span per ``<|image|>`` token: the image's only position in the sequence (its features are keys of the
    cross-attention layers)."""
    pixels = tensors["pixel_values"]
    if pixels.ndim != 6:
        raise ImageTokenMismatchError(
            f"pixel_values must be [batch, image, tile, channel, height, width], got shape "
            f"{tuple(pixels.shape)}; use model.prepare() or the model's processor"
        )
    ratios = tensors.get("aspect_ratio_ids")
    spans, image = [], 0
    for item, ids in enumerate(input_ids):
        positions = torch.nonzero(ids == config.image_token_id).flatten().tolist()
        n_images = int((ratios[item] > 0).sum()) if ratios is not None else pixels.shape[1]
        if len(positions) != n_images:
            raise ImageTokenMismatchError(f"item {item} has {len(positions)} <|image|> tokens but {n_images} images")
        spans.append([ImageSpan(image + k, p, p + 1, (1, 1)) for k, p in enumerate(positions)])
        image += len(positions)
    return spans


def key_spans(config, tensors) -> list[list[ImageSpan]]:
    """Per item, per image: where its tile patches sit among a cross-attention layer's keys, which run over
    (image, tile, patch) with a class token first in each tile. One "tile" view per real tile (padding tiles,
    masked by the model, are left out), at its (row, col) of the arrangement ``aspect_ratio_ids`` names (the
    image processor's supported ratios, (tiles high, tiles wide), tiles cut row-major), so ``span.stitch``
    lays a key row out on the picture."""
    vision = config.vision_config
    side = vision.image_size // vision.patch_size
    per_tile = side * side + 1
    ratios = tensors["aspect_ratio_ids"]
    n_media, max_tiles = tensors["aspect_ratio_mask"].shape[1:]
    supported = get_all_supported_aspect_ratios(max_tiles)
    spans, image = [], 0
    for item in range(ratios.shape[0]):
        item_spans = []
        for media in range(n_media):
            ratio = int(ratios[item, media])
            if ratio == 0:  # a padding image: this item has fewer images than the batch's most
                continue
            high, wide = supported[ratio - 1]
            first = media * max_tiles * per_tile
            views = tuple(
                View(
                    "tile",
                    tuple(range(first + t * per_tile + 1, first + (t + 1) * per_tile)),
                    (side, side),
                    tile=divmod(t, wide),
                    tiles=(high, wide),
                )
                for t in range(high * wide)
            )
            item_spans.append(ImageSpan(image, first, first + max_tiles * per_tile, (side, side), views))
            image += 1
        spans.append(item_spans)
    return spans


def fill_tile_patches(config, tensors: dict, span: ImageSpan, cells, fill: torch.Tensor) -> None:
    """pixel_values [batch, image, tile, channel, H, W]: ``cells`` index the stitched grid of ``span`` (a key span,
    ``key_spans``); each is a patch of one tile."""
    pixels = tensors["pixel_values"]
    item, media = torch.nonzero(tensors["aspect_ratio_ids"] > 0)[span.image].tolist()
    side, tiles = span.grid[0], span.views[0].tiles
    if tiles is None:
        raise InputError(f"image {span.image}'s tiles are not known: its patches cannot be placed")
    wide = tiles[1] * side
    ph, pw = pixels.shape[-2] // side, pixels.shape[-1] // side
    for cell in cells:
        r, c = divmod(int(cell), wide)
        (tr, pr), (tc, pc) = divmod(r, side), divmod(c, side)
        tile = tr * tiles[1] + tc
        pixels[item, media, tile, :, pr * ph : (pr + 1) * ph, pc * pw : (pc + 1) * pw] = fill[:, None, None]


def template(prompt: str, n_images: int, processor) -> str:
    # meta-llama/Llama-3.2-11B-Vision-Instruct chat template (the processor puts <|begin_of_text|> first)
    return (
        f"<|start_header_id|>user<|end_header_id|>\n\n{processor.image_token * n_images}{prompt}<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


ADAPTER = register(
    Adapter(
        family="mllama",
        hf_classes=("MllamaForConditionalGeneration",),
        modules={
            **LANGUAGE_MODEL,
            "vision_layers": "model.vision_model.transformer.layers",
            "projector": "model.multi_modal_projector",
        },
        block=PRE_NORM_BLOCK,
        image_spans=image_spans,
        template=template,
        load_processor=MllamaProcessor.from_pretrained,
        forward_keys=(
            "input_ids",
            "attention_mask",
            "pixel_values",
            "aspect_ratio_ids",
            "aspect_ratio_mask",
            "cross_attention_mask",
        ),
        image_keys=(),  # every tensor is indexed by item: [batch, image, tile, ...]
        nested_images=True,
        cross_layers=lambda config: config.get_text_config().cross_attention_layers,
        cross_block=CROSS_BLOCK,
        repeat_last_keys=("cross_attention_mask",),
        key_spans=key_spans,
        fill_patches=fill_tile_patches,
    )
)


def tiny(words=DEFAULT_WORDS, *, seed=0, image_size=32, patch_size=8, text=None, vision=None, **config):
    tokenizer = word_tokenizer(words, SPECIALS)
    vision_config = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_global_layers=1,
        attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
        max_num_tiles=4,
        intermediate_layers_indices=[0, 1],
    )
    vision_config = {**vision_config, **(vision or {})}
    # the projector reads the last layer and the intermediate ones, side by side
    vision_config["vision_output_dim"] = vision_config["hidden_size"] * (
        len(vision_config["intermediate_layers_indices"]) + 1
    )
    cfg = MllamaConfig(
        # the second of two layers reads the image (Llama-3.2-11B-Vision: every fifth from layer 3)
        text_config=text_config(
            tokenizer, {"cross_attention_layers": [1], **(text or {})}, model_type="mllama_text_model"
        ),
        vision_config=vision_config,
        image_token_index=tokenizer.image_token_id,
        **config,
    )
    model = build(MllamaForConditionalGeneration, cfg, seed)
    with torch.no_grad():  # transformers starts every tanh gate at 0 (a cross layer that adds nothing): draw them
        generator = torch.Generator().manual_seed(seed)
        for name, param in model.named_parameters():
            if name.endswith("gate") and param.numel() == 1:
                param.copy_(torch.empty(1).uniform_(0.5, 1.5, generator=generator))
    image_processor = MllamaImageProcessorPil(size={"height": image_size, "width": image_size}, max_image_tiles=4)
    return model, MllamaProcessor(image_processor=image_processor, tokenizer=tokenizer)


SPEC = FamilySpec(
    family="mllama",
    tiny=tiny,
    toy=llava_toy,
    expected_grid=lambda image, processor: (1, 1),  # one <|image|> token: the features are cross-attention keys
    real=(RealSize("llama-3.2-11b-vision", 40, 32, 4096, 14336, 32, 128, 128256, 1280),),
)
