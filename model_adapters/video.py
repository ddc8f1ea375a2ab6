"""Video for the Qwen-VL families without torchvision: frames through the image processor, grouped in time.

transformers' Qwen-VL video processors resize with torchvision, which a CPU install of torch cannot take beside it
(and the stock processors refuse to exist without one). A video is frames, and these families see each frame as
an image does: resized by ``smart_resize``, rescaled, normalised, cut into patches, the 2x2 blocks merged into
one token each. What video adds is time: ``temporal_patch_size`` consecutive frames (two) share one patch (the
last frame repeated to fill the last one), and the tokens run frame group by frame group. ``FrameVideoProcessor``
does the per-frame work with the family's own image processor and only lays out the time axis, in the order the
stock video processor's ``patchify`` uses (a patch row is [channel, time, patch, patch]); the processor it joins
does the rest as it always does (the prompt's video placeholders, ``mm_token_type_ids``, Qwen3-VL's time stamps).

    >>> from model_adapters import qwen2_vl
    >>> _, processor = qwen2_vl.tiny()
    >>> frames = [Image.new("RGB", (16, 16), (40 * t, 0, 0)) for t in range(4)]
    >>> out = processor.video_processor([frames])
    >>> tuple(out["video_grid_thw"][0].tolist()), tuple(out["pixel_values_videos"].shape)
    ((2, 4, 4), (32, 96))
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers.feature_extraction_utils import BatchFeature
from transformers.video_utils import VideoMetadata

from vlm_lens.errors import InputError

DEFAULT_FPS = 2.0  # the rate Qwen-VL's own frame sampling uses; only time stamps and Qwen2.5-VL's M-RoPE read it


class FrameVideoProcessor:
    """A Qwen-VL video processor made of its image processor: ``__call__(videos)`` gives ``pixel_values_videos``
    [patch, channel * time * patch * patch], ``video_grid_thw`` [video, 3] and ``video_metadata`` (``fps``: the rate
    the frames were taken at). ``size`` bounds each frame's pixels as the image processor's ``size`` does (the
    checkpoint's video settings, where it has them)."""

    model_input_names = ["pixel_values_videos", "video_grid_thw"]

    def __init__(self, image_processor, size: dict | None = None, fps: float = DEFAULT_FPS):
        self.image_processor = image_processor
        self.patch_size = image_processor.patch_size
        self.merge_size = image_processor.merge_size
        self.temporal_patch_size = image_processor.temporal_patch_size
        self.size = dict(size or image_processor.size)
        self.fps = fps

    def __call__(self, videos, return_tensors=None, fps: float | None = None, **kwargs) -> BatchFeature:
        clips = [_frames(video, k) for k, video in enumerate(_videos(videos))]
        patches, grids, metadata = [], [], []
        for clip in clips:
            rows, grid = self._frame_patches(clip)
            patches.append(rows)
            grids.append(grid)
            rate = float(fps or self.fps)
            metadata.append(VideoMetadata(total_num_frames=len(clip), fps=rate, frames_indices=list(range(len(clip)))))
        data = {
            "pixel_values_videos": torch.cat(patches),
            "video_grid_thw": torch.tensor(grids, dtype=torch.long),
            "video_metadata": metadata,
        }
        return BatchFeature(data, skip_tensor_conversion=["video_metadata"])

    def _frame_patches(self, frames: list[Image.Image]) -> tuple[torch.Tensor, list[int]]:
        """One video's patch rows in token order: frame group, then the image processor's (merge-block) order."""
        tp = self.temporal_patch_size
        frames = frames + [frames[-1]] * (-len(frames) % tp)
        out = self.image_processor(images=frames, size=self.size, return_tensors="pt")
        grid = out["image_grid_thw"]
        if bool((grid != grid[0]).any()):
            raise InputError(f"a video's frames must share one size; they resize to grids {grid.tolist()}")
        _, h, w = grid[0].tolist()
        # each frame's rows hold [channel, time, patch, patch] with its one frame copied over time: keep one copy
        rows = out["pixel_values"].view(len(frames), h * w, 3, tp, -1)[:, :, :, 0]  # frame patch channel pixels
        groups = rows.view(len(frames) // tp, tp, h * w, 3, -1).permute(0, 2, 3, 1, 4)  # group patch channel time px
        return groups.reshape(len(frames) // tp * h * w, -1), [len(frames) // tp, h, w]


def _videos(videos) -> list:
    if isinstance(videos, np.ndarray) and videos.ndim == 4:
        return [videos]
    if isinstance(videos, (list, tuple)) and videos and isinstance(videos[0], Image.Image):
        return [videos]
    return list(videos)


def _frames(video, k: int) -> list[Image.Image]:
    """One video as RGB frames: a list of PIL images, or a [frame, height, width, 3] uint8 array."""
    if isinstance(video, np.ndarray):
        if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
            raise InputError(
                f"video {k}: arrays must be [frame, height, width, 3] uint8, got {video.shape} {video.dtype}"
            )
        video = [Image.fromarray(frame) for frame in video]
    if not isinstance(video, Sequence) or not video or not all(isinstance(f, Image.Image) for f in video):
        raise InputError(f"video {k}: give its frames as a list of PIL images or a [frame, height, width, 3] array")
    sizes = {f.size for f in video}
    if len(sizes) > 1:
        raise InputError(f"video {k}: its frames have different sizes {sorted(sizes)}; one size for every frame")
    return [f if f.mode == "RGB" else f.convert("RGB") for f in video]


def video_size(path: str) -> dict | None:
    """The per-frame pixel bounds a checkpoint's ``video_preprocessor_config.json`` sets, if it has one."""
    from transformers.utils import cached_file

    found = cached_file(path, "video_preprocessor_config.json", _raise_exceptions_for_missing_entries=False)
    if found is None:
        return None
    config = json.loads(Path(found).read_text())
    size = dict(config.get("size") or {})
    for key, edge in (("min_pixels", "shortest_edge"), ("max_pixels", "longest_edge")):
        if config.get(key) is not None:
            size[edge] = config[key]
    return size or None


def loader(processor_class):
    """``Adapter.load_processor`` for a Qwen-VL family: the image-only processor with its video processor."""

    def load(path: str):
        return with_video(processor_class.from_pretrained(path), video_size(path))

    return load


def with_video(processor, size: dict | None = None):
    """``processor`` with a ``FrameVideoProcessor`` of its image processor (returned, changed in place)."""
    processor.video_processor = FrameVideoProcessor(processor.image_processor, size)
    return processor
