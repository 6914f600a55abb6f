"""Plotly figures of the regions analysis: perplexity ratios per language (core vs random vs bottom, with
the random seeds' spread), the language-overlap heatmap and the layer x matrix map of the core.

Example:
    >>> rows = [{"kind": "core", "scope": "layers", "ratio": {"eng": 9.0}},
    ...         {"kind": "random", "scope": "layers", "ratio": {"eng": 1.1}},
    ...         {"kind": "random", "scope": "layers", "ratio": {"eng": 1.3}}]
    >>> fig = ratio_bars(rows, ["eng"], "layers")
    >>> [t.name for t in fig.data], fig.layout.title.text
    (['core', 'random (mean of 2)'], 'Zeroing regions (layers)')
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go


def ratio_bars(rows: list[dict[str, Any]], languages: list[str], scope: str) -> go.Figure:
    """Perplexity after / before per language for the core, bottom and random regions of ``scope``
    (log scale; random: the mean of the seeds with their min and max as the error bar)."""
    fig = go.Figure()
    for kind in ("core", "bottom", "random"):
        sel = [r for r in rows if r.get("kind") == kind and r.get("scope") == scope]
        if not sel:
            continue
        vals = [[r["ratio"][lang] for r in sel] for lang in languages]
        mean = [sum(v) / len(v) for v in vals]
        err = None
        if len(sel) > 1:
            err = {"type": "data", "symmetric": False, "array": [max(v) - m for v, m in zip(vals, mean, strict=True)],
                   "arrayminus": [m - min(v) for v, m in zip(vals, mean, strict=True)]}  # fmt: skip
        name = kind if len(sel) == 1 else f"{kind} (mean of {len(sel)})"
        fig.add_bar(x=languages, y=mean, name=name, error_y=err)
    fig.update_layout(barmode="group", yaxis_type="log", yaxis_title="perplexity after / before",
                      title=f"{_edit_title(rows, scope)} ({scope})", height=420, margin={"t": 50, "b": 40})  # fmt: skip
    return fig


def _edit_title(rows: list[dict[str, Any]], scope: str) -> str:
    """What the rows did to their regions: "Zeroing regions", "Scaling regions by 0.5", ..."""
    edits = {(r.get("op", "zero"), r.get("value")) for r in rows if r.get("scope") == scope}
    if len(edits) != 1:
        return "Editing regions"
    op, value = edits.pop()
    if op == "zero":
        return "Zeroing regions"
    if op in ("scale", "noise", "set") and isinstance(value, (int, float)):
        return {"scale": f"Scaling regions by {value:g}", "noise": f"Adding N(0, {value:g}²) to regions",
                "set": f"Setting regions to {value:g}"}[op]
    return f"Editing regions ({op})"


def overlap_heatmap(languages: list[str], jaccard: list[list[float]]) -> go.Figure:
    """Jaccard overlap of the languages' top regions."""
    text = [[f"{v:.2f}" for v in row] for row in jaccard]
    heat = go.Heatmap(z=jaccard, x=languages, y=languages, colorscale="Blues", zmin=0, zmax=1, text=text)
    fig = go.Figure(heat.update(texttemplate="%{text}"))
    fig.update_layout(title="Language regions: Jaccard overlap", height=420, margin={"t": 50, "b": 40})
    return fig


def layer_map(rows: dict[str, dict[str, float]]) -> go.Figure:
    """Layer x matrix heatmap of the share of each matrix's summed importance held by its top entries."""
    layers = sorted((k for k in rows if k.isdigit()), key=int)
    mats = sorted({m for k in layers for m in rows[k]})
    z = [[rows[k].get(m) for m in mats] for k in layers]
    fig = go.Figure(go.Heatmap(z=z, x=mats, y=[f"layer {k}" for k in layers], colorscale="Viridis",
                               colorbar={"title": "top share"}))  # fmt: skip
    fig.update_layout(title="Where the core lives: share of importance in each matrix's top entries", height=460,
                      margin={"t": 50, "b": 120})  # fmt: skip
    return fig


def single_weight_sweep(candidates: list[dict[str, Any]], random_max: list[float]) -> go.Figure:
    """Each candidate single weight's smallest per-language perplexity ratio next to the random single
    weights' largest ones (log scale)."""
    fig = go.Figure()
    fig.add_bar(x=[f"{c['param'].replace('model.layers.', 'L')}[{c['index']}]" for c in candidates],
                y=[c["min_ratio"] for c in candidates], name="candidates (min over languages)")  # fmt: skip
    fig.add_box(y=random_max, name=f"random single weights (max over languages, n={len(random_max)})",
                boxpoints="all")  # fmt: skip
    fig.update_layout(yaxis_type="log", yaxis_title="perplexity after / before", height=440,
                      title="Single-weight perturbation", margin={"t": 50, "b": 140})  # fmt: skip
    return fig


def freeze_curves(curves: dict[str, dict[str, list[list[float]]]], train_lang: str) -> go.Figure:
    """Held-out loss vs training step per variant (colour) and language (solid: the trained one)."""
    fig = go.Figure()
    for variant, by_lang in curves.items():
        for lang, pts in by_lang.items():
            dash = "solid" if lang == train_lang else "dot"
            fig.add_scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers",
                            name=f"{variant} · {lang}", line={"dash": dash})  # fmt: skip
    fig.update_layout(xaxis_title="training step", yaxis_title="held-out loss (nats/token)", height=440,
                      title=f"Further training on {train_lang}: core frozen vs unfrozen vs random frozen")  # fmt: skip
    return fig
