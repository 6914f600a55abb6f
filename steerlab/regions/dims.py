"""Dimension dependency: single weights whose perturbation breaks the model, against random single weights.

1. Massive activations: the residual stream after every layer on held-out text; per (layer, hidden
   dimension) the largest |activation| over real tokens; the dimensions far above the rest (``> 20x`` the
   median of every dimension's maximum) are the massive ones.
2. Candidates: each weight matrix's most important single entry (by the summed importance), ranked by
   that importance; each is marked with whether its row or column is a massive-activation dimension, and
   the activations that point to it are kept.
3. Sweep: every candidate, and ``n_random`` random single entries of the top candidate's matrix, is edited
   alone (zeroed by default) and the per-language perplexity ratio is measured.

Example:
    >>> import steerlab as sl
    >>> from steerlab.regions.importance import score_importance
    >>> h = sl.load("shared:stories260K")
    >>> imp = score_importance(h, ["eng"], token_budget=128, progress=False)
    >>> res = find_dims(h, imp, ["eng"], n_candidates=2, n_random=2, n_eval=2, progress=False)
    >>> len(res.candidates), len(res.random)
    (2, 2)
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from steerlab.activations import capture
from steerlab.errors import SpecError
from steerlab.interventions.regions import RegionEdit, model_signature
from steerlab.models.handle import ModelHandle
from steerlab.regions.corpus import corpus_texts
from steerlab.regions.importance import Importance
from steerlab.regions.perturb import language_nll
from steerlab.regions.select import in_scope, sample_indices

MASSIVE = 20.0


@dataclass
class DimsResult:
    """Massive activations, candidate single weights and random single weights with their effects."""

    languages: list[str]
    base_nll: dict[str, float]
    massive: list[dict[str, Any]]
    candidates: list[dict[str, Any]]
    random: list[dict[str, Any]]
    op: str
    value: float
    config: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The best candidate's smallest per-language ratio, and the random weights' largest ratios."""
        best = max(self.candidates, key=lambda c: c["min_ratio"]) if self.candidates else None
        rmax = [r["max_ratio"] for r in self.random]
        return {
            "best_candidate": None if best is None else f"{best['param']}[{best['index']}]",
            "best_min_ratio": None if best is None else best["min_ratio"],
            "random_max_ratio": max(rmax) if rmax else None,
            "random_median_of_max": statistics.median(rmax) if rmax else None,
            "n_random": len(rmax),
        }


def massive_activations(h: ModelHandle, texts: list[str], top: int = 8) -> list[dict[str, Any]]:
    """The ``top`` (layer, dimension) pairs with the largest |residual-stream activation| over ``texts``."""
    sites = [f"blocks.{i}.resid_post" for i in range(h.adapter.n_layers)]
    cap = capture(h, texts, sites)
    real = cap.attention_mask.bool()
    peak = torch.stack([cap[s][real].abs().amax(0) for s in sites])  # [layers, d]
    med = float(peak.median())
    vals, flat = peak.flatten().topk(min(top, peak.numel()))
    d = peak.shape[1]
    return [
        {"layer": int(i) // d, "dim": int(i) % d, "max_abs": float(v), "x_median": float(v) / med if med else math.inf,
         "massive": bool(med and float(v) > MASSIVE * med)}
        for v, i in zip(vals, flat, strict=True)
    ]  # fmt: skip


def _effect(h: ModelHandle, base: dict[str, float], param: str, index: int, op: str, value: float,
            n_eval: int, sig: str) -> dict[str, Any]:  # fmt: skip
    edit = RegionEdit(params=[param], counts=[1], indices=[index], op=op, value=value, signature=sig)  # type: ignore[arg-type]
    nll = language_nll(h, list(base), n_eval=n_eval, interventions=[edit])
    ratio = {k: math.exp(min(nll[k] - base[k], 700.0)) for k in base}
    return {"ratio": ratio, "min_ratio": min(ratio.values()), "max_ratio": max(ratio.values()),
            "median_ratio": statistics.median(ratio.values())}  # fmt: skip


def find_dims(
    h: ModelHandle,
    imp: Importance,
    eval_langs: Sequence[str],
    *,
    n_candidates: int = 8,
    n_random: int = 100,
    op: str = "zero",
    value: float = 0.0,
    n_eval: int = 8,
    seed: int = 0,
    scope: str = "matrices",
    progress: bool = True,
) -> DimsResult:
    """Rank candidate single weights and sweep them against ``n_random`` random single weights of the top
    candidate's matrix (see the module docstring)."""
    if n_candidates < 1 or n_random < 0:
        raise SpecError(f"n_candidates={n_candidates}, n_random={n_random}; expected >= 1 and >= 0")
    if not eval_langs:
        raise SpecError("no evaluation languages given; expected at least one language code")
    sig = model_signature(h)
    if imp.signature != sig:
        raise SpecError(f"importance made for {imp.model!r} (signature {imp.signature}); {h.spec!r} has {sig}")
    texts = corpus_texts(eval_langs[0], "eval", n=4)
    massive = massive_activations(h, texts)
    dims = {m["dim"] for m in massive if m["massive"]}
    ranked = sorted(
        (n for n in imp.top if in_scope(n, imp.shapes[n], scope) and len(imp.shapes[n]) == 2),
        key=lambda n: imp.summary["all"][n]["max"], reverse=True,
    )[:n_candidates]  # fmt: skip
    base = language_nll(h, eval_langs, n_eval=n_eval)
    params = dict(h.model.named_parameters())
    cands = []
    for n in tqdm(ranked, desc="candidate weights", disable=not progress):
        idx = int(imp.top[n][0])
        rows, cols = imp.shapes[n]
        r, c = divmod(idx, cols)
        hit = [m for m in massive if m["dim"] in (r, c) and (m["dim"] == c or rows == h.d_model)]
        cands.append({"param": n, "index": idx, "row": r, "col": c, "importance": imp.summary["all"][n]["max"],
                      "weight": float(params[n].detach().view(-1)[idx]), "on_massive_dim": r in dims or c in dims,
                      "activations": hit, **_effect(h, base, n, idx, op, value, n_eval, sig)})  # fmt: skip
    rand = []
    if n_random and cands:
        top = max(cands, key=lambda x: x["min_ratio"])["param"]
        numel = params[top].numel()
        picks = sample_indices(numel, min(n_random, numel), torch.Generator().manual_seed(seed))
        for i in tqdm(picks.tolist(), desc="random weights", disable=not progress):
            rand.append({"param": top, "index": i, **_effect(h, base, top, i, op, value, n_eval, sig)})
    cfg = {"n_candidates": n_candidates, "n_random": n_random, "op": op, "value": value, "n_eval": n_eval,
           "seed": seed, "scope": scope, "model": h.spec}  # fmt: skip
    return DimsResult(list(eval_langs), base, massive, cands, rand, op, value, cfg)
