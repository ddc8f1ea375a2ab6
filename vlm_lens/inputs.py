"""Batched model inputs that know where every image's tokens sit.

``VLMInputs`` carries the HF forward tensors plus, for each batch item and each of its images,
an ``ImageSpan``: the token positions (in the padded sequence) and the patch grid (rows, cols)
those tokens tile, in row-major order.

``ImageSpan`` and its multi-crop ``View``s: ``vlm_lens.spans``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from PIL import Image

from vlm_lens.errors import ImageTokenMismatchError, InputError
from vlm_lens.spans import ImageSpan, View, spans_from_runs  # noqa: F401  (re-exported: their old home)


@dataclass
class VLMInputs:
    """HF forward tensors for a batch, with the image spans of every item."""

    tensors: dict[str, torch.Tensor]
    image_spans: list[list[ImageSpan]]
    padding_side: str = "right"
    prompts: list[str] | None = None
    texts: list[str] | None = field(default=None, repr=False)  # what the processor saw
    # tiled families (InternVL): each image's (rows, cols) of crops, which the forward tensors do not hold
    tile_layout: list[tuple[int, int]] | None = field(default=None, repr=False)
    # cross-attention families (Llama-3.2-Vision): per item, per image, where its tile patches sit among a
    # cross-attention layer's keys (``Adapter.key_spans``); None for families whose image is in the sequence
    key_spans: list[list[ImageSpan]] | None = field(default=None, repr=False)

    @property
    def input_ids(self) -> torch.Tensor:
        return self.tensors["input_ids"]

    @property
    def attention_mask(self) -> torch.Tensor:
        mask = self.tensors.get("attention_mask")
        return torch.ones_like(self.input_ids) if mask is None else mask

    @property
    def batch_size(self) -> int:
        return self.input_ids.shape[0]

    @property
    def shape(self) -> torch.Size:
        """[batch, pos] of the token ids: what TransformerLens's tools read off their ``tokens`` argument."""
        return self.input_ids.shape

    def last_positions(self) -> torch.Tensor:
        """Index of each item's last real token (what the model answers from)."""
        return last_positions(self.attention_mask)

    def image_positions(self, item: int) -> list[int]:
        return [p for span in self.image_spans[item] for p in span.positions]

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> VLMInputs:
        """Tensors moved to ``device``; the pixels cast to ``dtype`` if given."""
        moved = {}
        for k, v in self.tensors.items():
            v = v.to(device)
            if dtype is not None and is_pixels(k, v):
                v = v.to(dtype)
            moved[k] = v
        return replace(self, tensors=moved)


def is_pixels(key: str, value: torch.Tensor) -> bool:
    """Pixels go in the model's dtype; other floating inputs keep theirs (Qwen2.5-VL's seconds per frame group feed
    its time positions, which half precision would round)."""
    return value.is_floating_point() and key.startswith("pixel_values")


def last_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions * attention_mask.to(torch.long)).argmax(dim=1)


def padding_side_of(attention_mask: torch.Tensor) -> str:
    """'left' if any item starts with padding, else 'right' (also when nothing is padded)."""
    return "left" if bool((attention_mask[:, 0] == 0).any()) else "right"


SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")
CONVERTIBLE = ("RGB", "RGBA", "RGBX", "RGBa", "L", "LA", "La", "P", "PA", "1", "CMYK", "YCbCr", "LAB", "HSV")


def to_rgb(image: Image.Image, where: str = "image") -> Image.Image:
    """An 8-bit RGB copy of ``image`` with its values kept: 8-bit and palette modes by PIL's own conversion, 16-bit
    greyscale (``I;16``, or ``I`` holding values up to 65535) scaled to 0..255 (PIL's ``convert("RGB")`` would
    saturate every pixel to 0 or 255). Float images, or ``I`` values past 16 bits, are an ``InputError``."""
    if image.mode == "RGB":
        return image
    if image.mode in CONVERTIBLE:
        return image.convert("RGB")
    if image.mode in SIXTEEN_BIT or image.mode == "I":
        values = np.asarray(image).astype(np.int64)
        if values.min(initial=0) < 0 or values.max(initial=0) > 65535:
            raise InputError(
                f"{where}: a 32-bit image (mode 'I') with values {values.min()}..{values.max()}, past "
                "16 bits: scale it to 8-bit RGB yourself"
            )
        scaled = (
            np.rint(values / 257).astype(np.uint8)
            if image.mode in SIXTEEN_BIT or values.max(initial=0) > 255
            else values.astype(np.uint8)
        )
        return Image.fromarray(scaled, mode="L").convert("RGB")
    raise InputError(
        f"{where}: image mode {image.mode!r} has no faithful 8-bit RGB form (float or multi-band "
        "data): convert it to 8-bit RGB yourself"
    )


