"""Figures of the preference analysis, from a :class:`WeightsView` (the published weights or a fit).

* :func:`weights_figure` -- each property's ``100 * sigmoid(w)`` for one or more judges side by side, sorted by
  the first judge, with credible intervals where the source has them (the published weights have none);
* :func:`similarity_heatmap` -- the judge-similarity matrix in cluster order;
* :func:`shift_figure` -- one judge's weights across groups (groups x properties heatmap);
* :func:`breakdown_figure` -- the property contributions behind one judge's verdict on one pair.

Example:
    >>> v = WeightsView.published()
    >>> fig = weights_figure(v, ["human", "gpt-4-1106-preview"], "Advice")
    >>> [t.name for t in fig.data], len(fig.data[0].y)
    (['human', 'gpt-4-1106-preview'], 29)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import plotly.graph_objects as go
import torch

from steerlab.errors import SteerlabError
from steerlab.preferences.data import SCENARIOS, PairSet, load_published
from steerlab.preferences.fit import cluster_order, judge_similarity
from steerlab.stats import sigmoid


def percent(w: float) -> float:
    """A weight (logit) as the percent chance that the property's response wins, for any weight (a property
    that never varies gets an interval of about +-5e4: the naive form overflows there)."""
    return 100 * sigmoid(w)


@dataclass
class WeightsView:
    """Weights by ``[judge][group]``: ``(mean, lo, hi)`` lists (``lo``/``hi`` ``None`` without intervals), the
    property names, the pairs they were fitted on (``None`` for the published weights) and a source label."""

    weights: dict[str, dict[str, tuple[list[float], list[float] | None, list[float] | None]]]
    properties: list[str]
    source: str
    pairs: PairSet | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def judges(self) -> list[str]:
        return list(self.weights)

    @property
    def groups(self) -> list[str]:
        return list(dict.fromkeys(g for per in self.weights.values() for g in per))

    def mean(self, judge: str, group: str) -> list[float]:
        if judge not in self.weights:
            raise SteerlabError(f"unknown judge {judge!r}; expected one of {self.judges}")
        if group not in self.weights[judge]:
            have = list(self.weights[judge])
            raise SteerlabError(f"judge {judge!r} has no weights for group {group!r}; it has {have}")
        return self.weights[judge][group][0]

    def similarity(self, judges: Sequence[str], groups: Sequence[str]) -> torch.Tensor:
        """Pearson similarity of ``judges`` per group, averaged over ``groups``."""
        w = torch.tensor([[self.mean(j, g) for j in judges] for g in groups], dtype=torch.float64)
        return judge_similarity(w)

    @classmethod
    def published(cls) -> WeightsView:
        pw = load_published()
        weights: dict[str, dict[str, Any]] = {}
        for g, per in pw.weights.items():
            for j, v in per.items():
                weights.setdefault(j, {})[g] = (v, None, None)
        return cls(weights, list(pw.properties), "published (Li et al. 2024, CC-BY-NC-4.0)")

    @classmethod
    def from_fit(cls, run: Any, label: str = "fit") -> WeightsView:
        """From a :class:`steerlab.preferences.artifact.FitRun`."""
        weights = {j: {g: (f.mean.tolist(), f.lo.tolist(), f.hi.tolist()) for g, f in per.items()}
                   for j, per in run.fits.items()}
        return cls(weights, list(run.properties), label, run.pairs, {"fits": run.fits})


def default_groups(view: WeightsView) -> list[str]:
    """The groups the paper averages similarity over (its 11 scenarios) when present, else all."""
    gs = [g for g in view.groups if g in SCENARIOS]
    return gs or view.groups


def weights_figure(view: WeightsView, judges: Sequence[str], group: str, *, top: int | None = None) -> go.Figure:
    """Horizontal dot plot of ``100 * sigmoid(w)`` per property, judges side by side, sorted by the first judge."""
    if not judges:
        raise SteerlabError("no judges chosen; expected at least one")
    first = view.mean(judges[0], group)
    order = sorted(range(len(first)), key=lambda i: first[i])
    if top:
        order = order[-top:]
    fig = go.Figure()
    for k, j in enumerate(judges):
        mean, lo, hi = view.weights[j][group] if group in view.weights.get(j, {}) else (view.mean(j, group), None, None)
        x = [percent(mean[i]) for i in order]
        err = None
        if lo is not None and hi is not None:
            err = {"type": "data", "symmetric": False, "array": [percent(hi[i]) - percent(mean[i]) for i in order],
                   "arrayminus": [percent(mean[i]) - percent(lo[i]) for i in order]}
        fig.add_trace(go.Scatter(x=x, y=[view.properties[i] for i in order], mode="markers", name=j, error_x=err,
                                 marker={"size": 9, "symbol": ["circle", "diamond", "square", "x"][k % 4]},
                                 offsetgroup=str(k)))
    fig.add_vline(x=50, line_dash="dash", line_color="gray")
    fig.update_layout(title=f"P(A wins | A better on this property alone), {group}", xaxis_title="%",
                      height=max(380, 22 * len(order) + 120), margin={"l": 10, "r": 10, "t": 50, "b": 40},
                      legend={"orientation": "h", "y": -0.08})
    return fig


def similarity_heatmap(sim: torch.Tensor, judges: Sequence[str], *, cluster: bool = True,
                       title: str = "Judge similarity (Pearson r of weights)") -> tuple[go.Figure, list[str]]:
    """Annotated heatmap of ``sim``; rows and columns in cluster order when ``cluster``. Returns the figure and
    the judge order used."""
    order = cluster_order(sim) if cluster else list(range(len(judges)))
    names = [judges[i] for i in order]
    z = sim[order][:, order].tolist()
    fig = go.Figure(go.Heatmap(z=z, x=names, y=names, zmin=-1, zmax=1, colorscale="RdBu", reversescale=True,
                               text=[[f"{v:.2f}" for v in row] for row in z], texttemplate="%{text}"))
    fig.update_layout(title=title, height=max(380, 28 * len(names) + 160), yaxis={"autorange": "reversed"},
                      margin={"l": 10, "r": 10, "t": 50, "b": 10})
    return fig, names


def shift_figure(view: WeightsView, judge: str, groups: Sequence[str]) -> go.Figure:
    """One judge's ``100 * sigmoid(w)`` per property (columns) across groups (rows)."""
    z = [[percent(w) for w in view.mean(judge, g)] for g in groups]
    fig = go.Figure(go.Heatmap(z=z, x=view.properties, y=list(groups), zmid=50, colorscale="RdBu",
                               reversescale=True, text=[[f"{v:.0f}" for v in row] for row in z],
                               texttemplate="%{text}", colorbar={"title": "%"}))
    fig.update_layout(title=f"{judge}: property weights across groups", height=max(360, 30 * len(groups) + 200),
                      margin={"l": 10, "r": 10, "t": 50, "b": 10})
    return fig


def breakdown_figure(breakdown: dict[str, Any], judge: str) -> go.Figure:
    """Bar chart of the property contributions ``w_i * x_i`` behind one pair's predicted verdict."""
    rows = breakdown["contributions"][::-1]
    fig = go.Figure(go.Bar(x=[r["contribution"] for r in rows], y=[r["property"] for r in rows], orientation="h",
                           marker_color=["#1f77b4" if r["contribution"] > 0 else "#d62728" for r in rows]))
    fig.update_layout(title=f"{judge}: logit {breakdown['logit']:+.2f} -> P(A) = {100 * breakdown['p_a']:.0f}%"
                            " (bars toward A are positive)", height=max(240, 26 * len(rows) + 120),
                      margin={"l": 10, "r": 10, "t": 50, "b": 10})
    return fig
