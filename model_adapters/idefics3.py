"""Idefics3: SigLIP tower, pixel-shuffle connector, Llama 3 language model, images split into tiles.

The image processor resizes an image so its long side is at most ``size["longest_edge"]`` (1456 px),
rounds both sides up to multiples of the tile size (``max_image_size``, 364 px), and, when that is more
than one tile, cuts it into (rows x cols) tiles and adds the whole picture shrunk to one tile (the
global view). Each tile is (364/14)^2 patches pixel-shuffled by 2 to 13x13 = 169 tokens, row-major. In
the text, every tile is ``<fake_token_around_image><row_r_col_c>`` then its tokens, each row of tiles
ends with a newline, and the global view comes last as ``<fake_token_around_image><global-img>``, its
tokens, ``<fake_token_around_image>``; an image too small to split is the global view alone. The span's
views are the tiles, with their place in the arrangement, then the ``base`` global view; the markers
and newlines between them are its separators.

The arrangement is read off the token ids alone: a tile is followed by the next tile's
``<fake_token_around_image>`` within a row and by a newline at a row's end, and the global view is the
run after the marker that also opens the item's last run. So spans from forward tensors alone are
complete. SmolVLM (``model_adapters.smolvlm``) lays images out the same way.
"""

from __future__ import annotations

import math

from transformers import (
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessorPil,
    Idefics3Processor,
)

from model_adapters.common import PRE_NORM_BLOCK, token_runs
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
from vlm_lens.errors import ImageTokenMismatchError
from vlm_lens.spans import ImageSpan, View

# <image> first (the tokenizer's image_token); the tile markers of up to 6x6 tiles; "\n" kept as a token, as real
# tokenizers keep it, so rows of tiles end as they do there
SPECIALS = (
    "<image>",
    "<fake_token_around_image>",
    "<global-img>",
    "<end_of_utterance>",
    "\n",
    *(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)),
)
CHAT_WORDS = ("User", "Assistant")  # the chat template's roles, beside testing.TEMPLATE_WORDS

# where the language model sits in Idefics3's and SmolVLM's ForConditionalGeneration classes
MODULES = {
    "layers": "model.text_model.layers",
    "final_norm": "model.text_model.norm",
    "unembed": "lm_head",
    "embed": "model.text_model.embed_tokens",
    "vision_layers": "model.vision_model.encoder.layers",
    "projector": "model.connector",
}


