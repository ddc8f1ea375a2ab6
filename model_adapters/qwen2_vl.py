"""Qwen2-VL: native-resolution ViT with 2x2 patch merging, Qwen2 language model with M-RoPE.

An image of h x w pixels is cut into 14-pixel patches; the merger folds each 2x2 block into one
token, so the grid is (h/14/2, w/14/2) and the image takes rows*cols tokens between
``<|vision_start|>`` and ``<|vision_end|>``. Images of different sizes can share a batch.
The pieces here (spans, template, image-only processor, tiny builder) serve Qwen2.5-VL too.
"""

from __future__ import annotations

from transformers import (
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
    Qwen2VLProcessor,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

from model_adapters.common import (
    LANGUAGE_MODEL,
    PRE_NORM_BLOCK,
    fill_merged_patches,
    image_only,
)
from model_adapters.testing import (
    DEFAULT_WORDS,
    TOY_INIT,
    FamilySpec,
    RealSize,
    build,
    text_config,
    toy_text,
    word_tokenizer,
)
from model_adapters.video import loader, with_video
from vlm_lens.adapter import Adapter, register
from vlm_lens.errors import InputError
from vlm_lens.spans import spans_from_runs, video_spans_from_runs

SPECIALS = ("<|image_pad|>", "<|vision_start|>", "<|vision_end|>", "<|video_pad|>", "<|im_start|>", "<|im_end|>")


Qwen2VLImageProcessor = image_only(Qwen2VLProcessor)


def _grids(config, tensors, what: str) -> list[tuple[int, tuple[int, int]]]:
    """(frames, merged grid) per image or video, from ``{what}_grid_thw``, checked against the pixels' patches."""
    pixels_key = "pixel_values" if what == "image" else "pixel_values_videos"
    grid_thw = tensors.get(f"{what}_grid_thw")
    if grid_thw is None:
        raise InputError(f"Qwen-VL inputs with {pixels_key} need {what}_grid_thw (the processor returns it)")
    merge = config.vision_config.spatial_merge_size
    out = []
    for t, h, w in grid_thw.tolist():
        if h % merge or w % merge:
            raise InputError(f"{what} grid {h}x{w} patches is not divisible by the {merge}x{merge} merge")
        out.append((t, (h // merge, w // merge)))
    patches = int(grid_thw.prod(dim=-1).sum())
    if pixels_key in tensors and tensors[pixels_key].shape[0] != patches:
        raise InputError(
            f"{pixels_key} hold {tensors[pixels_key].shape[0]} patches but {what}_grid_thw describes {patches}"
        )
    return out


def image_spans(config, input_ids, tensors):
    per_image = [(t * rows * cols, (rows, cols)) for t, (rows, cols) in _grids(config, tensors, "image")]
    return spans_from_runs(input_ids, config.image_token_id, per_image)


def video_spans(config, input_ids, tensors):
    """A video's tokens run frame group by frame group, each its merged grid row-major (Qwen3-VL puts a time stamp
    between frames)."""
    return video_spans_from_runs(input_ids, config.video_token_id, _grids(config, tensors, "video"))


def template(prompt: str, n_images: int, processor, n_videos: int = 0) -> str:
    # Qwen-VL-Instruct's chat template with its default system message: images, then videos, then the question.
    image = "<|vision_start|>" + processor.image_token + "<|vision_end|>"
    video = "<|vision_start|>" + processor.video_token + "<|vision_end|>"
    return (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\n{image * n_images}{video * n_videos}{prompt}<|im_end|>\n<|im_start|>assistant\n"
    )


VIDEO_KEYS = ("pixel_values_videos", "video_grid_thw")


def qwen_adapter(
    family: str,
    hf_class: str,
    load_processor,
    projector: str = "model.visual.merger",
    video_keys: tuple[str, ...] = VIDEO_KEYS,
    **fields,
) -> Adapter:
    """The Qwen-VL families share their module tree and image and video layout."""
    return Adapter(
        family=family,
        hf_classes=(hf_class,),
        modules={**LANGUAGE_MODEL, "vision_layers": "model.visual.blocks", "projector": projector},
        block=PRE_NORM_BLOCK,
        image_spans=image_spans,
        template=template,
        load_processor=load_processor,
        forward_keys=(
            "input_ids",
            "attention_mask",
            "pixel_values",
            "image_grid_thw",
            "mm_token_type_ids",
            *video_keys,
        ),
        drop_keys=("video_metadata",),
        packed_vision=True,
        image_keys=("pixel_values", "image_grid_thw", *video_keys),
        fill_patches=fill_merged_patches,
        video_spans=video_spans,
        **fields,
    )


ADAPTER = register(
    qwen_adapter(
        "qwen2_vl", "Qwen2VLForConditionalGeneration", loader(Qwen2VLImageProcessor), vision_width="embed_dim"
    )  # Qwen2-VL's vision hidden_size is the merger's output
)


def tiny_qwen(
    config_class,
    model_class,
    processor_class,
    text_model_type,
    vision_config,
    *,
    words,
    seed,
    patch_size,
    min_pixels,
    max_pixels,
    text,
    vision,
    **config,
):
    """A tiny Qwen-VL model: M-RoPE language model, merged-patch tower, image-only processor."""
    tokenizer = word_tokenizer(words, SPECIALS)
    ids = tokenizer.convert_tokens_to_ids
    text_cfg = text_config(
        tokenizer,
        text,
        model_type=text_model_type,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
    )
    cfg = config_class(
        text_config=text_cfg,
        vision_config={**vision_config(text_cfg["hidden_size"], patch_size), **(vision or {})},
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        **config,
    )
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=patch_size,
        merge_size=2,
        temporal_patch_size=2,
        size={"shortest_edge": min_pixels, "longest_edge": max_pixels},
    )
    processor = processor_class(image_processor=image_processor, tokenizer=tokenizer)
    return build(model_class, cfg, seed), with_video(processor)


def tiny(
    words=DEFAULT_WORDS,
    *,
    seed=0,
    patch_size=4,
    min_pixels=16 * 16,
    max_pixels=32 * 32,
    text=None,
    vision=None,
    **config,
):
    def vision_config(hidden, patch):
        return dict(
            depth=2,
            embed_dim=32,
            hidden_size=hidden,
            num_heads=2,
            mlp_ratio=2,
            patch_size=patch,
            spatial_merge_size=2,
            temporal_patch_size=2,
            in_chans=3,
        )

    return tiny_qwen(
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        "qwen2_vl_text",
        vision_config,
        words=words,
        seed=seed,
        patch_size=patch_size,
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        text=text,
        vision=vision,
        **config,
    )


def toy(image_size: int) -> dict:
    text = toy_text(rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]})
    vision = dict(embed_dim=64, num_heads=2, depth=2, initializer_range=TOY_INIT)
    return dict(
        text=text,
        vision=vision,
        patch_size=4,
        min_pixels=image_size**2,
        max_pixels=image_size**2,
        initializer_range=TOY_INIT,
    )


def expected_grid(image, processor) -> tuple[int, int]:
    """The grid transformers' own smart_resize gives this image, in merged tokens."""
    ip = processor.image_processor
    factor = ip.patch_size * ip.merge_size
    h, w = smart_resize(image.height, image.width, factor, ip.size["shortest_edge"], ip.size["longest_edge"])
    return h // factor, w // factor


SPEC = FamilySpec(
    family="qwen2_vl",
    tiny=tiny,
    toy=toy,
    expected_grid=expected_grid,
    before_image="<|vision_start|>",
    after_image="<|vision_end|>",
    real=(RealSize("qwen2-vl-7b-instruct", 28, 32, 3584, 18944, 28, 128, 152064, 1280),),
)
