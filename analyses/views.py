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

from analyses.answers import answer_length, stop_token_ids
from analyses.attention_structure import image_layers
from analyses.plots import grid_over
from vlm_lens import HookedVLM
from vlm_lens.errors import InputError
from vlm_lens.inputs import VLMInputs


@torch.no_grad()
def answer_attention(
    model: HookedVLM,
    inputs: VLMInputs,
    item: int = 0,
    image: int = 0,
    max_new_tokens: int = 8,
    frame: int | None = None,
) -> tuple[Float[np.ndarray, "token layer head rows cols"], list[str]]:
    """Every head's attention from each answer token's query (the position that produced it) to the ``image``-th
    image's patch grid (a multi-crop image's base view; of a video, frame ``frame``), at every layer, for ``item``;
    and the answer tokens. ``image`` counts the item's images and videos together, in prompt order. A
    cross-attention model (Llama-3.2-Vision) reads its image at its cross layers' keys: its maps are those layers'
    (``attention_structure.image_layers``), its tiles stitched on the picture."""
    cross = bool(model.cfg.cross_layers)
    if cross and inputs.key_spans is None:
        raise InputError(
            "these inputs do not say where each image's tiles sit among the cross-attention keys "
            "(VLMInputs.key_spans): build them with model.prepare() or model.as_inputs(...)"
        )
    if not 0 <= item < inputs.batch_size:
        raise InputError(f"item must be in 0..{inputs.batch_size - 1}, got {item}")
    spans = (inputs.key_spans if cross else inputs.image_spans)[item]
    if not 0 <= image < len(spans):
        raise InputError(f"item {item} has {len(spans)} image(s); no image {image}")
    span = spans[image]
    if span.video and frame is None:
        raise InputError(f"{span.label} has {span.frames} frames: pass frame= (0..{span.frames - 1}) to draw one")
    rows: dict[int, list[torch.Tensor]] = {}

    def keep(activation: torch.Tensor, hook) -> None:  # [batch, head, row, key]: the newest query's row
        rows.setdefault(hook.layer(), []).append(activation[item, :, -1, : span.end].detach().float().cpu())

    stops = stop_token_ids(model)
    layers = image_layers(model)
    names = [f"blocks.{l}.attn.hook_pattern_rows" for l in layers]
    out = model.generate(
        inputs,
        max_new_tokens=max_new_tokens,
        fwd_hooks=[(n, keep) for n in names],
        eos_token_id=stops,
        pad_token_id=stops[0],
    )
    new = out[item, inputs.input_ids.shape[1] :].tolist()
    length = answer_length(new, stops)
    tokens = [model.to_string(t) for t in new[: max(1, length)]]
    per_token = []
    for t in range(len(tokens)):
        stacked = torch.stack([rows[l][t] for l in layers])  # layer head key
        kind = None if span.video or cross else "base"  # a cross model's tiles, stitched: it has no base view
        per_token.append(span.stitch(stacked, kind=kind, frame=frame).numpy())
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
    frame: int | None = None,
) -> go.Figure:
    """The image drawn once per layer with the chosen head's (or the heads' mean) attention over its patches, from
    the chosen answer token's query. ``image``: the picture to draw under the grid (else the grid alone); of a
    video, the frame ``frame`` is drawn (and named in the title)."""
    maps, tokens = answer_attention(model, inputs, item, image_index, max_new_tokens, frame)
    span = (inputs.key_spans if model.cfg.cross_layers else inputs.image_spans)[item][image_index]
    if span.video or len(inputs.image_spans[item]) > 1:
        title = f"{title} ({span.label}{'' if frame is None else f', frame {frame}'})"
    layer_ids = image_layers(model)  # every layer, or a cross-attention model's cross layers
    n_tokens, n_layers, n_heads, grid_rows, grid_cols = maps.shape
    rows = math.ceil(n_layers / columns)
    fig = make_subplots(
        rows=rows,
        cols=min(columns, n_layers),
        subplot_titles=[f"layer {l}" for l in layer_ids],
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
                    grid_over(
                        grids[l],
                        width,
                        height,
                        zmin=0.0,
                        zmax=top,
                        opacity=0.55 if rgb is not None else 1.0,
                        colorscale="Inferno",
                        showscale=l == 0,
                        colorbar={"title": "attention"},
                        visible=not labels,
                        name=f"layer {layer_ids[l]}, {name}, token {t}",
                        hovertemplate=f"layer {layer_ids[l]}, {name}<br>patch (%{{y:.0f}}, %{{x:.0f}})<br>%{{z:.3f}}<extra></extra>",
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


def token_labels(model: HookedVLM, inputs: VLMInputs, item: int = 0) -> list[str]:
    """One label per position of ``item``, for axes and for circuitsvis (its ``tokens`` argument): text tokens as
    the tokenizer writes them, image tokens as ``<img I r,c>`` (image, row, column; ``<img I vV r,c>`` on a view of a
    multi-crop image; ``<img I sep>`` for a separator), a video's as ``<vid V tT r,c>`` (frame T; the text between
    its frames, Qwen3-VL's time stamps, as written), padding as ``<pad>``."""
    if not 0 <= item < inputs.batch_size:
        raise InputError(f"item must be in 0..{inputs.batch_size - 1}, got {item}")
    labels = [model.tokenizer.convert_ids_to_tokens(int(t)) for t in inputs.input_ids[item]]
    for span in inputs.image_spans[item]:
        if not span.video:
            for p in range(span.start, span.end):
                labels[p] = f"<img {span.image} sep>"
        for p in span.positions:
            view, row, col = span.locate(p)
            labels[p] = (
                f"<vid {span.image} t{view} {row},{col}>"
                if span.video
                else f"<img {span.image} {row},{col}>"
                if not span.views
                else f"<img {span.image} v{view} {row},{col}>"
            )
    for p, real in enumerate(inputs.attention_mask[item].tolist()):
        if not real:
            labels[p] = "<pad>"
    return labels


@torch.no_grad()
def lens_grid(
    model: HookedVLM,
    inputs: VLMInputs,
    lens=None,
    item: int = 0,
    positions: str | list[int] = "text",
    top: int = 5,
) -> go.Figure:
    """Layer x position: each cell coloured by the probability of the top token read through the logit lens (and,
    given a ``lens`` from ``analyses.tuned_lens``, the tuned lens: the menu switches), the top tokens on hover.
    ``positions``: "text" (default), "image", "all" or a list."""
    from analyses.logit_lens import read_out

    labels = token_labels(model, inputs, item)
    real = [p for p, r in enumerate(inputs.attention_mask[item].tolist()) if r]
    image = set(inputs.image_positions(item))
    chosen = (
        {
            "text": [p for p in real if p not in image],
            "image": [p for p in real if p in image],
            "all": real,
        }.get(positions)
        if isinstance(positions, str)
        else [int(p) for p in positions]
    )
    if chosen is None:
        raise InputError(f"positions must be 'text', 'image', 'all' or a list of positions, got {positions!r}")
    names = [f"blocks.{l}.hook_resid_post" for l in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(inputs, names_filter=lambda n: n in names)
    resid = torch.stack([cache[n][item, chosen] for n in names])  # layer pos d_model
    readings = {"logit lens": read_out(model, resid)}
    if lens is not None:
        lens.check_model(model)
        readings["tuned lens"] = read_out(model, lens.translate(resid))
    fig = go.Figure()
    for k, (name, logits) in enumerate(readings.items()):
        probs = torch.softmax(logits.float(), -1)
        best, ids = probs.topk(top, dim=-1)  # layer pos top
        words = [[[model.to_string(int(i)) for i in cell] for cell in row] for row in ids.tolist()]
        hover = [
            [" | ".join(f"{w!r} {p:.2f}" for w, p in zip(words[l][j], best[l, j].tolist())) for j in range(len(chosen))]
            for l in range(len(names))
        ]
        fig.add_trace(
            go.Heatmap(
                z=best[..., 0].numpy(),
                x=[f"{p}: {labels[p]}" for p in chosen],
                y=list(range(len(names))),
                text=[[w[0] for w in row] for row in words],
                texttemplate="%{text}",
                customdata=hover,
                hovertemplate="layer %{y}, %{x}<br>%{customdata}<extra></extra>",
                colorscale="Blues",
                zmin=0.0,
                zmax=1.0,
                colorbar={"title": "top-token p"},
                visible=k == 0,
                name=name,
            )
        )
    if len(readings) > 1:
        buttons = [
            {"label": name, "method": "update", "args": [{"visible": [j == k for j in range(len(readings))]}]}
            for k, name in enumerate(readings)
        ]
        fig.update_layout(
            updatemenus=[{"buttons": buttons, "x": 1.0, "xanchor": "right", "y": 1.02, "yanchor": "bottom"}]
        )
    fig.update_layout(
        title="The top token at every layer and position (hover: the top tokens and their probabilities)",
        template="plotly_white",
        xaxis={"title": "position: token", "tickangle": -45},
        yaxis={"title": "layer", "dtick": 1},
        margin={"t": 120},
    )
    return fig
