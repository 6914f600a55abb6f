"""Perturb regions and measure per-language perplexity against controls.

For each scope: the core region, the bottom region and random regions with the same per-matrix counts
(several seeds) are edited (zeroed by default) through :class:`~steerlab.interventions.RegionEdit`, and the
perplexity of every evaluation language's held-out text is compared with the unmodified model's. Ratios
are computed in log space (``exp(nll_after - nll_before)``), so a destroyed model reports a finite,
huge ratio rather than an overflow.

Example:
    >>> import steerlab as sl
    >>> from steerlab.regions.importance import score_importance
    >>> h = sl.load("shared:stories260K")
    >>> imp = score_importance(h, ["eng"], token_budget=256, progress=False)
    >>> res = perturb(h, imp, ["eng"], seeds=(0,), n_eval=4, progress=False)
    >>> [r["kind"] for r in res.rows]
    ['core', 'bottom', 'random']
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from steerlab.errors import SpecError
from steerlab.models.handle import ModelHandle
from steerlab.regions.corpus import corpus_texts
from steerlab.regions.importance import Importance, check_fraction
from steerlab.regions.select import (
    SCOPES,
    Region,
    bottom_region,
    check_model,
    core_region,
    monolingual_region,
    random_region,
)
from steerlab.scoring import response_nll
from steerlab.values import as_names


def language_nll(
    h: ModelHandle,
    langs: Sequence[str],
    *,
    n_eval: int = 16,
    interventions: Any = None,
    files: Mapping[str, str | Path] | None = None,
    batch_size: int = 16,
) -> dict[str, float]:
    """Mean token NLL (nats) of each language's held-out ``eval`` text (the first ``n_eval`` passages)."""
    out = {}
    for lang in langs:
        texts = corpus_texts(lang, "eval", n=n_eval, files=files)
        nll = response_nll(h, [""] * len(texts), texts, chat=False, interventions=interventions, batch_size=batch_size)
        total, n = sum(s for s, _ in nll), sum(c for _, c in nll)
        if n == 0:
            raise SpecError(f"the eval corpus of language {lang!r} holds no tokens")
        out[lang] = total / n
    return out


def _ppl(nll: float) -> float:
    return math.exp(nll) if nll < 700 else math.inf


@dataclass
class PerturbResult:
    """Per-language perplexity of the unmodified model and of each perturbed region."""

    languages: list[str]
    base_nll: dict[str, float]
    rows: list[dict[str, Any]] = field(default_factory=list)  # one per region: kind, scope, seed, size, nll, ratio

    def median_ratio(self, kind: str, scope: str) -> list[float]:
        """Median-over-languages perplexity ratios of every region of ``kind`` in ``scope`` (one per seed)."""
        return [r["median_ratio"] for r in self.rows if r["kind"] == kind and r["scope"] == scope]

    def summary(self) -> dict[str, Any]:
        """Headline numbers per scope: the core, bottom and random (each seed and their mean) median ratios."""
        out: dict[str, Any] = {}
        for scope in dict.fromkeys(r["scope"] for r in self.rows):
            s: dict[str, Any] = {}
            for kind in ("core", "bottom", "random"):
                vals = self.median_ratio(kind, scope)
                if vals:
                    s[kind] = vals if kind == "random" else vals[0]
            if "random" in s:
                s["random_mean"] = statistics.fmean(s["random"])
            out[scope] = s
        return out


def evaluate_region(
    h: ModelHandle,
    region: Region,
    base: dict[str, float],
    *,
    op: str = "zero",
    value: float = 0.0,
    n_eval: int = 16,
    files: Mapping[str, str | Path] | None = None,
) -> dict[str, Any]:
    """Perplexity per language with ``region`` edited, and its ratio to ``base`` (mean NLL per language)."""
    check_model(region, h)
    nll = language_nll(h, list(base), n_eval=n_eval, interventions=[region.edit(op, value)], files=files)
    ratio = {lang: math.exp(min(nll[lang] - base[lang], 700.0)) for lang in base}
    return {
        "name": region.name,
        **{k: region.meta.get(k) for k in ("kind", "scope", "seed", "language", "fraction")},
        "size": region.size(),
        "op": op,
        "value": value,
        "nll": nll,
        "ppl": {lang: _ppl(v) for lang, v in nll.items()},
        "ratio": ratio,
        "median_ratio": statistics.median(ratio.values()),
    }


def perturb(
    h: ModelHandle,
    imp: Importance,
    eval_langs: Sequence[str],
    *,
    fraction: float = 0.01,
    scopes: Sequence[str] = ("layers",),
    control_scopes: Sequence[str] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    op: str = "zero",
    value: float = 0.0,
    monolingual: bool = False,
    n_eval: int = 16,
    files: Mapping[str, str | Path] | None = None,
    progress: bool = True,
) -> PerturbResult:
    """Core region per scope in ``scopes``; bottom and random regions (``seeds``) per scope in
    ``control_scopes`` (default: ``scopes``); each scoring language's monolingual region (first scope) if
    ``monolingual``. Every region is edited with ``op``/``value`` and scored on ``eval_langs``."""
    fraction = check_fraction(fraction)
    scopes = as_names(scopes, "scopes")
    control_scopes = None if control_scopes is None else as_names(control_scopes, "control_scopes")
    bad = [s for s in scopes if s not in SCOPES]
    if bad or not scopes:
        raise SpecError(f"scopes {list(scopes)} must be a non-empty subset of {list(SCOPES)}")
    if not eval_langs:
        raise SpecError("no evaluation languages given; expected at least one language code")
    for lang in eval_langs:
        corpus_texts(lang, "eval", n=1, files=files)  # validates every code before any model work
    controls = list(scopes if control_scopes is None else control_scopes)
    if [s for s in controls if s not in scopes]:
        raise SpecError(f"control scopes {controls} must be a subset of the scopes {list(scopes)}")
    regions: list[Region] = []
    for scope in scopes:
        regions.append(core_region(imp, fraction, scope))
        if scope in controls:
            regions.append(bottom_region(imp, fraction, scope))
            regions += [random_region(imp, fraction, seed, scope) for seed in seeds]
    if monolingual:
        regions += [monolingual_region(imp, lang, fraction, scopes[0]) for lang in imp.languages]
    for r in regions[:1]:
        check_model(r, h)
    base = language_nll(h, eval_langs, n_eval=n_eval, files=files)
    res = PerturbResult(list(eval_langs), base)
    for region in tqdm(regions, desc="perturbing regions", unit="region", disable=not progress):
        res.rows.append(evaluate_region(h, region, base, op=op, value=value, n_eval=n_eval, files=files))
    return res
