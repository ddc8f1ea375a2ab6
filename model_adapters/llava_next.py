"""LLaVA-NeXT (LLaVA-1.6): CLIP tower, MLP projector, Mistral / Vicuna language model, "anyres" images.

Each image is a base view (the picture resized to the tower's square: 24x24 = 576 tokens at 336 px)
followed by its crops at the best-fitting resolution of ``image_grid_pinpoints``, stitched into one
grid, cropped back to the picture's aspect ratio ("unpadded"), with a learned newline token after
each row. All of them are ``<image>`` tokens. The span's views: ``base`` and ``highres`` (its
newline positions are the separators); ``span.stitch`` lays a per-token quantity out on the
high-resolution grid. Inputs: 5-D ``pixel_values`` [image, crop, channel, h, w] and ``image_sizes``.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from transformers import (
    AutoProcessor,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
)
from transformers.image_processing_utils import select_best_resolution
from transformers.models.llava_next.modeling_llava_next import (
    get_anyres_image_grid_shape,
    unpad_image,
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
from vlm_lens.errors import InputError
from vlm_lens.spans import View, spans_from_runs


def anyres_grid(config, image_size: tuple[int, int]) -> tuple[int, int]:
    """(rows, cols) of the unpadded high-resolution grid for an image of (height, width) pixels, by transformers'
    own pinpoint choice and unpadding; with LLaVA-OneVision's ``vision_aspect_ratio`` ("anyres_max_9"), the grid
    its bilinear downsampling leaves when it holds over 1.1^2 x 9 base grids."""
    vision = config.vision_config
    side = vision.image_size // vision.patch_size
    crops_h, crops_w = get_anyres_image_grid_shape(list(image_size), config.image_grid_pinpoints, vision.image_size)
    grid = torch.empty(1, crops_h * side, crops_w * side, device="meta")
    rows, cols = unpad_image(grid, torch.tensor(image_size)).shape[1:]
    aspect = getattr(config, "vision_aspect_ratio", None)
    if aspect is not None:  # as LlavaOnevisionModel.pack_image_features computes it
        ratio = math.sqrt(rows * cols / (int(aspect.removeprefix("anyres_max_")) * side**2))
        if ratio > 1.1:
            rows, cols = int(rows // ratio), int(cols // ratio)
    return rows, cols


def image_spans(config, input_ids, tensors):
    cls_free = config.vision_config.model_type.startswith("siglip")  # SigLIP has no CLS token to drop
    if config.vision_feature_select_strategy != "default" and not cls_free:
        raise InputError(
            f"vision_feature_select_strategy {config.vision_feature_select_strategy!r} keeps the CLS "
            "token among the image tokens; image spans cover the 'default' strategy (patches only)"
        )
    if "image_sizes" not in tensors or tensors["pixel_values"].ndim != 5:
        raise InputError(
            "anyres models take pixel_values [image, crop, channel, h, w] and image_sizes; "
            "use model.prepare() or the model's processor"
        )
    # LLaVA-OneVision crops only an item's single image: in an item with several, each is its base view and a newline
    counts = tensors.get("batch_num_images")
    cropped = (
        [True] * len(tensors["image_sizes"]) if counts is None else [int(n) == 1 for n in counts for _ in range(int(n))]
    )
    side = config.vision_config.image_size // config.vision_config.patch_size
    grids = [
        anyres_grid(config, tuple(int(x) for x in size)) if crop else None
        for size, crop in zip(tensors["image_sizes"], cropped)
    ]
    runs = [(side * side + (1 if grid is None else grid[0] * (grid[1] + 1)), (side, side)) for grid in grids]
    spans = spans_from_runs(input_ids, config.image_token_id, runs)
    return [[with_views(span, side, grids[span.image]) for span in item] for item in spans]


def with_views(span, side: int, highres: tuple[int, int] | None):
    first = span.start + side * side
    base = View("base", tuple(range(span.start, first)), (side, side))
    if highres is None:  # the base view and one newline token
        return replace(span, views=(base,))
    rows, cols = highres
    patches = tuple(first + r * (cols + 1) + c for r in range(rows) for c in range(cols))
    newlines = tuple(first + r * (cols + 1) + cols for r in range(rows))
    return replace(span, views=(base, View("highres", patches, highres, separators=newlines)))


def template(prompt: str, n_images: int, processor) -> str:
    # llava-hf/llava-v1.6-mistral-7b-hf model card: "[INST] <image>\n<prompt> [/INST]"
    return "[INST] " + f"{processor.image_token}\n" * n_images + f"{prompt} [/INST]"


ADAPTER = register(
    Adapter(
        family="llava_next",
        hf_classes=("LlavaNextForConditionalGeneration",),
        modules={
            **LANGUAGE_MODEL,
            "vision_layers": "model.vision_tower.encoder.layers",
            "projector": "model.multi_modal_projector",
        },
        block=PRE_NORM_BLOCK,
        image_spans=image_spans,
        template=template,
        load_processor=AutoProcessor.from_pretrained,
        forward_keys=("input_ids", "attention_mask", "pixel_values", "image_sizes"),
        image_keys=("pixel_values", "image_sizes"),
    )
)


def tiny(words=DEFAULT_WORDS, *, seed=0, image_size=32, patch_size=8, text=None, vision=None, **config):
    tokenizer = word_tokenizer(words, ("<image>", "[INST]", "[/INST]"))
    pinpoints = [[image_size, 2 * image_size], [2 * image_size, image_size], [2 * image_size, 2 * image_size]]
    vision_config = dict(
        model_type="clip_vision_model",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=32,
    )
    cfg = LlavaNextConfig(
        text_config=text_config(tokenizer, text, model_type="mistral"),
        vision_config={**vision_config, **(vision or {})},
        image_token_id=tokenizer.image_token_id,
        image_grid_pinpoints=pinpoints,
        vision_feature_layer=-1,
        **config,
    )
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_grid_pinpoints=pinpoints,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    return build(LlavaNextForConditionalGeneration, cfg, seed), processor


def anyres_views(image, processor, size: int, side: int) -> list[tuple[str, tuple[int, int]]]:
    """The processor's own count of an image's tokens (its pinpoint choice, unpadding and, for LLaVA-OneVision,
    anyres_max shrinking), as views: crops of ``size`` pixels, a ``side`` x ``side`` base grid."""
    best_h, best_w = select_best_resolution((image.height, image.width), processor.image_processor.image_grid_pinpoints)
    unpadded, rows = processor._get_unpadded_features(
        image.height, image.width, side, side, best_h // size, best_w // size
    )
    return [("base", (side, side)), ("highres", (rows, unpadded // rows))]


def expected_views(image, processor) -> list[tuple[str, tuple[int, int]]]:
    size = processor.image_processor.crop_size["height"]
    return anyres_views(image, processor, size, size // processor.patch_size)


SPEC = FamilySpec(
    family="llava_next",
    tiny=tiny,
    toy=llava_toy,  # the same CLIP tower and language model sizes as LLaVA-1.5's toy
    # the base view: the picture resized to the tower's square
    expected_grid=lambda image, processor: (processor.image_processor.crop_size["height"] // processor.patch_size,) * 2,
    before_image="[INST]",
    expected_views=expected_views,
    crop_pixels=lambda processor: processor.image_processor.crop_size["height"],
    real=(RealSize("llava-v1.6-mistral-7b-hf", 32, 24, 4096, 14336, 32, 128, 32064, 1024),),
)
