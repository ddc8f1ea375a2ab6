"""The residual stream taken apart: TransformerLens's cache methods, image-aware labels, unfolded norms.

    resid, labels = cache.accumulated_resid(apply_ln=True, pos_slice=-1, return_labels=True)
    lens = resid @ model.W_U                 # the logit lens: [layer + 1, batch, vocab]
    parts, labels = cache.decompose_resid(return_labels=True)       # embed, 0_attn_out, 0_mlp_out, ...
    attrs = cache.logit_attrs(parts, tokens=yes_id, incorrect_tokens=no_id)   # sums to the logit difference

The final norm is RMSNorm in every family (Gemma's gain is 1 + w). Nothing is folded into the
weights, so "applying the norm" to a stack means dividing by the scale of the residual it belongs
to and multiplying by the norm's gain: ``gain * x / rms(resid)``. That is linear in x, so the
components of a decomposition still sum to the normalised residual; the logit lens instead
renormalises each layer's own residual (TL's ``recompute_ln``). ``pos_slice`` takes an int, a
slice, a list of positions, or "image" / "text" (the image tokens, or every other real token, of
a batch whose items share one layout).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float
from torch import Tensor, nn

from vlm_lens.adapter import get_module, layer_list
from vlm_lens.errors import InputError, UnsupportedModelError, VLMLensWarning

if TYPE_CHECKING:
    from vlm_lens.hosts import CacheHost as _Host
else:
    _Host = object


def positions_of(pos_slice, inputs, image_token_id: int | None) -> slice | list[int] | int:
    """TL's ``pos_slice`` as an index of the position axis: None (all), an int, a slice, positions, or "image" /
    "text" (the image tokens / the other real tokens of ``inputs``, which its items must share)."""
    if pos_slice is None:
        return slice(None)
    if isinstance(pos_slice, str):
        if pos_slice not in ("image", "text") or inputs is None or image_token_id is None:
            raise InputError(f"pos_slice takes an int, a slice, positions, 'image' or 'text'; got {pos_slice!r}")
        image = (inputs.input_ids == image_token_id) & (inputs.attention_mask == 1)
        text = (inputs.input_ids != image_token_id) & (inputs.attention_mask == 1)
        chosen = image if pos_slice == "image" else text
        if not bool((chosen == chosen[:1]).all()):
            raise InputError(
                f"pos_slice={pos_slice!r} needs items that share one layout; index each item's own positions"
            )
        return chosen[0].nonzero().flatten().tolist()
    return pos_slice


def norm_eps(norm: nn.Module) -> float:
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
    if eps is None:
        raise UnsupportedModelError(f"{type(norm).__name__} is not an RMSNorm with an eps; it cannot be linearised")
    return float(eps)


def norm_gain(norm: nn.Module, width: int, like: Tensor) -> Float[Tensor, " d_model"]:
    """The RMSNorm's per-channel gain (Gemma's 1 + w included), read off the module itself: norm(c * ones) = gain."""
    probe = torch.full((width,), 1e3, dtype=torch.float32, device=like.device)
    return norm.forward(probe.to(like.dtype)).float() * torch.sqrt(torch.tensor(1.0 + norm_eps(norm) / 1e6))


def norm_scale(norm: nn.Module, resid: Tensor) -> Float[Tensor, "... 1"]:
    """rms(resid) as the norm computes it (float32): what TL's ``hook_scale`` holds."""
    return torch.sqrt(resid.float().pow(2).mean(-1, keepdim=True) + norm_eps(norm))


def through_post_norm(model, layer: int, kind: str, total: Tensor) -> Tensor | float:
    """gain / rms(total): how a block's post-norm (Gemma 3's sandwich norms, adapter keys ``attn_post_norm`` /
    ``mlp_post_norm``) scales each part of ``total``, the sum it normalises (o_proj's or down_proj's output).
    Linear in the parts at the actual scale, so the parts' scaled writes sum to what the residual adds.
    1.0 for families without one."""
    path = model.adapter.block_at(model.hf_model.config, layer).get(f"{kind}_post_norm")
    if path is None:
        return 1.0
    norm = get_module(layer_list(model.hf_model, model.adapter.modules["layers"])[layer], path)
    return norm_gain(norm, total.shape[-1], total) / norm_scale(norm, total)


def sees_image(cross_attention_mask: Tensor) -> Tensor:
    """[batch pos]: the positions that attend to some image tile (Llama-3.2-Vision's unmasked text rows)."""
    return cross_attention_mask.flatten(2).any(-1)


