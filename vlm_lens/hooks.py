"""The one way hooks go in: a session that adds torch hooks and removes exactly those.

A hook function has TransformerLens's signature ``fn(activation, hook) -> Tensor | None``
(or ``fn(activation, *, hook)``, called with the keyword as TL does); returning a tensor replaces
the activation. A backward hook (``bwd_hooks``) receives the gradient of the activation at its
name, with TL's semantics, and may return a replacement gradient: it is attached to the
forward's tensor, so it fires whenever ``backward`` runs through that forward. ``hook.name`` is the canonical name,
``hook.layer()`` its layer, ``hook.step`` the forward pass within the session (0 for a
single forward; during ``generate``, 0 is the prefill and k the k-th new token), and
``hook.ctx`` a dict shared by the session's hooks.

Hooks at one site (one module's input or output) run in the vocabulary's firing order, then
in the order given. Sites nothing asked for get no torch hook at all. A hook's return value must
have the activation's shape, dtype and device (an error names the hook otherwise): a silently
cast edit would change what the number means.

Sessions nest, and may close in any order: the attention routing they share belongs to the
model's ``Sessions`` and is restored when the last one closes. A session is entered once at a time.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from vlm_lens import attention, split_inputs
from vlm_lens import cross as cross_hooks
from vlm_lens.adapter import Adapter, get_module, layer_list
from vlm_lens.errors import HookNameError, HookSessionError, InputTypeError
from vlm_lens.hook_calls import HookFn, RunState, check_result, on_gradient, per_head, run_chain, tl_calling
from vlm_lens.names import HookInfo, Vocabulary
from vlm_lens.resid import norm_scale


def site_module(hf_model: Any, adapter: Adapter, info: HookInfo) -> nn.Module:
    """The module whose torch hooks carry a name: its input or output's module, the attention module for the
    pattern, rows and scores, the attention output's for resid_mid."""
    kind, key = info.spec.site.kind, info.spec.site.key
    if kind == "sae":
        raise HookNameError(f"{info.name!r} is an SAE's hook: it sits on the SAE spliced at {key!r}, not on a module")
    if kind == "inject":  # read at the next block's input (the final norm's after the last block)
        layers = layer_list(hf_model, adapter.modules["layers"])
        return layers[info.at + 1] if info.at + 1 < len(layers) else get_module(hf_model, adapter.modules["final_norm"])
    if kind in ("pattern", "pattern_rows", "scores", "rot_q", "rot_k", "resid_mid"):
        key = "attn" if kind != "resid_mid" else "attn_out"
    if kind in ("cross_write", "cross_mid"):  # read at ln2's input and the layer's output (vlm_lens.cross)
        key = "block"
    if kind == "split":  # ln1's input, corrected at the projections' outputs (vlm_lens.split_inputs)
        key = "ln1"
    if key == "block":
        return layer_list(hf_model, adapter.modules["layers"])[info.at]
    if key == "vision_block":
        return layer_list(hf_model, adapter.modules["vision_layers"])[info.at]
    if key is None:
        raise HookNameError(f"{info.name!r} names no module")
    if key in adapter.block:
        table = adapter.block_at(hf_model.config, info.at)
        return get_module(layer_list(hf_model, adapter.modules["layers"])[info.at], table[key])
    return get_module(hf_model, adapter.modules[key])


class _Listed:
    """An entry in a list shared by sessions, removable like a torch hook handle."""

    def __init__(self, items: list, item):
        self.items, self.item = items, item
        items.append(item)

    def remove(self) -> None:
        self.items[:] = [i for i in self.items if i is not self.item]


class Sessions:
    """The hook sessions active on one model, and the attention routing they share.

    Each config's own attention implementation is recorded by the first session that routes it and
    restored when the last active session closes, whatever order sessions close in."""

    def __init__(self):
        self.active: list[HookSession] = []
        self._restore: list[tuple[Any, str | None]] = []  # (an HF config, its attention implementation)
        # hooks at a spliced SAE's names (vlm_lens.sae), by name: (info, fn, the session's state), run by the splice
        self.sae_hooks: dict[str, list[tuple[HookInfo, HookFn, RunState]]] = defaultdict(list)

    def enter(self, session: HookSession) -> None:
        if any(s is session for s in self.active):
            raise HookSessionError(
                "this hook session is already active: entering it again would fire its hooks twice; "
                "make a second one with model.hooks(...)"
            )
        self.active.append(session)

    def route(self, config) -> None:
        if (config._attn_implementation or "").startswith(attention.PREFIX):
            return  # routed by an active session
        self._restore.append((config, config._attn_implementation))
        config._attn_implementation = attention.implementation_name(config._attn_implementation or "eager")

    def leave(self, session: HookSession) -> None:
        self.active = [s for s in self.active if s is not session]
        if not self.active:
            for config, impl in reversed(self._restore):
                config._attn_implementation = impl
            self._restore.clear()


