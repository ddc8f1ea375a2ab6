"""Loading checkpoints by name: the HF class comes from the config, the processor from the adapter.

Also builds a model from a config alone, on the ``meta`` device, to inspect real-size
architectures (names, layer counts, sizes) without weights.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import torch
import transformers
from safetensors import SafetensorError
from torch import nn

from vlm_lens import zoo
from vlm_lens.adapter import REGISTRY, Adapter
from vlm_lens.errors import InputError, ModelLoadError


def _adapter_and_class(config) -> tuple[Adapter, Any]:  # the transformers model class
    archs = getattr(config, "architectures", None) or []
    if not archs:
        raise ModelLoadError(f"config of model_type {config.model_type!r} names no architectures; cannot pick a class")
    adapter = REGISTRY.lookup(archs[0])
    return adapter, getattr(transformers, archs[0])


looks_local, check_name = zoo.looks_local, zoo.check_name  # (their home: vlm_lens.zoo, which needs no torch)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub's host answers a TCP connection within ``timeout`` seconds (``HF_ENDPOINT`` honoured)."""
    from urllib.parse import urlparse

    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((endpoint.hostname or "huggingface.co", endpoint.port or 443), timeout).close()
        return True
    except OSError:
        return False


def _check_hub(source: str) -> None:
    """A hub id neither in the local cache nor reachable fails at once, rather than after the hub client's five
    retries (~25 s of back-off)."""
    from huggingface_hub import constants, try_to_load_from_cache

    if looks_local(source) or constants.HF_HUB_OFFLINE:  # offline: the hub client fails at once by itself
        return

    try:
        cached = try_to_load_from_cache(source, "config.json")
    except ValueError:  # not a valid repo id: transformers' own error says so
        return
    if isinstance(cached, str) or hub_reachable():
        return
    raise ModelLoadError(
        f"model {source!r} is not in the local Hugging Face cache and the hub cannot be reached from here; give a zoo "
        f"toy ({', '.join(zoo.names())}), a local checkpoint folder, or download it where the hub is reachable"
    )


def _config(source: str):
    check_name(source)
    _check_hub(source)
    try:
        return transformers.AutoConfig.from_pretrained(source)
    except OSError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(
            f"cannot load model {source!r}: {first} Give a zoo toy ({', '.join(zoo.names())}), a local "
            "checkpoint folder, or a hub id that is in the local cache (HF_HUB_OFFLINE=1) or reachable"
        ) from e


DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "float": torch.float32,
    "half": torch.float16,
}  # (torch's own aliases)
FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def parse_dtype(dtype: torch.dtype | str | None) -> torch.dtype | str | None:
    """A torch dtype from its name ("bfloat16", "bf16", "half", ...); ``None`` and "auto" mean the checkpoint's
    own. Anything else (float8, an integer dtype, a typo) is an ``InputError`` naming the choices."""
    if dtype is None or dtype == "auto":
        return dtype
    if isinstance(dtype, torch.dtype):
        if dtype not in FLOATS:
            raise InputError(f"dtype {dtype} cannot run a model: use float32, float16 or bfloat16")
        return dtype
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r}; use one of {sorted(DTYPES)} or 'auto' (the checkpoint's)")
    return DTYPES[dtype]


DEVICE_TYPES = ("cpu", "cuda", "mps", "meta", "xpu")


def check_device(device: torch.device | str | None) -> None:
    """Refuse a device this torch cannot use, before any model loads: an unknown name ("gpu"), or CUDA / MPS
    asked of a torch without it (an ``InputError`` saying which device would work)."""
    if device is None or isinstance(device, torch.device):
        return
    if not isinstance(device, str):
        raise InputError(f"device must be a name such as 'cpu', 'cuda' or 'cuda:1', got {device!r}")
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise InputError(
            f"unknown device {device!r}; use one of {list(DEVICE_TYPES)}, with an index where it has several ('cuda:1')"
        ) from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise InputError(
            f"device {device!r}: this torch sees no CUDA GPU (torch {torch.__version__}, "
            f"built for CUDA {torch.version.cuda}); use device 'cpu', or install a CUDA build of torch"
        )
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise InputError(
            f"device {device!r}: there are {torch.cuda.device_count()} CUDA GPUs (cuda:0.."
            f"cuda:{torch.cuda.device_count() - 1})"
        )
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"device {device!r}: this machine has no MPS (Apple GPU); use device 'cpu'")


def load_pretrained(
    name_or_path: str,
    *,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    device_map: str | dict | None = None,
    attn_implementation: str | None = None,
    processor=None,
) -> tuple[nn.Module, object]:
    """(HF model in eval mode, processor) for a hub id, a local directory or a zoo name.

    ``dtype`` None or "auto" loads the dtype the checkpoint's config declares (transformers 5's
    default: float16 for llava-1.5-7b-hf, bfloat16 for Qwen2-VL-7B). ``device`` loads the whole
    model straight onto one device (``device_map={"": device}``: the weights never sit in host memory
    first); ``device_map`` ("auto", "balanced", or a dict) shards it across the visible GPUs through
    accelerate, for models larger than one card. Give one or the other.
    """
    if device is not None and device_map is not None:
        raise InputError("give device (the whole model on one device) or device_map (sharded), not both")
    parse_dtype(dtype)
    check_device(device)
    if device is not None and torch.device(device).type == "meta":
        raise InputError(
            "device 'meta' holds no weights, so there is nothing to load onto it; inspect a real-size architecture "
            "with HookedVLM.from_config(config) (built on meta)"
        )
    source = zoo.resolve(name_or_path)
    config = _config(source)
    adapter, cls = _adapter_and_class(config)
    kwargs: dict[str, Any] = {"dtype": parse_dtype(dtype) or "auto"}
    if device_map is not None:
        kwargs["device_map"] = device_map
    elif device is not None:  # straight onto the device, not host memory first (a 7B model: 14 GB of RAM)
        kwargs["device_map"] = {"": str(device)}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = cls.from_pretrained(source, config=config, **kwargs)
    except (OSError, SafetensorError) as e:  # no weights file, or a truncated one
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(
            f"cannot load the weights of model {name_or_path!r}: {first} (a checkpoint folder needs "
            "complete model.safetensors or pytorch_model.bin files; copy or download it again)"
        ) from e
    if processor is None:
        processor = adapter.load_processor(source)
    return model.eval(), processor


def from_config(config, device: str | torch.device = "meta") -> nn.Module:
    """The HF model for ``config``, built on ``device`` (``meta``: no memory, no weights)."""
    _, cls = _adapter_and_class(config)
    with torch.device(device):
        return cls(config).eval()
