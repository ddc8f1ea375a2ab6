"""The canonical hook vocabulary: every name a model has, where it sits, and its shape.

Names are flat and stable, as in TransformerLens. Each template below is declared with the
shape of the tensor a hook function receives there (dimension names: see ``vlm_lens``)::

    >>> from vlm_lens.names import block_names
    >>> block_names(0)[:3]
    ['blocks.0.hook_resid_pre', 'blocks.0.ln1.hook_scale', 'blocks.0.ln1.hook_normalized']

A *site* says how the manager reaches the tensor: the input or output of a module named by
the adapter's table, or one of the two computed sites (``resid_mid``, attention).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from vlm_lens.errors import HookNameError, LayerIndexError

# Where a hook sits, relative to an adapter's module table.
#   kind "in" / "out": the input / output of the module at adapter key ``key``
#   kind "resid_mid": resid_pre + attn_out, edited by adjusting attn_out
#   kind "pattern" / "pattern_rows": computed inside the attention function


@dataclass(frozen=True)
class Site:
    kind: str
    key: str | None = None


@dataclass(frozen=True)
class HookSpec:
    template: str
    site: Site
    shape: str


# Language-model block hooks, in the order they fire inside a block.
#   kind "scale": the norm's rms (float32, [batch pos 1]) computed from its input; an edit rescales its output
#   kind "result": each head's write z_h @ W_O[h], computed from o_proj's input; an edit changes o_proj's output
#   kind "scores": the attention scores before softmax (scaled, masked with the dtype's minimum, soft-capped)
#   kind "inject": what the language model adds between block l and the next (next input - block l's output)
#   kind "rot_q" / "rot_k": the queries / keys after rotary, as the attention function receives them
BLOCK_HOOKS: tuple[HookSpec, ...] = (
    HookSpec("blocks.{l}.hook_resid_pre", Site("in", "block"), "batch pos d_model"),
    HookSpec("blocks.{l}.ln1.hook_scale", Site("scale", "ln1"), "batch pos 1"),
    HookSpec("blocks.{l}.ln1.hook_normalized", Site("out", "ln1"), "batch pos d_model"),
    # TL's use_attn_in / use_split_qkv_input: each head's own copy of ln1's input (vlm_lens.split_inputs)
    HookSpec("blocks.{l}.hook_attn_in", Site("split", "attn"), "batch pos head d_model"),
    HookSpec("blocks.{l}.hook_q_input", Site("split", "attn_q"), "batch pos head d_model"),
    HookSpec("blocks.{l}.hook_k_input", Site("split", "attn_k"), "batch pos kv_head d_model"),
    HookSpec("blocks.{l}.hook_v_input", Site("split", "attn_v"), "batch pos kv_head d_model"),
    HookSpec("blocks.{l}.attn.hook_q", Site("out", "attn_q"), "batch pos head d_head"),
    HookSpec("blocks.{l}.attn.hook_k", Site("out", "attn_k"), "batch pos kv_head d_head"),
    HookSpec("blocks.{l}.attn.hook_v", Site("out", "attn_v"), "batch pos kv_head d_head"),
    HookSpec("blocks.{l}.attn.hook_rot_q", Site("rot_q"), "batch pos head d_head"),
    HookSpec("blocks.{l}.attn.hook_rot_k", Site("rot_k"), "batch pos kv_head d_head"),
    HookSpec("blocks.{l}.attn.hook_attn_scores", Site("scores"), "batch head query key"),
    HookSpec("blocks.{l}.attn.hook_pattern", Site("pattern"), "batch head query key"),
    HookSpec("blocks.{l}.attn.hook_pattern_rows", Site("pattern_rows"), "batch head row key"),
    HookSpec("blocks.{l}.attn.hook_z", Site("in", "attn_o"), "batch pos head d_head"),
    HookSpec("blocks.{l}.attn.hook_result", Site("result", "attn_o"), "batch pos head d_model"),
    HookSpec("blocks.{l}.hook_attn_out", Site("out", "attn_out"), "batch pos d_model"),
    HookSpec("blocks.{l}.hook_resid_mid", Site("resid_mid"), "batch pos d_model"),
    # TL's use_hook_mlp_in: the MLP's own copy of the residual (ln2's input); an edit reaches the MLP only
    HookSpec("blocks.{l}.hook_mlp_in", Site("in", "ln2"), "batch pos d_model"),
    HookSpec("blocks.{l}.ln2.hook_scale", Site("scale", "ln2"), "batch pos 1"),
    HookSpec("blocks.{l}.ln2.hook_normalized", Site("out", "ln2"), "batch pos d_model"),
    HookSpec("blocks.{l}.mlp.hook_pre", Site("out", "mlp_gate"), "batch pos d_mlp"),
    HookSpec(
        "blocks.{l}.mlp.hook_pre_linear", Site("out", "mlp_up"), "batch pos d_mlp"
    ),  # the gated MLP's linear branch
    HookSpec("blocks.{l}.mlp.hook_post", Site("in", "mlp_down"), "batch pos d_mlp"),
    HookSpec("blocks.{l}.hook_mlp_out", Site("out", "mlp_out"), "batch pos d_model"),
    HookSpec("blocks.{l}.hook_resid_post", Site("out", "block"), "batch pos d_model"),
)

# A cross-attention layer (Llama-3.2-Vision): its attention reads the image's features, and what its attention and MLP
# add to the residual is scaled by gates outside any module, so the writes are the residual's differences
# (kind "cross_write": resid_mid - resid_pre, resid_post - resid_mid; "cross_mid": resid_mid), edited there; its
# keys and values run over the image's tile patches. hook_cross_attn_out is a second name for its attention's write.
_CROSS = {
    "blocks.{l}.attn.hook_k": HookSpec(
        "blocks.{l}.attn.hook_k", Site("out", "attn_k"), "batch image_key kv_head d_head"
    ),
    "blocks.{l}.attn.hook_v": HookSpec(
        "blocks.{l}.attn.hook_v", Site("out", "attn_v"), "batch image_key kv_head d_head"
    ),
    "blocks.{l}.attn.hook_attn_scores": HookSpec(
        "blocks.{l}.attn.hook_attn_scores", Site("scores"), "batch head query image_key"
    ),
    "blocks.{l}.attn.hook_pattern": HookSpec(
        "blocks.{l}.attn.hook_pattern", Site("pattern"), "batch head query image_key"
    ),
    "blocks.{l}.attn.hook_pattern_rows": HookSpec(
        "blocks.{l}.attn.hook_pattern_rows", Site("pattern_rows"), "batch head row image_key"
    ),
    "blocks.{l}.hook_attn_out": HookSpec("blocks.{l}.hook_attn_out", Site("cross_write", "attn"), "batch pos d_model"),
    "blocks.{l}.hook_resid_mid": HookSpec("blocks.{l}.hook_resid_mid", Site("cross_mid"), "batch pos d_model"),
    "blocks.{l}.hook_mlp_out": HookSpec("blocks.{l}.hook_mlp_out", Site("cross_write", "mlp"), "batch pos d_model"),
}
CROSS_ATTN_OUT = HookSpec("blocks.{l}.hook_cross_attn_out", Site("cross_write", "attn"), "batch pos d_model")
CROSS_BLOCK_HOOKS: tuple[HookSpec, ...] = tuple(
    spec
    for base in BLOCK_HOOKS
    # cross-attention rotates nothing (no hook_rot_q / hook_rot_k); its ln2 input is read for the gated writes; its
    # keys and values do not come from the residual (no split inputs)
    if base.site.kind not in ("rot_q", "rot_k", "split") and not base.template.endswith("hook_mlp_in")
    for spec in (
        (_CROSS.get(base.template, base),) + ((CROSS_ATTN_OUT,) if base.template.endswith("hook_attn_out") else ())
    )
)

# hook_embed is the tensor entering layer 0 (image features merged, any embedding scale
# applied), i.e. the same tensor as blocks.0.hook_resid_pre; it fires first.
EMBED_HOOK = HookSpec("hook_embed", Site("in", "block"), "batch pos d_model")
# Qwen3-VL's DeepStack: after some early layers the language model adds visual features at the image positions,
# outside any block; what it adds after layer l (zeros at text positions), between resid_post[l] and resid_pre[l + 1].
INJECT_HOOK = HookSpec("blocks.{l}.hook_deepstack", Site("inject"), "batch pos d_model")
FINAL_SCALE_HOOK = HookSpec("ln_final.hook_scale", Site("scale", "final_norm"), "batch pos 1")
FINAL_HOOK = HookSpec("ln_final.hook_normalized", Site("out", "final_norm"), "batch pos d_model")
VISION_BLOCK_HOOK = HookSpec("vision.blocks.{l}.hook_resid_post", Site("out", "vision_block"), "image patch d_vision")
PROJECTOR_HOOK = HookSpec("projector.hook_out", Site("out", "projector"), "image patch d_model")

# Names never cached unless asked for: the full pattern and scores cost a quadratic eager computation, the
# per-head and norm views (TL's q, k, v, result, scale) add memory the default cache does not need.
OPT_IN_SUFFIXES = (
    "attn.hook_pattern",
    "attn.hook_attn_scores",
    "attn.hook_q",
    "attn.hook_k",
    "attn.hook_v",
    "attn.hook_rot_q",
    "attn.hook_rot_k",
    "attn.hook_result",
    "hook_mlp_in",
    "hook_attn_in",
    "hook_q_input",
    "hook_k_input",
    "hook_v_input",
    "mlp.hook_pre_linear",
    "hook_scale",
)

# Short aliases for cache lookups: cache["resid_post", 3] == cache["blocks.3.hook_resid_post"].
ALIASES: dict[str, str] = {
    "embed": "hook_embed",
    "resid_pre": "blocks.{l}.hook_resid_pre",
    "ln1": "blocks.{l}.ln1.hook_normalized",
    "q": "blocks.{l}.attn.hook_q",
    "k": "blocks.{l}.attn.hook_k",
    "v": "blocks.{l}.attn.hook_v",
    "attn_scores": "blocks.{l}.attn.hook_attn_scores",
    "z": "blocks.{l}.attn.hook_z",
    "result": "blocks.{l}.attn.hook_result",
    "pattern": "blocks.{l}.attn.hook_pattern",
    "pattern_rows": "blocks.{l}.attn.hook_pattern_rows",
    "attn_out": "blocks.{l}.hook_attn_out",
    "cross_attn_out": "blocks.{l}.hook_cross_attn_out",
    "resid_mid": "blocks.{l}.hook_resid_mid",
    "ln2": "blocks.{l}.ln2.hook_normalized",
    "pre": "blocks.{l}.mlp.hook_pre",
    "post": "blocks.{l}.mlp.hook_post",
    "mlp_out": "blocks.{l}.hook_mlp_out",
    "resid_post": "blocks.{l}.hook_resid_post",
    "deepstack": "blocks.{l}.hook_deepstack",
    "ln_final": "ln_final.hook_normalized",
    "vision_resid_post": "vision.blocks.{l}.hook_resid_post",
    "projector": "projector.hook_out",
}


# The hook points of an SAE spliced at a name (vlm_lens.sae), suffixed to it as SAELens names them, in firing order.
SAE_HOOKS = ("hook_sae_input", "hook_sae_acts_post", "hook_sae_recons", "hook_sae_error", "hook_sae_output")


@dataclass(frozen=True)
class HookInfo:
    """One concrete hook name on one model."""

    name: str
    spec: HookSpec
    layer: int | None  # language or vision layer index; None for model-wide hooks
    order: float  # firing order within one forward; used to run a site's hooks in sequence

    @property
    def at(self) -> int:
        """``layer`` for a name that has one (a block's or a vision block's hook), as the int it then is."""
        if self.layer is None:
            raise HookNameError(f"{self.name!r} is a model-wide hook: it belongs to no layer")
        return self.layer


def block_names(layer: int, cross: bool = False) -> list[str]:
    return [spec.template.format(l=layer) for spec in (CROSS_BLOCK_HOOKS if cross else BLOCK_HOOKS)]


# TransformerLens's shorthand (``transformer_lens.utils.get_act_name``, MIT), ported so the core needs no TL: the
# keys TL's own demos write, cache["pattern", 0, "attn"], cache["normalized", 1, "ln2"], cache["scale"], "k6".
_TL_LAYER_TYPES = {"a": "attn", "m": "mlp", "b": "", "block": "", "blocks": "", "attention": "attn"}
_TL_NAMES = {
    "attn": "pattern",
    "attn_logits": "attn_scores",
    "key": "k",
    "query": "q",
    "value": "v",
    "mlp_pre": "pre",
    "mlp_mid": "mid",
    "mlp_post": "post",
}
_TL_ATTN = ("k", "v", "q", "z", "rot_k", "rot_q", "result", "pattern", "attn_scores")
_TL_MLP = ("pre", "post", "mid", "pre_linear")
_TL_SPLIT_INPUTS = ("hook_attn_in", "hook_q_input", "hook_k_input", "hook_v_input")


def tl_act_name(name: str, layer: int | str | None = None, layer_type: str | None = None) -> str:
    """The hook name TransformerLens's ``get_act_name(name, layer, layer_type)`` gives, by its own rules."""
    if ("." in name or name.startswith("hook_")) and layer is None and layer_type is None:
        return name
    match = re.match(r"([a-z]+)(\d+)([a-z]?.*)", name)
    if match is not None:
        name, layer, layer_type = match.groups(0)  # type: ignore[assignment]
    name = _TL_NAMES.get(name, name)
    full = f"blocks.{layer}." if layer is not None else ""
    if name in _TL_ATTN:
        layer_type = "attn"
    elif name in _TL_MLP:
        layer_type = "mlp"
    elif layer_type in _TL_LAYER_TYPES:
        layer_type = _TL_LAYER_TYPES[layer_type]
    full += f"{layer_type}." if layer_type else ""
    full += f"hook_{name}"
    return f"ln_final.{full}" if name in ("scale", "normalized") and layer is None else full