def check_image(image, where: str) -> Image.Image:
    """A PIL RGB image, or a clear error. Arrays of shape (H, W, 3) uint8 are accepted."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InputError(f"{where}: arrays must be (height, width, 3) uint8, got {image.shape} {image.dtype}")
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise InputError(f"{where}: expected a PIL image or an (H, W, 3) uint8 array, got {type(image).__name__}")
    if image.width == 0 or image.height == 0:
        raise InputError(f"{where}: the image has size {image.width}x{image.height}; it needs at least one pixel")
    if image.mode != "RGB":
        raise InputError(
            f"{where}: image mode is {image.mode!r}, expected 'RGB' (use vlm_lens.to_rgb(image): 16-bit "
            "images scaled, not saturated as image.convert('RGB') does)"
        )
    return image


def normalise_images(images, n_prompts: int, optional: bool = False) -> list[list[Image.Image]]:
    """One list of images per prompt. Accepts one image per prompt or a list per prompt (``optional``: none, or an
    empty list for a prompt, is allowed: its videos stand in)."""
    if images is None:
        if optional:
            return [[] for _ in range(n_prompts)]
        raise InputError("prepare() needs images: one per prompt, or a list of images per prompt")
    if isinstance(images, (Image.Image, np.ndarray)):
        images = [images]
    images = list(images)
    if len(images) != n_prompts:
        raise ImageTokenMismatchError(
            f"{len(images)} image entries for {n_prompts} prompts; give one image (or one list of images) per prompt"
        )
    out = []
    for i, entry in enumerate(images):
        entry = [] if entry is None and optional else list(entry) if isinstance(entry, (list, tuple)) else [entry]
        if not entry and not optional:
            raise ImageTokenMismatchError(f"prompt {i} has no image; every prompt needs at least one")
        out.append([check_image(img, f"prompt {i}, image {j}") for j, img in enumerate(entry)])
    return out


def _is_frame(x) -> bool:
    return isinstance(x, Image.Image) or (isinstance(x, np.ndarray) and x.ndim == 3)


def _is_video(x) -> bool:
    return (isinstance(x, np.ndarray) and x.ndim == 4) or (
        isinstance(x, (list, tuple)) and bool(x) and all(map(_is_frame, x))
    )


def normalise_videos(videos, n_prompts: int) -> list[list[list[Image.Image]]]:
    """Per prompt, its videos, each a list of RGB frames. ``videos``: one entry per prompt, each None (no video), a
    video (a list of frames, or a [frame, height, width, 3] uint8 array) or a list of videos."""
    if videos is None:
        return [[] for _ in range(n_prompts)]
    if _is_video(videos) and n_prompts == 1:
        videos = [videos]
    videos = list(videos)
    if len(videos) != n_prompts:
        raise ImageTokenMismatchError(
            f"{len(videos)} video entries for {n_prompts} prompts; give one entry (None, a video, or a list of "
            "videos) per prompt"
        )
    out = []
    for i, entry in enumerate(videos):
        clips = [] if entry is None else [entry] if _is_video(entry) else list(entry)
        checked = []
        for j, clip in enumerate(clips):
            if not _is_video(clip):
                raise InputError(
                    f"prompt {i}, video {j}: a video is a list of frames (PIL images or (H, W, 3) uint8 arrays) "
                    f"or a [frame, H, W, 3] uint8 array, got {type(clip).__name__}"
                )
            frames = [check_image(f, f"prompt {i}, video {j}, frame {k}") for k, f in enumerate(clip)]
            if len({f.size for f in frames}) > 1:
                raise InputError(
                    f"prompt {i}, video {j}: frames of different sizes {sorted({f.size for f in frames})}; "
                    "every frame of a video needs one size"
                )
            checked.append(frames)
        out.append(checked)
    return out


def select_tensors(tensors: Mapping[str, torch.Tensor], keys: tuple[str, ...], drop: tuple[str, ...]) -> dict:
    unknown = [k for k in tensors if k not in keys and k not in drop]
    if unknown:
        raise InputError(f"unexpected forward inputs {unknown}; this family takes {list(keys)}")
    return {k: v for k, v in tensors.items() if k in keys and v is not None}
