"""Views to explore, in Jupyter or any browser: figures whose controls work without a kernel.

``attention_view(model, inputs)`` answers the question once (greedy, to a stop token), keeps every head's attention
row of every answer token at every layer, and draws the image once per layer with that attention laid over its
patch grid. A menu chooses the head (or their mean) and the answer token; the layers sit side by side, on one colour
scale per choice, so a glance compares them. The controls are plotly's own (``updatemenus``), so the figure works
alike in a notebook, in an HTML report and in a standalone file (``fig.write_html``), with no Python behind it.

    fig = attention_view(model, inputs, image=images[0])
    fig.show()                         # in Jupyter
    fig.write_html("attention.html")   # anywhere
"""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
import torch
from jaxtyping import Float
from PIL import Image
from plotly.subplots import make_subplots

from analyses.answers import stop_token_ids
from vlm_lens import HookedVLM
from vlm_lens.errors import InputError
from vlm_lens.inputs import VLMInputs


@torch.no_grad()
def answer_attention(
    model: HookedVLM, inputs: VLMInputs, item: int = 0, image: int = 0, max_new_tokens: int = 8
) -> tuple[Float[np.ndarray, "token layer head rows cols"], list[str]]:
    """Every head's attention from each answer token's query (the position that produced it) to the ``image``-th
    image's patch grid (a multi-crop image's base view), at every layer, for ``item``; and the answer tokens."""
    if model.cfg.cross_layers:
        raise InputError(
            f"{model.cfg.family} reads its image by cross-attention, not as tokens: its image attention is at its "
            "cross layers' keys (attention_structure.image_grids), which this view does not draw yet"
        )
    if not 0 <= item < inputs.batch_size:
        raise InputError(f"item must be in 0..{inputs.batch_size - 1}, got {item}")
    spans = inputs.image_spans[item]
    if not 0 <= image < len(spans):
        raise InputError(f"item {item} has {len(spans)} image(s); no image {image}")
    span = spans[image]
    rows: dict[int, list[torch.Tensor]] = {}

    def keep(activation: torch.Tensor, hook) -> None:  # [batch, head, row, key]: the newest query's row
        rows.setdefault(hook.layer(), []).append(activation[item, :, -1, : span.end].detach().float().cpu())

    stops = stop_token_ids(model)
    names = [f"blocks.{l}.attn.hook_pattern_rows" for l in range(model.cfg.n_layers)]
    out = model.generate(
        inputs,
        max_new_tokens=max_new_tokens,
        fwd_hooks=[(n, keep) for n in names],
        eos_token_id=stops,
        pad_token_id=stops[0],
    )
    new = out[item, inputs.input_ids.shape[1] :].tolist()
    length = next((t for t, token in enumerate(new) if token in stops), len(new))
    tokens = [model.to_string(t) for t in new[: max(1, length)]]
    per_token = []
    for t in range(len(tokens)):
        layers = torch.stack([rows[l][t] for l in range(model.cfg.n_layers)])  # layer head key
        per_token.append(span.stitch(layers, kind="base").numpy())
    return np.stack(per_token), tokens


def attention_view(
    model: HookedVLM,
    inputs: VLMInputs,
    image: Image.Image | None = None,
    item: int = 0,
    image_index: int = 0,
    max_new_tokens: int = 8,
    columns: int = 4,
    title: str = "Attention over the image: every layer; the menu picks the head and the answer token",
) -> go.Figure:
    """The image drawn once per layer with the chosen head's (or the heads' mean) attention over its patches, from
    the chosen answer token's query. ``image``: the picture to draw under the grid (else the grid alone)."""
    maps, tokens = answer_attention(model, inputs, item, image_index, max_new_tokens)
    n_tokens, n_layers, n_heads, grid_rows, grid_cols = maps.shape
    rows = math.ceil(n_layers / columns)
    fig = make_subplots(
        rows=rows,
        cols=min(columns, n_layers),
        subplot_titles=[f"layer {l}" for l in range(n_layers)],
        horizontal_spacing=0.02,
        vertical_spacing=0.08,
    )
    rgb = np.asarray(image.convert("RGB")) if image is not None else None
    height, width = rgb.shape[:2] if rgb is not None else (grid_rows, grid_cols)
    cell = lambda l: {"row": l // columns + 1, "col": l % columns + 1}  # noqa: E731
    if rgb is not None:
        for l in range(n_layers):
            fig.add_trace(go.Image(z=rgb, hoverinfo="skip"), **cell(l))
    fixed = n_layers if rgb is not None else 0
    choices = [("mean of heads", None)] + [(f"head {h}", h) for h in range(n_heads)]
    labels = []
    for t, token in enumerate(tokens):
        for name, head in choices:
            grids = maps[t, :, :, :, :].mean(1) if head is None else maps[t, :, head]  # layer rows cols
            top = float(grids.max()) or 1.0
            for l in range(n_layers):
                fig.add_trace(
                    go.Heatmap(
                        z=grids[l],
                        x0=width / grid_cols / 2 - 0.5,
                        dx=width / grid_cols,
                        y0=height / grid_rows / 2 - 0.5,
                        dy=height / grid_rows,
                        zmin=0.0,
                        zmax=top,
                        opacity=0.55 if rgb is not None else 1.0,
                        colorscale="Inferno",
                        showscale=l == 0,
                        colorbar={"title": "attention"},
                        visible=not labels,
                        name=f"layer {l}, {name}, token {t}",
                        hovertemplate=f"layer {l}, {name}<br>patch (%{{y:.0f}}, %{{x:.0f}})<br>%{{z:.3f}}<extra></extra>",
                    ),
                    **cell(l),
                )
            labels.append(f"{name} · answer token {t} {token!r}")
    buttons = []
    for k, label in enumerate(labels):
        visible = [True] * fixed + [False] * (len(labels) * n_layers)
        visible[fixed + k * n_layers : fixed + (k + 1) * n_layers] = [True] * n_layers
        buttons.append({"label": label, "method": "update", "args": [{"visible": visible}]})
    fig.update_layout(
        title=title,
        template="plotly_white",
        updatemenus=[
            {"buttons": buttons, "direction": "down", "x": 0.0, "xanchor": "left", "y": 1.12, "yanchor": "bottom"}
        ],
        height=260 * rows + 120,
        margin={"t": 140},
    )
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False, autorange="reversed")
    for l in range(n_layers):  # each picture keeps its own aspect
        suffix = "" if l == 0 else str(l + 1)
        fig.layout[f"yaxis{suffix}"].scaleanchor = f"x{suffix}"
    return fig
