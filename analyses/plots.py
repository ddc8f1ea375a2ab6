"""Plotly figures for the analyses. Imported only by those who plot: nothing else pulls plotly.

Each function takes the tidy results the analyses return and gives a ``plotly`` Figure
(interactive in Jupyter; ``fig.write_html`` / ``fig.write_image`` to save).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from PIL import Image

from analyses.patching import TraceResult

GROUP_COLOURS = {"correct": "#1f77b4", "incorrect": "#d62728"}
LAYER_AXIS = {"dtick": 1, "tickformat": "d"}  # layers are integers: no 0.5 ticks
# one look per line where many share a plot (the ROC's ~12 predictors): 10 colours x 4 dashes, no two alike
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
DASHES = ("solid", "dash", "dot", "dashdot")


def notebook_figures() -> str:
    """Set how ``fig.show()`` writes a figure into a notebook: the interactive figure and, where plotly's static
    export works here (kaleido and a Chromium), a PNG beside it, which GitHub and ``nbconvert --to html`` show.
    Returns the renderer chosen ("plotly_mimetype+png" or "plotly_mimetype")."""
    import plotly.io as pio

    try:
        go.Figure().to_image(format="png", width=20, height=20)
        chosen = "plotly_mimetype+png"
    except Exception:  # noqa: BLE001 - no kaleido or no Chromium: interactive only, which is all Jupyter needs
        chosen = "plotly_mimetype"
    pio.renderers.default = chosen
    return chosen


def line_style(i: int) -> dict:
    """The i-th line's colour and dash: distinct for the first 40 lines."""
    return {"color": PALETTE[i % len(PALETTE)], "dash": DASHES[(i // len(PALETTE) + i) % len(DASHES)]}


def roc_curves(curves: list[tuple[str, np.ndarray, np.ndarray, float]], title: str = "ROC curves") -> go.Figure:
    """One line per (name, fpr, tpr, auroc), each its own colour and dash, its AUROC in the legend, the legend beside
    the axes (not over them), and the chance diagonal."""
    fig = go.Figure()
    for i, (name, fpr, tpr, auroc) in enumerate(curves):
        fig.add_trace(go.Scatter(x=fpr, y=tpr, mode="lines", name=f"{name} (AUROC {auroc:.3f})", line=line_style(i)))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "grey"}, name="chance"))
    return _legend_beside(fig, title, "false positive rate", "true positive rate")


def _legend_beside(fig: go.Figure, title: str, x_title: str, y_title: str) -> go.Figure:
    """The layout of a plot of many lines: white, titled, the legend beside the axes rather than over them."""
    return fig.update_layout(
        title=title,
        xaxis_title=x_title,
        yaxis_title=y_title,
        template="plotly_white",
        legend={"x": 1.02, "y": 1, "xanchor": "left"},
    )


def _band(x, low, high, colour, name, legendgroup) -> go.Scatter:
    return go.Scatter(
        x=np.concatenate([x, x[::-1]]),
        y=np.concatenate([high, low[::-1]]),
        mode="lines",
        fill="toself",
        fillcolor=colour,
        opacity=0.2,
        line={"width": 0},
        hoverinfo="skip",
        showlegend=False,
        name=name,
        legendgroup=legendgroup,
    )


def margin_curves(curves: pd.DataFrame | Mapping[str, pd.DataFrame], title: str = "Truth margin by layer") -> go.Figure:
    """Mean truth margin per layer, correct vs incorrect, with 95% CI bands; a mapping overlays models."""
    models = curves if isinstance(curves, Mapping) else {"": curves}
    fig = go.Figure()
    dashes = ["solid", "dash", "dot", "dashdot"]
    for i, (model, table) in enumerate(models.items()):
        for group, part in table.groupby("group"):
            part = part.sort_values("layer")
            x = part.layer.to_numpy()
            label = f"{model} {group}".strip()
            colour = GROUP_COLOURS.get(group, "#555")
            fig.add_trace(_band(x, part.ci_low.to_numpy(), part.ci_high.to_numpy(), colour, label, label))
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=part["mean"],
                    mode="lines+markers",
                    name=label,
                    legendgroup=label,
                    line={"color": colour, "dash": dashes[i % len(dashes)]},
                    hovertemplate="layer %{x}<br>margin %{y:.3f}<extra>" + label + "</extra>",
                )
            )
    fig.add_hline(y=0, line={"color": "grey", "width": 1})
    fig.update_layout(
        title=title, xaxis_title="layer", yaxis_title="truth margin (logit)", template="plotly_white", xaxis=LAYER_AXIS
    )
    return fig


