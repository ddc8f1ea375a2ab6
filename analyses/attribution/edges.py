"""Edges: how much each path from one component to a later one carries a metric's difference, a circuit of the
strongest edges, and how faithful it is, measured by running it.

Components are the residual stream's writers and readers. Writers (senders): ``embed`` (the token and image
embeddings, ``hook_embed``), ``attn{l}`` (``blocks.{l}.hook_attn_out``) and ``mlp{l}`` (``hook_mlp_out``). Readers
(receivers): ``attn{l}`` (its query, key and value inputs, ``hook_q_input`` / ``hook_k_input`` /
``hook_v_input``, one copy per head), ``mlp{l}`` (``hook_mlp_in``, the MLP's own copy) and ``logits`` (the last
layer's residual, read only by the final norm and unembedding). Every writer sends to every later reader.

- ``edge_attribution(..., method="eap")`` (Syed et al., 2023): the score of ``u -> v`` is
  ``(out_u(clean) - out_u(corrupted)) . d metric / d in_v`` at the clean run, the gradient taken at ``v``'s own copy
  of its input, so it runs through ``v`` alone. ``method="eap-ig"`` (Hanna et al., 2024) averages that gradient over
  ``steps`` points of the straight path from the corrupted to the clean embeddings.
- ``run_circuit(..., kept)``: the clean run in which every edge not kept is cut: its receiver reads, in place of the
  sender's output in this run, the sender's corrupted output (edge patching). Every edge kept gives
  ``metric(clean)``; none kept gives ``metric(corrupted)`` (each reader then sees the corrupted residual).
- ``faithfulness(...)``: the circuit of the top-k edges by |score|, run for each k;
  ``(metric(circuit) - metric(corrupted)) / (metric(clean) - metric(corrupted))``.
- ``path_patch(..., sender, receiver)``: ``metric(clean)`` minus the metric with that one edge cut: the real effect
  an edge score estimates.

Families whose image enters by cross-attention (Llama-3.2-Vision) are refused: the image there is no writer of the
residual stream.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import pandas as pd
import torch
from torch import Tensor

from analyses.attribution.nodes import _scalar
from vlm_lens import HookedVLM
from vlm_lens.errors import InputError
from vlm_lens.inputs import VLMInputs

EDGE_METHODS = ("eap", "eap-ig")
HEAD_INPUTS = ("hook_q_input", "hook_k_input", "hook_v_input")


def component(name: str) -> tuple[str, int | None]:
    """A component's kind and layer: ``"attn3"`` -> ("attn", 3); ``"embed"`` and ``"logits"`` have no layer."""
    kind = name.rstrip("0123456789")
    if name in ("embed", "logits"):
        return name, None
    if kind not in ("attn", "mlp") or kind == name:
        raise InputError(f"{name!r} is no component: give embed, attn<layer>, mlp<layer> or logits")
    return kind, int(name[len(kind) :])


@dataclass(frozen=True)
class Graph:
    """The components of one model and where each writes and reads."""

    n_layers: int

    @property
    def senders(self) -> list[str]:
        return ["embed"] + [f"{kind}{l}" for l in range(self.n_layers) for kind in ("attn", "mlp")]

    @property
    def receivers(self) -> list[str]:
        return [f"{kind}{l}" for l in range(self.n_layers) for kind in ("attn", "mlp")] + ["logits"]

    def _order(self, name: str, reading: bool) -> float:
        kind, layer = component(name)
        if layer is None:
            return -1 if kind == "embed" else self.n_layers
        return layer + (0.5 if kind == "mlp" else 0.0) + (0.0 if reading else 0.25)

    def edges(self) -> list[tuple[str, str]]:
        """Every (sender, receiver) with the sender written before the receiver reads."""
        return [(u, v) for v in self.receivers for u in self.senders if self._order(u, False) < self._order(v, True)]

    def output_hook(self, sender: str) -> str:
        kind, layer = component(sender)
        return "hook_embed" if layer is None else f"blocks.{layer}.hook_{kind}_out"

    def input_hooks(self, receiver: str) -> list[str]:
        kind, layer = component(receiver)
        if layer is None:
            return [f"blocks.{self.n_layers - 1}.hook_resid_post"]
        if kind == "attn":
            return [f"blocks.{layer}.{h}" for h in HEAD_INPUTS]
        return [f"blocks.{layer}.hook_mlp_in"]


