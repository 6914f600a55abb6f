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

from pathlib import Path

import torch

from steerlab.artifacts import Artifact, read_artifact, write_artifact
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