class Vocabulary:
    """All hook names of one model, with the specs behind them."""

    def __init__(self, n_layers: int, n_vision_layers: int, injected_layers=(), cross_layers=(), grouped=False):
        self.n_layers = n_layers
        self.grouped = grouped  # grouped-query attention: fewer key/value heads than query heads, no hook_attn_in
        self.n_vision_layers = n_vision_layers
        self.injected_layers = tuple(injected_layers)  # layers followed by a hook_deepstack
        self.cross_layers = tuple(sorted(cross_layers))  # layers whose attention is cross-attention to the image
        infos: list[HookInfo] = []
        for l in range(n_vision_layers):
            infos.append(HookInfo(VISION_BLOCK_HOOK.template.format(l=l), VISION_BLOCK_HOOK, l, len(infos)))
        infos.append(HookInfo(PROJECTOR_HOOK.template, PROJECTOR_HOOK, None, len(infos)))
        infos.append(HookInfo(EMBED_HOOK.template, EMBED_HOOK, 0, len(infos)))
        for l in range(n_layers):
            block = CROSS_BLOCK_HOOKS if l in self.cross_layers else BLOCK_HOOKS
            for spec in block + ((INJECT_HOOK,) if l in self.injected_layers else ()):
                if grouped and spec.site == Site("split", "attn"):
                    continue
                infos.append(HookInfo(spec.template.format(l=l), spec, l, len(infos)))
        infos.append(HookInfo(FINAL_SCALE_HOOK.template, FINAL_SCALE_HOOK, None, len(infos)))
        infos.append(HookInfo(FINAL_HOOK.template, FINAL_HOOK, None, len(infos)))
        self._infos = {info.name: info for info in infos}
        self._listing = (
            [VISION_BLOCK_HOOK.template.format(l=l) for l in range(n_vision_layers)]
            + [PROJECTOR_HOOK.template, EMBED_HOOK.template]
            + [
                name
                for l in range(n_layers)
                for name in block_names(l, l in self.cross_layers)
                + ([INJECT_HOOK.template.format(l=l)] if l in self.injected_layers else [])
                if name in self._infos
            ]
            + [FINAL_SCALE_HOOK.template, FINAL_HOOK.template]
        )

    def names(self) -> list[str]:
        return list(self._listing)

    def add_sae(self, host: str) -> list[str]:
        """The names of an SAE spliced at ``host`` (SAELens's), listed and fired right after it."""
        info = self.info(host)
        if info.spec.site.kind == "sae":
            raise HookNameError(f"{host!r} is an SAE's own hook; splice SAEs at the model's hook names")
        if f"{host}.{SAE_HOOKS[0]}" in self._infos:
            raise HookNameError(f"an SAE is already spliced at {host!r}; model.reset_saes() first")
        dims = info.spec.shape.rsplit(" ", 1)[0]
        names = [f"{host}.{suffix}" for suffix in SAE_HOOKS]
        for k, (suffix, name) in enumerate(zip(SAE_HOOKS, names)):
            shape = f"{dims} d_sae" if suffix == "hook_sae_acts_post" else info.spec.shape
            self._infos[name] = HookInfo(
                name, HookSpec(name, Site("sae", host), shape), info.layer, info.order + (k + 1) / 10
            )
        at = self._listing.index(host) + 1
        self._listing[at:at] = names
        return names

    def remove_sae(self, host: str) -> None:
        names = {f"{host}.{suffix}" for suffix in SAE_HOOKS}
        self._listing = [n for n in self._listing if n not in names]
        for name in names:
            self._infos.pop(name, None)

    def __contains__(self, name: str) -> bool:
        return name in self._infos

    def info(self, name: str) -> HookInfo:
        if not isinstance(name, str):
            raise HookNameError(f"hook names are strings, got {type(name).__name__}: {name!r}")
        try:
            return self._infos[name]
        except KeyError:
            raise self._unknown(name) from None

    def resolve_key(self, key: str | tuple) -> str:
        """A cache key: a canonical name, (alias, layer) such as ("resid_post", 3), or TransformerLens's shorthand
        (``get_act_name``'s: ("pattern", 0, "attn"), ("normalized", 1, "ln2"), "scale", "attn", "k6")."""
        if isinstance(key, str):
            if key in ALIASES and "{l}" not in ALIASES[key]:  # cache["projector"], cache["ln_final"]
                return ALIASES[key]
            if key not in self._infos and tl_act_name(key) in self._infos:  # TL's "scale", "normalized", "k6"
                return tl_act_name(key)
            return self.info(key).name
        if not isinstance(key, tuple) or not key or not isinstance(key[0], str):
            raise HookNameError(f"cache keys are a hook name or (alias, layer); got {key!r}")
        alias, *rest = key
        if len(rest) == 2 or (alias not in ALIASES and len(rest) <= 1):  # TL's three-part and shorthand keys
            return self._tl_key(alias, *rest)
        if alias not in ALIASES:
            close = difflib.get_close_matches(alias, list(ALIASES), n=3)
            raise HookNameError(f"unknown alias {alias!r}; closest: {close}. Aliases: {sorted(ALIASES)}")
        template = ALIASES[alias]
        if "{l}" not in template:
            if rest:
                raise HookNameError(f"alias {alias!r} names a model-wide hook and takes no layer, got {rest}")
            return template
        if len(rest) != 1 or not isinstance(rest[0], int):
            raise HookNameError(f"alias {alias!r} needs one integer layer: cache[{alias!r}, 3]")
        n = self.n_vision_layers if template.startswith("vision.") else self.n_layers
        layer = rest[0] + n if rest[0] < 0 else rest[0]
        if not 0 <= layer < n:
            raise LayerIndexError(
                f"layer {rest[0]} is out of range for {alias!r}: the model has {n} layers (0..{n - 1})"
            )
        return template.format(l=layer)

    def _tl_key(self, alias: str, layer: int | None = None, layer_type: str | None = None) -> str:
        if layer is not None and not isinstance(layer, int):
            raise HookNameError(f"the layer of cache key {(alias, layer, layer_type)!r} must be an integer")
        if layer is not None and layer < 0:  # as TL's cache: from the end
            layer += self.n_layers
        if layer is not None and not 0 <= layer < self.n_layers:
            raise LayerIndexError(f"layer {layer} is out of range: the model has {self.n_layers} layers")
        name = tl_act_name(alias, layer, layer_type)
        if name not in self._infos:
            close = difflib.get_close_matches(alias, [*ALIASES, *_TL_NAMES], n=3)
            raise HookNameError(
                f"cache key {(alias, layer, layer_type)!r} names {name!r} (TransformerLens's get_act_name), which this "
                f"model does not have; aliases close to {alias!r}: {close}"
            )
        return name

    def _unknown(self, name: str) -> HookNameError:
        parts = name.split(".")
        if (
            name.endswith(_TL_SPLIT_INPUTS)
            and len(parts) > 1
            and parts[1].isdigit()
            and int(parts[1]) in self.cross_layers
        ):
            return HookNameError(
                f"{name!r}: layer {parts[1]} is a cross-attention layer, whose keys and values read the image, not the "
                "residual, so it has no per-head split inputs; hook its ln1.hook_normalized or attn.hook_q instead"
            )
        if name.endswith("hook_attn_in") and self.grouped:
            return HookNameError(
                f"{name!r}: one copy of the residual per head cannot feed this model's fewer key/value heads "
                "(grouped-query attention), so TransformerLens's hook_attn_in is not offered; hook hook_q_input, "
                "hook_k_input and hook_v_input (one copy per query head, per key/value head) instead"
            )
        # Only for the message: a well-formed name whose layer is out of range.
        for prefix, n in (("blocks", self.n_layers), ("vision.blocks", self.n_vision_layers)):
            depth = prefix.count(".") + 1
            if name.startswith(prefix + ".") and len(parts) > depth and parts[depth].lstrip("-").isdigit():
                as_zero = ".".join(parts[:depth] + ["0"] + parts[depth + 1 :])
                if as_zero in self._infos and not 0 <= int(parts[depth]) < n:
                    return LayerIndexError(
                        f"{name!r}: layer {parts[depth]} is out of range; this model has {n} "
                        f"{'vision' if prefix.startswith('vision') else 'language'} layers (0..{n - 1})"
                    )
        close = difflib.get_close_matches(name, self._listing, n=5, cutoff=0.5)
        return HookNameError(
            f"unknown hook name {name!r}. Closest valid names: {close or self._listing[:5]}. "
            "model.hook_names() lists them all."
        )
