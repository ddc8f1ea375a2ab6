"""Maps over the picture to click through: attribution and patching by hook or layer, a unit's top images.

Like ``analyses.views``, every control is plotly's own (``updatemenus``), so a figure works alike in Jupyter, in an
HTML report and in a standalone file.

- ``map_view(image, maps)``: one picture, a menu of named patch grids laid over it (signed scores on a symmetric
  red-blue scale, or magnitudes on one scale).
- ``attribution_view(result, image)``: an ``analyses.attribution.attribute`` result, one menu entry per hook
  (``on_grid``), for an image or a video frame.
- ``patching_view(trace, inputs, image)``: a causal trace (``analyses.patching.causal_trace``), one entry per layer:
  what restoring each patch's clean residual gives back of the answer's probability.
- ``unit_view(top)``: a neuron's or SAE latent's top-activating images (``analyses.top_images``), the unit's
  activation over each, on one colour scale.

    fig = attribution_view(attribute(model, clean, corrupted, metric, at=hooks, method="ig"), image)
    fig.write_html("attribution.html")
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import plotly.graph_objects as go
from PIL import Image
from plotly.subplots import make_subplots

from analyses.attribution.nodes import Attribution, on_grid
from analyses.patching import TraceResult
from analyses.plots import grid_over
from analyses.top_images import TopImages
from vlm_lens.errors import InputError
from vlm_lens.inputs import VLMInputs


def _heatmap(grid: np.ndarray, width: int, height: int, low: float, high: float, colours: str, **extra) -> go.Heatmap:
    """A patch grid over a width x height picture, half transparent, on the scale low..high."""
    return grid_over(grid, width, height, zmin=low, zmax=high, opacity=0.55, colorscale=colours, **extra)


def map_view(
    image: Image.Image, maps: Mapping[str, np.ndarray], title: str = "Over the picture", signed: bool = True
) -> go.Figure:
    """``image`` with one of ``maps`` (name -> patch grid [rows, cols]) over it at a time, picked from a menu; each
    choice on its own symmetric scale (``signed``) or from zero. Hover: the patch's row, column and value."""
    if not maps:
        raise InputError("map_view needs at least one map (name -> patch grid)")
    rgb = np.asarray(image.convert("RGB"))
    height, width = rgb.shape[:2]
    fig = go.Figure(go.Image(z=rgb, hoverinfo="skip"))
    names = list(maps)
    for k, name in enumerate(names):
        grid = np.asarray(maps[name], dtype=float)
        if grid.ndim != 2:
            raise InputError(f"map {name!r} has shape {list(grid.shape)}, not a patch grid [rows, cols]")
        bound = float(np.nanmax(np.abs(grid))) or 1.0
        rows, cols = np.indices(grid.shape)
        fig.add_trace(
            _heatmap(
                grid,
                width,
                height,
                -bound if signed else 0.0,
                bound,
                "RdBu_r" if signed else "Inferno",
                customdata=np.stack([rows, cols], -1),
                visible=k == 0,
                name=name,
                hovertemplate=f"{name}<br>patch (%{{customdata[0]}}, %{{customdata[1]}})<br>%{{z:+.4f}}<extra></extra>",
            )
        )
    buttons = [
        {
            "label": name,
            "method": "update",
            "args": [{"visible": [True] + [j == k for j in range(len(names))]}, {"title": f"{title}: {name}"}],
        }
        for k, name in enumerate(names)
    ]
    fig.update_layout(
        title=f"{title}: {names[0]}",
        template="plotly_white",
        yaxis={"scaleanchor": "x", "autorange": "reversed", "showticklabels": False},
        xaxis={"showticklabels": False},
        updatemenus=[{"buttons": buttons, "direction": "down", "x": 0.0, "xanchor": "left", "y": 1.1}],
        margin={"t": 110},
    )
    return fig


