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

import inspect
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn

from vlm_lens import attention
from vlm_lens.adapter import Adapter, get_module, layer_list
from vlm_lens.errors import HookSessionError
from vlm_lens.names import HookInfo, Vocabulary

HookFn = Callable[[Tensor, "Hook"], Tensor | None]


@dataclass
class RunState:
    """Per-session state: the forward-pass counter and stashes for computed sites."""

    step: int = -1
    query_positions: Tensor | None = None
    resid_pre: dict[int, Tensor] = field(default_factory=dict)
    ctx: dict = field(default_factory=dict)


class Hook:
    """What a hook function receives as its second argument."""

    __slots__ = ("name", "_layer", "_state")

    def __init__(self, info: HookInfo, state: RunState):
        self.name = info.name
        self._layer = info.layer
        self._state = state

    def layer(self) -> int | None:
        return self._layer

    @property
    def step(self) -> int:
        return self._state.step

    @property
    def ctx(self) -> dict:
        return self._state.ctx

    def __repr__(self) -> str:
        return f"Hook({self.name!r}, step={self.step})"


def _check_result(name: str, result: Tensor, tensor: Tensor) -> None:
    if not isinstance(result, Tensor):
        raise TypeError(f"hook on {name} returned {type(result).__name__}; return a Tensor or None")
    if result.shape != tensor.shape:
        raise ValueError(f"hook on {name} returned shape {tuple(result.shape)}, expected {tuple(tensor.shape)}")
    if result.dtype != tensor.dtype or result.device != tensor.device:
        raise TypeError(f"hook on {name} returned a {result.dtype} tensor on {result.device}; the activation is "
                        f"{tensor.dtype} on {tensor.device}: return result.to(activation.device, activation.dtype)")


def _run_chain(chain: list[tuple[HookInfo, HookFn]], tensor: Tensor, state: RunState) -> Tensor:
    for info, fn in chain:
        result = fn(tensor, Hook(info, state))
        if result is not None:
            _check_result(info.name, result, tensor)
            tensor = result
    return tensor


def _tl_calling(fn: HookFn) -> HookFn:
    """TransformerLens calls ``fn(activation, hook=hook)``: a hook written ``fn(act, *, hook)`` gets the keyword."""
    try:
        param = inspect.signature(fn).parameters.get("hook")
    except (TypeError, ValueError):  # builtins without a signature
        return fn
    if param is not None and param.kind is inspect.Parameter.KEYWORD_ONLY:
        return lambda tensor, hook: fn(tensor, hook=hook)
    return fn