class HookSession:
    """Context manager: adds the torch hooks for ``fwd_hooks`` and removes exactly those.

    It also routes the language model's attention through ``vlm_lens.attention`` while any
    attention hook is asked for; ``sessions`` (the model's, shared by all its sessions) restores each
    config's implementation when the last session closes.
    """

    def __init__(
        self,
        hf_model: nn.Module,
        adapter: Adapter,
        vocab: Vocabulary,
        fwd_hooks: Iterable[tuple[str, HookFn]],
        query_positions: Tensor | None = None,
        sessions: Sessions | None = None,
        bwd_hooks: Iterable[tuple[str, HookFn]] = (),
        prefill_length: int | None = None,
    ):
        self.sessions = Sessions() if sessions is None else sessions
        self.hf_model = hf_model
        self.adapter = adapter
        self.vocab = vocab
        self.state = RunState(query_positions=query_positions, prefill_length=prefill_length)
        self.hooks = [(vocab.info(name), fn) for name, fn in fwd_hooks]
        self.bwd_hooks = [(vocab.info(name), fn) for name, fn in bwd_hooks]
        for info, fn in self.hooks + self.bwd_hooks:
            if not callable(fn):
                raise InputTypeError(f"the hook for {info.name} is not callable: {fn!r}")
        self._handles: list[torch.utils.hooks.RemovableHandle | _Listed] = []

    # -- module resolution -------------------------------------------------------------
    def _module(self, info: HookInfo) -> nn.Module:
        return site_module(self.hf_model, self.adapter, info)

    def _attn_module(self, layer: int) -> Any:  # the family's attention module (its head_dim, ...)
        block = layer_list(self.hf_model, self.adapter.modules["layers"])[layer]
        return get_module(block, self.adapter.block_at(self.hf_model.config, layer)["attn"])

    def _head_dim(self, info: HookInfo) -> int | None:
        """d_head where a module's flat [.., head*d_head] tensor is seen per head (hook_z, hook_q/k/v)."""
        if info.spec.site.kind in ("in", "out") and info.spec.shape.endswith("d_head"):
            return int(self._attn_module(info.at).head_dim)
        return None

    # -- context manager -----------------------------------------------------------------
    def __enter__(self) -> HookSession:
        self.sessions.enter(self)
        self.state.step = -1  # a session used again counts its forward passes afresh
        try:
            self._install()
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._remove()

    def _remove(self) -> None:
        for handle in reversed(self._handles):
            handle.remove()
        self._handles.clear()
        self.sessions.leave(self)
        self.state.resid_pre.clear()
        self.state.block_out.clear()
        self.state.cross_mid.clear()
        self.state.cross_delta.clear()
        self.state.split_in.clear()

    def _chains(self) -> list[tuple[HookInfo, HookFn]]:
        """Every hook as a forward one, in firing order; at one name, forward edits run before backward hooks
        attach (a backward hook sees the gradient of the edited activation)."""
        out = []
        for info, fn in self.hooks:
            fn, head_dim = tl_calling(fn), self._head_dim(info)
            out.append((info.order, 0, info, fn if head_dim is None else per_head(fn, head_dim)))
        for info, fn in self.bwd_hooks:
            fn, site_info, head_dim = tl_calling(fn), info, self._head_dim(info)
            if info.spec.site.kind == "resid_mid":  # d/d(resid_mid) is d/d(attn_out): it only enters that sum
                site_info = replace(self.vocab.info(f"blocks.{info.layer}.hook_attn_out"), name=info.name)
            out.append((info.order, 1, site_info, on_gradient(fn, info.name, head_dim)))
        return [(info, fn) for _, _, info, fn in sorted(out, key=lambda h: h[:2])]

    def _install(self) -> None:
        if not self.hooks and not self.bwd_hooks:
            return
        ins: dict[int, list] = defaultdict(list)
        outs: dict[int, list] = defaultdict(list)
        modules: dict[int, nn.Module] = {}
        mids: dict[int, list] = defaultdict(list)
        views: dict[int, list] = defaultdict(list)  # computed per-module views: norm scales, head results
        attn: dict[int, dict[str, list]] = defaultdict(
            lambda: {"pattern": [], "pattern_rows": [], "scores": [], "rot_q": [], "rot_k": []}
        )
        cross: dict[int, dict[str, list]] = defaultdict(lambda: {"attn": [], "mid": [], "mlp": []})
        split: dict[int, dict[str, list]] = defaultdict(
            lambda: {"attn": [], **{k: [] for k in split_inputs.PROJECTIONS}}
        )

        injected: set[int] = set()
        for info, fn in self._chains():
            site = info.spec.site
            if site.kind == "inject":  # at the next module's input, as the difference from block l's stashed output
                module = self._module(info)
                modules[id(module)] = module
                ins[id(module)].append((info, self._injected(fn, info.at)))
                injected.add(info.at)
            elif site.kind in ("in", "out", "scale", "result"):
                module = self._module(info)
                modules[id(module)] = module
                {"in": ins, "out": outs}.get(site.kind, views)[id(module)].append((info, fn))
            elif site.kind == "resid_mid":
                mids[info.at].append((info, fn))
            elif site.kind in ("cross_write", "cross_mid"):
                cross[info.at][site.key or "mid"].append((info, fn))
            elif site.kind == "split":
                split[info.at][site.key or "attn"].append((info, fn))
            elif site.kind == "sae":  # run by the SAE's splice at its host name, while this session lasts
                self._handles.append(_Listed(self.sessions.sae_hooks[info.name], (info, fn, self.state)))
            else:
                attn[info.at][site.kind].append((info, fn))

        # resid_mid = resid_pre + attn_out: stash resid_pre (after its own hooks), edit via attn_out.
        attn_out_modules = {}
        for layer in mids:
            block = layer_list(self.hf_model, self.adapter.modules["layers"])[layer]
            modules[id(block)] = block
            ins[id(block)].append((None, layer))
            out_module = get_module(block, self.adapter.block["attn_out"])
            modules[id(out_module)] = out_module
            outs.setdefault(id(out_module), [])
            attn_out_modules[id(out_module)] = layer

        # a cross-attention layer's writes: resid_pre stashed, read at ln2's input and the layer's output, before the
        # layer's own output hooks (resid_post sees the edited writes)
        for layer, chains in cross.items():
            block = layer_list(self.hf_model, self.adapter.modules["layers"])[layer]
            modules[id(block)] = block
            ins[id(block)].append((None, layer))
            ln2 = get_module(block, self.adapter.block_at(self.hf_model.config, layer)["ln2"])
            self._handles.append(
                ln2.register_forward_pre_hook(
                    cross_hooks.mid_hook(self.state, layer, chains["attn"], chains["mid"]), with_kwargs=True
                )
            )
            self._handles.append(block.register_forward_hook(cross_hooks.out_hook(self.state, layer, chains["mlp"])))
        for key, chain in ins.items():
            self._handles.append(modules[key].register_forward_pre_hook(self._pre_hook(chain), with_kwargs=True))
        for layer, chains in split.items():  # before the projections' output hooks: hook_q sees the edited queries
            block = layer_list(self.hf_model, self.adapter.modules["layers"])[layer]
            self._handles += split_inputs.install(self.hf_model, self.adapter, block, layer, chains, self.state)
        for key, chain in views.items():  # before the module's output hooks: hook_normalized sees a rescaled norm
            make = self._scale_hook if chain[0][0].spec.site.kind == "scale" else self._result_hook
            self._handles.append(modules[key].register_forward_hook(make(chain, modules[key]), with_kwargs=True))
        for key, chain in outs.items():
            mid = attn_out_modules.get(key)
            fields = {self.adapter.output_fields.get(info.spec.site.key) for info, _ in chain}
            if len(fields) > 1:
                raise ValueError(f"hooks on one module read different output fields {sorted(map(str, fields))}")
            hook = self._out_hook(
                chain, mid, mids.get(mid, []) if mid is not None else [], fields.pop() if fields else None
            )
            self._handles.append(modules[key].register_forward_hook(hook))
        for layer in sorted(injected):  # after block l's output hooks: the stash holds resid_post as edited
            block = layer_list(self.hf_model, self.adapter.modules["layers"])[layer]
            self._handles.append(block.register_forward_hook(self._stash_output(layer)))
        if attn:
            self._route_attention(attn)
        self._handles.append(self.hf_model.register_forward_pre_hook(self._count_step))

    def _count_step(self, module, args) -> None:
        self.state.step += 1

    def _pre_hook(self, chain: list):
        state = self.state

        def hook(module, args, kwargs):
            if args:
                tensor = args[0]
            else:
                tensor = kwargs["hidden_states"]
            original = tensor
            for info, fn in chain:
                if info is None:  # stash for resid_mid of layer `fn`
                    state.resid_pre[fn] = tensor
                else:
                    tensor = run_chain([(info, fn)], tensor, state)
            if tensor is original:
                return None
            if args:
                return (tensor, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": tensor}

        return hook

    def _out_hook(self, chain: list, mid_layer: int | None, mid_chain: list, output_field: str | None = None):
        state = self.state

        def hook(module, args, output):
            if output_field is not None:  # a ModelOutput: hook one of its fields, put the edit back there
                edited = run_chain(chain, getattr(output, output_field), state)
                output[output_field] = edited
                return output
            tensor = output[0] if isinstance(output, tuple) else output
            original = tensor
            tensor = run_chain(chain, tensor, state)
            if mid_chain:
                resid_pre = state.resid_pre[mid_layer]
                mid = resid_pre + tensor
                edited = run_chain(mid_chain, mid, state)
                if edited is not mid:
                    tensor = edited - resid_pre
                elif mid.requires_grad:  # put the hooks' resid_mid in the graph: + exact zeros, gradients once each
                    again = resid_pre + tensor
                    tensor = tensor + (mid - mid.detach()) - (again - again.detach())
            if tensor is original:
                return None
            return (tensor, *output[1:]) if isinstance(output, tuple) else tensor

        return hook

    def _stash_output(self, layer: int):
        def hook(module, args, output):
            self.state.block_out[layer] = output[0] if isinstance(output, tuple) else output

        return hook

    def _injected(self, fn, layer: int):
        """hook_deepstack: the next input less block ``layer``'s output. The input is returned as input + (the hooks'
        result - the difference, computed again): bitwise itself unless a hook edits, and differentiable."""
        state = self.state

        def element(x: Tensor, hook) -> Tensor:
            base = state.block_out[layer]
            added = x - base
            result = fn(added, hook)
            if result is not None:
                check_result(hook.name, result, added)
                added = result
            return x + (added - (x - base))

        return element

    # A computed view is computed twice, independently: the hooks get one, the other is the reference an edit is
    # measured against. Unedited, the two are bitwise equal and the output is unchanged exactly; edited (in place
    # too), the output moves by the edit; and the gradient reaching the module's input is not counted twice.
    def _scale_hook(self, chain: list, norm: nn.Module):
        state = self.state

        def hook(module, args, kwargs, output):
            x = args[0] if args else kwargs["hidden_states"]
            edited = run_chain(chain, norm_scale(norm, x), state)
            return (output.float() * (norm_scale(norm, x) / edited)).to(output.dtype)

        return hook

    def _result_hook(self, chain: list, o_proj: Any):  # o_proj: the attention's output projection (a Linear)
        state, head_dim = self.state, int(self._attn_module(chain[0][0].at).head_dim)

        def results(z: Tensor) -> Tensor:  # batch pos head d_model
            w = o_proj.weight.view(o_proj.weight.shape[0], -1, head_dim)
            return torch.einsum("...he,dhe->...hd", z.view(*z.shape[:-1], -1, head_dim), w)

        def hook(module, args, kwargs, output):
            z = args[0] if args else kwargs["input"]
            edited = run_chain(chain, results(z), state)
            return output + (edited.sum(-2) - results(z).sum(-2))

        return hook

    def _route_attention(self, requests: dict[int, dict[str, list]]) -> None:
        state = self.state
        grad_rows = {info.layer for info, _ in self.bwd_hooks if info.spec.site.kind == "pattern_rows"}
        for layer, chains in requests.items():
            module = self._attn_module(layer)
            self.sessions.route(module.config)
            pattern, rows, scores = chains["pattern"], chains["pattern_rows"], chains["scores"]
            rot_q, rot_k = chains["rot_q"], chains["rot_k"]

            cross = layer in self.adapter.crossing(self.hf_model.config)  # keys: the image's, not positions

            def inject(
                module,
                args,
                kwargs,
                pattern=pattern,
                rows=rows,
                scores=scores,
                rot_q=rot_q,
                rot_k=rot_k,
                differentiable=layer in grad_rows,
                cross=cross,
            ):
                request = attention.AttentionRequest(
                    pattern=(lambda p: run_chain(pattern, p, state)) if pattern else None,
                    scores=(lambda s: run_chain(scores, s, state)) if scores else None,
                    rows=(lambda r: run_chain(rows, r, state)) if rows else None,
                    rot_q=(lambda q: run_chain(rot_q, q, state)) if rot_q else None,
                    rot_k=(lambda k: run_chain(rot_k, k, state)) if rot_k else None,
                    query_positions=state.query_positions if state.step == 0 else None,
                    key_length=None if state.prefill_length is None or cross else state.prefill_length + state.step,
                    differentiable_rows=differentiable,
                )
                return args, {**kwargs, attention.REQUEST_KWARG: request}

            self._handles.append(module.register_forward_pre_hook(inject, with_kwargs=True))
