"""Activations from one forward pass, keyed by canonical name or (alias, layer).

cache["blocks.3.hook_resid_post"] is cache["resid_post", 3]
cache["resid_post", -1]                 # negative layers count from the end
cache.stack("resid_post")               # [layer batch pos d_model]
cache.accumulated_resid(apply_ln=True)  # TransformerLens's analysis methods: vlm_lens.resid
cache.logit_lens(top_k=5, positions="image")  # TransformerLens 4's one-call logit lens, image-aware
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor

from vlm_lens.errors import HookNameError, InputError
from vlm_lens.inputs import VLMInputs
from vlm_lens.names import ALIASES, Vocabulary
from vlm_lens.resid import ResidualMethods


class ActivationCache(ResidualMethods, Mapping):
    """A mapping of name -> activation, with TransformerLens's analysis methods (``vlm_lens.resid``)."""

    def __init__(self, store: dict[str, Tensor], vocab: Vocabulary, inputs: VLMInputs | None = None, model=None):
        self._store = store
        self._vocab = vocab
        self.inputs = inputs  # image spans and tokens of the run that filled the cache
        self.model = model  # the HookedVLM that filled it: weights and norms for the residual methods

    def __getitem__(self, key: str | tuple) -> Tensor:
        if isinstance(key, str) and key in self._store:  # also an SAE's names after reset_saes()
            return self._store[key]
        if isinstance(key, str) and key.endswith("_grad") and key not in ALIASES:  # run_with_cache(incl_bwd=True)
            name = self._vocab.resolve_key(key.removesuffix("_grad")) + "_grad"
        else:
            name = self._vocab.resolve_key(key)
        if name not in self._store:
            raise HookNameError(
                f"{name!r} is a valid hook name but was not cached in this run "
                f"(cached: {len(self._store)} names; widen names_filter)"
            )
        return self._store[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._store)

    def __len__(self) -> int:
        return len(self._store)

    def __repr__(self) -> str:
        return f"ActivationCache({len(self._store)} activations)"

    @property
    def n_layers(self) -> int:
        """Language-model layers of the model that filled the cache."""
        return self._vocab.n_layers

    @property
    def cross_layers(self) -> tuple[int, ...]:
        """Layers whose attention is cross-attention to the image (Llama-3.2-Vision); () for most families."""
        return self._vocab.cross_layers

    def stack(self, alias: str) -> Tensor:
        """One activation across all language (or vision) layers: [layer, ...]."""
        if alias not in ALIASES or "{l}" not in ALIASES[alias]:
            raise HookNameError(f"stack() takes a per-layer alias such as 'resid_post'; got {alias!r}")
        n = self._vocab.n_vision_layers if alias.startswith("vision") else self._vocab.n_layers
        return torch.stack([self[alias, layer] for layer in range(n)])

    def logit_lens(self, positions: Any = -1, **kwargs: Any) -> Any:
        """TransformerLens 4's ``cache.logit_lens(...)``: its own ``logit_lens`` over this cache (needs
        ``transformer-lens>=4``), returning TL's ``LogitLensResult`` (``.values`` [entry, batch, ...], ``.labels``
        "0_pre" .. "final_post", ``.rank_trajectory``, ``.to_dataframe``). The keywords are TL's (``layers``,
        ``incl_mid``, ``batch_slice``, ``targets``, ``top_k``, ``vocab``, ``return_type``, ``apply_ln``);
        ``positions`` also takes "image" / "text", as every ``pos_slice`` here. The final entry is the model's
        logits: the real final norm (each entry normalised by its own rms) and ``lm_head``."""
        try:
            from transformer_lens import ActivationCache as TLCache
            from transformer_lens.tools.analysis.logit_lens import logit_lens
        except ImportError as missing:
            raise InputError(
                "cache.logit_lens is TransformerLens 4's and needs transformer-lens>=4 installed "
                f"({missing.msg}); without it, cache.accumulated_resid(apply_ln=True) @ model.W_U is the same lens"
            ) from None
        model = self._need_model()
        names = [f"blocks.{l}.hook_resid_pre" for l in range(self.n_layers)]
        names += [f"blocks.{self.n_layers - 1}.hook_resid_post"]
        if kwargs.get("incl_mid"):
            names += [f"blocks.{l}.hook_resid_mid" for l in range(self.n_layers)]
        missing_names = [name for name in names if name not in self._store]
        if missing_names:
            raise InputError(
                f"cache.logit_lens needs every layer's residual, and {missing_names[0]!r} (with "
                f"{len(missing_names) - 1} more) was not cached; run_with_cache without a names_filter caches them"
            )
        if isinstance(positions, str):
            positions = self._positions(positions)
        batched = self._store[names[-1]].ndim == 3
        tl = TLCache({name: self._store[name] for name in names}, model, has_batch_dim=batched)
        return logit_lens(tl, positions=positions, **kwargs)

    def to(self, device: torch.device | str) -> ActivationCache:
        return ActivationCache({k: v.to(device) for k, v in self._store.items()}, self._vocab, self.inputs, self.model)
