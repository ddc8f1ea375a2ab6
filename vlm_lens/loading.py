"""Loading checkpoints by name: the HF class comes from the config, the processor from the adapter.

Also builds a model from a config alone, on the ``meta`` device, to inspect real-size
architectures (names, layer counts, sizes) without weights.
"""

from __future__ import annotations

import torch
import transformers
from torch import nn

from vlm_lens import zoo
from vlm_lens.adapter import REGISTRY, Adapter


def _adapter_and_class(config) -> tuple[Adapter, type]:
    archs = getattr(config, "architectures", None) or []
    if not archs:
        raise ValueError(f"config of model_type {config.model_type!r} names no architectures; cannot pick a class")
    adapter = REGISTRY.lookup(archs[0])
    return adapter, getattr(transformers, archs[0])


def load_pretrained(
    name_or_path: str,
    *,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    attn_implementation: str | None = None,
    processor=None,
) -> tuple[nn.Module, object]:
    """(HF model in eval mode, processor) for a hub id, a local directory or a zoo name."""
    source = zoo.resolve(name_or_path)
    config = transformers.AutoConfig.from_pretrained(source)
    adapter, cls = _adapter_and_class(config)
    kwargs = {}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    model = cls.from_pretrained(source, config=config, **kwargs)
    if device is not None:
        model = model.to(device)
    if processor is None:
        processor = adapter.load_processor(source)
    return model.eval(), processor


def from_config(config, device: str | torch.device = "meta") -> nn.Module:
    """The HF model for ``config``, built on ``device`` (``meta``: no memory, no weights)."""
    _, cls = _adapter_and_class(config)
    with torch.device(device):
        return cls(config).eval()
