"""Figures of the steering analysis: the probability of each generated token, one line per run.

Example:
    >>> from steerlab.viz.tokens import TokenStep
    >>> fig = token_prob_figure({"baseline": [TokenStep(0, 1, "a", 0.5, 0.5, ())]})
    >>> [t.name for t in fig.data]
    ['baseline']
"""

from __future__ import annotations

import html

import plotly.graph_objects as go

from steerlab.viz.tokens import TokenStep, step_tooltip


def token_prob_figure(
    runs: dict[str, list[TokenStep]], title: str = "Probability of each generated token"
) -> go.Figure:
    """Line per run: the model's probability of the token it produced at each step; hover shows
    the token and the top alternatives."""
    fig = go.Figure()
    for label, steps in runs.items():
        fig.add_trace(go.Scatter(
            x=[s.step for s in steps], y=[s.prob for s in steps], mode="lines+markers", name=label,
            text=[html.escape(step_tooltip(s)).replace("\n", "<br>") for s in steps],
            hovertemplate="step %{x}<br>%{text}<extra>" + label + "</extra>",
        ))
    fig.update_layout(title=title, xaxis_title="generated token", yaxis_title="p(token)",
                      yaxis_range=[0, 1.02], height=320, margin=dict(l=40, r=10, t=40, b=40),
                      legend=dict(orientation="h", y=1.12, x=1, xanchor="right"))
    return fig
