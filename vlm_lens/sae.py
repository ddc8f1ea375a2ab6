"""Sparse autoencoders spliced into the model, their features as hook points (SAELens's names).

    model.add_sae(sae, "blocks.2.hook_resid_post", use_error_term=True)   # logits unchanged (to float error)
    _, cache = model.run_with_cache(inputs, names_filter=lambda n: "hook_sae" in n)
    cache["blocks.2.hook_resid_post.hook_sae_acts_post"]                  # [batch, pos, d_sae]
    model.run_with_hooks(inputs, fwd_hooks=[("blocks.2.hook_resid_post.hook_sae_acts_post", ablate_feature)])
    model.reset_saes()

Any module with ``encode(x) -> acts`` and ``decode(acts) -> x`` fits (a SAELens ``SAE`` does; its
``cfg.hook_name`` / ``cfg.metadata.hook_name`` is the default place). At the host name the
activation is replaced by the SAE's output, as SAELens does:

    input -> hook_sae_input -> encode -> hook_sae_acts_post -> decode -> hook_sae_recons
          -> (+ hook_sae_error: input - the clean reconstruction, with use_error_term) -> hook_sae_output

The error term is the input minus the reconstruction of the unedited features, so with it the
model's output is unchanged and an edit to the features moves it by exactly the edit's decoded
difference. The SAE runs in its own dtype and device (input cast to them, output cast back).
Hooks at the host name added after the SAE see its output. The splice is a persistent hook
session: it fires on every forward until ``reset_saes()``. Cost per forward: one encode and
decode at the host (a second with the error term while hooks edit the features).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from vlm_lens.errors import InputError
from vlm_lens.hook_calls import run_chain
from vlm_lens.hooks import HookSession, Sessions

if TYPE_CHECKING:
    from vlm_lens.hosts import ModelHost as _Host
else:
    _Host = object


@dataclass
class Splice:
    sae: Any
    host: str
    use_error_term: bool
    session: HookSession


def _default_hook_name(sae: Any) -> str:
    cfg = getattr(sae, "cfg", None)
    name = getattr(cfg, "hook_name", None) or getattr(getattr(cfg, "metadata", None), "hook_name", None)
    if not isinstance(name, str):
        raise InputError(f"{type(sae).__name__} names no hook (no cfg.hook_name): pass add_sae(sae, hook_name)")
    return name


def _splice(sae: Any, host: str, use_error_term: bool, sessions: Sessions):
    param = next(iter(sae.parameters()), None)

    def run(suffix: str, tensor: Tensor) -> Tensor:
        for info, fn, state in list(sessions.sae_hooks.get(f"{host}.{suffix}", ())):
            tensor = run_chain([(info, fn)], tensor, state)
        return tensor

    def splice(x: Tensor, hook) -> Tensor:
        sae_x = x if param is None else x.to(param.device, param.dtype)
        acts = run("hook_sae_acts_post", sae.encode(run("hook_sae_input", sae_x)))
        out = run("hook_sae_recons", sae.decode(acts))
        if use_error_term:
            hooked = any(
                sessions.sae_hooks.get(f"{host}.{s}")
                for s in ("hook_sae_input", "hook_sae_acts_post", "hook_sae_recons")
            )
            with torch.no_grad():
                clean = sae.decode(sae.encode(sae_x)) if hooked else out.detach()
            out = out + run("hook_sae_error", sae_x - clean)
        return run("hook_sae_output", out).to(x.device, x.dtype)

    return splice


class SAESplicing(_Host):  # its host, for the type checker only (vlm_lens.hosts)
    """Mixin for ``HookedVLM`` (needs ``hooks()``, ``vocab``, ``hook_shape`` and ``_saes``)."""

    def add_sae(self, sae: Any, hook_name: str | None = None, use_error_term: bool | None = None) -> list[str]:
        """Splice ``sae`` at ``hook_name`` (default: the SAE's own cfg) until ``reset_saes()``; returns its hook
        names. ``use_error_term`` (default: the SAE's attribute, else False) adds back what it fails to reconstruct."""
        host = _default_hook_name(sae) if hook_name is None else hook_name
        if not (callable(getattr(sae, "encode", None)) and callable(getattr(sae, "decode", None))):
            raise InputError(f"{type(sae).__name__} has no encode/decode: an SAE maps x -> encode(x) -> decode(acts)")
        width = self.hook_shape(host)[-1]
        d_in = getattr(getattr(sae, "cfg", None), "d_in", None)
        if isinstance(d_in, int) and isinstance(width, int) and d_in != width:
            raise InputError(f"the SAE reads d_in={d_in} but {host} is {width} wide on this model")
        names = self.vocab.add_sae(host)
        use_error_term = bool(getattr(sae, "use_error_term", False)) if use_error_term is None else use_error_term
        session = self.hooks([(host, _splice(sae, host, use_error_term, self._sessions))])
        try:
            session.__enter__()
        except BaseException:
            self.vocab.remove_sae(host)
            raise
        self._saes[host] = Splice(sae, host, use_error_term, session)
        return names

    def reset_saes(self, hook_names: list[str] | None = None) -> None:
        """Remove the SAEs spliced at ``hook_names`` (None: all), and their hook names."""
        for host in list(self._saes) if hook_names is None else hook_names:
            if host not in self._saes:
                raise InputError(f"no SAE is spliced at {host!r}; spliced: {sorted(self._saes)}")
            splice = self._saes.pop(host)
            splice.session.__exit__(None, None, None)
            self.vocab.remove_sae(host)

    @property
    def saes(self) -> dict[str, nn.Module]:
        """Host hook name -> the SAE spliced there."""
        return {host: splice.sae for host, splice in self._saes.items()}