def grid_over(grid: np.ndarray, width: int, height: int, **heatmap) -> go.Heatmap:
    """A patch grid [rows, cols] as a heatmap over a width x height picture, each cell over the pixels it covers (the
    one placement every picture overlay uses: these figures, ``analyses.views``, ``analyses.maps``)."""
    rows, cols = np.shape(grid)
    return go.Heatmap(
        z=grid, x0=width / cols / 2 - 0.5, dx=width / cols, y0=height / rows / 2 - 0.5, dy=height / rows, **heatmap
    )


def _over_image(image: Image.Image, grid: np.ndarray, title: str, **heatmap) -> go.Figure:
    """The image with a patch grid of values drawn over it, each cell over the pixels it covers."""
    rgb = np.asarray(image.convert("RGB"))
    fig = go.Figure(go.Image(z=rgb))
    fig.add_trace(grid_over(grid, rgb.shape[1], rgb.shape[0], **heatmap))
    fig.update_layout(title=title, template="plotly_white", yaxis={"scaleanchor": "x"})
    return fig


def attention_over_image(image: Image.Image, grid: np.ndarray, title: str = "Attention over the image") -> go.Figure:
    """The image with the patch-grid attention drawn over it (hover shows each patch's share)."""
    grid = np.asarray(grid, dtype=float)
    return _over_image(
        image,
        grid / grid.sum(),
        title,
        opacity=0.45,
        colorscale="Inferno",
        colorbar={"title": "share"},
        hovertemplate="patch (%{y:.0f}, %{x:.0f})<br>%{z:.3f}<extra></extra>",
    )


def entropy_and_components(
    entropy: np.ndarray, components: np.ndarray, title: str = "Attention structure by layer"
) -> go.Figure:
    """Spatial entropy H_s and C_k - 1 (the study's convention) across layers, mean over items."""
    layers = np.arange(len(entropy))
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=layers, y=entropy, name="H_s (nats)", mode="lines+markers"))
    fig.add_trace(go.Scatter(x=layers, y=np.asarray(components) - 1, name="C_k - 1", mode="lines+markers", yaxis="y2"))
    fig.update_layout(
        title=title,
        xaxis_title="layer",
        yaxis={"title": "H_s"},
        xaxis=LAYER_AXIS,
        yaxis2={"title": "C_k - 1", "overlaying": "y", "side": "right"},
        template="plotly_white",
        legend={"orientation": "h", "x": 0, "y": 1.02, "yanchor": "bottom"},  # above the plot: both y axes stay clear
    )
    return fig


def margin_contributions(table: pd.DataFrame, title: str = "Who builds the margin") -> go.Figure:
    """Per layer: mean attention and MLP contribution to the margin (bars) and the cumulative margin (line)."""
    fig = go.Figure()
    fig.add_trace(go.Bar(x=table.layer, y=table.attn, name="attention"))
    fig.add_trace(go.Bar(x=table.layer, y=table.mlp, name="MLP"))
    fig.add_trace(go.Scatter(x=table.layer, y=table.cumulative, name="cumulative margin", mode="lines+markers"))
    fig.update_layout(
        barmode="relative",
        title=title,
        xaxis_title="layer",
        yaxis_title="logit difference",
        xaxis=LAYER_AXIS,
        template="plotly_white",
    )
    return fig


def trace_heatmap(result: TraceResult, title: str = "Causal trace: restoring one state") -> go.Figure:
    """Indirect effect per (layer, position); image positions marked with a '*' on the axis."""
    labels = [f"{'*' if i in set(result.image_units) else ''}{i}:{u}" for i, u in enumerate(result.units)]
    fig = go.Figure(
        go.Heatmap(
            z=result.effects,
            x=labels,
            y=list(range(result.effects.shape[0])),
            colorscale="Purples",
            colorbar={"title": "p restored - p corrupted"},
        )
    )
    fig.update_layout(
        title=f"{title} (p clean {result.p_clean:.3f}, corrupted {result.p_corrupted:.3f})",
        xaxis_title="position (* image)",
        yaxis_title="layer",
        template="plotly_white",
    )
    return fig


