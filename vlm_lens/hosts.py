"""What the mixins read from the class they are mixed into, as Protocols, so the type checker checks each mixin.

``HookedVLM`` is ``Preparing``, ``Weights``, ``PersistentHooks`` and ``SAESplicing`` over ``nn.Module``, and each
reads attributes that ``HookedVLM.__init__`` sets; ``ActivationCache`` is ``ResidualMethods`` over its store. Each
mixin names its host for the type checker only::

    class Weights(ModelHost if TYPE_CHECKING else object): ...

so at run time the mixins stay plain classes and the MRO is unchanged, while mypy reads every ``self.adapter`` or
``self.model`` against the declarations below. A mixin that starts reading a new attribute adds it here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

import torch

if TYPE_CHECKING:
    from vlm_lens.adapter import Adapter
    from vlm_lens.hooked_vlm import HookedVLM, VLMConfig
    from vlm_lens.hooks import HookFn, Sessions
    from vlm_lens.inputs import VLMInputs
    from vlm_lens.names import Vocabulary


class ModelHost(Protocol):
    """``HookedVLM`` as its mixins see it."""

    hf_model: Any  # a transformers PreTrainedModel of any registered family
    adapter: Adapter
    processor: Any  # the family's transformers processor, or None
    vocab: Vocabulary
    _cfg: VLMConfig
    _sessions: Sessions
    _added: list
    _saes: dict

    @property
    def cfg(self) -> VLMConfig: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    def hooks(self, fwd_hooks: Iterable[tuple[str, HookFn]] = (), *args: Any, **kwargs: Any) -> Any: ...

    def hook_shape(self, name: str) -> tuple[int | str, ...]: ...

    def to_single_token(self, text: str) -> int: ...

    def _expand(self, fwd_hooks: Any) -> list[tuple[str, HookFn]]: ...


class CacheHost(Protocol):
    """``ActivationCache`` as ``ResidualMethods`` sees it."""

    _store: dict[str, torch.Tensor]
    _vocab: Vocabulary
    inputs: VLMInputs | None
    model: HookedVLM | None

    def __getitem__(self, key: Any) -> torch.Tensor: ...

    @property
    def n_layers(self) -> int: ...