def write_factor(model, layer: int, kind: str, total: Tensor, rows: Tensor | None = None) -> Tensor | float:
    """What scales a part of layer ``layer``'s attention or MLP output (``kind``) on its way into the residual: a
    post-norm (``through_post_norm``) and a cross-attention layer's tanh gate (Llama-3.2-Vision), whose MLP
    writes only at the ``rows`` that see an image ([batch] or [batch pos], as ``total`` without d_model). 1.0 for a
    plain pre-norm block. Linear in the parts, so the parts' scaled writes sum to what the residual adds."""
    factor = through_post_norm(model, layer, kind, total)
    gate = model.adapter.block_at(model.hf_model.config, layer).get(f"{kind}_write_gate")
    if gate is None:
        return factor
    block = layer_list(model.hf_model, model.adapter.modules["layers"])[layer]
    scale = torch.tanh(get_module(block, gate).detach().float()).to(total.device)
    if kind == "mlp":
        if rows is None:
            raise InputError("a cross-attention layer's MLP writes only where the text sees an image: pass the rows")
        scale = scale * rows.to(total.device)[..., None].float()
    return scale * factor


def _norm_at(model, layer: int | None, mlp_input: bool) -> nn.Module:
    if layer is None or layer == model.cfg.n_layers:
        return get_module(model.hf_model, model.adapter.modules["final_norm"])
    block = layer_list(model.hf_model, model.adapter.modules["layers"])[layer]
    return get_module(block, model.adapter.block_at(model.hf_model.config, layer)["ln2" if mlp_input else "ln1"])