def _on_gradient(fn: HookFn, name: str, head_dim: int | None = None) -> HookFn:
    """A backward hook as a forward one: it registers ``fn`` on the activation's gradient. TL's semantics: ``fn``
    receives d(output)/d(activation) at this name (per head for ``hook_z``) and may return a replacement."""

    def attach(tensor: Tensor, hook: Hook) -> None:
        if not tensor.requires_grad:
            return None  # under torch.no_grad(): no backward will come

        def on_grad(grad: Tensor) -> Tensor | None:
            view = grad if head_dim is None else grad.view(*grad.shape[:-1], grad.shape[-1] // head_dim, head_dim)
            result = fn(view, hook)
            if result is None:
                return None
            _check_result(f"{name} (backward)", result, view)
            return result.reshape(grad.shape)

        tensor.register_hook(on_grad)
        return None

    return attach


def _per_head(fn: HookFn, head_dim: int) -> HookFn:
    """attn.hook_z: the o_proj input [batch pos head*d_head] seen as [batch pos head d_head]."""

    def per_head(tensor: Tensor, hook: Hook) -> Tensor | None:
        heads = tensor.view(*tensor.shape[:-1], tensor.shape[-1] // head_dim, head_dim)
        result = fn(heads, hook)
        if result is None:
            return None
        _check_result(hook.name, result, heads)
        return result.reshape(tensor.shape)

    return per_head


class Sessions:
    """The hook sessions active on one model, and the attention routing they share.

    Each config's own attention implementation is recorded by the first session that routes it and
    restored when the last active session closes, whatever order sessions close in."""

    def __init__(self):
        self.active: list[HookSession] = []
        self._restore: list[tuple[object, str | None]] = []

    def enter(self, session: HookSession) -> None:
        if any(s is session for s in self.active):
            raise HookSessionError("this hook session is already active: entering it again would fire its hooks twice; "
                                   "make a second one with model.hooks(...)")
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
    ):
        self.sessions = Sessions() if sessions is None else sessions
        self.hf_model = hf_model
        self.adapter = adapter
        self.vocab = vocab
        self.state = RunState(query_positions=query_positions)
        self.hooks = [(vocab.info(name), fn) for name, fn in fwd_hooks]
        self.bwd_hooks = [(vocab.info(name), fn) for name, fn in bwd_hooks]
        for info, fn in self.hooks + self.bwd_hooks:
            if not callable(fn):
                raise TypeError(f"the hook for {info.name} is not callable: {fn!r}")
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    # -- module resolution -------------------------------------------------------------
    def _module(self, info: HookInfo) -> nn.Module:
        key = info.spec.site.key
        if key == "block":
            return layer_list(self.hf_model, self.adapter.modules["layers"])[info.layer]
        if key == "vision_block":
            return layer_list(self.hf_model, self.adapter.modules["vision_layers"])[info.layer]
        if key in self.adapter.block:
            layer = layer_list(self.hf_model, self.adapter.modules["layers"])[info.layer]
            return get_module(layer, self.adapter.block[key])
        return get_module(self.hf_model, self.adapter.modules[key])

    def _attn_module(self, layer: int) -> nn.Module:
        block = layer_list(self.hf_model, self.adapter.modules["layers"])[layer]
        return get_module(block, self.adapter.block["attn"])

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

    def _chains(self) -> list[tuple[HookInfo, HookFn]]:
        """Every hook as a forward one, in firing order; at one name, forward edits run before backward hooks
        attach (a backward hook sees the gradient of the edited activation)."""
        out = []
        for info, fn in self.hooks:
            fn = _tl_calling(fn)
            if info.spec.site.key == "attn_o":
                fn = _per_head(fn, self._attn_module(info.layer).head_dim)
            out.append((info.order, 0, info, fn))
        for info, fn in self.bwd_hooks:
            fn, site_info = _tl_calling(fn), info
            head_dim = self._attn_module(info.layer).head_dim if info.spec.site.key == "attn_o" else None
            if info.spec.site.kind == "resid_mid":  # d/d(resid_mid) is d/d(attn_out): it only enters that sum
                site_info = replace(self.vocab.info(f"blocks.{info.layer}.hook_attn_out"), name=info.name)
            out.append((info.order, 1, site_info, _on_gradient(fn, info.name, head_dim)))
        return [(info, fn) for _, _, info, fn in sorted(out, key=lambda h: h[:2])]

    def _install(self) -> None:
        if not self.hooks and not self.bwd_hooks:
            return
        ins: dict[int, list] = defaultdict(list)
        outs: dict[int, list] = defaultdict(list)
        modules: dict[int, nn.Module] = {}
        mids: dict[int, list] = defaultdict(list)
        attn: dict[int, dict[str, list]] = defaultdict(lambda: {"pattern": [], "pattern_rows": []})

        for info, fn in self._chains():
            site = info.spec.site
            if site.kind in ("in", "out"):
                module = self._module(info)
                modules[id(module)] = module
                (ins if site.kind == "in" else outs)[id(module)].append((info, fn))
            elif site.kind == "resid_mid":
                mids[info.layer].append((info, fn))
            else:
                attn[info.layer][site.kind].append((info, fn))

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

        for key, chain in ins.items():
            self._handles.append(modules[key].register_forward_pre_hook(self._pre_hook(chain), with_kwargs=True))
        for key, chain in outs.items():
            mid = attn_out_modules.get(key)
            fields = {self.adapter.output_fields.get(info.spec.site.key) for info, _ in chain}
            if len(fields) > 1:
                raise ValueError(f"hooks on one module read different output fields {sorted(map(str, fields))}")
            hook = self._out_hook(chain, mid, mids.get(mid, []), fields.pop() if fields else None)
            self._handles.append(modules[key].register_forward_hook(hook))
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
                    tensor = _run_chain([(info, fn)], tensor, state)
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
                edited = _run_chain(chain, getattr(output, output_field), state)
                output[output_field] = edited
                return output
            tensor = output[0] if isinstance(output, tuple) else output
            original = tensor
            tensor = _run_chain(chain, tensor, state)
            if mid_chain:
                resid_pre = state.resid_pre[mid_layer]
                mid = resid_pre + tensor
                edited = _run_chain(mid_chain, mid, state)
                if edited is not mid:
                    tensor = edited - resid_pre
            if tensor is original:
                return None
            return (tensor, *output[1:]) if isinstance(output, tuple) else tensor

        return hook

    def _route_attention(self, requests: dict[int, dict[str, list]]) -> None:
        state = self.state
        grad_rows = {info.layer for info, _ in self.bwd_hooks if info.spec.site.kind == "pattern_rows"}
        for layer, chains in requests.items():
            module = self._attn_module(layer)
            self.sessions.route(module.config)
            pattern, rows = chains["pattern"], chains["pattern_rows"]

            def inject(module, args, kwargs, pattern=pattern, rows=rows, differentiable=layer in grad_rows):
                request = attention.AttentionRequest(
                    pattern=(lambda p: _run_chain(pattern, p, state)) if pattern else None,
                    rows=(lambda r: _run_chain(rows, r, state)) if rows else None,
                    query_positions=state.query_positions if state.step == 0 else None,
                    differentiable_rows=differentiable,
                )
                return args, {**kwargs, attention.REQUEST_KWARG: request}

            self._handles.append(module.register_forward_pre_hook(inject, with_kwargs=True))
