"""Saved steering directions: one vector per site with where it came from, as safetensors + JSON.

:class:`Directions` holds raw (not normalized) vectors keyed by site and a metadata dict: ``model``,
``method``, ``suite``, ``split``, ``position``, ``commit`` (the steerlab git commit), ``created`` and any
statistics. :meth:`Directions.save` writes ``NAME.safetensors`` (the vectors, metadata also in its header)
then ``NAME.json`` (the metadata plus the tensors file's SHA-256), each crash-safe
(:mod:`steerlab.atomic`); :func:`load_directions` reads them back by path or by name from
:func:`directions_root` (``$STEERLAB_DIRECTIONS``, default ``./directions``), and checks the hash.

Example:
    >>> import tempfile, torch
    >>> d = Directions({"blocks.1.resid_post": torch.ones(4)}, {"method": "diff_in_means"})
    >>> path = d.save(tempfile.mkdtemp() + "/ones")
    >>> load_directions(path).unit("blocks.1.resid_post").tolist()
    [0.5, 0.5, 0.5, 0.5]
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from safetensors.torch import load as load_bytes
from torch import Tensor

from steerlab._paths import REPO_ROOT
from steerlab.atomic import atomic_write_bytes, atomic_write_text, check_target, safetensors_bytes
from steerlab.errors import SpecError, SteerlabError
from steerlab.models.handle import ModelHandle
from steerlab.values import check_file_name

FORMAT = "steerlab.directions"


@functools.cache
def git_commit() -> str:
    """The steerlab checkout's git commit (``"unknown"`` outside a git checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def provenance(h: ModelHandle | None, **fields: Any) -> dict[str, Any]:
    """Metadata for a saved direction or probe: model spec and width, steerlab commit, time, ``fields``."""
    meta: dict[str, Any] = {}
    if h is not None:
        meta.update(model=h.spec, d_model=h.d_model, model_type=getattr(h.config, "model_type", None))
    meta.update(commit=git_commit(), created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))
    meta.update(fields)
    return meta


def directions_root() -> Path:
    """Where directions saved by name live: ``$STEERLAB_DIRECTIONS`` or ``./directions``."""
    return Path(os.environ.get("STEERLAB_DIRECTIONS", "directions"))


@dataclass
class Directions:
    """Vectors keyed by site (``[d]`` each, raw scale) and their metadata."""

    vectors: dict[str, Float[Tensor, " d"]]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.vectors:
            raise SpecError("a Directions needs at least one vector")
        for site, v in self.vectors.items():
            if v.ndim != 1:
                raise SpecError(f"direction at {site!r} must be 1-D [d_model], got shape {tuple(v.shape)}")
            if not torch.isfinite(v).all():
                raise SpecError(f"direction at {site!r} has NaN or infinite values; expected finite numbers")
        self.vectors = {k: v.detach().float().cpu() for k, v in self.vectors.items()}

    @property
    def sites(self) -> list[str]:
        return list(self.vectors)

    def __getitem__(self, site: str) -> Tensor:
        if site not in self.vectors:
            raise SpecError(f"no direction at site {site!r}; saved sites: {self.sites}")
        return self.vectors[site]

    def unit(self, site: str) -> Tensor:
        """The unit vector at ``site``."""
        v = self[site]
        n = float(v.norm())
        if n == 0.0:
            raise SpecError(f"direction at {site!r} has zero norm")
        return v / n

    def save(self, path: str | Path) -> Path:
        """Write ``PATH.safetensors`` and ``PATH.json`` (suffixes added; a dot in the name stays, as in
        ``refusal-v0.2``); returns the JSON path."""
        stem = pair_stem(path)
        blob = safetensors_bytes(self.vectors, {"format": FORMAT, "meta": json.dumps(self.meta, default=str)})
        index = {"format": FORMAT, "version": 1, "tensors_file": stem.name + ".safetensors",
                 "sha256": hashlib.sha256(blob).hexdigest(), "sites": self.sites, "meta": self.meta}
        return write_pair(stem, blob, index)


def pair_stem(path: str | Path) -> Path:
    """``PATH`` of a ``PATH.json`` + ``PATH.safetensors`` pair: the path without one of those two suffixes,
    any other dot kept.

    >>> pair_stem("d/refusal-v0.2").name, pair_stem("d/refusal-v0.2.json").name
    ('refusal-v0.2', 'refusal-v0.2')
    """
    p = Path(path)
    return p.with_name(p.name[: -len(p.suffix)]) if p.suffix in (".json", ".safetensors") else p


def with_ext(stem: Path, ext: str) -> Path:
    """``stem`` with ``ext`` appended (not :meth:`Path.with_suffix`, which would replace ``.2`` in ``v0.2``)."""
    return stem.with_name(stem.name + ext)


def write_pair(stem: Path, blob: bytes, index: dict[str, Any]) -> Path:
    """Write ``STEM.safetensors`` (``blob``) then ``STEM.json`` (``index``, which names the tensors file and its
    SHA-256), each crash-safe; returns the JSON path. Both paths are checked before anything is written, and an
    error while the JSON is written puts the old tensors file back (or removes the new one), so the old pair stays
    readable and whole."""
    side, index_file = with_ext(stem, ".safetensors"), with_ext(stem, ".json")
    check_target(side, folder=False)
    check_target(index_file, folder=False)
    text = json.dumps(index, indent=2, default=str)
    old = side.read_bytes() if side.is_file() else None
    atomic_write_bytes(side, blob)
    try:
        return atomic_write_text(index_file, text)
    except BaseException:
        if old is None:
            side.unlink(missing_ok=True)
        else:
            atomic_write_bytes(side, old)
        raise


def _candidates(name_or_path: str | Path) -> list[Path]:
    p = Path(name_or_path)
    if p.is_dir():
        return [p / "directions.json"]
    # an absolute path joined to the root is itself: each place once
    return list(dict.fromkeys([with_ext(pair_stem(p), ".json"),
                               directions_root() / (str(pair_stem(name_or_path)) + ".json")]))


def load_directions(name_or_path: str | Path) -> Directions:
    """Read directions saved by :meth:`Directions.save`: a path (with or without suffix), an artifact folder
    holding ``directions.json``, or a name under :func:`directions_root`."""
    index_file = next((c for c in _candidates(name_or_path) if c.exists()), None)
    if index_file is None:
        tried = [str(c) for c in _candidates(name_or_path)]
        raise SpecError(f"no saved directions {str(name_or_path)!r}: tried {tried}")
    try:
        index = json.loads(index_file.read_text())
    except json.JSONDecodeError as e:
        raise SteerlabError(f"{index_file} is not valid JSON: {e}") from e
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise SteerlabError(f"{index_file} is not a steerlab directions file (expected format {FORMAT!r})")
    side = index_file.parent / check_file_name(index.get("tensors_file"), "tensors_file", str(index_file))
    if not side.is_file():
        raise SteerlabError(f"{index_file} names the tensors file {side.name!r}, which is not there")
    blob = side.read_bytes()
    if hashlib.sha256(blob).hexdigest() != index.get("sha256"):
        raise SteerlabError(f"{index_file}: its tensors file does not match the recorded SHA-256 (a partial write?)")
    tensors = load_bytes(blob)
    return Directions({s: tensors[s] for s in index["sites"]}, dict(index.get("meta") or {}))
