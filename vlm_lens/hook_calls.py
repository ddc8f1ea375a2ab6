"""How a hook function is called: what it receives (``Hook``), how its return value is checked, and the
wrappers that adapt one to a site: TL's keyword form, per-head views, backward hooks attached to the
forward's tensors. ``vlm_lens.hooks`` installs them."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from vlm_lens.errors import InputError, InputTypeError
from vlm_lens.names import HookInfo

HookFn = Callable[[Tensor, "Hook"], Tensor | None]


@dataclass
class RunState:
    """Per-session state: the forward-pass counter and stashes for computed sites."""

    step: int = -1
    query_positions: Tensor | None = None
    prefill_length: int | None = None  # the inputs' positions: forward k of a generation sees prefill_length + k keys
    resid_pre: dict[int, Tensor] = field(default_factory=dict)
    block_out: dict[int, Tensor] = field(default_factory=dict)  # block outputs, for hook_deepstack
    cross_mid: dict[int, Tensor] = field(default_factory=dict)  # a cross-attention layer's resid_mid (vlm_lens.cross)
    cross_delta: dict[int, Tensor | None] = field(default_factory=dict)  # and what its hooks changed it by
    split_in: dict[int, dict[str, Tensor]] = field(default_factory=dict)  # ln1's input (vlm_lens.split_inputs)
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


def check_result(name: str, result: Tensor, tensor: Tensor) -> None:
    if not isinstance(result, Tensor):
        raise InputTypeError(f"hook on {name} returned {type(result).__name__}; return a Tensor or None")
    if result.shape != tensor.shape:
        raise InputError(f"hook on {name} returned shape {tuple(result.shape)}, expected {tuple(tensor.shape)}")
    if result.dtype != tensor.dtype or result.device != tensor.device:
        raise InputTypeError(
            f"hook on {name} returned a {result.dtype} tensor on {result.device}; the activation is "
            f"{tensor.dtype} on {tensor.device}: return result.to(activation.device, activation.dtype)"
        )


def run_chain(chain: list[tuple[HookInfo, HookFn]], tensor: Tensor, state: RunState) -> Tensor:
    for info, fn in chain:
        result = fn(tensor, Hook(info, state))
        if result is not None:
            check_result(info.name, result, tensor)
            tensor = result
    return tensor


def tl_calling(fn: HookFn) -> HookFn:
    """TransformerLens calls ``fn(activation, hook=hook)``: a hook written ``fn(act, *, hook)`` gets the keyword."""
    try:
        param = inspect.signature(fn).parameters.get("hook")
    except (TypeError, ValueError):  # builtins without a signature
        return fn
    if param is not None and param.kind is inspect.Parameter.KEYWORD_ONLY:
        keyword: Callable[..., Any] = fn
        return lambda tensor, hook: keyword(tensor, hook=hook)
    return fn


def on_gradient(fn: HookFn, name: str, head_dim: int | None = None) -> HookFn:
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
            check_result(f"{name} (backward)", result, view)
            return result.reshape(grad.shape)

        tensor.register_hook(on_grad)
        return None

    return attach


def per_head(fn: HookFn, head_dim: int) -> HookFn:
    """attn.hook_z (o_proj's input) and hook_q/k/v (the projections' outputs): [batch pos head*d_head] seen as
    [batch pos head d_head]. Where gradients are on, the per-head view goes on in the model's place (the same
    values), so the tensor a hook saved is the one the loss is differentiated through (``act.retain_grad()``,
    ``torch.autograd.grad(metric, act)``: attribution patching)."""

    def per_head(tensor: Tensor, hook: Hook) -> Tensor | None:
        heads = tensor.view(*tensor.shape[:-1], tensor.shape[-1] // head_dim, head_dim)
        result = fn(heads, hook)
        if result is None:
            return heads.reshape(tensor.shape) if heads.requires_grad else None
        check_result(hook.name, result, heads)
        return result.reshape(tensor.shape)

    return per_head
