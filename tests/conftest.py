"""Fixtures: tiny random-init models of every registered family (``model_adapters.SPECS``), built once per run."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from model_adapters import SPECS
from vlm_lens import HookedVLM

FAMILIES = tuple(sorted(SPECS))
PROMPTS = ["is there a red square in the image ?", "how many"]  # different lengths: padding in play

torch.set_num_threads(1)


def make_images(seed: int = 0, sizes=((40, 50), (32, 64))) -> list[Image.Image]:
    rng = np.random.RandomState(seed)
    return [Image.fromarray(rng.randint(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


def tiny(family: str, **overrides) -> HookedVLM:
    """A fresh tiny model of ``family`` (fixture factory: overrides go to the spec's builder)."""
    hf, processor = SPECS[family].tiny(**overrides)
    return HookedVLM.from_hf(hf, processor)


_BUILT: dict[str, HookedVLM] = {}


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture
def spec(family):
    return SPECS[family]


@pytest.fixture
def model(family) -> HookedVLM:
    """The shared tiny model of a family; tests must not change it."""
    if family not in _BUILT:
        _BUILT[family] = tiny(family)
    return _BUILT[family]


@pytest.fixture
def images() -> list[Image.Image]:
    return make_images()


@pytest.fixture
def inputs(model, images):
    return model.prepare(images=images, prompts=PROMPTS)


@pytest.fixture
def eager_hf(model):
    """The same weights with eager attention, for output_attentions."""
    hf = copy.deepcopy(model.hf_model)
    hf.set_attn_implementation("eager")
    return hf


def cross_grid_by_hand(model, inputs, item, row):
    """Llama-3.2-Vision's first image of ``item`` on its picture, from a cross-attention key row: the processor's
    aspect-ratio table read by hand ((tiles high, tiles wide) for ids 1.. at 4 tiles), each tile's patches after
    its class token."""
    table = [(1, 1), (1, 2), (1, 3), (1, 4), (2, 1), (2, 2), (3, 1), (4, 1)]
    high, wide = table[int(inputs.tensors["aspect_ratio_ids"][item, 0]) - 1]
    vision = model.hf_model.config.vision_config
    side = vision.image_size // vision.patch_size
    out = np.zeros((high * side, wide * side))
    for tr in range(high):
        for tc in range(wide):
            first = (tr * wide + tc) * (side * side + 1) + 1
            out[tr * side : (tr + 1) * side, tc * side : (tc + 1) * side] = (
                row[first : first + side * side].reshape(side, side).numpy()
            )
    return out
