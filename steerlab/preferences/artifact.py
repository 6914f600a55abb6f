"""Artifacts of the preference analysis, registered in :mod:`steerlab.artifacts`; all reopen on the Preferences page.

* ``preference_pairs`` -- a pair set (``pairs.jsonl`` in the documented format) with its annotations and labels,
  the malformed input lines that were skipped, and each model judge's verdicts with scores
  (``steerlab prefs annotate|judge ... --out DIR``).
* ``preference_fit`` -- per judge and group, the posterior means, credible intervals and diagnostics, the
  judge-similarity matrix with its cluster order, and the fitted pairs (``steerlab prefs fit ... --out DIR``).
* ``preference_compare`` -- weight vectors of judges from fits and/or the published weights, their similarity
  matrix (per group and averaged) and cluster order (``steerlab prefs compare ... --out DIR``).

Example:
    >>> import tempfile
    >>> from steerlab.artifacts import write_artifact
    >>> from steerlab.preferences.data import Pair, PairSet
    >>> ps = PairSet([Pair("1", "q", "x", "y", {"human": "A"})])
    >>> d = write_artifact(tempfile.mkdtemp() + "/p", **pairs_artifact(ps, config={"source": "demo"}))
    >>> PREFERENCE_PAIRS.read(d).pairs.pairs[0].labels
    {'human': 'A'}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from steerlab.artifacts import Artifact, register_kind
from steerlab.errors import SteerlabError
from steerlab.preferences.data import PairSet, RowProblem, read_pairs_jsonl
from steerlab.preferences.fit import FitResult

PAIRS_KIND = "preference_pairs"
FIT_KIND = "preference_fit"
COMPARE_KIND = "preference_compare"
PAIRS_FILE = "pairs.jsonl"


@dataclass
class PairsRun:
    """A ``preference_pairs`` artifact read back."""

    pairs: PairSet
    problems: list[RowProblem] = field(default_factory=list)
    verdicts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class FitRun:
    """A ``preference_fit`` artifact read back: ``fits[judge][group]``, the similarity of the judges (over the
    fitted groups, averaged), its cluster ``order`` and the fitted pairs."""

    fits: dict[str, dict[str, FitResult]]
    properties: list[str]
    judges: list[str]
    groups: list[str]
    similarity: torch.Tensor
    order: list[int]
    pairs: PairSet
    config: dict[str, Any] = field(default_factory=dict)


def _pairs_text(pairs: PairSet) -> str:
    import json

    return "".join(json.dumps(p.to_json()) + "\n" for p in pairs.pairs)


def pairs_artifact(pairs: PairSet, *, config: dict[str, Any], problems: list[RowProblem] | None = None,
                   verdicts: dict[str, list[dict[str, Any]]] | None = None) -> dict[str, Any]:
    """Keyword arguments of :func:`steerlab.artifacts.write_artifact` for a ``preference_pairs`` artifact."""
    judges = pairs.judges
    metrics = {"pairs": len(pairs), "skipped_lines": len(problems or []), "properties": len(pairs.properties),
               "judges": len(judges)}
    for j in judges:
        metrics[f"labelled_{j}"] = sum(j in p.labels for p in pairs.pairs)
    for j, vs in (verdicts or {}).items():
        metrics[f"no_preference_{j}"] = sum(v["label"] is None for v in vs)
    data = {"problems": [{"line": p.line, "message": p.message} for p in problems or []],
            "verdicts": verdicts or {}, "judges": judges, "properties": pairs.properties}
    return {"kind": PAIRS_KIND, "config": config, "metrics": metrics, "data": data,
            "extra_files": {PAIRS_FILE: _pairs_text(pairs)}}


def pairs_from_artifact(art: Artifact) -> PairsRun:
    if art.kind not in (PAIRS_KIND, FIT_KIND):
        raise SteerlabError(f"artifact {art.path} is a {art.kind!r}; expected {PAIRS_KIND!r} or {FIT_KIND!r}")
    ps, _ = read_pairs_jsonl(art.path / PAIRS_FILE)
    problems = [RowProblem(p["line"], p["message"]) for p in art.data.get("problems", [])]
    return PairsRun(ps, problems, art.data.get("verdicts", {}), art.config)


def fit_artifact(fits: dict[str, dict[str, FitResult]], pairs: PairSet, *, similarity: torch.Tensor,
                 order: list[int], config: dict[str, Any], problems: list[RowProblem] | None = None
                 ) -> dict[str, Any]:
    """Keyword arguments of :func:`steerlab.artifacts.write_artifact` for a ``preference_fit`` artifact."""
    judges = list(fits)
    groups = list(dict.fromkeys(g for per in fits.values() for g in per))
    props = next(iter(next(iter(fits.values())).values())).properties
    all_fits = [f for per in fits.values() for f in per.values()]
    rhats = [float(f.rhat.max()) for f in all_fits if f.rhat is not None]
    esss = [float(f.ess.min()) for f in all_fits if f.ess is not None]
    metrics: dict[str, Any] = {"judges": len(judges), "groups": len(groups), "pairs": len(pairs),
                               "seconds": round(sum(f.seconds for f in all_fits), 2)}
    if rhats:
        metrics.update(max_rhat=max(rhats), min_ess=min(esss))
    data = {"judges": judges, "groups": groups, "properties": props,
            "fits": {j: {g: f.to_json() for g, f in per.items()} for j, per in fits.items()},
            "similarity": similarity.tolist(), "order": order,
            "problems": [{"line": p.line, "message": p.message} for p in problems or []]}
    return {"kind": FIT_KIND, "config": config, "metrics": metrics, "data": data,
            "extra_files": {PAIRS_FILE: _pairs_text(pairs)}}


def fit_from_artifact(art: Artifact) -> FitRun:
    if art.kind != FIT_KIND:
        raise SteerlabError(f"artifact {art.path} is a {art.kind!r}; expected {FIT_KIND!r}")
    d = art.data
    fits = {j: {g: FitResult.from_json(f) for g, f in per.items()} for j, per in d["fits"].items()}
    ps, _ = read_pairs_jsonl(art.path / PAIRS_FILE)
    return FitRun(fits, d["properties"], d["judges"], d["groups"], torch.tensor(d["similarity"], dtype=torch.float64),
                  d["order"], ps, art.config)


PREFERENCE_PAIRS = register_kind(
    PAIRS_KIND, owner="steerlab.preferences", producer="prefs annotate", reader=pairs_from_artifact,
    summary="pairwise preference data with property annotations and judges' labels (pairs.jsonl)",
)
PREFERENCE_FIT = register_kind(
    FIT_KIND, owner="steerlab.preferences", producer="prefs fit", reader=fit_from_artifact,
    summary="Bayesian logistic weights of response properties per judge and group, with intervals",
)
PREFERENCE_COMPARE = register_kind(
    COMPARE_KIND, owner="steerlab.preferences", producer="prefs compare",
    summary="judges compared by the correlation of their property weights, clustered",
)
