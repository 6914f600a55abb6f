"""Views of per-step truncation diagnostics (:mod:`steerlab.decoding.diagnostics`) and their artifact.

The diagnostics themselves (entropies, budgets, kept sets of top-H / top-p / min-p) are computed by
:func:`steerlab.decoding.diagnostics.generation_diagnostics`; this module only summarizes and draws
them: a table of per-rule means, the token-probability bars of one step with each rule's cut, and the
``sampling_diagnostics`` artifact (the diagnostics JSON + the top probabilities of every step).

Example:
    >>> import steerlab as sl
    >>> from steerlab.decoding.diagnostics import generation_diagnostics
    >>> from steerlab.viz.sampling import diagnostics_summary
    >>> h = sl.load("shared:stories260K")
    >>> r = sl.generate(h, ["Once upon a time"], sampler=sl.make_sampler("top_h", alpha=0.4, temperature=1.5),
    ...                 max_new_tokens=6, output_scores=True)
    >>> [row["rule"] for row in diagnostics_summary(generation_diagnostics(r))]
    ['top-H', 'top-p', 'min-p']
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from steerlab.errors import SteerlabError

KIND = "sampling_diagnostics"
COMPARE_KIND = "sampling_compare"  # the comparison harness's artifact
RULES = (("top_h", "top-H"), ("top_p", "top-p"), ("min_p", "min-p"))
COLORS = {"top_h": "#d62728", "top_p": "#1f77b4", "min_p": "#2ca02c"}


def rule_label(diag: dict[str, Any], key: str) -> str:
    """``top-H (alpha=0.4, paper)``, ``top-p (p=0.9)``, ``min-p (p=0.1)``."""
    s = diag[key]
    name = dict(RULES)[key]
    return f"{name} (alpha={s['alpha']:g}, {s['variant']})" if key == "top_h" else f"{name} (p={s['p']:g})"


def _mean(xs: list[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else float("nan")


def diagnostics_summary(diag: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per rule: mean / median / max kept-set size, mean kept mass and mean H(kept) (nats)."""
    rows = []
    for key, name in RULES:
        s = diag[key]
        kept = sorted(s["kept"])
        rows.append({
            "rule": name, "setting": rule_label(diag, key).split(" ", 1)[1].strip("()"),
            "mean kept": round(_mean(kept), 2), "median kept": kept[len(kept) // 2] if kept else None,
            "max kept": max(kept) if kept else None, "mean kept mass": round(_mean(s["kept_mass"]), 4),
            "mean H(kept)": round(_mean(s["kept_entropy"]), 4),
        })
    return rows


@dataclass
class StepTop:
    """The ``n`` most likely tokens of every step under ``softmax(logits / T)``, in descending order."""

    probs: Float[Tensor, "steps n"]
    ids: Int[Tensor, "steps n"]

    @classmethod
    def from_scores(cls, scores: list[Tensor], row: int, steps: int, temperature: float, n: int = 64) -> StepTop:
        """From ``GenerationResult.scores`` (raw logits per step), for the first ``steps`` steps of ``row``."""
        if scores is None:
            raise SteerlabError("the generation has no scores; generate with output_scores=True")
        logits = torch.stack([scores[t][row].float() for t in range(steps)]) / temperature
        top = torch.softmax(logits, -1).topk(min(n, logits.shape[-1]), dim=-1)
        return cls(top.values, top.indices)


def step_cutoff_figure(
    diag: dict[str, Any], top: StepTop, step: int, tokenizer: Any = None, n_show: int = 40
) -> Any:
    """Bars: the most likely tokens at ``step`` (descending, at the diagnostics' temperature), with a
    vertical line where each rule cuts (its kept-set size; all three keep a descending prefix)."""
    import plotly.graph_objects as go

    if not 0 <= step < top.probs.shape[0]:
        raise SteerlabError(f"step must be in [0, {top.probs.shape[0]}), got {step}")
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


def diagnostics_artifact(diag: dict[str, Any], top: StepTop, config: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for :func:`steerlab.artifacts.write_artifact` (``sampling_diagnostics``)."""
    metrics = {f"mean_kept_{k}": _mean(diag[k]["kept"]) for k, _ in RULES}
    metrics.update({f"mean_kept_mass_{k}": _mean(diag[k]["kept_mass"]) for k, _ in RULES})
    metrics["mean_entropy"] = _mean(diag["entropy"])
    return {"kind": KIND, "config": config, "metrics": metrics, "data": diag,
            "tensors": {"step_top_probs": top.probs, "step_top_ids": top.ids}}


def diagnostics_from_artifact(art: Any) -> tuple[dict[str, Any], StepTop]:
    """Read back a ``sampling_diagnostics`` artifact: ``(diagnostics, step tops)``."""
    if art.kind != KIND:
        raise SteerlabError(f"artifact {art.path} is a {art.kind!r}; expected {KIND!r}")
    t = art.tensors
    return art.data, StepTop(t["step_top_probs"], t["step_top_ids"])