def _check(model: HookedVLM, clean: VLMInputs, corrupted: VLMInputs) -> Graph:
    if model.cfg.cross_layers:
        raise InputError(
            f"{model.cfg.family} takes its image by cross-attention: the image writes nothing into the residual "
            "stream, so no edge carries it; edge attribution covers families whose image enters as tokens"
        )
    if clean.input_ids.shape != corrupted.input_ids.shape:
        raise InputError(
            f"clean and corrupted inputs hold {list(clean.input_ids.shape)} and {list(corrupted.input_ids.shape)} "
            "tokens: give both the same prompt length and image size"
        )
    return Graph(model.cfg.n_layers)


def _outputs(model: HookedVLM, inputs: VLMInputs, graph: Graph) -> tuple[Tensor, dict[str, Tensor]]:
    names = {graph.output_hook(s): s for s in graph.senders}
    with torch.no_grad():
        logits, cache = model.run_with_cache(inputs, names_filter=lambda n: n in names)
    return logits, {s: cache[h].detach() for h, s in names.items()}


def _summed(grad: Tensor) -> Tensor:
    """A per-head input copy's gradient summed over its heads: the gradient at the shared input."""
    return grad.sum(2) if grad.dim() == 4 else grad


def _receiver_gradients(model, clean, graph, metric, embed: Tensor | None) -> dict[str, Tensor]:
    copies: dict[str, Tensor] = {}

    def own_copy(activation: Tensor, hook) -> Tensor:  # read by this receiver alone: its gradient runs through it
        copy = activation.clone()
        copy.retain_grad()
        copies[hook.name] = copy
        return copy

    start = None if embed is None else embed.detach().requires_grad_(True)  # the path's point: everything after
    hooks = [] if start is None else [("hook_embed", lambda a, hook: start)]  # it needs a gradient
    hooks += [(h, own_copy) for v in graph.receivers for h in graph.input_hooks(v)]
    with torch.enable_grad():
        value = metric(model.run_with_hooks(clean, fwd_hooks=hooks))
        _scalar(value)
        value.backward()
    return {v: sum(_summed(copies[h].grad.float()) for h in graph.input_hooks(v)) for v in graph.receivers}


@dataclass
class EdgeScores:
    """``frame``: one row per edge (``sender``, ``receiver``, ``score``); ``clean`` / ``corrupted``: the metric on
    each input."""

    frame: pd.DataFrame
    clean: float
    corrupted: float
    method: str

    def top(self, k: int) -> list[tuple[str, str]]:
        """The ``k`` edges of largest |score|."""
        order = self.frame.score.abs().sort_values(ascending=False).index[:k]
        return list(zip(self.frame.sender[order], self.frame.receiver[order]))


