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
generation too; :func:`diagnostics_summary` tabulates it per rule and :class:`StepTop` keeps the top
probabilities of every step (the figures are in :mod:`steerlab.decoding.figures`).

Example:
    >>> import torch
    >>> logits = torch.tensor([[2.0, 1.5, 1.0, 0.5, 0.0, -1.0, -2.0]])
    >>> d = step_diagnostics(logits, temperature=1.5, alpha=0.5)
    >>> d["top_h"]["kept"], d["top_p"]["kept"], d["min_p"]["kept"]
    ([2], [5], [6])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from steerlab.errors import SpecError
from steerlab.generation import generate
from steerlab.models.handle import ModelHandle
from steerlab.sampling.base import Sampler
from steerlab.sampling.basic import MinP, TopP
from steerlab.sampling.top_h import TopH

RULES = (("top_h", "top-H"), ("top_p", "top-p"), ("min_p", "min-p"))  # the truncation rules compared


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
    return diagnose_run(h, prompt, sampler, max_new_tokens=max_new_tokens, seed=seed, chat=chat,
                        interventions=interventions, **kwargs)[0]


def diagnose_run(
    h: ModelHandle,
    prompt: str,
    sampler: Any = None,
    *,
    max_new_tokens: int = 32,
    seed: int = 0,
    chat: bool = False,
    interventions: Any = None,
    **kwargs: Any,
) -> tuple[dict[str, Any], StepTop, dict[str, Any]]:
    """:func:`diagnose_generation`, also returning the top probabilities of every step (:class:`StepTop`)
    and the generation's settings: all a ``sampling_diagnostics`` artifact holds."""
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
    return out, StepTop.from_scores(res.scores, 0, out["steps"], out["temperature"]), res.settings


def rule_label(diag: dict[str, Any], key: str) -> str:
    """``top-H (alpha=0.4, paper)``, ``top-p (p=0.9)``, ``min-p (p=0.1)``."""
    s = diag[key]
    name = dict(RULES)[key]
    return f"{name} (alpha={s['alpha']:g}, {s['variant']})" if key == "top_h" else f"{name} (p={s['p']:g})"


def mean_or_nan(xs: list[float]) -> float:
    """The mean of ``xs`` (NaN for none): the per-rule averages of the summary and the artifact metrics."""
    return float(sum(xs) / len(xs)) if xs else float("nan")


def diagnostics_summary(diag: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per rule: mean / median / max kept-set size, mean kept mass and mean H(kept) (nats)."""
    rows = []
    for key, name in RULES:
        s = diag[key]
        kept = sorted(s["kept"])
        rows.append({
            "rule": name, "setting": rule_label(diag, key).split(" ", 1)[1].strip("()"),
            "mean kept": round(mean_or_nan(kept), 2), "median kept": kept[len(kept) // 2] if kept else None,
            "max kept": max(kept) if kept else None, "mean kept mass": round(mean_or_nan(s["kept_mass"]), 4),
            "mean H(kept)": round(mean_or_nan(s["kept_entropy"]), 4),
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
            raise SpecError("the generation has no scores; generate with output_scores=True")
        logits = torch.stack([scores[t][row].float() for t in range(steps)]) / temperature
        top = torch.softmax(logits, -1).topk(min(n, logits.shape[-1]), dim=-1)
        return cls(top.values, top.indices)
