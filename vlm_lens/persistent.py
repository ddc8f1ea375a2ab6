"""Hooks that stay on the model across calls, with TransformerLens's names.

    model.add_hook("blocks.3.hook_resid_post", steer)         # fires on every forward from now on
    model.add_perma_hook("blocks.0.hook_embed", record)        # survives reset_hooks()
    model.reset_hooks()                                        # removes steer, keeps record
    model.reset_hooks(including_permanent=True)                # removes both
    model.hook_dict["blocks.3.hook_resid_post"].add_hook(fn)   # TL's HookPoint calls

Each ``add_hook`` is one hook session (``vlm_lens.hooks``) entered until it is reset, so a persistent
hook fires on ``run_with_hooks``, ``run_with_cache``, ``generate`` and on a call to ``hf_model``
itself, and removing it removes exactly the torch hooks it added. Per-call hooks at the same name
fire after the persistent ones. ``hook.step`` counts the forward passes since the hook was added, and
``hook.ctx`` lives as long as the hook (``reset_hooks(clear_contexts=True)`` empties the survivors').
A persistent hook on the attention rows reads the last position (there are no per-call inputs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import nn

from vlm_lens.errors import InputError
from vlm_lens.hooks import HookFn, HookSession, site_module

if TYPE_CHECKING:
    from vlm_lens.hosts import ModelHost as _Host
else:
    _Host = object

DIRECTIONS = ("fwd", "bwd")


@dataclass
class Added:
    """One persistent hook: its session (entered), its direction and whether reset_hooks() spares it."""

    name: str
    fn: HookFn
    dir: str
    permanent: bool
    session: HookSession


class HookPoint:
    """TL's ``HookPoint`` for one name, as ``model.hook_dict[name]`` gives it: its calls act on the model's
    persistent hooks at that name."""

    def __init__(self, model, name: str):
        self.model, self.name = model, name

    def layer(self) -> int | None:
        return self.model.vocab.info(self.name).layer

    def add_hook(
        self, hook: HookFn, dir: str = "fwd", is_permanent: bool = False, level=None, prepend: bool = False
    ) -> None:
        self.model.add_hook(self.name, hook, dir=dir, is_permanent=is_permanent, level=level, prepend=prepend)

    def add_perma_hook(self, hook: HookFn, dir: str = "fwd") -> None:
        self.model.add_hook(self.name, hook, dir=dir, is_permanent=True)

    def remove_hooks(self, dir: str = "fwd", including_permanent: bool = False, level=None) -> None:
        self.model.reset_hooks(direction=dir, including_permanent=including_permanent, names={self.name})

    @property
    def fwd_hooks(self) -> list[Added]:
        return [a for a in self.model._added if a.name == self.name and a.dir == "fwd"]

    @property
    def bwd_hooks(self) -> list[Added]:
        return [a for a in self.model._added if a.name == self.name and a.dir == "bwd"]

    def __repr__(self) -> str:
        return f"HookPoint({self.name!r}, {len(self.fwd_hooks)} fwd, {len(self.bwd_hooks)} bwd)"


class PersistentHooks(_Host):  # its host, for the type checker only (vlm_lens.hosts)
    """Mixin for ``HookedVLM`` (needs ``hooks()``, ``vocab``, ``hf_model``, ``adapter`` and ``_added``)."""

    _added: list[Added]  # the persistent hooks, oldest first (HookedVLM.__init__ starts it empty)

    def add_hook(
        self, name, hook: HookFn, dir: str = "fwd", is_permanent: bool = False, level=None, prepend: bool = False
    ) -> None:
        """Add ``hook`` at ``name`` (or every name a filter function accepts) until ``reset_hooks()``; with
        ``is_permanent``, until ``reset_hooks(including_permanent=True)``. ``dir="bwd"``: a backward hook."""
        if dir not in DIRECTIONS:
            raise InputError(f"dir must be 'fwd' or 'bwd', got {dir!r}")
        if prepend:
            raise InputError(
                "prepend=True is not supported: persistent hooks fire in the order they were added, "
                "before any per-call hook; add this one first (reset_hooks() and re-add)"
            )
        if level is not None:
            raise InputError(
                "hook levels (TL's hooks contexts) are not supported; every persistent hook is at one level"
            )
        for one_name, fn in self._expand([(name, hook)]):
            pair = [(one_name, fn)]
            session = self.hooks(pair if dir == "fwd" else (), bwd_hooks=pair if dir == "bwd" else ())
            session.__enter__()
            self._added.append(Added(one_name, hook, dir, is_permanent, session))

    def add_perma_hook(self, name, hook: HookFn, dir: str = "fwd") -> None:
        self.add_hook(name, hook, dir=dir, is_permanent=True)

    def reset_hooks(
        self,
        clear_contexts: bool = True,
        direction: str = "both",
        including_permanent: bool = False,
        level=None,
        names: set[str] | None = None,
    ) -> None:
        """Remove the persistent hooks (``direction`` "fwd", "bwd" or "both"; permanent ones only with
        ``including_permanent``), newest first; each removes exactly the torch hooks it added."""
        if direction not in (*DIRECTIONS, "both"):
            raise InputError(f"direction must be 'fwd', 'bwd' or 'both', got {direction!r}")
        kept: list = []
        for added in reversed(self._added):
            if (
                direction in ("both", added.dir)
                and (including_permanent or not added.permanent)
                and (names is None or added.name in names)
            ):
                added.session.__exit__(None, None, None)
            else:
                kept.append(added)
                if clear_contexts:
                    added.session.state.ctx.clear()
        self._added = kept[::-1]

    @property
    def hook_dict(self) -> dict[str, HookPoint]:
        """Every hook name -> its ``HookPoint`` (TL's ``model.hook_dict``)."""
        return {name: HookPoint(self, name) for name in self.vocab.names()}

    @property
    def mod_dict(self) -> dict[str, nn.Module]:
        """Every hook name -> the HF module whose torch hooks carry it (SAE names: the SAE spliced there)."""
        out = {}
        for name in self.vocab.names():
            info = self.vocab.info(name)
            out[name] = (
                self._saes[info.spec.site.key].sae
                if info.spec.site.kind == "sae"
                else site_module(self.hf_model, self.adapter, info)
            )
        return out
