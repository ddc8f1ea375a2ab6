"""Attention structure over the image patch grid (the study's Section 3.1).

From the answer token(s) to the image patches, per layer: average over heads and answer
positions, normalise to a distribution over the grid, then measure how spread out it is.

- Spatial entropy H_s (Eq. 1): -sum p log p, natural log, of the normalised grid.
- Component count C_k: keep the smallest set of highest-attention patches whose mass reaches
  ``top_mass``; binarise on the grid; count 4-neighbour connected components (the report shows
  C_k - 1, as the study does).
- A DBSCAN variant clusters the kept patches' (row, col) coordinates instead.

    >>> grid = [[0, 0, 0], [0, 1, 0], [0, 0, 1]]
    >>> round(spatial_entropy(grid), 4), component_count(grid, top_mass=0.9)
    (0.6931, 2)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float
from numpy.typing import ArrayLike
from scipy import ndimage
from sklearn.cluster import DBSCAN

from analyses.answers import GeneratedAnswers
from vlm_lens import ActivationCache, HookedVLM, VLMInputs
from vlm_lens.errors import InputError

_FOUR_NEIGHBOURS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]])


def _grid(grid) -> np.ndarray:
    array = np.asarray(grid, dtype=np.float64)
    if array.ndim != 2:
        raise InputError(f"an attention grid is 2-D (rows, cols), got shape {array.shape}")
    if not np.isfinite(array).all() or (array < 0).any():
        raise InputError("attention over the patch grid must be finite and non-negative")
    total = array.sum()
    if total <= 0:
        raise InputError(
            "attention over the patch grid sums to zero; nothing to normalise (a sliding-window layer, as "
            "in Gemma 3, whose window ends before the image cannot see it from this query)"
        )
    return array / total


def spatial_entropy(grid) -> float:
    """H_s: Shannon entropy (nats) of the grid normalised to a distribution."""
    p = _grid(grid).ravel()
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def top_mass_mask(grid, top_mass: float = 0.5) -> np.ndarray:
    """The smallest set of highest-attention patches whose total mass reaches ``top_mass``."""
    if not 0 < top_mass <= 1:
        raise InputError(f"top_mass is a fraction in (0, 1], got {top_mass}")
    p = _grid(grid)
    order = np.argsort(-p, axis=None, kind="stable")
    cumulative = np.cumsum(p.ravel()[order])
    keep = int(np.searchsorted(cumulative, top_mass - 1e-12)) + 1
    mask = np.zeros(p.size, dtype=bool)
    mask[order[:keep]] = True
    return mask.reshape(p.shape)


def component_count(grid, top_mass: float = 0.5) -> int:
    """C_k: 4-neighbour connected components of the top-mass patches (the raw count)."""
    _, n = ndimage.label(top_mass_mask(grid, top_mass), structure=_FOUR_NEIGHBOURS)
    return int(n)


def dbscan_clusters(grid, top_mass: float = 0.5, eps: float = 1.0, min_samples: int = 1) -> int:
    """Clusters of the top-mass patches' grid coordinates under DBSCAN (noise points not counted)."""
    points = np.argwhere(top_mass_mask(grid, top_mass))
    labels = DBSCAN(eps=eps, min_samples=min_samples).fit(points).labels_
    return int(len(set(labels) - {-1}))


def _overlap(n_out: int, n_in: int) -> np.ndarray:
    """[n_out, n_in]: the share of input cell j that falls in output cell i, cells tiling [0, 1]."""
    out_edges, in_edges = np.linspace(0, 1, n_out + 1), np.linspace(0, 1, n_in + 1)
    low = np.maximum(out_edges[:-1, None], in_edges[None, :-1])
    high = np.minimum(out_edges[1:, None], in_edges[None, 1:])
    return np.clip(high - low, 0, None) * n_in


def resample_grid(grid, shape: tuple[int, int]) -> Float[np.ndarray, "rows cols"]:
    """An attention grid on another (rows, cols) grid, mass preserved.

    The grid is read as piecewise-constant attention over the image; each output cell receives the
    attention its area covers (area pooling when shrinking, even splitting when growing). Images of
    different sizes (Qwen-VL's native resolution) get comparable attention features this way.
    """
    array = np.asarray(grid, dtype=np.float64)
    if array.ndim != 2:
        raise InputError(f"an attention grid is 2-D (rows, cols), got shape {array.shape}")
    rows, cols = shape
    if rows < 1 or cols < 1:
        raise InputError(f"the target grid needs at least one cell, got {shape}")
    return _overlap(rows, array.shape[0]) @ array @ _overlap(cols, array.shape[1]).T