def intervention_effects(table: pd.DataFrame, title: str = "Accuracy change under interventions") -> go.Figure:
    """Accuracy change with paired-bootstrap CIs, per condition and question type."""
    fig = go.Figure()
    for condition, part in table.groupby("condition", sort=False):
        fig.add_trace(
            go.Bar(
                x=part.type,
                y=part["diff"],
                name=condition,
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "array": part.ci_high - part["diff"],
                    "arrayminus": part["diff"] - part.ci_low,
                },
            )
        )
    fig.update_layout(barmode="group", title=title, yaxis_title="accuracy after - before", template="plotly_white")
    return fig


def reliability_diagram(bins: list[dict], ece: float, title: str = "Calibration of the output confidence") -> go.Figure:
    """Accuracy vs mean confidence per bin (from ``stats.expected_calibration_error``), with the diagonal."""
    fig = go.Figure()
    fig.add_trace(
        go.Bar(
            x=[(b["low"] + b["high"]) / 2 for b in bins],
            y=[b["accuracy"] for b in bins],
            width=[b["high"] - b["low"] for b in bins],
            name="accuracy",
            customdata=[b["n"] for b in bins],
            hovertemplate="confidence %{x:.2f}<br>accuracy %{y:.2f}<br>n %{customdata}<extra></extra>",
        )
    )
    fig.add_trace(
        go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "grey"}, name="perfect calibration")
    )
    fig.update_layout(
        title=f"{title} (ECE {ece:.3f})",
        xaxis_title="confidence",
        yaxis_title="accuracy",
        template="plotly_white",
        xaxis={"range": [0, 1]},
        yaxis={"range": [0, 1]},
    )
    return fig


def probe_units(
    circuit: pd.DataFrame,
    right: np.ndarray,
    wrong: np.ndarray,
    title: str = "The sparse probe's units: coefficients, and the strongest unit's activations",
) -> go.Figure:
    """Figure 3: each kept unit's probe coefficient (bars) and the strongest unit's activation on right vs
    wrong answers (overlaid histograms)."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("probe coefficient", f"unit {circuit.unit.iloc[0]} activation"))
    fig.add_trace(
        go.Bar(x=[f"u{u}" for u in circuit.unit], y=circuit.coefficient, name="coefficient", marker_color="#555"),
        row=1,
        col=1,
    )
    for name, values in (("correct", right), ("incorrect", wrong)):
        fig.add_trace(
            go.Histogram(
                x=values, name=name, opacity=0.6, marker_color=GROUP_COLOURS[name], histnorm="probability density"
            ),
            row=1,
            col=2,
        )
    fig.update_layout(title=title, barmode="overlay", template="plotly_white")
    return fig


def layer_difference(table: pd.DataFrame, column: str, title: str, y_title: str) -> go.Figure:
    """A per-layer difference with its 95% CI band and the zero line (Figure 4: Delta H_s)."""
    x = table.layer.to_numpy()
    fig = go.Figure(
        [
            _band(x, table.ci_low.to_numpy(), table.ci_high.to_numpy(), "#555", "95% CI", "d"),
            go.Scatter(x=x, y=table[column], mode="lines+markers", name=y_title, line={"color": "#333"}),
        ]
    )
    fig.add_hline(y=0, line={"color": "grey", "width": 1})
    fig.update_layout(title=title, xaxis_title="layer", yaxis_title=y_title, template="plotly_white", xaxis=LAYER_AXIS)
    return fig


def update_norms(table: pd.DataFrame, title: str = "Writes to the image tokens by layer") -> go.Figure:
    """Figure 5: attention's and the MLP's mean write norm per layer (columns attn_norm, mlp_norm)."""
    fig = go.Figure(
        [
            go.Scatter(x=table.layer, y=table[c], mode="lines+markers", name=c.replace("_norm", ""))
            for c in ("attn_norm", "mlp_norm")
        ]
    )
    fig.update_layout(
        title=title, xaxis_title="layer", yaxis_title="mean ||write||", template="plotly_white", xaxis=LAYER_AXIS
    )
    return fig


def margin_trajectory(margins: np.ndarray, title: str) -> go.Figure:
    """One question's truth margin by layer (Figure 6: where the right token was suppressed)."""
    fig = go.Figure(go.Scatter(x=np.arange(len(margins)), y=margins, mode="lines+markers", name="truth margin"))
    fig.add_hline(y=0, line={"color": "grey", "width": 1})
    fig.update_layout(
        title=title, xaxis_title="layer", yaxis_title="truth margin (logit)", template="plotly_white", xaxis=LAYER_AXIS
    )
    return fig


