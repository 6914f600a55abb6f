"""Regions from importance: the core region, controls, monolingual regions, overlaps between languages.

Selection is per weight matrix (the paper's rule): a region of ``fraction`` holds the
:func:`~steerlab.regions.importance.keep_count` most (core) or least (bottom) important entries of
every matrix in ``scope``; a random region holds the same count per matrix at random (seeded). Scopes:

* ``"matrices"``: the 2-D weights inside the transformer layers (attention and MLP projections);
* ``"layers"``: every parameter inside the layers, norms included (the paper's selection);
* ``"all"``: also the embeddings, the final norm and an untied LM head.

Example:
    >>> import steerlab as sl
    >>> from steerlab.regions.importance import score_importance
    >>> h = sl.load("shared:stories260K")
    >>> imp = score_importance(h, ["eng", "deu"], token_budget=64, batch_size=2, max_len=32, progress=False)
    >>> core, rnd = core_region(imp, 0.01), random_region(imp, 0.01, seed=0)
    >>> core.counts() == rnd.counts(), core.size() > 0
    (True, True)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from steerlab.atomic import atomic_save_tensors
from steerlab.errors import SpecError
from steerlab.interventions.regions import RegionEdit, model_signature
from steerlab.models.handle import ModelHandle
from steerlab.regions.importance import Importance, check_fraction, keep_count
from steerlab.values import check_count, derive_seed

Scope = Literal["matrices", "layers", "all"]
SCOPES: tuple[str, ...] = ("matrices", "layers", "all")
_LAYER = re.compile(r"(^|\.)(layers|h|blocks|layer)\.\d+\.")


def in_scope(name: str, shape: list[int] | tuple[int, ...], scope: str) -> bool:
    """Whether parameter ``name`` (of ``shape``) belongs to ``scope``.

    >>> in_scope("model.layers.3.mlp.up_proj.weight", [8, 4], "matrices"), in_scope("model.norm.weight", [4], "layers")
    (True, False)
    """
    if scope not in SCOPES:
        raise SpecError(f"region scope {scope!r} is not one of {list(SCOPES)}")
    if scope == "all":
        return True
    inside = bool(_LAYER.search(name))
    return inside and (scope == "layers" or len(shape) >= 2)


@dataclass
class Region:
    """Flat indices per parameter, for one model (``signature``)."""

    name: str
    indices: dict[str, Tensor]  # parameter -> int64 flat indices
    shapes: dict[str, list[int]]
    signature: str
    model: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        """Entries per parameter."""
        return {n: int(t.numel()) for n, t in self.indices.items()}

    def size(self) -> int:
        """Entries in all."""
        return sum(self.counts().values())

    def edit(self, op: str = "zero", value: float = 0.0, seed: int = 0) -> RegionEdit:
        """The :class:`RegionEdit` of this region (an intervention for ``sl.generate``, ``sl.intervene``...)."""
        names = [n for n, t in self.indices.items() if t.numel()]
        idx = torch.cat([self.indices[n].to(torch.long) for n in names]) if names else torch.zeros(0, dtype=torch.long)
        return RegionEdit(
            params=names,
            counts=[int(self.indices[n].numel()) for n in names],
            indices=idx,
            op=op,  # type: ignore[arg-type]
            value=value,
            seed=seed,
            signature=self.signature,
            name=self.name,
        )

    def mask(self, param: str) -> Tensor:
        """The boolean mask of ``param`` (its shape)."""
        m = torch.zeros(int(torch.tensor(self.shapes[param]).prod()), dtype=torch.bool)
        m[self.indices[param].to(torch.long)] = True
        return m.view(self.shapes[param])


def _prefix(imp: Importance, source: dict[str, Tensor], fraction: float, scope: str) -> dict[str, Tensor]:
    fraction = check_fraction(fraction)
    if fraction > imp.keep + 1e-12:
        raise SpecError(
            f"fraction {fraction} exceeds the {imp.keep} the importance artifact keeps per matrix; "
            f"re-score with keep >= {fraction}"
        )
    out = {}
    for n, idx in source.items():
        shape = imp.shapes[n]
        if in_scope(n, shape, scope):
            numel = int(torch.tensor(shape).prod())
            out[n] = idx[: keep_count(numel, fraction)].to(torch.long)
    if not out:
        raise SpecError(f"no parameter of {imp.model!r} lies in scope {scope!r}")
    return out


def core_region(imp: Importance, fraction: float = 0.01, scope: str = "layers") -> Region:
    """The top ``fraction`` per matrix of the importance summed over languages."""
    check_fraction(fraction)
    return Region(
        f"core {fraction:g} {scope}",
        _prefix(imp, imp.top, fraction, scope),
        imp.shapes,
        imp.signature,
        imp.model,
        {"kind": "core", "fraction": fraction, "scope": scope},
    )


def bottom_region(imp: Importance, fraction: float = 0.01, scope: str = "layers") -> Region:
    """The bottom ``fraction`` per matrix of the summed importance."""
    check_fraction(fraction)
    return Region(
        f"bottom {fraction:g} {scope}",
        _prefix(imp, imp.bottom, fraction, scope),
        imp.shapes,
        imp.signature,
        imp.model,
        {"kind": "bottom", "fraction": fraction, "scope": scope},
    )


def sample_indices(numel: int, k: int, gen: torch.Generator) -> Tensor:
    """``k`` distinct flat indices in ``[0, numel)``, uniformly at random, without a ``numel``-sized buffer
    when ``k`` is small."""
    if k * 4 >= numel:
        return torch.randperm(numel, generator=gen)[:k]
    picked = torch.zeros(0, dtype=torch.long)
    while picked.numel() < k:
        cand = torch.randint(numel, (2 * (k - picked.numel()) + 16,), generator=gen)
        picked = torch.cat([picked, cand]).unique()
    return picked[torch.randperm(picked.numel(), generator=gen)[:k]]


def random_region(imp: Importance, fraction: float = 0.01, seed: int = 0, scope: str = "layers") -> Region:
    """Random entries with the same count per matrix as :func:`core_region` (seeded per matrix)."""
    check_fraction(fraction)
    check_count("seed", seed, 0)
    counts = {n: t.numel() for n, t in _prefix(imp, imp.top, fraction, scope).items()}
    out = {}
    for j, (n, k) in enumerate(counts.items()):
        gen = torch.Generator().manual_seed(derive_seed(seed, j))
        out[n] = sample_indices(int(torch.tensor(imp.shapes[n]).prod()), k, gen)
    return Region(
        f"random {fraction:g} {scope} seed {seed}",
        out,
        imp.shapes,
        imp.signature,
        imp.model,
        {"kind": "random", "fraction": fraction, "scope": scope, "seed": seed},
    )


def _lang(imp: Importance, lang: str) -> dict[str, Tensor]:
    if lang not in imp.lang_top:
        raise SpecError(f"unknown language {lang!r} for this importance artifact; expected one of {imp.languages}")
    return imp.lang_top[lang]


def language_region(imp: Importance, lang: str, fraction: float = 0.01, scope: str = "layers") -> Region:
    """The top ``fraction`` per matrix of one language's own importance."""
    return Region(
        f"{lang} top {fraction:g} {scope}",
        _prefix(imp, _lang(imp, lang), fraction, scope),
        imp.shapes,
        imp.signature,
        imp.model,
        {"kind": "language", "language": lang, "fraction": fraction, "scope": scope},
    )