@dataclass
class AttentionMaps:
    """Per layer, per item: attention from the answer position(s) to one image's patch grid."""

    grids: Float[np.ndarray, "layer batch rows cols"]

    def entropy(self) -> Float[np.ndarray, "layer batch"]:
        return np.array([[spatial_entropy(g) for g in layer] for layer in self.grids])

    def components(self, top_mass: float = 0.5) -> np.ndarray:
        return np.array([[component_count(g, top_mass) for g in layer] for layer in self.grids])

    def delta_entropy(self) -> Float[np.ndarray, "layer-1 batch"]:
        """Layer-wise change of H_s."""
        return np.diff(self.entropy(), axis=0)


VIEWS = ("base", "stitched")


def image_layers(model_or_cache) -> list[int]:
    """The language layers whose attention reads the image's patches: every layer where the image is in the
    sequence, the cross-attention layers where it enters through them (Llama-3.2-Vision). ``image_grids`` gives one
    grid per layer of this list. Takes a ``HookedVLM``'s ``cfg`` or an ``ActivationCache``."""
    cfg = getattr(model_or_cache, "cfg", model_or_cache)
    return list(cfg.cross_layers) or list(range(cfg.n_layers))


def image_grids(
    cache: ActivationCache, image: int = 0, view: str = "base", frame: int | None = None
) -> list[Float[np.ndarray, "layer rows cols"]]:
    """Per item: attention from its query rows to its ``image``-th image's patch grid at every layer of
    ``image_layers`` (all of them, or a cross-attention model's cross layers), averaged over heads and rows
    (float32). A multi-crop image gives its ``base`` view (the whole picture on one low-resolution grid), or with
    ``view="stitched"`` its crops laid out where they sit in the picture (``ImageSpan.stitch``: tiles side by side,
    or LLaVA-NeXT's high-resolution grid); a one-view image gives its one grid either way. A cross-attention
    model's image is its tiles over the cross layers' keys (``VLMInputs.key_spans``), stitched on the picture
    whatever ``view`` (it has no base view); class tokens and padding tiles are left out. A video (``image`` counts
    an item's images and videos in prompt order) gives its frame ``frame``'s grid, or with ``frame=None`` the
    attention each place of the picture gets summed over the frames. Needs ``attn.hook_pattern_rows`` of those
    layers in ``cache``.

    The one place the study, the CLI and the analyses turn attention rows into image grids."""
    if view not in VIEWS:
        raise InputError(f"view must be one of {VIEWS}, got {view!r}")
    inputs = cache.inputs
    cross = bool(cache.cross_layers)
    if cross and inputs.key_spans is None:
        raise InputError(
            "these inputs do not say where each image's tiles sit among the cross-attention keys "
            "(VLMInputs.key_spans): build them with model.prepare() or model.as_inputs(...)"
        )
    layers = image_layers(cache)
    rows = [cache["pattern_rows", layer] for layer in layers]  # each batch head row key
    grids = []
    for item, spans in enumerate(inputs.key_spans if cross else inputs.image_spans):
        if image >= len(spans):
            raise InputError(f"item {item} has {len(spans)} image(s); no image {image}")
        span = spans[image]
        per_layer = torch.stack([r[item, :, :, : span.end].float().mean(dim=(0, 1)) for r in rows])  # layer key
        if span.video:
            grid = span.stitch(per_layer, frame=frame)
            grids.append((grid if frame is not None else grid.sum(dim=-3)).cpu().numpy())
            continue
        kind = None if cross or view == "stitched" else "base"
        grids.append(span.stitch(per_layer, kind=kind).cpu().numpy())  # an image is one frame whatever ``frame``
    return grids


