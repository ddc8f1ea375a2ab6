"""What a model family must declare, and the registry that finds it.

An adapter is data: a table from the canonical sites to HF module paths, plus the few functions
that genuinely differ between families (where image tokens sit, how a prompt is laid out, how
the processor is loaded). Adapters live in ``model_adapters`` and register themselves; the
registry finds them through the ``vlm_lens.adapters`` entry-point group, so the core never
imports them and a third-party package can add a family.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import torch
from torch import nn

from vlm_lens.errors import UnsupportedModelError
from vlm_lens.spans import ImageSpan

# The keys every adapter maps. Model-level paths are relative to the HF model; block paths
# are relative to one language-model layer.
MODEL_KEYS = ("layers", "final_norm", "unembed", "embed", "vision_layers", "projector")
CROSS_KEYS = ("attn_write_gate", "mlp_write_gate")
BLOCK_KEYS = (
    "attn",
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_o",
    "attn_out",
    "ln1",
    "ln2",
    "mlp_gate",
    "mlp_up",
    "mlp_down",
    "mlp_out",
)


@dataclass(frozen=True)
class Adapter:
    """One model family's mapping onto the canonical vocabulary."""

    family: str
    hf_classes: tuple[str, ...]
    modules: Mapping[str, str]
    block: Mapping[str, str]
    # (config, input_ids [batch pos], tensors) -> per item, per image: ImageSpan
    image_spans: Callable[..., list]
    # (prompt, n_images, processor) -> the text handed to the processor, placeholders included; a family that takes
    # video also takes n_videos= (its videos' placeholders)
    template: Callable[..., str]
    # path or hub id -> processor (tokenizer + image processor)
    load_processor: Callable[[str], Any]
    # the HF forward keyword tensors this family takes
    forward_keys: tuple[str, ...] = ("input_ids", "attention_mask", "pixel_values")
    # processor outputs that are not forward inputs (e.g. PaliGemma's labels)
    drop_keys: tuple[str, ...] = ()
    # the processor wants one list of images per prompt (PaliGemma) rather than one flat list
    nested_images: bool = False
    # the vision tower packs every image's patches in one sequence (Qwen2-VL): vision hooks are [patch, d]
    packed_vision: bool = False
    # forward tensors indexed by image (or by packed patch) rather than by batch item
    image_keys: tuple[str, ...] = ("pixel_values",)
    # the vision config's attribute holding the tower's width (Qwen2-VL: embed_dim; hidden_size is the merger's output)
    vision_width: str = "hidden_size"
    # (config, tensors, span, cells, fill [channel]) -> None: paint the span's grid cells with ``fill`` in
    # tensors["pixel_values"] (in place), wherever this family keeps those cells' pixels
    fill_patches: Callable[..., None] | None = None
    # model keys whose module returns a ModelOutput: the field that holds the hooked tensor
    # (Qwen2.5-VL: the vision model's ``pooler_output``, its merger output put back in image order)
    output_fields: Mapping[str, str] = field(default_factory=dict)
    # per-token type tensors (forward keys): the value a generated (answer) token takes, where it is not 0
    # (PaliGemma's token_type_ids: 1, the suffix); what extends such a tensor past the prompt, e.g. teacher forcing
    answer_token_types: Mapping[str, int] = field(default_factory=dict)
    # per-token forward tensors ([batch, pos, ...]) that a continuation extends by repeating the last position, as
    # HF's generate does (Llama-3.2-Vision's cross_attention_mask: generated tokens see the images the last one saw)
    repeat_last_keys: tuple[str, ...] = ()
    # config -> the language layers after which the model adds visual features at the image positions outside any
    # block (Qwen3-VL's DeepStack): each gets a blocks.{l}.hook_deepstack
    injected_layers: Callable[[Any], Sequence[int]] | None = None
    # (image, processor) -> (rows, cols) of the crops the processor cuts it into, for families whose forward tensors
    # do not say (InternVL); image_spans then takes a fourth argument, one (rows, cols) per image
    tile_layout: Callable[[Any, Any], tuple[int, int]] | None = None
    # config -> the language layers whose attention reads the image (keys and values from the vision tower) instead
    # of the sequence, their writes gated (Llama-3.2-Vision); those layers' modules are mapped by ``cross_block``
    # (BLOCK_KEYS plus CROSS_KEYS: the scalar gates, tanh-squashed, of the attention and MLP writes)
    cross_layers: Callable[[Any], Sequence[int]] | None = None
    cross_block: Mapping[str, str] = field(default_factory=dict)
    # (config, forward tensors) -> per item, per image, an ImageSpan over the *keys* of a cross-attention layer (not
    # sequence positions): one "tile" view per tile the picture was cut into, so ``span.stitch(pattern_row)`` lays the
    # attention on the picture's grid (Llama-3.2-Vision); ``VLMInputs.key_spans``
    key_spans: Callable[[Any, Mapping], list[list[ImageSpan]]] | None = None
    # (config, input_ids [batch pos], tensors) -> per item, per video: an ImageSpan with ``video=True`` whose views are
    # its frames; None: the family takes no video. Its forward tensors are among ``forward_keys`` and ``image_keys``
    video_spans: Callable[..., list] | None = None
    # config -> the factor the language model multiplies token embeddings by before layer 0 (Gemma's sqrt(d_model)):
    # folded into ``W_E`` as TransformerLens does, so W_E[ids] is hook_embed at the text positions
    embed_scale: Callable[[Any], float] | None = None

    def __post_init__(self):
        missing = [k for k in MODEL_KEYS if k not in self.modules] + [k for k in BLOCK_KEYS if k not in self.block]
        if self.cross_layers is not None:
            missing += [f"cross_block.{k}" for k in BLOCK_KEYS + CROSS_KEYS if k not in self.cross_block]
        if missing:
            raise ValueError(f"adapter {self.family!r} does not map {missing}")

    def crossing(self, config) -> frozenset[int]:
        """The layers whose attention is cross-attention to the image (none for most families)."""
        return frozenset(self.cross_layers(config)) if self.cross_layers is not None else frozenset()

    def block_at(self, config, layer: int) -> Mapping[str, str]:
        """Layer ``layer``'s block table: ``cross_block`` at a cross-attention layer, else ``block``."""
        return self.cross_block if layer in self.crossing(config) else self.block