def edge_attribution(
    model: HookedVLM,
    clean: VLMInputs,
    corrupted: VLMInputs,
    metric: Callable[[Tensor], Tensor],
    method: str = "eap-ig",
    steps: int = 8,
) -> EdgeScores:
    """Every edge's score for ``metric(clean) - metric(corrupted)`` (see the module's text)."""
    if method not in EDGE_METHODS:
        raise InputError(f"method must be one of {EDGE_METHODS}, got {method!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InputError(f"steps must be a whole number of at least 1, got {steps!r}")
    graph = _check(model, clean, corrupted)
    clean_logits, clean_out = _outputs(model, clean, graph)
    corrupted_logits, corrupted_out = _outputs(model, corrupted, graph)
    if method == "eap":
        grads = _receiver_gradients(model, clean, graph, metric, None)
    else:
        grads = {}
        delta = clean_out["embed"] - corrupted_out["embed"]
        for k in range(steps):
            point = corrupted_out["embed"] + (k + 0.5) / steps * delta
            for v, g in _receiver_gradients(model, clean, graph, metric, point).items():
                grads[v] = grads.get(v, 0) + g / steps
    rows = [
        {"sender": u, "receiver": v, "score": float(((clean_out[u] - corrupted_out[u]).float() * grads[v]).sum())}
        for u, v in graph.edges()
    ]
    with torch.no_grad():
        high, low = metric(clean_logits), metric(corrupted_logits)
        _scalar(high)
    return EdgeScores(pd.DataFrame(rows), float(high), float(low), method)


@torch.no_grad()
def run_circuit(
    model: HookedVLM,
    clean: VLMInputs,
    corrupted: VLMInputs,
    metric: Callable[[Tensor], Tensor],
    kept: Iterable[tuple[str, str]],
) -> float:
    """The metric of the clean run with every edge not in ``kept`` cut (its receiver reads the sender's corrupted
    output in place of its output in this run)."""
    graph = _check(model, clean, corrupted)
    _, corrupted_out = _outputs(model, corrupted, graph)
    kept = set(kept)
    unknown = kept - set(graph.edges())
    if unknown:
        raise InputError(f"not edges of this model: {sorted(unknown)[:3]} (senders write before receivers read)")
    cut: dict[str, list[str]] = {}
    for u, v in graph.edges():
        if (u, v) not in kept:
            cut.setdefault(v, []).append(u)
    current: dict[str, Tensor] = {}

    def record(sender: str):
        def keep(activation: Tensor, hook) -> None:
            current[sender] = activation

        return keep

    def patch(receiver: str):
        def edit(activation: Tensor, hook) -> Tensor:
            change = sum(current[u] - corrupted_out[u] for u in cut[receiver])
            change = change[:, :, None, :] if activation.dim() == 4 else change
            return activation - change.to(activation.dtype)

        return edit

    hooks = [(graph.output_hook(s), record(s)) for s in graph.senders]
    hooks += [(h, patch(v)) for v in cut for h in graph.input_hooks(v)]
    value = metric(model.run_with_hooks(clean, fwd_hooks=hooks))
    _scalar(value)
    return float(value)


def path_patch(
    model: HookedVLM,
    clean: VLMInputs,
    corrupted: VLMInputs,
    metric: Callable[[Tensor], Tensor],
    sender: str,
    receiver: str,
) -> float:
    """``metric(clean)`` minus the metric with the one edge ``sender -> receiver`` cut: the real effect of that
    path, which an edge score estimates."""
    graph = _check(model, clean, corrupted)
    edges = graph.edges()
    if (sender, receiver) not in edges:
        raise InputError(
            f"{sender} -> {receiver} is no edge of this model: senders are {graph.senders[:3]}..., receivers "
            f"{graph.receivers[:3]}..., and a sender must write before its receiver reads"
        )
    with torch.no_grad():
        value = metric(model(clean))
    kept = [e for e in edges if e != (sender, receiver)]
    return float(value) - run_circuit(model, clean, corrupted, metric, kept)


def faithfulness(
    model: HookedVLM,
    clean: VLMInputs,
    corrupted: VLMInputs,
    metric: Callable[[Tensor], Tensor],
    scores: EdgeScores,
    ks: Iterable[int],
) -> pd.DataFrame:
    """For each k: the circuit of the top-k edges by |score|, run for real; its metric and its faithfulness
    ``(metric(circuit) - metric(corrupted)) / (metric(clean) - metric(corrupted))``."""
    span = scores.clean - scores.corrupted
    if abs(span) < 1e-8:
        raise InputError("metric(clean) equals metric(corrupted): there is no difference for a circuit to recover")
    rows = []
    for k in ks:
        value = run_circuit(model, clean, corrupted, metric, scores.top(k))
        rows.append({"edges": k, "metric": value, "faithfulness": (value - scores.corrupted) / span})
    return pd.DataFrame(rows)
