"""Artifacts of the regions analysis, written atomically through :func:`steerlab.artifacts.write_artifact`.

``regions_importance``: per-matrix top and bottom indices (sparse, int32, most/least important first)
of the summed importance, each language's top indices, per-language summaries, the scoring cost.

Example:
    >>> import tempfile, steerlab as sl
    >>> from steerlab.regions.importance import score_importance
    >>> h = sl.load("shared:stories260K")
    >>> imp = score_importance(h, ["eng"], token_budget=32, batch_size=2, max_len=16, progress=False)
    >>> back = read_importance(write_importance(tempfile.mkdtemp() + "/imp", imp))
    >>> bool((back.top["model.norm.weight"] == imp.top["model.norm.weight"]).all())
    True
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from steerlab.artifacts import Artifact, read_artifact, register_kind, write_artifact
from steerlab.errors import SteerlabError
from steerlab.regions.importance import Importance

IMPORTANCE_KIND = "regions_importance"
SEP = "::"


def write_importance(out: str | Path, imp: Importance) -> Path:
    """Write ``imp`` as a ``regions_importance`` artifact folder (atomically)."""
    tensors: dict[str, torch.Tensor] = {}
    for n in imp.top:
        tensors[f"top{SEP}{n}"] = imp.top[n]
        tensors[f"bottom{SEP}{n}"] = imp.bottom[n]
    for lang, tops in imp.lang_top.items():
        for n, idx in tops.items():
            tensors[f"lang{SEP}{lang}{SEP}{n}"] = idx
    data = {"shapes": imp.shapes, "tokens": imp.tokens, "summary": imp.summary}
    return write_artifact(out, kind=IMPORTANCE_KIND, config=imp.config, metrics=imp.metrics, data=data, tensors=tensors)


def importance_from(art: Artifact) -> Importance:
    """The :class:`Importance` stored in a ``regions_importance`` artifact."""
    if art.kind != IMPORTANCE_KIND:
        raise SteerlabError(f"{art.path} is a {art.kind!r} artifact; expected {IMPORTANCE_KIND!r}")
    top: dict[str, torch.Tensor] = {}
    bottom: dict[str, torch.Tensor] = {}
    lang_top: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in art.tensors.items():
        parts = key.split(SEP)
        if parts[0] == "top":
            top[parts[1]] = t
        elif parts[0] == "bottom":
            bottom[parts[1]] = t
        elif parts[0] == "lang":
            lang_top.setdefault(parts[1], {})[parts[2]] = t
    cfg = art.config
    return Importance(
        model=cfg["model"],
        signature=cfg["signature"],
        method=cfg["method"],
        keep=cfg["keep"],
        languages=list(cfg["languages"]),
        shapes=art.data["shapes"],
        top=top,
        bottom=bottom,
        lang_top=lang_top,
        summary=art.data["summary"],
        tokens=art.data["tokens"],
        config=cfg,
        metrics=art.metrics,
    )


def read_importance(path: str | Path) -> Importance:
    """Read a ``regions_importance`` artifact folder."""
    return importance_from(read_artifact(path))


FIND_KIND = "regions_find"
PERTURB_KIND = "regions_perturb"


def _layer_matrix_map(imp: Importance) -> dict[str, Any]:
    """Where the importance concentrates: per parameter, the share of its summed importance held by its top
    ``keep`` entries, and its total, arranged as layer x matrix (parameters outside the layers separately)."""
    import re

    rows: dict[str, dict[str, float]] = {}
    for n, s in imp.summary.get("all", {}).items():
        m = re.search(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.(.+)$", n)
        layer, mat = (m.group(1), m.group(2)) if m else ("other", n)
        rows.setdefault(layer, {})[mat] = s["top_share"]
    return rows


def write_find(
    out: str | Path, imp: Importance, fraction: float, scope: str, seeds: int
) -> tuple[Path, dict[str, Any]]:
    """Core, bottom, ``seeds`` random and every language's monolingual region of ``imp`` as region files in a
    ``regions_find`` artifact (with the Jaccard overlaps of the languages' top regions)."""
    from steerlab.atomic import safetensors_bytes
    from steerlab.regions.select import (
        bottom_region,
        core_region,
        language_overlaps,
        monolingual_region,
        random_region,
    )

    regions = {"core": core_region(imp, fraction, scope), "bottom": bottom_region(imp, fraction, scope)}
    regions |= {f"random{s}": random_region(imp, fraction, s, scope) for s in range(seeds)}
    regions |= {f"mono_{lang}": monolingual_region(imp, lang, fraction, scope) for lang in imp.languages}
    files: dict[str, str | bytes] = {}
    for key, r in regions.items():
        meta = {
            "format": "steerlab.region",
            "name": r.name,
            "signature": r.signature,
            "model": r.model,
            "shapes": json.dumps({n: r.shapes[n] for n in r.indices}),
            "meta": json.dumps(r.meta),
        }
        files[f"{key}.safetensors"] = safetensors_bytes({n: t.long() for n, t in r.indices.items()}, metadata=meta)
    info = {
        "sizes": {k: r.size() for k, r in regions.items()},
        "languages": imp.languages,
        "overlaps": language_overlaps(imp, fraction, scope),
    }
    config = {"importance": imp.config, "fraction": fraction, "scope": scope, "seeds": seeds}
    data = {**info, "map": _layer_matrix_map(imp), "counts": regions["core"].counts()}
    path = write_artifact(out, kind=FIND_KIND, config=config, metrics={"core_size": info["sizes"]["core"]},
                          data=data, extra_files=files)  # fmt: skip
    return path, info


def _r(x: float) -> float:
    return float(f"{x:.4g}") if x == x and abs(x) != float("inf") else x


def write_perturb(
    out: str | Path,
    h: Any,
    imp: Importance,
    res: Any,
    *,
    fraction: float,
    command: str,
    n_eval: int,
    record: str | Path | None = None,
) -> tuple[Path, dict[str, Any]]:
    """A ``regions_perturb`` artifact of ``res`` (:class:`~steerlab.regions.perturb.PerturbResult`) with the
    overlaps and the layer x matrix map of ``imp``; with ``record``, also a compact JSON record (atomic)."""
    from steerlab.atomic import atomic_write_text
    from steerlab.regions.perturb import _ppl
    from steerlab.regions.select import language_overlaps

    scope = res.rows[0]["scope"] if res.rows else "layers"
    rec = {
        "command": command,
        "model": h.spec,
        "importance": {k: imp.config.get(k) for k in ("command", "method", "languages", "token_budget", "batch_size",
                                                       "max_len", "keep")} | {"tokens": imp.tokens, **imp.metrics},
        "fraction": fraction,
        "n_eval": n_eval,
        "languages": res.languages,
        "base_ppl": {k: _r(_ppl(v)) for k, v in res.base_nll.items()},
        "summary": {s: {k: ([_r(x) for x in v] if isinstance(v, list) else _r(v)) for k, v in d.items()}
                    for s, d in res.summary().items()},
        "rows": [
            {k: r[k] for k in ("name", "kind", "scope", "seed", "language", "size", "op", "value")}
            | {"median_ratio": _r(r["median_ratio"]), "ratio": {k: _r(v) for k, v in r["ratio"].items()}}
            for r in res.rows
        ],
    }  # fmt: skip
    data = {
        **rec,
        "base_nll": res.base_nll,
        "full_rows": res.rows,
        "overlaps": {"languages": imp.languages, "scope": scope, "jaccard": language_overlaps(imp, fraction, scope)},
        "map": _layer_matrix_map(imp),
    }
    config = {"importance": imp.config, "fraction": fraction, "n_eval": n_eval, "command": command}
    metrics = {f"{s}.{k}": v for s, d in rec["summary"].items() for k, v in d.items() if not isinstance(v, list)}
    path = write_artifact(out, kind=PERTURB_KIND, config=config, metrics=metrics, data=data)
    if record is not None:
        atomic_write_text(record, json.dumps(rec, indent=1) + "\n")
    return path, rec


register_kind(IMPORTANCE_KIND, owner="steerlab.regions", producer="regions score", reader=importance_from,
              summary="per-parameter importance per language: per-matrix top/bottom indices, summaries")  # fmt: skip
register_kind(FIND_KIND, owner="steerlab.regions", producer="regions find",
              summary="core, bottom, random and monolingual region files with language overlaps")  # fmt: skip
register_kind(PERTURB_KIND, owner="steerlab.regions", producer="regions perturb",
              summary="per-language perplexity with the core region and its controls edited")  # fmt: skip


DIMS_KIND = "regions_dims"


def write_dims(out: str | Path, imp: Importance, res: Any, *, command: str,
               record: str | Path | None = None) -> tuple[Path, dict[str, Any]]:  # fmt: skip
    """A ``regions_dims`` artifact of ``res`` (:class:`~steerlab.regions.dims.DimsResult`): every candidate, the
    activations that pointed to it and its effect, and the random single weights; with ``record``, a compact
    JSON record too."""
    from steerlab.atomic import atomic_write_text

    rec = {
        "command": command,
        "model": res.config.get("model"),
        "importance": {k: imp.config.get(k) for k in ("command", "method", "languages", "token_budget")},
        "languages": res.languages,
        "op": res.op,
        "value": res.value,
        "summary": res.summary(),
        "massive": res.massive,
        "candidates": [{k: c[k] for k in ("param", "index", "row", "col", "on_massive_dim", "min_ratio", "ratio")}
                       for c in res.candidates],
        "random_max_ratios": [round(r["max_ratio"], 5) for r in res.random],
    }  # fmt: skip
    data = {**rec, "base_nll": res.base_nll, "full_candidates": res.candidates, "random": res.random}
    metrics = {k: v for k, v in rec["summary"].items() if isinstance(v, (int, float))}
    path = write_artifact(out, kind=DIMS_KIND, config={**res.config, "command": command, "importance": imp.config},
                          metrics=metrics, data=data)  # fmt: skip
    if record is not None:
        atomic_write_text(record, json.dumps(rec, indent=1) + "\n")
    return path, rec


register_kind(DIMS_KIND, owner="steerlab.regions", producer="regions dims",
              summary="massive activations, candidate and random single weights with their effects")  # fmt: skip


FREEZE_KIND = "regions_freeze"


def write_freeze(out: str | Path, imp: Importance, res: Any, *, command: str,
                 record: str | Path | None = None) -> tuple[Path, dict[str, Any]]:  # fmt: skip
    """A ``regions_freeze`` artifact of ``res`` (:class:`~steerlab.regions.freeze.FreezeResult`): held-out loss
    curves per variant and language, training losses, forgetting; with ``record``, a compact JSON record."""
    from steerlab.atomic import atomic_write_text

    rec = {"command": command, "model": res.config.get("model"), "train_language": res.train_lang,
           "languages": res.languages, "config": res.config, "summary": res.summary(), "curves": res.curves,
           "importance": {k: imp.config.get(k) for k in ("command", "method", "languages")}}  # fmt: skip
    data = {**rec, "train_losses": res.train_losses}
    metrics = {f"{v}.forgetting": s["forgetting"] for v, s in rec["summary"].items() if isinstance(s, dict)}
    path = write_artifact(out, kind=FREEZE_KIND, config={**res.config, "command": command, "importance": imp.config},
                          metrics=metrics, data=data)  # fmt: skip
    if record is not None:
        atomic_write_text(record, json.dumps(rec, indent=1) + "\n")
    return path, rec


register_kind(FREEZE_KIND, owner="steerlab.regions", producer="regions freeze-train",
              summary="held-out loss curves: core-frozen vs unfrozen vs random-frozen further training")  # fmt: skip