def attribution_view(
    result: Attribution,
    image: Image.Image,
    item: int = 0,
    image_index: int = 0,
    view: int = 0,
    video: bool = False,
    title: str = "Attribution over the picture",
) -> go.Figure:
    """Each attributed hook's scores at ``image_index``'s patches (``on_grid``: heads and neurons summed), one
    menu entry per hook; ``video=True`` reads frame ``view`` of video ``image_index``."""
    hooks = list(dict.fromkeys(result.frame.hook))
    maps = {}
    for hook in hooks:
        try:
            maps[hook] = on_grid(result, hook, item, image_index, view, video)
        except InputError:
            continue  # a hook reported at text positions only
    if not maps:
        raise InputError(f"no hook of this attribution has scores at the image's patches (hooks: {hooks})")
    where = f"video {image_index}, frame {view}" if video else f"image {image_index}"
    return map_view(image, maps, f"{title} ({where})", signed=True)


def patching_view(
    trace: TraceResult, inputs: VLMInputs, image: Image.Image, title: str = "Restoring one patch"
) -> go.Figure:
    """A position-by-position causal trace over item 0's first image: per layer (menu), each patch's indirect
    effect (p restored - p corrupted of the answer token)."""
    if not trace.positions or any(len(p) != 1 for p in trace.positions):
        raise InputError("patching_view reads a causal_trace(..., by='position'): one position per unit")
    base = inputs.image_spans[0][0].base  # a multi-crop image's whole-picture view
    unit_of = {p[0]: k for k, p in enumerate(trace.positions)}
    maps = {}
    for layer, effects in enumerate(trace.effects):
        grid = np.full(base.grid, np.nan)
        for k, position in enumerate(base.positions):
            grid[divmod(k, base.grid[1])] = effects[unit_of[position]]
        maps[f"layer {layer}"] = grid
    return map_view(image, maps, f"{title} (p clean {trace.p_clean:.3f}, corrupted {trace.p_corrupted:.3f})")


def unit_view(top: TopImages, columns: int = 4, title: str | None = None) -> go.Figure:
    """The unit's top images, each with its activation over the patches (one colour scale from zero to the top
    image's maximum; hover: the patch and the value), titled by rank, question and maximum."""
    n = len(top.images)
    rows = math.ceil(n / columns)
    short = lambda text: text if len(text) <= 30 else text[:29] + "…"  # noqa: E731
    labels = [f"#{r.rank + 1} · max {r.max:.2f}<br>{short(r.text)}" for r in top.frame.itertuples()]
    fig = make_subplots(
        rows=rows, cols=min(columns, n), subplot_titles=labels, horizontal_spacing=0.02, vertical_spacing=0.1
    )
    bound = max(float(np.max(g)) for g in top.grids) or 1.0
    low = min(0.0, min(float(g.min()) for g in top.grids))  # a unit that goes negative shows it
    for k, (picture, grid) in enumerate(zip(top.images, top.grids)):
        rgb = np.asarray(picture.convert("RGB"))
        place = {"row": k // columns + 1, "col": k % columns + 1}
        fig.add_trace(go.Image(z=rgb, hoverinfo="skip"), **place)
        cells = np.stack(np.indices(grid.shape), -1)
        fig.add_trace(
            _heatmap(
                grid,
                rgb.shape[1],
                rgb.shape[0],
                low,
                bound,
                "Inferno",
                showscale=k == 0,
                colorbar={"title": "activation"},
                customdata=cells,
                hovertemplate="patch (%{customdata[0]}, %{customdata[1]})<br>%{z:.3f}<extra></extra>",
            ),
            **place,
        )
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False, autorange="reversed")
    for k in range(n):
        suffix = "" if k == 0 else str(k + 1)
        fig.layout[f"yaxis{suffix}"].scaleanchor = f"x{suffix}"
    fig.update_layout(
        title=title or f"{top.hook}, unit {top.unit}: its top {n} images",
        template="plotly_white",
        height=280 * rows + 110,
        font={"size": 10},
        margin={"t": 110},
    )
    return fig
