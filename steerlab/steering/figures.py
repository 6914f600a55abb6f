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


def sweep_figure(rows: list[dict], behavior: str = "harmful", control: str = "harmless",
                 title: str = "Steering trade-off by scale") -> go.Figure:
    """Behavior rates (left axis) and harmless perplexity and next-token KL (right axis) against the scale of
    a steering sweep (rows of :func:`steerlab.steering.sweep.scale_sweep`)."""
    fig = go.Figure()
    x = [r["scale"] for r in rows]
    for key, name, dash in ((f"{control}_refusal", f"refusal on {control}", "solid"),
                            (f"{behavior}_refusal", f"refusal on {behavior}", "dot"),
                            (f"{control}_compliance", f"fluent compliance on {control}", "solid"),
                            (f"{control}_broken", f"broken on {control}", "dash")):
        if rows and key in rows[0]:
            fig.add_trace(go.Scatter(x=x, y=[r[key] for r in rows], name=name, mode="lines+markers",
                                     line=dict(dash=dash)))
    fig.add_trace(go.Scatter(x=x, y=[r["ppl"] for r in rows], name="harmless perplexity", yaxis="y2",
                             mode="lines+markers", line=dict(color="gray")))
    fig.add_trace(go.Scatter(x=x, y=[r["kl"] for r in rows], name="KL to unsteered (nats)", yaxis="y2",
                             mode="lines+markers", line=dict(color="black", dash="dot")))
    fig.update_layout(title=title, xaxis_title="scale", yaxis=dict(title="rate", range=[0, 1.02]),
                      yaxis2=dict(title="perplexity / KL", overlaying="y", side="right", type="log"),
                      height=360, margin=dict(l=40, r=40, t=40, b=40),
                      legend=dict(orientation="h", y=-0.25))
    return fig


def probe_profile_figure(table: list[dict], title: str = "Linear probes by site") -> go.Figure:
    """Held-out accuracy, AUROC and the shuffled-label control per site (left), separation (right)."""
    fig = go.Figure()
    x = [r["site"] for r in table]
    for key, name in (("test_acc", "held-out accuracy"), ("test_auroc", "held-out AUROC"),
                      ("shuffled_acc", "shuffled-label control"), ("chance", "chance")):
        fig.add_trace(go.Scatter(x=x, y=[r[key] for r in table], name=name, mode="lines+markers"))
    fig.add_trace(go.Bar(x=x, y=[r["separation"] for r in table], name="separation (Cohen's d)", yaxis="y2",
                         opacity=0.3))
    fig.update_layout(title=title, yaxis=dict(title="accuracy / AUROC", range=[0, 1.02]),
                      yaxis2=dict(title="Cohen's d", overlaying="y", side="right"), height=340,
                      margin=dict(l=40, r=40, t=40, b=80), legend=dict(orientation="h", y=-0.35))
    return fig
