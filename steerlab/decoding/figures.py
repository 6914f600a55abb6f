"""Figures of the decoding analysis: one generation's per-step kept-set sizes and entropies, the token
probabilities of one step with each rule's cut, and the comparison's diversity against coherence.

Pure functions from diagnostics / comparison rows to plotly figures: the comparison harness writes them
beside its artifact and the dashboard's Sampling page draws them.

Example:
    >>> import torch
    >>> from steerlab.decoding.diagnostics import step_diagnostics
    >>> d = step_diagnostics(torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]]), temperature=1.0, alpha=0.5)
    >>> [t.name for t in per_step_figure(d).data][:3]
    ['top-H (alpha=0.5, paper)', 'top-p (p=0.9)', 'min-p (p=0.1)']
"""

from __future__ import annotations

import html
from typing import Any

import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from steerlab.decoding.diagnostics import RULES, StepTop
from steerlab.errors import SpecError

COLORS = {"top_h": "#d62728", "top_p": "#1f77b4", "min_p": "#2ca02c"}


def per_step_figure(diag: dict[str, Any], title: str | None = None) -> go.Figure:
    """Plotly figure of one generation: kept-set sizes (top) and entropies / budget (bottom) per step."""
    steps = list(range(len(diag["entropy"])))
    labels = diag.get("token_texts") or [str(t) for t in diag.get("tokens", steps)]
    th, tp, mp = diag["top_h"], diag["top_p"], diag["min_p"]
    fig = make_subplots(
        rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08, subplot_titles=("kept-set size", "entropy (nats)")
    )
    names = {
        "top_h": f"top-H (alpha={th['alpha']}, {th['variant']})",
        "top_p": f"top-p (p={tp['p']})",
        "min_p": f"min-p (p={mp['p']})",
    }
    for key, stats in (("top_h", th), ("top_p", tp), ("min_p", mp)):
        fig.add_trace(
            go.Scatter(
                x=steps,
                y=stats["kept"],
                mode="lines+markers",
                name=names[key],
                legendgroup=key,
                text=labels,
                hovertemplate="%{text}: %{y}",
            ),
            row=1,
            col=1,
        )
    fig.add_trace(
        go.Scatter(x=steps, y=diag["entropy"], mode="lines", name="H(p)", line={"color": "black"}, text=labels),
        row=2,
        col=1,
    )
    fig.add_trace(
        go.Scatter(x=steps, y=th["budget"], mode="lines", name="top-H budget", line={"dash": "dash", "color": "gray"}),
        row=2,
        col=1,
    )
    for key, stats in (("top_h", th), ("top_p", tp), ("min_p", mp)):
        fig.add_trace(
            go.Scatter(
                x=steps, y=stats["kept_entropy"], mode="lines", name=f"H(kept) {key}", legendgroup=key, showlegend=True
            ),
            row=2,
            col=1,
        )
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_xaxes(title_text="generation step", row=2, col=1)
    fig.update_layout(title=title or f"per-step truncation at T={diag['temperature']}", height=650)
    return fig


def step_cutoff_figure(
    diag: dict[str, Any], top: StepTop, step: int, tokenizer: Any = None, n_show: int = 40
) -> go.Figure:
    """Bars: the most likely tokens at ``step`` (descending, at the diagnostics' temperature), with a
    vertical line where each rule cuts (its kept-set size; all three keep a descending prefix)."""

    if not 0 <= step < top.probs.shape[0]:
        raise SpecError(f"step must be in [0, {top.probs.shape[0]}), got {step}")
    n = min(n_show, top.probs.shape[1])
    ids = top.ids[step, :n].tolist()
    labels = [f"{i}:{tokenizer.decode([t]) if tokenizer else t}" for i, t in enumerate(ids)]
    chosen = diag.get("tokens", [None] * (step + 1))[step]
    fig = go.Figure(go.Bar(
        x=list(range(n)), y=top.probs[step, :n].tolist(), customdata=[html.escape(x) for x in labels],
        marker_color=["#ff8c00" if t == chosen else "#9aa5b1" for t in ids],
        hovertemplate="%{customdata}<br>p=%{y:.4f}<extra></extra>", name="p", showlegend=False,
    ))
    for key, _ in RULES:
        k = int(diag[key]["kept"][step])
        fig.add_vline(x=k - 0.5, line_color=COLORS[key], line_dash="dash",
                      annotation_text=f"{dict(RULES)[key]} keeps {k}", annotation_position="top right")
    fig.update_layout(
        title=f"step {step}: H(p)={diag['entropy'][step]:.2f} nats, top-H budget "
              f"{diag['top_h']['budget'][step]:.2f} (orange: the token drawn)",
        xaxis=dict(title="rank", tickmode="array", tickvals=list(range(n)), ticktext=labels, tickangle=-60),
        yaxis_title=f"p at T={diag['temperature']:g}", height=380, margin=dict(l=40, r=10, t=50, b=90),
    )
    return fig


def diversity_coherence_figure(rows: list[dict[str, Any]], model: str = "") -> go.Figure:
    """Diversity (embedding, distinct-2, self-BLEU) vs judge perplexity, one line per sampler across T."""

    panels = [
        ("embedding_diversity", "embedding diversity (higher = diverse)"),
        ("distinct_2", "distinct-2 (higher = diverse)"),
        ("self_bleu", "self-BLEU (lower = diverse)"),
    ]
    fig = make_subplots(rows=1, cols=3, subplot_titles=[t for _, t in panels], horizontal_spacing=0.07)
    labels = list(dict.fromkeys(r["sampler"] for r in rows))
    for j, label in enumerate(labels):
        rs = sorted((r for r in rows if r["sampler"] == label), key=lambda r: r["temperature"])
        color = qualitative.Plotly[j % len(qualitative.Plotly)]
        ppl = [r["judge_ppl"] for r in rs]
        for c, (key, _) in enumerate(panels, start=1):
            m = [r[key] for r in rs]
            fig.add_trace(
                go.Scatter(
                    x=[p["mean"] for p in ppl],
                    y=[v["mean"] for v in m],
                    mode="lines+markers+text",
                    text=[f"T={r['temperature']:g}" for r in rs],
                    textposition="top center",
                    name=label,
                    legendgroup=label,
                    showlegend=c == 1,
                    line={"color": color},
                    error_x=_error_bars(ppl),
                    error_y=_error_bars(m),
                ),
                row=1,
                col=c,
            )
        for c in range(1, 4):
            fig.update_xaxes(type="log", title_text="judge perplexity (lower = coherent)", row=1, col=c)
    fig.update_layout(title=f"diversity vs coherence across temperatures {model}".strip(), height=520, width=1500)
    return fig


def _error_bars(cis: list[dict[str, float]]) -> dict[str, Any]:
    """Asymmetric plotly error bars from ``{"mean", "lo", "hi"}`` intervals."""
    return {
        "type": "data",
        "symmetric": False,
        "array": [c["hi"] - c["mean"] for c in cis],
        "arrayminus": [c["mean"] - c["lo"] for c in cis],
        "thickness": 1,
    }