def answer_token_attention(
    generated: GeneratedAnswers, image: int = 0, view: str = "base"
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per item of a generation (``answers.generate_answers`` with every layer's ``attn.hook_pattern_rows``):
    the image grids [layer, rows, cols] (``image_grids``' ``view``) averaged over its T answer tokens, and H_s
    per layer of that averaged map (the study's Eq. 1: attention averaged over heads and answer tokens, then
    normalised over the grid; not the mean of per-token entropies, which differs once T > 1)."""
    inputs = generated.at_answer.inputs
    vocab = generated.at_answer.vocab
    per_step = [image_grids(ActivationCache(step, vocab, inputs), image, view) for step in generated.attention]
    out = []
    for i, length in enumerate(generated.lengths):
        mean = np.mean([per_step[t][i] for t in range(length)], axis=0)
        out.append((mean.astype(np.float32), np.array([spatial_entropy(layer) for layer in mean])))
    return out


def first_token_head_entropy(
    generated: GeneratedAnswers, image: int = 0, view: str = "base"
) -> list[Float[np.ndarray, "layer head"]]:
    """Per item: H_s [layer, head] of each head's map from the first answer token to the image grid (Eq. 1 for one
    head at one token; what ranks heads, e.g. the top heads' attention R_pb of the study's Table 2). NaN for a head
    whose attention to the image is exactly zero (nothing to normalise)."""
    inputs, vocab = generated.at_answer.inputs, generated.at_answer.vocab
    rows = generated.first_heads
    if not rows:
        raise InputError("no per-head rows: generate with every layer's attn.hook_pattern_rows among the names")
    n_heads = next(iter(rows.values())).shape[1]
    per_head = [
        image_grids(ActivationCache({k: v[:, h : h + 1] for k, v in rows.items()}, vocab, inputs), image, view)
        for h in range(n_heads)
    ]

    def entropy(grid) -> float:  # a head with no attention on the image (or all of it underflowed in float16): NaN
        return spatial_entropy(grid) if float(np.sum(grid)) > 0 else float("nan")

    return [
        np.array(
            [[entropy(per_head[h][i][layer]) for h in range(n_heads)] for layer in range(per_head[0][i].shape[0])],
            dtype=np.float32,
        )
        for i in range(len(per_head[0]))
    ]


@torch.no_grad()
def item_grids(
    model: HookedVLM, inputs: VLMInputs, query_positions=None, image: int = 0, view: str = "base"
) -> list[np.ndarray]:
    """Per item, [layer rows cols]: attention from the query rows (default: each item's last token) to its
    ``image``-th image, averaged over heads and rows (a multi-crop image's ``view``: see ``image_grids``). Items
    keep their own grids (native-resolution towers and tilings give images of different sizes different grids).
    Uses the row capture: the forward keeps its fast attention."""
    names = {f"blocks.{l}.attn.hook_pattern_rows" for l in image_layers(model)}
    _, cache = model.run_with_cache(
        inputs,
        names_filter=lambda n: n in names,
        query_positions=query_positions,
        logits_to_keep=1,
    )
    return image_grids(cache, image, view)


def image_attention(
    model: HookedVLM, inputs: VLMInputs, query_positions=None, image: int = 0, view: str = "base"
) -> AttentionMaps:
    """``item_grids`` stacked [layer batch rows cols]: every item's image must have the same grid."""
    grids = item_grids(model, inputs, query_positions, image, view)
    shapes = {g.shape for g in grids}
    if len(shapes) != 1:
        raise InputError(
            f"images of different grids {sorted(s[1:] for s in shapes)} cannot be stacked; run them separately"
        )
    return AttentionMaps(np.stack(grids, axis=1))


def early_lock_then_diffusion(entropy: ArrayLike, margin: float = 0.1) -> dict:
    """The study's pattern: entropy falls to a minimum in the early half, then rises by ``margin`` of its range.

    Returns the lock layer, the later peak and whether the pattern holds.
    """
    h = np.asarray(entropy, dtype=float)
    if h.ndim != 1 or len(h) < 3:
        raise InputError("needs a 1-D entropy curve over at least 3 layers")
    lock = int(np.argmin(h[: max(2, (len(h) + 1) // 2)]))
    later = lock + int(np.argmax(h[lock:]))
    span = float(h.max() - h.min()) or 1.0
    holds = lock < later and h[lock] < h[0] and (h[later] - h[lock]) >= margin * span
    return {"lock_layer": lock, "diffusion_peak_layer": later, "holds": bool(holds)}
