"""Figures of the security analysis (plotly), drawn from a sweep record (:mod:`steerlab.security.experiment`).

Example:
    >>> curves = {"plain": {"real": [[0, 0.1], [10, 0.9]]}, "vector": {"real": [[0, 0.1], [10, 0.1]]}}
    >>> rec = {"compliance_vs_samples": curves}
    >>> [t.name for t in compliance_figure(rec).data]
    ['plain fine-tuning (real)', 'with security vector (real)']
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

MODE_NAMES = {"plain": "plain fine-tuning", "vector": "with security vector"}
DASH = {"template": "dash", "real": "solid"}


def compliance_figure(record: dict[str, Any]) -> go.Figure:
    """Harmful compliance on the held-out splits against the number of harmful fine-tuning samples."""
    fig = go.Figure()
    for mode, by_split in record["compliance_vs_samples"].items():
        for split, pts in by_split.items():
            fig.add_trace(
                go.Scatter(
                    x=[p[0] for p in pts],
                    y=[p[1] for p in pts],
                    mode="lines+markers",
                    name=f"{MODE_NAMES.get(mode, mode)} ({split})",
                    line={"dash": DASH.get(split, "solid")},
                )
            )
    fig.update_layout(
        title="Harmful compliance after fine-tuning",
        xaxis_title="harmful fine-tuning samples",
        yaxis_title="compliance on held-out harmful prompts",
        yaxis_range=[0, 1.02],
        height=420,
    )
    return fig


def loss_figure(record: dict[str, Any], n: int) -> go.Figure:
    """Held-out loss of the harmful and benign parts during fine-tuning with ``n`` harmful samples,
    plain and with the vector on (the harmful part starts near zero with the vector on)."""
    fig = go.Figure()
    for mode in ("plain", "vector"):
        run = record["runs"].get(f"{mode}_{n}", {})
        for part, pts in run.get("eval_losses", {}).items():
            fig.add_trace(
                go.Scatter(
                    x=[p[0] for p in pts],
                    y=[p[1] for p in pts],
                    mode="lines+markers",
                    name=f"{MODE_NAMES[mode]}: {part}",
                    line={"dash": "solid" if mode == "vector" else "dot"},
                )
            )
    fig.update_layout(
        title=f"Loss per data part while fine-tuning ({n} harmful samples)",
        xaxis_title="step",
        yaxis_title="mean token NLL (nats)",
        height=420,
    )
    return fig


def curves_figure(curves: dict[str, Any], title: str = "Held-out loss while training") -> go.Figure:
    """One line per named curve of ``[step, value]`` points (a vector's or a fine-tuned model's card):
    curves of different lengths and steps each keep their own x values.

    >>> fig = curves_figure({"harmful": [[0, 2.0], [5, 1.0], [10, 0.5]], "anchor": [[0, 0.0], [10, 0.1]]})
    >>> [len(t.x) for t in fig.data]
    [3, 2]
    """
    fig = go.Figure()
    for name, pts in curves.items():
        fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers", name=name))
    fig.update_layout(title=title, xaxis_title="step", yaxis_title="loss", height=380)
    return fig
