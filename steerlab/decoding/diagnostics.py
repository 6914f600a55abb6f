"""Per-step truncation diagnostics: what top-H, top-p and min-p keep at the same decoding step.

For next-token logits at one step (a batch of rows, or the steps of one generation stacked as rows),
:func:`step_diagnostics` reports, per row: the entropy ``H(p)`` of ``p = softmax(logits / T)``; for top-H
the kept-set size, the renormalized entropy of the kept set ``H(q)``, the budget (``alpha * H(p)`` for
the ``paper`` variant) and the kept mass ``p(S)``; and the same size / entropy / mass for top-p and
min-p at the same temperature. Entropies are in nats. The result is plain JSON (lists of numbers), the
structure the dashboard plots:

    {"units": "nats", "temperature": T, "entropy": [...],
     "top_h": {"alpha", "variant", "kept", "kept_entropy", "kept_mass", "budget"},
     "top_p": {"p", "kept", "kept_entropy", "kept_mass"},
     "min_p": {"p", "kept", "kept_entropy", "kept_mass"}}

:func:`generation_diagnostics` computes it for one sequence of a ``sl.generate(..., output_scores=True)``
result (the raw logits of every step), adding the generated tokens; :func:`diagnose_generation` runs the
generation too; :func:`per_step_figure` draws it.

Example:
    >>> import torch
    >>> logits = torch.tensor([[2.0, 1.5, 1.0, 0.5, 0.0, -1.0, -2.0]])
    >>> d = step_diagnostics(logits, temperature=1.5, alpha=0.5)
    >>> d["top_h"]["kept"], d["top_p"]["kept"], d["min_p"]["kept"]
    ([2], [5], [6])
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from steerlab.errors import SpecError
from steerlab.generation import generate
from steerlab.models.handle import ModelHandle
from steerlab.sampling.base import Sampler
from steerlab.sampling.basic import MinP, TopP
from steerlab.sampling.top_h import TopH


def entropy(logits: Float[Tensor, "batch vocab"]) -> Float[Tensor, " batch"]:
    """Entropy in nats of ``softmax(logits)`` per row (``-inf`` logits contribute nothing)."""
    return torch.special.entr(torch.softmax(logits.float(), dim=-1)).sum(-1)


def truncation_stats(
    tempered: Float[Tensor, "batch vocab"], truncated: Float[Tensor, "batch vocab"], p: Tensor | None = None
) -> dict[str, Tensor]:
    """Size, renormalized entropy and mass (under ``p = softmax(tempered)``, computed unless given) of the
    kept set of each row."""
    kept = torch.isfinite(truncated)
    p = torch.softmax(tempered.float(), dim=-1) if p is None else p
    return {
        "kept": kept.sum(-1),
        "kept_entropy": entropy(truncated),
        "kept_mass": torch.where(kept, p, 0.0).sum(-1),
    }


def _rule_stats(sampler: Sampler, logits: Tensor, tempered: Tensor, p: Tensor) -> dict[str, Tensor]:
    return truncation_stats(tempered, sampler.filter_logits(logits), p)


def _listify(stats: dict[str, Tensor]) -> dict[str, list]:
    return {k: v.tolist() for k, v in stats.items()}


def step_diagnostics(
    logits: Float[Tensor, "batch vocab"],
    *,
    temperature: float = 1.0,
    alpha: float = 0.4,
    variant: str = "paper",
    top_p: float = 0.9,
    min_p: float = 0.1,
) -> dict[str, Any]:
    """Top-H, top-p and min-p kept sets of each row of raw ``logits`` at one temperature (JSON-able)."""
    if logits.ndim == 1:
        logits = logits.unsqueeze(0)
    top_h = TopH(alpha=alpha, variant=variant, temperature=temperature)  # validates everything
    nucleus, minp = TopP(p=top_p, temperature=temperature), MinP(p=min_p, temperature=temperature)
    tempered = logits.float() / top_h.temperature
    p = torch.softmax(tempered, dim=-1)
    sel = top_h.select(logits)  # one selection gives both the kept set and the budget
    h_stats = truncation_stats(tempered, sel.filtered(tempered), p)
    return {
        "units": "nats",
        "temperature": top_h.temperature,
        "entropy": torch.special.entr(p).sum(-1).tolist(),
        "top_h": {"alpha": top_h.alpha, "variant": top_h.variant, **_listify(h_stats), "budget": sel.budget.tolist()},
        "top_p": {"p": nucleus.p, **_listify(_rule_stats(nucleus, logits, tempered, p))},
        "min_p": {"p": minp.p, **_listify(_rule_stats(minp, logits, tempered, p))},
    }


def _defaults_from(settings: dict[str, Any]) -> dict[str, Any]:
    spec = settings.get("sampler", {}) or {}
    params = dict(spec.get("params", {}))
    out: dict[str, Any] = {"temperature": float(params.get("temperature", 1.0))}
    if spec.get("name") == "top_h":
        out.update(alpha=params.get("alpha", 0.4), variant=params.get("variant", "paper"))
    return out


def generation_diagnostics(
    result: Any,
    row: int = 0,
    *,
    alpha: float | None = None,
    variant: str | None = None,
    temperature: float | None = None,
    top_p: float = 0.9,
    min_p: float = 0.1,
    tokenizer: Any = None,
) -> dict[str, Any]:
    """Per-step diagnostics of sequence ``row`` of a ``GenerationResult`` made with ``output_scores=True``.

    ``alpha``/``variant``/``temperature`` default to the generation's own sampler settings (a top-H
    generation is analysed with its own parameters; others with ``alpha=0.4``, ``paper``). Steps after
    the sequence's end-of-sequence token are dropped; the EOS step itself is kept.

    Example:
        >>> import steerlab as sl
        >>> h = sl.load("shared:stories260K")
        >>> r = sl.generate(h, ["Once upon a time"], sampler=sl.make_sampler("top_h", alpha=0.4),
        ...                 max_new_tokens=5, output_scores=True)
        >>> d = generation_diagnostics(r, tokenizer=h.tokenizer)
        >>> d["steps"] == len(d["top_h"]["kept"]) == len(d["tokens"])
        True
    """
    if result.scores is None:
        raise SpecError("the generation has no scores; call sl.generate(..., output_scores=True)")
    n_rows = result.sequences.shape[0]
    if not 0 <= row < n_rows:
        raise SpecError(f"row must be in [0, {n_rows}), got {row!r}")
    kw = _defaults_from(result.settings)
    if alpha is not None:
        kw["alpha"] = alpha
    if variant is not None:
        kw["variant"] = variant
    if temperature is not None:
        kw["temperature"] = temperature
    total = len(result.scores)
    steps = min(total, len(result.token_ids[row]) + 1)
    logits = torch.stack([result.scores[t][row] for t in range(steps)])
    out = step_diagnostics(logits, top_p=top_p, min_p=min_p, **kw)
    start = result.sequences.shape[1] - total
    tokens = result.sequences[row, start : start + steps].tolist()
    out.update(
        steps=steps,
        row=row,
        prompt=result.prompts[row],
        tokens=tokens,
        sampler=result.settings.get("sampler"),
    )
    if tokenizer is not None:
        out["token_texts"] = [tokenizer.decode([t]) for t in tokens]
    return out


def diagnose_generation(
    h: ModelHandle,
    prompt: str,
    sampler: Any = None,
    *,
    max_new_tokens: int = 32,
    seed: int = 0,
    chat: bool = False,
    interventions: Any = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Generate one completion with ``sl.generate`` and return its per-step diagnostics (+ ``text``).

    ``kwargs`` go to :func:`generation_diagnostics` (``alpha``, ``variant``, ``top_p``, ``min_p``, ...).
    """
    res = generate(
        h,
        [prompt],
        interventions=interventions,
        sampler=sampler,
        max_new_tokens=max_new_tokens,
        seed=seed,
        chat=chat,
        output_scores=True,
    )
    out = generation_diagnostics(res, 0, tokenizer=h.tokenizer, **kwargs)
    out["text"] = res.texts[0]
    return out


def per_step_figure(diag: dict[str, Any], title: str | None = None) -> Any:
    """Plotly figure of one generation: kept-set sizes (top) and entropies / budget (bottom) per step."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

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
