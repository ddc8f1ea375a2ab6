"""Qwen2-VL: native-resolution ViT with 2x2 patch merging, Qwen2 language model with M-RoPE.

An image of h x w pixels is cut into 14-pixel patches; the merger folds each 2x2 block into one
token, so the grid is (h/14/2, w/14/2) and the image takes rows*cols tokens between
``<|vision_start|>`` and ``<|vision_end|>``. Images of different sizes can share a batch.
"""

from __future__ import annotations

from transformers import Qwen2VLProcessor

from model_adapters.common import LANGUAGE_MODEL, PRE_NORM_BLOCK
from vlm_lens.adapter import Adapter, register
from vlm_lens.errors import InputError
from vlm_lens.inputs import spans_from_runs


class Qwen2VLImageProcessor(Qwen2VLProcessor):
    """Qwen2-VL's processor for images only.

    transformers cannot build Qwen2-VL's video processor without torchvision, and the stock
    processor refuses to exist without one. Images are processed exactly as the stock one does.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)
        self.video_processor = None


def image_spans(config, input_ids, tensors):
    grid_thw = tensors.get("image_grid_thw")
    if grid_thw is None:
        raise InputError("Qwen2-VL inputs need image_grid_thw (the processor returns it)")
    merge = config.vision_config.spatial_merge_size
    per_image = []
    for t, h, w in grid_thw.tolist():
        if h % merge or w % merge:
            raise InputError(f"image grid {h}x{w} patches is not divisible by the {merge}x{merge} merge")
        per_image.append((t * h * w // merge**2, (h // merge, w // merge)))
    patches = int(grid_thw.prod(dim=-1).sum())
    if "pixel_values" in tensors and tensors["pixel_values"].shape[0] != patches:
        raise InputError(
            f"pixel_values hold {tensors['pixel_values'].shape[0]} patches but image_grid_thw describes {patches}"
        )
    return spans_from_runs(input_ids, config.image_token_id, per_image)


def template(prompt: str, n_images: int, processor) -> str:
    # Qwen2-VL-Instruct's chat template with its default system message.
    vision = "<|vision_start|>" + processor.image_token + "<|vision_end|>"
    return (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\n{vision * n_images}{prompt}<|im_end|>\n<|im_start|>assistant\n"
    )


ADAPTER = register(
    Adapter(
        family="qwen2_vl",
        hf_classes=("Qwen2VLForConditionalGeneration",),
        modules={**LANGUAGE_MODEL, "vision_layers": "model.visual.blocks", "projector": "model.visual.merger"},
        block=PRE_NORM_BLOCK,
        image_spans=image_spans,
        template=template,
        load_processor=Qwen2VLImageProcessor.from_pretrained,
        forward_keys=("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids"),
        packed_vision=True,
    )
)
