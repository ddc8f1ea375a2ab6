"""InternVL (3.x, transformers' ``InternVLForConditionalGeneration``): InternViT tower, pixel-shuffle MLP
projector, Qwen2.5 language model, images cut into tiles.

An image of aspect ratio r is resized to the (cols x rows) arrangement of 448-pixel tiles closest to
r (1 to 12 tiles), cut into them, and, when there is more than one, followed by a thumbnail of the
whole picture. Each tile or thumbnail is 256 tokens (32x32 patches of 14 px, pixel-shuffled to
16x16), row-major, all between one ``<img>`` and ``</img>``: the span's views are the tiles, in
row-major order with their place in the arrangement, then the ``base`` thumbnail. The forward tensors
do not say how many rows and columns the tiles form (only how many there are), so ``prepare`` reads
the arrangement from the image and the processor (``Adapter.tile_layout``) and keeps it in
``inputs.tile_layout``; spans read from forward tensors alone have the tiles in order with their
arrangement unknown (``View.tiles`` None: ``stitch`` says so), or take ``as_inputs(..., tile_layout=)``.
"""

from __future__ import annotations

import math
from typing import Any, no_type_check

from transformers import (
    GotOcr2ImageProcessorPil,
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLProcessor,
)
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import (
    get_optimal_tiled_canvas,
)

from model_adapters.common import LANGUAGE_MODEL, PRE_NORM_BLOCK, image_only, token_runs
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
from vlm_lens.spans import ImageSpan, View, spans_from_runs

SPECIALS = ("<IMG_CONTEXT>", "<img>", "</img>", "<video>", "<|im_start|>", "<|im_end|>")
NAMED = {
    "context_image_token": "<IMG_CONTEXT>",
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "video_token": "<video>",
}


_ImagesOnly: Any = image_only(InternVLProcessor, "InternVLImagesOnlyBase")


@no_type_check  # transformers reads its settings back from __init__'s own code: left unwrapped
class InternVLImageProcessor(_ImagesOnly):
    """InternVL's processor for images only, its arguments spelled out (transformers reads saved settings back by
    the names in ``__init__``'s code)."""

    def __init__(self, image_processor=None, tokenizer=None, image_seq_length: int = 256, chat_template=None, **kwargs):
        super().__init__(
            image_processor, tokenizer, chat_template=chat_template, image_seq_length=image_seq_length, **kwargs
        )


def tokens_per_tile(config) -> int:
    vision = config.vision_config
    side = vision.image_size[0] // vision.patch_size[0]
    return int(side * config.downsample_ratio) ** 2


def tile_layout(image, processor) -> tuple[int, int]:
    """(rows, cols) of the tiles the processor cuts ``image`` into (its own choice of arrangement)."""
    ip = processor.image_processor
    if not ip.crop_to_patches:
        return 1, 1
    cols, rows = get_optimal_tiled_canvas(
        (image.height, image.width), (ip.size.height, ip.size.width), ip.min_patches, ip.max_patches
    )
    return rows, cols


def image_spans(config, input_ids, tensors, layout=None):
    per_tile = tokens_per_tile(config)
    side = math.isqrt(per_tile)
    # one run per image (<img> and </img> part them): its tiles, a thumbnail included
    counts = [
        (end - start) // per_tile for ids in input_ids.tolist() for start, end in token_runs(ids, config.image_token_id)
    ]
    if sum(counts) != tensors["pixel_values"].shape[0]:
        raise ImageTokenMismatchError(
            f"input_ids hold image tokens for {sum(counts)} tiles of {per_tile} tokens but "
            f"pixel_values hold {tensors['pixel_values'].shape[0]} tiles"
        )
    if layout is not None:
        layout = [tuple(rc) for rc in layout]
        wanted = [r * c + (1 if r * c > 1 else 0) for r, c in layout]
        if wanted != counts:
            raise InputError(f"tile_layout {layout} needs {wanted} tiles per image, the inputs hold {counts}")
    spans = spans_from_runs(input_ids, config.image_token_id, [(n * per_tile, (side, side)) for n in counts])
    return [
        [
            with_views(span, counts[span.image], None if layout is None else layout[span.image], per_tile, side)
            for span in item
        ]
        for item in spans
    ]


def with_views(span: ImageSpan, count: int, layout: tuple[int, int] | None, per_tile: int, side: int) -> ImageSpan:
    if count == 1:
        return span  # one tile: the whole picture, one view
    cols = layout[1] if layout is not None else count - 1
    views = [
        View(
            "tile",
            tuple(range(span.start + k * per_tile, span.start + (k + 1) * per_tile)),
            (side, side),
            tile=divmod(k, cols),
            tiles=layout,
        )
        for k in range(count - 1)
    ]
    views.append(View("base", tuple(range(span.end - per_tile, span.end)), (side, side)))
    return ImageSpan(span.image, span.start, span.end, (side, side), tuple(views))


def template(prompt: str, n_images: int, processor) -> str:
    # OpenGVLab/InternVL3-8B-hf chat template: each image placeholder on its own line before the text
    return (
        f"<|im_start|>user\n{(processor.image_token + chr(10)) * n_images}{prompt}<|im_end|>\n<|im_start|>assistant\n"
    )


ADAPTER = register(
    Adapter(
        family="internvl",
        hf_classes=("InternVLForConditionalGeneration",),
        modules={
            **LANGUAGE_MODEL,
            "vision_layers": "model.vision_tower.encoder.layer",
            "projector": "model.multi_modal_projector",
        },
        block=PRE_NORM_BLOCK,
        image_spans=image_spans,
        template=template,
        load_processor=InternVLImageProcessor.from_pretrained,
        tile_layout=tile_layout,
    )
)


def tiny(words=DEFAULT_WORDS, *, seed=0, image_size=64, patch_size=8, max_tiles=4, text=None, vision=None, **config):
    tokenizer = word_tokenizer(words, SPECIALS, named=NAMED)
    vision_config = dict(
        model_type="internvl_vision",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
    )
    cfg = InternVLConfig(
        text_config=text_config(tokenizer, text, model_type="qwen2"),
        vision_config={**vision_config, **(vision or {})},
        image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"),
        downsample_ratio=0.5,
        vision_feature_layer=-1,
        **config,
    )
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": image_size, "width": image_size}, crop_to_patches=True, min_patches=1, max_patches=max_tiles
    )
    per_tile = int(image_size // patch_size * 0.5) ** 2
    processor = InternVLImageProcessor(image_processor=image_processor, tokenizer=tokenizer, image_seq_length=per_tile)
    return build(InternVLForConditionalGeneration, cfg, seed), processor


def expected_views(image, processor) -> list[tuple[str, tuple[int, int]]]:
    """The processor's own tiles for this image (its num_patches), as views: tiles, then the thumbnail."""
    n = int(processor.image_processor(images=[image], return_tensors="pt")["num_patches"][0])
    side = math.isqrt(processor.image_seq_length)
    return [] if n == 1 else [("tile", (side, side))] * (n - 1) + [("base", (side, side))]


SPEC = FamilySpec(
    family="internvl",
    tiny=tiny,
    toy=llava_toy,  # the toys' tower and language model sizes
    expected_grid=lambda image, processor: (math.isqrt(processor.image_seq_length),) * 2,  # one tile's grid
    before_image="<img>",
    after_image="</img>",
    expected_views=expected_views,
    crop_pixels=lambda processor: processor.image_processor.size["height"],
    real=(RealSize("internvl3-8b-hf", 28, 24, 3584, 18944, 28, 128, 151674, 1024),),
)