def risk_coverage(curves: Mapping[str, pd.DataFrame], title: str = "Risk-coverage") -> go.Figure:
    """Selective risk (error rate of the answers kept) against coverage, one line per scorer
    (``analyses.monitor.selective.risk_coverage`` frames), its AURC in the legend: lower and flatter is better."""
    fig = go.Figure()
    for i, (name, frame) in enumerate(curves.items()):
        area = float(frame["selective_risk"].mean())
        fig.add_trace(
            go.Scatter(
                x=frame["coverage"],
                y=frame["selective_risk"],
                mode="lines",
                name=f"{name} (AURC {area:.3f})",
                line=line_style(i),
            )
        )
    return _legend_beside(fig, title, "coverage (share of answers kept)", "selective risk (error rate of those kept)")


def patch_scores(image: Image.Image, grid: np.ndarray, title: str = "Attribution over the image") -> go.Figure:
    """Signed per-patch scores (an attribution's ``on_grid``) over the image: red where a patch carries the
    metric's difference, blue where it works against it, white at zero (the colour scale is symmetric)."""
    grid = np.asarray(grid, dtype=float)
    bound = float(np.abs(grid).max()) or 1.0
    return _over_image(
        image,
        grid,
        title,
        opacity=0.55,
        colorscale="RdBu_r",
        zmin=-bound,
        zmax=bound,
        colorbar={"title": "score"},
        hovertemplate="patch (%{y:.0f}, %{x:.0f})<br>%{z:+.3f}<extra></extra>",
    )


def lens_kl(table: pd.DataFrame, title: str = "KL to the final distribution, by layer") -> go.Figure:
    """One line per lens (``analyses.tuned_lens.kl_by_layer``): mean KL (nats) by layer, with its standard error."""
    fig = go.Figure()
    for i, (name, rows) in enumerate(table.groupby("lens", sort=False)):
        fig.add_trace(
            go.Scatter(
                x=rows["layer"],
                y=rows["kl"],
                error_y={"type": "data", "array": rows["se"]},
                mode="lines+markers",
                name=f"{name} lens",
                line=line_style(i),
            )
        )
    fig.update_xaxes(**LAYER_AXIS)
    return _legend_beside(fig, title, "layer", "KL(final || lens), nats")


def circuit(edges: pd.DataFrame, title: str = "The circuit: its edges by score") -> go.Figure:
    """A circuit's edges (``sender``, ``receiver``, ``score``: an ``EdgeScores.frame`` cut to the kept edges) drawn
    between its components laid out by layer: red where an edge carries the metric's difference, blue where it works
    against it, the width by |score|."""
    from analyses.attribution.edges import component

    names = sorted(set(edges.sender) | set(edges.receiver) | {"embed", "logits"})
    last = max([component(n)[1] for n in names if component(n)[1] is not None], default=0)

    def place(name: str) -> tuple[int, int]:  # x: the layer (embed left, logits right); y: attention above the MLP
        kind, layer = component(name)
        if layer is None:
            return (-1 if kind == "embed" else last + 1, 0)
        return layer, 1 if kind == "attn" else -1

    top = float(edges.score.abs().max()) if len(edges) else 1.0
    fig = go.Figure()
    for row in edges.itertuples():
        (x0, y0), (x1, y1) = place(row.sender), place(row.receiver)
        fig.add_trace(
            go.Scatter(
                x=[x0, x1],
                y=[y0, y1],
                mode="lines",
                line={
                    "width": 1 + 7 * abs(row.score) / (top or 1.0),
                    "color": "#d62728" if row.score > 0 else "#1f77b4",
                },
                hovertemplate=f"{row.sender} -> {row.receiver}: {row.score:+.3f}<extra></extra>",
                showlegend=False,
            )
        )
    fig.add_trace(
        go.Scatter(
            x=[place(n)[0] for n in names],
            y=[place(n)[1] for n in names],
            mode="markers+text",
            text=names,
            textposition="top center",
            marker={"size": 14, "color": "#444"},
            showlegend=False,
            hoverinfo="text",
        )
    )
    fig.update_layout(
        title=title, template="plotly_white", xaxis={"title": "layer", **LAYER_AXIS}, yaxis={"visible": False}
    )
    return fig
