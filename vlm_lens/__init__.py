"""vlm-lens: TransformerLens-style interpretability for vision-language models.

Dimension names used in shapes throughout (jaxtyping):

    batch     items in a batch              pos       token positions (padded)
    d_model   language-model width          d_mlp     MLP neurons (input to down_proj)
    head      attention heads               d_head    width of one head
    query     query positions               key       key positions
    row       selected query positions      layer     language-model layers
    image     images in a batch             patch     vision tokens of one image
    d_vision  vision-tower width            vocab     vocabulary size

Neither transformer-lens nor nnsight is imported by the core; hook functions written for
TransformerLens (``fn(activation, hook)``) work unchanged.
"""

from importlib import import_module
from typing import TYPE_CHECKING

from vlm_lens.errors import (
    DeviceMismatchError,
    HookNameError,
    ImageTokenMismatchError,
    InputError,
    LayerIndexError,
    UnknownToyError,
    UnsupportedModelError,
    VLMLensError,
)

if TYPE_CHECKING:
    from vlm_lens.adapter import Adapter, register
    from vlm_lens.cache import ActivationCache
    from vlm_lens.hook_calls import Hook
    from vlm_lens.hooked_vlm import HookedVLM, VLMConfig
    from vlm_lens.inputs import ImageSpan, VLMInputs, to_rgb

# Imported when first used: ``import vlm_lens`` (and the command line's --help, its usage errors) need not wait for
# torch and transformers.
_LAZY = {
    "Adapter": "vlm_lens.adapter",
    "register": "vlm_lens.adapter",
    "ActivationCache": "vlm_lens.cache",
    "Hook": "vlm_lens.hook_calls",
    "HookedVLM": "vlm_lens.hooked_vlm",
    "VLMConfig": "vlm_lens.hooked_vlm",
    "ImageSpan": "vlm_lens.inputs",
    "VLMInputs": "vlm_lens.inputs",
    "to_rgb": "vlm_lens.inputs",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vlm_lens' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "ActivationCache",
    "Adapter",
    "DeviceMismatchError",
    "Hook",
    "HookNameError",
    "HookedVLM",
    "ImageSpan",
    "ImageTokenMismatchError",
    "InputError",
    "LayerIndexError",
    "UnknownToyError",
    "UnsupportedModelError",
    "VLMConfig",
    "VLMInputs",
    "VLMLensError",
    "register",
    "to_rgb",
]