def tokens_per_tile(config) -> int:
    vision = config.vision_config
    return (vision.image_size // vision.patch_size // config.scale_factor) ** 2


def real_tiles(tensors) -> list[int]:
    """Tiles (global views included) per item in ``pixel_values`` [batch, tile, channel, H, W]: the processor pads
    items with all-zero tiles, which the model drops, as here."""
    pixels = tensors["pixel_values"]
    if pixels.ndim != 5:
        raise ImageTokenMismatchError(
            f"pixel_values must be [batch, tile, channel, height, width], got shape "
            f"{tuple(pixels.shape)}; use model.prepare() or the model's processor"
        )
    return (pixels.flatten(2) != 0).any(-1).sum(-1).tolist()


def image_spans(config, input_ids, tensors) -> list[list[ImageSpan]]:
    per_tile = tokens_per_tile(config)
    side = math.isqrt(per_tile)
    tiles = real_tiles(tensors)
    spans, image = [], 0
    for item, ids in enumerate(input_ids.tolist()):
        runs = token_runs(ids, config.image_token_id)
        if len(runs) != tiles[item]:
            raise ImageTokenMismatchError(
                f"item {item}: input_ids hold {len(runs)} runs of image tokens (one per tile "
                f"or global view) but pixel_values hold {tiles[item]} tiles"
            )
        bad = [end - start for start, end in runs if end - start != per_tile]
        if bad:
            raise ImageTokenMismatchError(f"item {item}: a tile needs {per_tile} image tokens, found a run of {bad[0]}")
        item_spans, group = [], []
        for run in runs:
            group.append(run)
            if ids[run[0] - 1] == ids[runs[-1][0] - 1]:  # the global view's marker: the image ends here
                item_spans.append(_span(image, group, ids, side, item))
                image, group = image + 1, []
        spans.append(item_spans)
    return spans


def _span(image: int, runs: list[tuple[int, int]], ids: list[int], side: int, item: int) -> ImageSpan:
    start, end = runs[0][0], runs[-1][1]
    if len(runs) == 1:
        return ImageSpan(image, start, end, (side, side))
    fake = ids[start - 2]  # <fake_token_around_image> opens every tile
    row_ends = [k for k, (_, stop) in enumerate(runs[:-1]) if ids[stop] != fake]
    cols = row_ends[0] + 1
    n_tiles = len(runs) - 1
    if n_tiles % cols or row_ends != list(range(cols - 1, n_tiles, cols)):
        raise ImageTokenMismatchError(
            f"item {item}: image {image}'s {n_tiles} tiles do not form rows of equal length "
            f"(rows end after tiles {row_ends}); the image markup was altered"
        )
    views = [
        View("tile", tuple(range(a, b)), (side, side), tile=divmod(k, cols), tiles=(n_tiles // cols, cols))
        for k, (a, b) in enumerate(runs[:-1])
    ]
    views.append(View("base", tuple(range(*runs[-1])), (side, side)))
    return ImageSpan(image, start, end, (side, side), tuple(views))


def template(prompt: str, n_images: int, processor) -> str:
    # HuggingFaceM4/Idefics3-8B-Llama3 chat template (its tokenizer adds <|begin_of_text|>)
    return f"User:{processor.image_token * n_images}{prompt}<end_of_utterance>\nAssistant:"


def adapter(family: str, hf_class: str, load_processor, template=template) -> Adapter:
    return Adapter(
        family=family,
        hf_classes=(hf_class,),
        modules=MODULES,
        block=PRE_NORM_BLOCK,
        image_spans=image_spans,
        template=template,
        load_processor=load_processor,
        forward_keys=("input_ids", "attention_mask", "pixel_values", "pixel_attention_mask"),
        image_keys=(),  # pixel_values are [batch, tile, ...]: indexed by item
        nested_images=True,  # SmolVLM's processor takes a flat list as one prompt's images
    )


ADAPTER = register(adapter("idefics3", "Idefics3ForConditionalGeneration", Idefics3Processor.from_pretrained))


def tiny_parts(config_class, image_processor_class, words, image_size, patch_size, text, vision, config, specials=()):
    """(tokenizer, config, image processor, tokens per tile) of a tiny Idefics3-style model."""
    tokenizer = word_tokenizer((*CHAT_WORDS, *words), (*SPECIALS, *specials))
    vision_config = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
    )
    cfg = config_class(
        text_config=text_config(tokenizer, text, model_type="llama"),
        vision_config={**vision_config, **(vision or {})},
        image_token_id=tokenizer.image_token_id,
        scale_factor=2,
        **config,
    )
    # tiles of image_size px; an image's long side up to two tiles: 1x2, 2x1 or 2x2 tiles and the global view
    image_processor = image_processor_class(
        size={"longest_edge": 2 * image_size}, max_image_size={"longest_edge": image_size}
    )
    return tokenizer, cfg, image_processor, tokens_per_tile(cfg)


def tiny(words=DEFAULT_WORDS, *, seed=0, image_size=32, patch_size=4, text=None, vision=None, **config):
    tokenizer, cfg, image_processor, per_tile = tiny_parts(
        Idefics3Config, Idefics3ImageProcessorPil, words, image_size, patch_size, text, vision, config
    )
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=per_tile)
    return build(Idefics3ForConditionalGeneration, cfg, seed), processor


def tile_grid(image, processor) -> tuple[int, int]:
    """One tile's token grid (every view of an image has it)."""
    return (math.isqrt(processor.image_seq_len),) * 2


def tile_pixels(processor) -> int:
    return processor.image_processor.max_image_size["longest_edge"]


def expected_views(image, processor) -> list[tuple[str, tuple[int, int]]]:
    """The processor's own tiling of this image (its rows and cols), as views: tiles, then the global view."""
    out = processor.image_processor(images=[image], return_row_col_info=True)
    rows, cols = out["rows"][0][0], out["cols"][0][0]
    side = math.isqrt(processor.image_seq_len)
    return [] if rows == 0 else [("tile", (side, side))] * (rows * cols) + [("base", (side, side))]


SPEC = FamilySpec(
    family="idefics3",
    tiny=tiny,
    toy=llava_toy,
    expected_grid=tile_grid,
    after_image="<fake_token_around_image>",
    expected_views=expected_views,
    crop_pixels=tile_pixels,
    real=(
        RealSize("idefics3-8b-llama3", 32, 27, 4096, 14336, 32, 128, 128259, 1152),
        # SmolVLM-2.2B (the first SmolVLM) is an Idefics3 checkpoint
        RealSize("smolvlm-instruct", 24, 27, 2048, 8192, 32, 64, 49155, 1152),
    ),
)