def get_module(root: nn.Module, path: str) -> Any:
    """The submodule (or parameter) at a dotted path; a clear error names the first missing part."""
    module = root
    for part in path.split("."):
        if not hasattr(module, part):
            raise AttributeError(
                f"{type(root).__name__} has no module at {path!r}: {type(module).__name__} has no {part!r}. "
                "The adapter's table no longer matches this transformers version."
            )
        module = getattr(module, part)
    return module


def layer_list(root: nn.Module, path: str) -> nn.ModuleList | list | tuple:
    layers = get_module(root, path)
    if not isinstance(layers, (nn.ModuleList, list, tuple)):
        raise TypeError(f"{path!r} is a {type(layers).__name__}, not a list of layers")
    return layers


class AdapterRegistry:
    """Adapters keyed by HF class name; refuses duplicates."""

    def __init__(self, group: str = "vlm_lens.adapters"):
        self._group = group
        self._by_class: dict[str, Adapter] = {}
        self._loaded = False

    def register(self, adapter: Adapter) -> Adapter:
        for name in adapter.hf_classes:
            if name in self._by_class and self._by_class[name] is not adapter:
                raise ValueError(f"{name} is already registered by the {self._by_class[name].family!r} adapter")
        for name in adapter.hf_classes:
            self._by_class[name] = adapter
        return adapter

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            for ep in entry_points(group=self._group):
                ep.load()

    def supported(self) -> list[str]:
        self._load()
        return sorted(self._by_class)

    def lookup(self, model_or_class: nn.Module | type | str) -> Adapter:
        self._load()
        if isinstance(model_or_class, str):
            name = model_or_class
        elif isinstance(model_or_class, type):
            name = model_or_class.__name__
        else:
            name = type(model_or_class).__name__
        if name not in self._by_class:
            raise UnsupportedModelError(
                f"no vlm-lens adapter for {name}. Supported architectures: {', '.join(self.supported()) or '(none: is vlm-lens installed with pip install -e .?)'}"
            )
        return self._by_class[name]


REGISTRY = AdapterRegistry()
register = REGISTRY.register


def model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    param = next(model.parameters())
    return param.device, param.dtype
