"""Images and prompts into ``VLMInputs``: a mixin of ``HookedVLM`` (the family's template, left padding, image
spans read from the ids, tensors on the model's device and in its dtype, and the checks that say what is wrong).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
from jaxtyping import Int
from torch import Tensor

from vlm_lens.errors import DeviceMismatchError, ImageTokenMismatchError, InputError, VLMLensWarning
from vlm_lens.inputs import (
    VLMInputs,
    is_pixels,
    last_positions,
    normalise_images,
    normalise_videos,
    padding_side_of,
    select_tensors,
)
from vlm_lens.spans import ImageSpan

if TYPE_CHECKING:
    from vlm_lens.hosts import ModelHost as _Host
else:
    _Host = object


class Preparing(_Host):  # its host, for the type checker only (vlm_lens.hosts)
    """Mixin for ``HookedVLM`` (needs ``processor``, ``adapter``, ``hf_model``, ``device``, ``dtype``, ``_cfg``)."""

    def prepare(
        self,
        images,
        prompts: str | Sequence[str],
        *,
        template: bool = True,
        padding_side: str = "left",
        videos=None,
    ) -> VLMInputs:
        """Images and prompts -> batched, padded ``VLMInputs`` with image spans.

        With ``template=True`` each prompt is a plain question and the family's prompt format
        (the one its checkpoints were trained with) places the image placeholders. With
        ``template=False`` the prompt goes to the processor verbatim and must hold exactly one
        placeholder per image. Left padding (the default) puts every item's last prompt token
        at position -1, where the answer is read and generation continues.

        ``videos`` (the Qwen-VL families): one entry per prompt, None, a video (its frames: a list of PIL images
        or a [frame, H, W, 3] uint8 array, taken at ``processor.video_processor.fps``) or a list of videos; a
        prompt with a video needs no image (``images=None``). Each video's span has ``video=True`` and one
        ``View`` per frame (two input frames make one, as the model sees them).
        """
        processor = self.processor
        if processor is None:
            raise InputError("prepare() needs the model's processor; pass processor= to from_hf")
        if padding_side not in ("left", "right"):
            raise InputError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise InputError("prepare() got no prompts: give one prompt (str) or a list with one per image entry")
        bad = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
        if bad:
            raise InputError(f"prompt {bad[0]} is {type(prompts[bad[0]]).__name__}, not a string")
        per_video = normalise_videos(videos, len(prompts))
        if videos is not None and self.adapter.video_spans is None:
            raise InputError(f"the {self.adapter.family} family takes no video; pass images (a video's frames)")
        per_prompt = normalise_images(images, len(prompts), optional=videos is not None)
        for i, (imgs, clips) in enumerate(zip(per_prompt, per_video)):
            if not imgs and not clips:
                raise ImageTokenMismatchError(f"prompt {i} has no image and no video; every prompt needs one")
        texts = [
            self._text(i, prompt, len(imgs), len(clips), template)
            for i, (prompt, imgs, clips) in enumerate(zip(prompts, per_prompt, per_video))
        ]
        flat = [img for imgs in per_prompt for img in imgs]
        images_arg = (per_prompt if self.adapter.nested_images else flat) if flat else None
        flat_videos = [clip for clips in per_video for clip in clips]
        video_arg = {"videos": flat_videos} if flat_videos else {}
        try:
            encoded = processor(
                images=images_arg, text=texts, return_tensors="pt", padding=True, padding_side=padding_side, **video_arg
            )
        except ValueError as e:  # e.g. Qwen-VL's aspect-ratio limit, or an image smaller than a patch
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            sizes = ", ".join(f"{img.width}x{img.height}" for img in (flat or [c[0] for c in flat_videos])[:4])
            raise InputError(
                f"the {self.adapter.family} processor refused the images ({sizes}{' ...' if len(flat) > 4 else ''})"
                f": {first}"
            ) from e
        tensors = select_tensors(dict(encoded), self.adapter.forward_keys, self.adapter.drop_keys)
        if self.device.type != "meta":  # the model's device; pixels in its dtype (bfloat16 / float16 checkpoints)
            tensors = {k: v.to(self.device, self.dtype if is_pixels(k, v) else None) for k, v in tensors.items()}
        layout = [self.adapter.tile_layout(img, processor) for img in flat] if self.adapter.tile_layout else None
        inputs = self.as_inputs(**tensors, tile_layout=layout)
        inputs.prompts, inputs.texts = prompts, texts
        self._warn_if_too_long(inputs)
        return inputs

    def _text(self, i: int, prompt: str, n_images: int, n_videos: int, template: bool) -> str:
        """The text the processor sees: the family's template around a plain question, or the prompt verbatim with
        one placeholder per image and video."""
        processor = self.processor
        wanted = {processor.image_token: n_images}
        if n_videos:
            wanted[processor.video_token] = n_videos
        found = {token: prompt.count(token) for token in wanted}
        if template:
            if any(found.values()):
                token = next(t for t, n in found.items() if n)
                raise ImageTokenMismatchError(
                    f"prompt {i} already contains {found[token]} {token!r} placeholder(s); with template=True "
                    "the family's template places them. Pass a plain question, or template=False."
                )
            if n_videos:
                return self.adapter.template(prompt, n_images, processor, n_videos=n_videos)
            return self.adapter.template(prompt, n_images, processor)
        for token, n in wanted.items():
            if found[token] != n:
                what = "image" if token == processor.image_token else "video"
                has = f"has no {what} placeholder" if found[token] == 0 else f"has {found[token]} {what} placeholders"
                raise ImageTokenMismatchError(
                    f"prompt {i} {has} but {n} {what}(s) were given: with template=False each {what} needs one "
                    f"{token!r} in the prompt"
                )
        return prompt

    def _warn_if_too_long(self, inputs: VLMInputs) -> None:
        limit = getattr(self.hf_model.config.get_text_config(), "max_position_embeddings", None)
        length = int(inputs.attention_mask.sum(-1).max())
        if limit is not None and length > limit:
            warnings.warn(
                f"a prompt is {length} tokens (image tokens included) but the language model was trained on "
                f"{limit} positions: results past position {limit} are extrapolation; shorten the prompt",
                VLMLensWarning,
                stacklevel=3,
            )

    def as_inputs(self, inputs: VLMInputs | None = None, *, tile_layout=None, **tensors) -> VLMInputs:
        """``VLMInputs`` from either a ``VLMInputs`` or the HF forward keyword tensors (a tiled family's also need
        ``tile_layout``, each image's (rows, cols) of crops: ``inputs.tile_layout`` of a prepared batch)."""
        if inputs is not None:
            if tensors:
                raise InputError(f"pass either VLMInputs or forward tensors, not both (got {sorted(tensors)})")
            if not isinstance(inputs, VLMInputs):
                raise InputError(
                    f"expected VLMInputs, got {type(inputs).__name__}; or pass input_ids=..., pixel_values=..."
                )
            self._check_device(inputs.tensors)
            return inputs
        if "input_ids" not in tensors:
            raise InputError("forward tensors need input_ids (image spans are read from them)")
        tensors = select_tensors(tensors, self.adapter.forward_keys, self.adapter.drop_keys)
        self._check_device(tensors)
        ids = tensors["input_ids"]
        if ids.ndim != 2:
            raise InputError(f"input_ids must be [batch, pos], got shape {tuple(ids.shape)}")
        for key in ("attention_mask", "token_type_ids", "mm_token_type_ids"):  # one entry per token of input_ids
            value = tensors.get(key)
            if value is not None and tuple(value.shape) != tuple(ids.shape):
                raise InputError(
                    f"{key} has shape {tuple(value.shape)} but input_ids {tuple(ids.shape)}: give one "
                    f"{key} entry per token (the same [batch, pos])"
                )
        n_image_tokens = int((ids == self._cfg.image_token_id).sum())
        video_spans = self.adapter.video_spans if "pixel_values_videos" in tensors else None
        if "pixel_values" not in tensors and video_spans is None:
            raise InputError("no pixel_values: a VLM forward needs the images (prepare() builds them)")
        if n_image_tokens == 0 and "pixel_values" in tensors:
            raise ImageTokenMismatchError(
                "pixel_values were given but input_ids hold no image tokens "
                f"(id {self._cfg.image_token_id}): the prompt is missing its image placeholder"
            )
        spans: list[list[ImageSpan]]
        if "pixel_values" not in tensors:
            spans = [[] for _ in range(ids.shape[0])]
        elif self.adapter.tile_layout is None:
            spans = self.adapter.image_spans(self.hf_model.config, ids, tensors)
        else:
            spans = self.adapter.image_spans(self.hf_model.config, ids, tensors, tile_layout)
        if video_spans is not None:
            clips = video_spans(self.hf_model.config, ids, tensors)
            spans = [sorted(a + b, key=lambda s: s.start) for a, b in zip(spans, clips)]
        mask = tensors.get("attention_mask", torch.ones_like(ids))
        keys = self.adapter.key_spans(self.hf_model.config, tensors) if self.adapter.key_spans else None
        return VLMInputs(tensors, spans, padding_side_of(mask), tile_layout=tile_layout, key_spans=keys)

    def repeat(self, inputs: VLMInputs, n: int) -> VLMInputs:
        """The single item of ``inputs`` as a batch of ``n`` identical rows, its images repeated with it."""
        if inputs.batch_size != 1:
            raise InputError(f"repeat() takes a batch of one item, got {inputs.batch_size}")
        tensors = {}
        for key, value in inputs.tensors.items():
            if key in self.adapter.image_keys:  # indexed by image (or packed patch): one copy per row
                tensors[key] = torch.cat([value] * n)
            else:
                tensors[key] = value.expand(n, *value.shape[1:]).contiguous()
        per_item = {kind: sum(s.video == kind for s in inputs.image_spans[0]) for kind in (False, True)}
        spans = [
            [replace(s, image=s.image + row * per_item[s.video]) for s in inputs.image_spans[0]] for row in range(n)
        ]
        layout = None if inputs.tile_layout is None else list(inputs.tile_layout) * n
        keys = (
            None
            if inputs.key_spans is None
            else [[replace(s, image=s.image + row * per_item[False]) for s in inputs.key_spans[0]] for row in range(n)]
        )
        return VLMInputs(tensors, spans, inputs.padding_side, tile_layout=layout, key_spans=keys)

    def _check_device(self, tensors: dict[str, Tensor]) -> None:
        device, dtype = self.device, self.dtype
        if device.type == "meta":
            return
        for key, value in tensors.items():
            if value.device != device:
                raise DeviceMismatchError(
                    f"{key} is on {value.device} but the model is on {device}; use inputs.to({str(device)!r})"
                )
            if is_pixels(key, value) and value.dtype != dtype:
                raise DeviceMismatchError(
                    f"{key} is {value.dtype} but the model is {dtype}; use inputs.to(model.device, model.dtype)"
                )

    def _query_positions(self, inputs: VLMInputs, query_positions) -> Int[Tensor, "batch row"]:
        """Absolute query rows per item. Negative ints count back from each item's last real token."""
        last = last_positions(inputs.attention_mask)
        if query_positions is None:
            return last[:, None]
        if isinstance(query_positions, Tensor):
            positions = query_positions.to(torch.long)
            if positions.ndim == 1:
                positions = positions[None].expand(inputs.batch_size, -1)
        else:
            ints = [query_positions] if isinstance(query_positions, int) else list(query_positions)
            rows = torch.tensor(ints, dtype=torch.long, device=last.device)
            positions = torch.where(rows[None] < 0, last[:, None] + 1 + rows[None], rows[None])
        seq = inputs.input_ids.shape[1]
        if positions.shape[0] != inputs.batch_size or bool((positions < 0).any() | (positions >= seq).any()):
            raise InputError(f"query positions {positions.tolist()} fall outside the batch's {seq} positions")
        return positions.to(inputs.input_ids.device)