def monolingual_region(imp: Importance, lang: str, fraction: float = 0.01, scope: str = "layers") -> Region:
    """``lang``'s top set minus every other language's top set, per matrix (the paper's monolingual region)."""
    check_fraction(fraction)
    mine = _prefix(imp, _lang(imp, lang), fraction, scope)
    others = [_prefix(imp, imp.lang_top[o], fraction, scope) for o in imp.languages if o != lang]
    out = {}
    for n, idx in mine.items():
        keep = torch.ones(idx.numel(), dtype=torch.bool)
        for o in others:
            keep &= ~torch.isin(idx, o[n])
        out[n] = idx[keep]
    return Region(
        f"{lang} monolingual {fraction:g} {scope}",
        out,
        imp.shapes,
        imp.signature,
        imp.model,
        {"kind": "monolingual", "language": lang, "fraction": fraction, "scope": scope},
    )


def jaccard(a: Region, b: Region) -> float:
    """|A & B| / |A | B| over every parameter of either region.

    >>> r = lambda *i: Region("r", {"w": torch.tensor(i)}, {"w": [10]}, "s")
    >>> jaccard(r(1, 2, 3), r(2, 3, 4))
    0.5
    """
    inter = union = 0
    for n in set(a.indices) | set(b.indices):
        x = a.indices.get(n, torch.zeros(0, dtype=torch.long))
        y = b.indices.get(n, torch.zeros(0, dtype=torch.long))
        i = int(torch.isin(x, y).sum())
        inter += i
        union += x.numel() + y.numel() - i
    return inter / union if union else 0.0


def language_overlaps(imp: Importance, fraction: float = 0.01, scope: str = "layers") -> list[list[float]]:
    """The Jaccard overlap of every pair of languages' top regions (``imp.languages`` order)."""
    regs = [language_region(imp, lang, fraction, scope) for lang in imp.languages]
    return [[jaccard(a, b) for b in regs] for a in regs]


# -- region files ----------------------------------------------------------------------------------
def save_region(path: str | Path, region: Region) -> Path:
    """Write ``region`` to a safetensors file (crash-safe), its model and meta in the header."""
    import json

    meta = {
        "format": "steerlab.region",
        "name": region.name,
        "signature": region.signature,
        "model": region.model,
        "shapes": json.dumps({n: region.shapes[n] for n in region.indices}),
        "meta": json.dumps(region.meta),
    }
    return atomic_save_tensors(path, {n: t.to(torch.int64) for n, t in region.indices.items()}, metadata=meta)


def load_region(path: str | Path, h: ModelHandle | None = None) -> Region:
    """Read a region file; with ``h``, refuse a region made for another model (one-line :class:`SpecError`)."""
    import json

    path = Path(path)
    if not path.is_file():
        raise SpecError(f"region file {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != "steerlab.region":
                raise SpecError(f"{str(path)!r} is not a steerlab region file (no 'steerlab.region' header)")
            indices = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except (OSError, SafetensorError) as e:
        raise SpecError(f"region file {str(path)!r} is not a readable safetensors file: {e}") from e
    region = Region(
        meta["name"],
        indices,
        json.loads(meta["shapes"]),
        meta["signature"],
        meta.get("model", ""),
        json.loads(meta["meta"]),
    )
    if h is not None:
        check_model(region, h)
    return region


def check_model(region: Region, h: ModelHandle) -> None:
    """Raise :class:`SpecError` if ``region`` was made for a model other than ``h``."""
    sig = model_signature(h)
    if region.signature != sig:
        raise SpecError(
            f"region {region.name!r} was made for {region.model or 'another model'!r} (signature {region.signature}); "
            f"{h.spec!r} has signature {sig}: expected a region of this model"
        )