class ResidualMethods(_Host):  # its host, for the type checker only (vlm_lens.hosts)
    """Mixin for ``ActivationCache`` (needs ``self.model``, ``self.inputs`` and item access)."""

    def _need_model(self):
        if getattr(self, "model", None) is None:
            raise InputError(
                "this cache was built without its model; use model.run_with_cache(...) to get one that has it"
            )
        return self.model

    def _positions(self, pos_slice) -> slice | list[int] | int:
        image_token = self.model.cfg.image_token_id if self.model is not None else None
        return positions_of(pos_slice, self.inputs, image_token)

    def _at(self, tensor: Tensor, pos_slice) -> Tensor:
        return tensor[:, self._positions(pos_slice)]

    def _write_factor(self, layer: int, kind: str, total: Tensor, pos_slice) -> Tensor | float:
        rows = None
        if kind == "mlp" and self.inputs is not None and "cross_attention_mask" in self.inputs.tensors:
            rows = self._at(sees_image(self.inputs.tensors["cross_attention_mask"]), pos_slice)
        return write_factor(self.model, layer, kind, total, rows)

    def apply_ln_to_stack(
        self,
        residual_stack: Float[Tensor, "component batch ... d_model"],
        layer: int | None = None,
        mlp_input: bool = False,
        pos_slice=None,
        recompute_ln: bool = False,
    ) -> Tensor:
        """The norm that reads the residual at ``layer`` (None or n_layers: the final norm; else ln1, or ln2 with
        ``mlp_input``), applied to each component as it acts on the whole residual: gain * x / rms(resid).
        ``recompute_ln`` (final norm only): each component normalised by its own rms, as the logit lens does."""
        model = self._need_model()
        n = model.cfg.n_layers
        layer = n if layer is None or layer == -1 else layer
        norm = _norm_at(model, layer, mlp_input)
        if recompute_ln:
            if layer != n:
                raise InputError("recompute_ln applies to the final norm only (layer None or n_layers), as in TL")
            return norm(residual_stack)
        resid = self["resid_post", n - 1] if layer == n else self["resid_mid" if mlp_input else "resid_pre", layer]
        scale = self._at(norm_scale(norm, resid), pos_slice)
        gain = norm_gain(norm, resid.shape[-1], resid)
        return (residual_stack.float() / scale * gain).to(residual_stack.dtype)

    def accumulated_resid(
        self,
        layer: int | None = None,
        incl_mid: bool = False,
        apply_ln: bool = False,
        pos_slice=None,
        mlp_input: bool = False,
        return_labels: bool = False,
    ):
        """The residual stream entering each layer up to ``layer`` (None: every layer and the final residual):
        [layer + 1 (more with ``incl_mid``), batch, pos, d_model], labelled "0_pre", "0_mid", ..., "final_post".
        ``apply_ln`` at the final layer is the logit lens: ``accumulated_resid(apply_ln=True) @ W_U``."""
        model = self._need_model()
        n = model.cfg.n_layers
        layer = n if layer is None or layer == -1 else layer
        parts, labels = [], []
        for l in range(layer + 1):
            if l == n:
                parts.append(self["resid_post", n - 1])
                labels.append("final_post")
                continue
            parts.append(self["resid_pre", l])
            labels.append(f"{l}_pre")
            if (incl_mid and l < layer) or (mlp_input and l == layer):
                parts.append(self["resid_mid", l])
                labels.append(f"{l}_mid")
        stack = torch.stack([self._at(p, pos_slice) for p in parts])
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, mlp_input, pos_slice, recompute_ln=layer == n)
        return (stack, labels) if return_labels else stack

    def decompose_resid(
        self,
        layer: int | None = None,
        mlp_input: bool = False,
        mode: str = "all",
        apply_ln: bool = False,
        pos_slice=None,
        incl_embeds: bool = True,
        return_labels: bool = False,
    ):
        """What each block wrote into the residual stream entering ``layer`` (None: the final residual):
        "embed" (image features merged in), then "{l}_attn_out" and "{l}_mlp_out" per layer (``mode`` "attn" or
        "mlp" keeps one kind), and "{l}_deepstack" where the model adds visual features between blocks (Qwen3-VL).
        The components sum to that residual; with ``apply_ln``, to its normalised form."""
        if mode not in ("all", "attn", "mlp"):
            raise InputError(f"mode must be 'all', 'attn' or 'mlp', got {mode!r}")
        model = self._need_model()
        n = model.cfg.n_layers
        layer = n if layer is None or layer == -1 else layer
        parts, labels = ([self["embed"]], ["embed"]) if incl_embeds else ([], [])
        for l in range(layer + (1 if mlp_input and layer < n else 0)):
            if mode != "mlp":
                parts.append(self["attn_out", l])
                labels.append(f"{l}_attn_out")
            if mode != "attn" and not (mlp_input and l == layer):
                parts.append(self["mlp_out", l])
                labels.append(f"{l}_mlp_out")
            if mode == "all" and l < layer and l in self._vocab.injected_layers:  # Qwen3-VL's DeepStack
                parts.append(self["deepstack", l])
                labels.append(f"{l}_deepstack")
        stack = torch.stack([self._at(p, pos_slice) for p in parts])
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, mlp_input, pos_slice)
        return (stack, labels) if return_labels else stack

    def logit_attrs(
        self,
        residual_stack: Float[Tensor, "component batch ... d_model"],
        tokens: int | str | Tensor,
        incorrect_tokens: int | str | Tensor | None = None,
        pos_slice=None,
        has_batch_dim: bool = True,
    ) -> Float[Tensor, "component batch ..."]:
        """Each component's direct contribution to logit[tokens] (minus logit[incorrect_tokens]) through the final
        norm linearised at the final residual: the components of ``decompose_resid`` sum to the logit difference
        (less the unembedding's bias). ``residual_stack`` holds components not yet normalised."""
        model = self._need_model()
        direction = model.tokens_to_residual_directions(tokens)
        if incorrect_tokens is not None:
            direction = direction - model.tokens_to_residual_directions(incorrect_tokens)
        scaled = self.apply_ln_to_stack(residual_stack, None, pos_slice=pos_slice)
        if direction.ndim == 1:
            return scaled.float() @ direction.float()
        # per-item directions ([batch, d_model], from a [batch] tokens tensor) hold for every position (TL's)
        while direction.ndim < scaled.ndim - 1:
            direction = direction.unsqueeze(1)
        return (scaled.float() * direction.float()).sum(-1)

    def stack_neuron_results(
        self,
        layer: int,
        pos_slice=None,
        neuron_slice: Sequence[int] | slice | None = None,
        return_labels: bool = False,
        apply_ln: bool = False,
    ):
        """Each MLP neuron's write to the residual stream in the layers below ``layer``: post x W_out row,
        [neuron x layer, batch, pos, d_model], labelled "L{l}N{i}" (through a post-MLP norm, scaled by gain /
        rms(down_proj's output), as the heads). Memory: layers x d_mlp x pos x d_model
        (LLaVA-1.5-7B, one layer, one position: 11008 x 4096 floats, 180 MB): slice positions and neurons."""
        model = self._need_model()
        chosen = slice(None) if neuron_slice is None else neuron_slice
        parts, labels = [], []
        for l in range(layer):
            mlp = model.blocks[l].mlp
            post = self._at(self["post", l], pos_slice)  # batch pos neuron
            writes = torch.einsum("b...n,nd->nb...d", post[..., chosen], mlp.W_out[chosen])
            factor = self._write_factor(l, "mlp", post @ mlp.W_out + mlp.b_out, pos_slice)
            parts.append(writes if isinstance(factor, float) else (writes.float() * factor).to(writes.dtype))
            labels += [
                f"L{l}N{i}" for i in (list(range(model.cfg.d_mlp))[chosen] if isinstance(chosen, slice) else chosen)
            ]
        stack = torch.cat(parts) if parts else torch.empty(0)
        if apply_ln and parts:
            stack = self.apply_ln_to_stack(stack, layer, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def stack_head_results(
        self,
        layer: int | None = None,
        pos_slice=None,
        return_labels: bool = False,
        apply_ln: bool = False,
        incl_remainder: bool = False,
    ):
        """Each head's write to the residual stream in the layers below ``layer`` (None: all): z_h @ W_O[h],
        [layer x head, batch, pos, d_model], labelled "L{l}H{h}" (o_proj's bias is not any head's and is left
        out); through a post-attention norm (Gemma 3) scaled by gain / rms(o_proj's output), so the heads sum to
        what the residual adds. Computed from the cached ``hook_z``; memory grows with heads x pos x d_model per layer.
        ``incl_remainder=True`` (TL's) adds one last component, "remainder": the residual entering ``layer`` minus
        the heads' sum (embeddings, MLPs, biases), so the stack sums to that residual."""
        model = self._need_model()
        layer = model.cfg.n_layers if layer is None or layer == -1 else layer
        parts, labels = [], []
        for l in range(layer):
            attn = model.blocks[l].attn
            z = self._at(self["z", l], pos_slice)  # batch pos head d_head
            writes = torch.einsum("b...he,hed->hb...d", z, attn.W_O)
            factor = self._write_factor(l, "attn", writes.sum(0) + attn.b_O, pos_slice)
            parts.append(writes if isinstance(factor, float) else (writes.float() * factor).to(writes.dtype))
            labels += [f"L{l}H{h}" for h in range(model.cfg.n_heads)]
        stack = torch.cat(parts) if parts else self._empty_stack(pos_slice)  # layer 0: no heads below it (TL's)
        if incl_remainder:
            resid = self["resid_pre", layer] if layer < model.cfg.n_layers else self["resid_post", layer - 1]
            stack = torch.cat([stack, (self._at(resid, pos_slice) - stack.sum(0))[None]])
            labels.append("remainder")
            parts.append(stack[-1:])
        if apply_ln and parts:
            stack = self.apply_ln_to_stack(stack, layer, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def stack_activation(self, activation_name: str, layer: int = -1, sublayer_type: str | None = None) -> Tensor:
        """TL's: one activation of every layer below ``layer`` (-1: all), stacked [layer, ...]; the name as TL's
        cache keys take it (``("pattern", l, "attn")``, ``("scale", l, "ln1")``, "resid_post")."""
        n = self.n_layers if layer == -1 else layer
        return torch.stack([self[(activation_name, l, sublayer_type)] for l in range(n)])

    def get_neuron_results(self, layer: int, neuron_slice=None, pos_slice=None) -> Tensor:
        """TL's: each neuron's write at ``layer``, [batch, pos, neuron, d_model]: its activation (``hook_post``)
        times its row of W_out (before down_proj's bias and any post-MLP norm, as TL's)."""
        model = self._need_model()
        chosen = slice(None) if neuron_slice is None else neuron_slice
        post = self._at(self["post", layer], pos_slice)[..., chosen]
        return post[..., None] * model.blocks[layer].mlp.W_out[chosen]

    def apply_slice_to_batch_dim(self, batch_slice):
        """TL's: a cache of the items at ``batch_slice`` (an int drops the batch axis, as indexing does). The
        vision tower's and projector's activations are per image and stay whole; the sliced cache keeps no
        inputs, so ``pos_slice="image"`` asks for its own positions there."""
        if not isinstance(batch_slice, (int, slice, list, tuple)):
            raise InputError(f"batch_slice takes an int, a slice or indices, got {type(batch_slice).__name__}")
        index = list(batch_slice) if isinstance(batch_slice, tuple) else batch_slice
        per_image = ("vision.", "projector")
        return type(self)(
            {k: v if k.startswith(per_image) else v[index] for k, v in self._store.items()},
            self._vocab,
            None,
            self.model,
        )

    def toggle_autodiff(self, mode: bool = False) -> None:
        """TL's: switch torch's gradient tracking on or off for the whole process (``torch.set_grad_enabled``),
        as TL's does: global state, so it warns; ``torch.no_grad()`` around the work is the local way."""
        warnings.warn(
            f"toggle_autodiff({mode}) sets torch's global grad mode for the whole process; "
            "torch.no_grad() / torch.enable_grad() scope it",
            VLMLensWarning,
            stacklevel=2,
        )
        torch.set_grad_enabled(mode)

    def _empty_stack(self, pos_slice) -> Tensor:
        """[0, batch, pos, d_model]: a stack of no components, shaped as the embeddings at ``pos_slice``."""
        embed = self._at(self["embed"], pos_slice)
        return embed.new_zeros((0, *embed.shape))

    def compute_head_results(self) -> None:
        """TL's: fill every layer's per-head writes into the cache as ``blocks.{l}.attn.hook_result`` ([batch, pos,
        head, d_model]: z_h @ W_O[h], before o_proj's bias and any post-attention norm, as the live hook point
        gives it), from the cached ``hook_z``; afterwards ``cache["result", l]`` reads them. Returns nothing, as
        TL's does (``stack_head_results`` is the stack)."""
        model = self._need_model()
        for l in range(model.cfg.n_layers):
            name = f"blocks.{l}.attn.hook_result"
            if name not in self._store:
                self._store[name] = torch.einsum("bphe,hed->bphd", self["z", l], model.blocks[l].attn.W_O)

    def get_full_resid_decomposition(
        self,
        layer: int | None = None,
        mlp_input: bool = False,
        expand_neurons: bool = True,
        apply_ln: bool = False,
        pos_slice=None,
        return_labels: bool = False,
    ):
        """The residual entering ``layer`` (None: the final one; ``mlp_input``: layer's MLP input) as every head's
        write ("L{l}H{h}"), every neuron's ("L{l}N{i}"; ``expand_neurons=False``: each MLP's "{l}_mlp_out"), then
        "embed" and "bias" (the o_proj and down_proj biases, zeros where a family has none): the components sum to
        that residual (TL's order and labels; "{l}_deepstack" before "embed" where the model adds visual features
        between blocks). Memory: with expanded neurons, layers x d_mlp x pos x d_model
        floats: slice positions."""
        model = self._need_model()
        n = model.cfg.n_layers
        layer = n if layer is None or layer == -1 else layer
        attn_layers = layer + (1 if mlp_input and layer < n else 0)
        heads, labels = self.stack_head_results(attn_layers, pos_slice=pos_slice, return_labels=True)
        parts = [heads]
        if expand_neurons and layer > 0:
            neurons, neuron_labels = self.stack_neuron_results(layer, pos_slice=pos_slice, return_labels=True)
            parts.append(neurons)
            labels += neuron_labels
        elif layer > 0:
            mlps, mlp_labels = self.decompose_resid(
                layer, mode="mlp", incl_embeds=False, pos_slice=pos_slice, return_labels=True
            )
            parts.append(mlps)
            labels += mlp_labels
        injected = [l for l in self._vocab.injected_layers if l < layer]  # Qwen3-VL's DeepStack, between blocks
        if injected:
            parts.append(torch.stack([self._at(self["deepstack", l], pos_slice) for l in injected]))
            labels += [f"{l}_deepstack" for l in injected]
        embed = self._at(self["embed"], pos_slice)
        bias = model.accumulated_bias(
            layer, mlp_input and layer < n, include_mlp_biases=expand_neurons
        ) + torch.zeros_like(embed)
        if bias.abs().max() > 0 and any(k.endswith("_post_norm") for k in model.adapter.block):
            raise InputError(
                "biases under a post-norm are scaled per layer and position; this decomposition does "
                "not split them out: decompose_resid() gives each layer's whole write"
            )
        stack = torch.cat(parts + [embed[None], bias[None]])
        labels += ["embed", "bias"]
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, mlp_input, pos_slice)
        return (stack, labels) if return_labels else stack

    def remove_batch_dim(self):
        """A cache of one item with the batch dimension dropped from every activation (TL's)."""
        sizes = {v.shape[0] for k, v in self.items() if not k.startswith(("vision.", "projector"))}
        if sizes != {1}:
            raise InputError(f"remove_batch_dim needs a batch of one, got batch sizes {sorted(sizes)}")
        return type(self)(
            {k: v[0] if not k.startswith(("vision.", "projector")) else v for k, v in self.items()},
            self._vocab,
            self.inputs,
            self.model,
        )
