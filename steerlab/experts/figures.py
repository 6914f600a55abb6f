"""Figures of the experts analysis: the fTRI heatmap, a per-token expert raster and behavior vs k.

Pure functions from tensors and artifact data to plotly figures; the CLI writes them next to the
artifact (HTML) and the dashboard's Experts page renders the same figures.

Example:
    >>> import torch
    >>> fig = ftri_heatmap(torch.zeros(2, 4), layers=[0, 1])
    >>> fig.data[0].type
    'heatmap'
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
from torch import Tensor


def ftri_heatmap(
    scores: Tensor,
    layers: list[int],
    title: str = "fTRI: behavior minus control selection frequency",
    q_values: Tensor | None = None,
    label: str = "diff",
) -> go.Figure:
    """Layers x experts heatmap of a score (diverging colors centered at 0); stars mark q < 0.05."""
    z = scores.tolist()
    text = None
    if q_values is not None:
        text = [["*" if q < 0.05 else "" for q in row] for row in q_values.tolist()]
    m = float(scores.abs().max()) or 1.0
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(range(scores.shape[1])),
            y=[f"layer {layer}" for layer in layers],
            zmid=0,
            zmin=-m,
            zmax=m,
            colorscale="RdBu_r",
            text=text,
            texttemplate="%{text}" if text else None,
            hovertemplate="layer %{y}<br>expert %{x}<br>" + label + " %{z:.4f}<extra></extra>",
            colorbar={"title": label},
        )
    )
    fig.update_layout(
        title=title,
        xaxis_title="expert",
        yaxis_title="",
        height=120 + 40 * len(layers),
        margin={"l": 80, "r": 20, "t": 50, "b": 40},
    )
    fig.update_yaxes(autorange="reversed")
    return fig


def expert_raster(
    experts: Tensor,
    tokens: list[str],
    layers: list[int],
    highlight: list[tuple[int, int]] | None = None,
    title: str = "chosen expert per token",
) -> go.Figure:
    """Per-token raster: for each MoE layer (rows) and token (columns), the top-1 chosen expert.

    ``experts``: ``[n_layers, n_tokens]`` expert ids. Cells of ``highlight`` ``(layer, expert)`` pairs
    are outlined in the hover text.
    """
    marks = set(highlight or [])
    text = [
        [("★" if (layer, int(e)) in marks else "") + str(int(e)) for e in row]
        for layer, row in zip(layers, experts.tolist(), strict=True)
    ]
    fig = go.Figure(
        go.Heatmap(
            z=experts.tolist(),
            x=list(range(len(tokens))),
            y=[f"layer {layer}" for layer in layers],
            text=text,
            texttemplate="%{text}",
            colorscale="Viridis",
            showscale=False,
            customdata=[tokens] * len(layers),
            hovertemplate="token %{customdata!r}<br>%{y}<br>expert %{z}<extra></extra>",
        )
    )
    fig.update_xaxes(tickmode="array", tickvals=list(range(len(tokens))), ticktext=tokens, tickangle=-60)
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title=title, height=160 + 40 * len(layers), margin={"l": 80, "r": 20, "t": 50, "b": 120})
    return fig


def rate_vs_k(
    sweep: list[dict[str, Any]],
    base: dict[str, float] | None = None,
    title: str = "behavior vs number of experts switched off",
) -> go.Figure:
    """Refusal and compliance with the top-k experts off, against the random-control band (5-95%)."""
    ks = [r["k"] for r in sweep]
    fig = go.Figure()
    colors = {"refusal": "#d62728", "compliance": "#2ca02c"}
    for what, color in colors.items():
        rnd = [r[f"{what}_random"] for r in sweep]
        if all(rnd):
            fig.add_trace(
                go.Scatter(
                    x=ks + ks[::-1],
                    y=[x["q95"] for x in rnd] + [x["q05"] for x in rnd][::-1],
                    fill="toself",
                    fillcolor=color,
                    opacity=0.15,
                    line={"width": 0},
                    name=f"{what}, random experts (5-95%)",
                    hoverinfo="skip",
                )
            )
            fig.add_trace(
                go.Scatter(
                    x=ks,
                    y=[x["mean"] for x in rnd],
                    mode="lines",
                    line={"color": color, "dash": "dot"},
                    name=f"{what}, random experts (mean)",
                )
            )
        fig.add_trace(
            go.Scatter(
                x=ks,
                y=[r[f"{what}_off"] for r in sweep],
                mode="lines+markers",
                line={"color": color},
                name=f"{what}, top-k experts off",
            )
        )
        if base:
            fig.add_hline(
                y=base[what],
                line={"color": color, "dash": "dash", "width": 1},
                annotation_text=f"{what} base",
                annotation_position="top left",
            )
    fig.update_layout(
        title=title,
        xaxis_title="k (experts switched off)",
        yaxis_title="rate",
        yaxis_range=[0, 1],
        height=420,
        margin={"l": 60, "r": 20, "t": 50, "b": 50},
    )
    return fig
