"""Self-describing analysis artifacts: ``artifact.json`` + ``tensors.safetensors`` in one folder.

Every analysis (capture, expert imaging, sampling comparison, ...) writes one artifact folder
through :func:`steerlab.atomic.atomic_dir`: after a crash at any point the folder reads as the old one or the new
one, whole (see :func:`steerlab.atomic.atomic_dir` for exactly what is guaranteed). The dashboard and CLI read
artifacts through :func:`read_artifact` and list them with :func:`list_runs` (:func:`scan_runs`
also says which folders could not be read, and why).

Each analysis registers the kinds it writes in its own ``artifact.py`` with :func:`register_kind` (name,
owning analysis, one-line summary, CLI producer, reader); the dashboard and the CLI discover them with
:func:`artifact_kinds`. Unregistered kinds (``"demo"`` below) are still written and read.

Example:
    >>> import tempfile, torch
    >>> from steerlab.artifacts import write_artifact, read_artifact
    >>> d = write_artifact(tempfile.mkdtemp() + "/run", kind="demo", config={"a": 1},
    ...                    metrics={"m": 0.5}, tensors={"x": torch.zeros(2)})
    >>> read_artifact(d).metrics["m"]
    0.5
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from steerlab._version import __version__
from steerlab.atomic import atomic_dir, cpu_copies, resolve_dir, save_tensors_file
from steerlab.errors import SteerlabError
from steerlab.values import read_json

SCHEMA_VERSION = 1
META_FILE = "artifact.json"
TENSOR_FILE = "tensors.safetensors"


@dataclass(frozen=True)
class ArtifactKind:
    """A registered artifact kind: its ``name`` (the ``kind`` field of ``artifact.json``), the analysis that
    ``owner``s it (a module path, e.g. ``steerlab.decoding``), a one-line ``summary``, the CLI command that
    writes it with ``--out`` (``producer``, e.g. ``"sampling diagnose"``) and a ``reader`` turning an
    :class:`Artifact` of this kind into the analysis's object (``None``: the :class:`Artifact` is the object)."""

    name: str
    owner: str
    summary: str
    producer: str = ""
    reader: Callable[[Artifact], Any] | None = None

    def read(self, path: str | Path) -> Any:
        """Read the folder ``path`` as this kind (raises :class:`SteerlabError` naming both kinds otherwise)."""
        art = read_artifact(path)
        if art.kind != self.name:
            raise SteerlabError(f"{art.path} is a {art.kind!r} artifact; expected {self.name!r}")
        return art if self.reader is None else self.reader(art)


_KINDS: dict[str, ArtifactKind] = {}


def register_kind(
    name: str, *, owner: str, summary: str, producer: str = "", reader: Callable[[Artifact], Any] | None = None
) -> ArtifactKind:
    """Register the artifact kind ``name`` (once per name; registering the same owner again replaces it).

    Example:
        >>> k = register_kind("demo_kind", owner="tests", summary="a demo", producer="demo --out")
        >>> k in artifact_kinds(), kind_of("demo_kind").owner
        (True, 'tests')
        >>> _ = _KINDS.pop("demo_kind")
    """
    if not name or not name.replace("_", "").isalnum():
        raise SteerlabError(f"artifact kind name {name!r} must be a non-empty identifier (letters, digits, _)")
    old = _KINDS.get(name)
    if old is not None and old.owner != owner:
        raise SteerlabError(f"artifact kind {name!r} is already registered by {old.owner}; {owner} cannot take it")
    kind = ArtifactKind(name, owner, summary, producer, reader)
    _KINDS[name] = kind
    return kind


def artifact_kinds(owner: str | None = None) -> tuple[ArtifactKind, ...]:
    """The registered kinds (of one ``owner`` analysis if given), in registration order. Kinds register when
    their analysis's ``artifact`` module is imported (the CLI and the dashboard import them)."""
    return tuple(k for k in _KINDS.values() if owner is None or k.owner == owner)


def kind_of(name: str) -> ArtifactKind:
    """The registered kind ``name`` (raises :class:`SteerlabError` listing the known ones)."""
    if name not in _KINDS:
        raise SteerlabError(f"unknown artifact kind {name!r}; registered: {sorted(_KINDS)}")
    return _KINDS[name]


@dataclass
class Artifact:
    """A loaded artifact: what produced it (``kind``, ``config``) and what it found."""

    path: Path
    kind: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    data: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    steerlab_version: str = ""
    files: list[str] = field(default_factory=list)
    _tensors: dict[str, torch.Tensor] | None = None

    @property
    def tensors(self) -> dict[str, torch.Tensor]:
        """Tensors from the side safetensors file (loaded lazily)."""
        if self._tensors is None:
            f = self.path / TENSOR_FILE
            self._tensors = load_file(str(f)) if f.exists() else {}
        return self._tensors


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"cannot serialize {type(obj).__name__} to JSON")


def strict_json(obj: Any, indent: int | None = 2) -> str:
    """``obj`` as strict JSON text (RFC 8259): tensors and paths converted, NaN and infinities written as
    ``null`` (what a metric that was not computed is), so any JSON parser reads it.

    >>> strict_json({"r": float("nan"), "xs": [1.0, float("inf")]}, indent=None)
    '{"r": null, "xs": [1.0, null]}'
    """
    def walk(v: Any) -> Any:
        if isinstance(v, float):
            return v if math.isfinite(v) else None
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [walk(x) for x in v]
        if isinstance(v, (str, int, bool)) or v is None:
            return v
        return walk(_jsonable(v))

    return json.dumps(walk(obj), indent=indent, allow_nan=False)


def write_artifact(
    out_dir: str | Path,
    *,
    kind: str,
    config: dict[str, Any],
    metrics: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    tensors: dict[str, torch.Tensor] | None = None,
    extra_files: dict[str, str | bytes] | None = None,
    overwrite: bool = True,
) -> Path:
    """Write an artifact folder atomically and return its path.

    ``config`` says what produced it (model spec, suite, parameters); ``metrics`` holds headline
    numbers; ``data`` holds JSON-able details (tables, token lists); ``tensors`` go to safetensors;
    ``extra_files`` (e.g. plotly HTML figures) are written beside them.
    """
    out_dir = Path(out_dir)
    if resolve_dir(out_dir).exists() and not overwrite:
        raise SteerlabError(f"artifact folder {out_dir} exists; pass overwrite=True or choose another --out")
    with atomic_dir(out_dir) as tmp:
        files = [META_FILE]
        if tensors:
            save_tensors_file(tmp / TENSOR_FILE, cpu_copies(tensors))
            files.append(TENSOR_FILE)
        for name, content in (extra_files or {}).items():
            mode = "wb" if isinstance(content, bytes) else "w"
            with open(tmp / name, mode) as f:
                f.write(content)
            files.append(name)
        meta = {
            "schema_version": SCHEMA_VERSION,
            "kind": kind,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "steerlab_version": __version__,
            "config": config,
            "metrics": metrics or {},
            "data": data or {},
            "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in (tensors or {}).items()},
            "files": files,
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=_jsonable))
    return out_dir


def read_artifact(path: str | Path) -> Artifact:
    """Read an artifact folder written by :func:`write_artifact` (through :func:`resolve_dir`, so a
    swap interrupted by a crash reads as the old folder); raises :class:`SteerlabError` naming the
    folder and what is wrong when it is not a readable artifact."""
    path = resolve_dir(path)
    meta_file = path / META_FILE
    if not meta_file.exists():
        raise SteerlabError(f"{path} is not a steerlab artifact: expected a folder containing {META_FILE}")
    meta = read_json(meta_file, str(meta_file), SteerlabError)
    if not isinstance(meta, dict):
        raise SteerlabError(f"{meta_file} holds a JSON {type(meta).__name__}; expected an object with 'kind', 'config'")
    files = meta.get("files", [])
    missing = [f for f in files if isinstance(f, str) and not (path / f).exists()]
    if missing:
        raise SteerlabError(f"{path} is incomplete: {missing} listed in {META_FILE} but missing from the folder")
    if TENSOR_FILE in files:
        try:
            with safe_open(str(path / TENSOR_FILE), framework="pt"):  # reads the header only
                pass
        except (OSError, SafetensorError) as e:
            raise SteerlabError(f"{path / TENSOR_FILE} is not a readable safetensors file: {e}") from e
    return Artifact(
        path=path,
        kind=meta.get("kind", "unknown"),
        config=meta.get("config", {}),
        metrics=meta.get("metrics", {}),
        data=meta.get("data", {}),
        created=meta.get("created", ""),
        steerlab_version=meta.get("steerlab_version", ""),
        files=files,
    )


@dataclass(frozen=True)
class UnreadableRun:
    """A folder under the runs root that holds an ``artifact.json`` but cannot be read, and why."""

    path: Path
    error: str


def _listed(folder: Path, root: Path) -> bool:
    """Not hidden below ``root``, or the backup ``.NAME.old`` that :func:`resolve_dir` reads for a missing ``NAME``."""
    hidden = [p for p in folder.relative_to(root).parts if p.startswith(".")]
    if not hidden:
        return True
    name = folder.name
    return hidden == [name] and name.endswith(".old") and resolve_dir(folder.with_name(name[1:-4])) == folder


def scan_runs(root: str | Path = "runs") -> tuple[list[Artifact], list[UnreadableRun]]:
    """Artifacts under ``root`` (recursively; newest first) and the folders holding an
    ``artifact.json`` that could not be read, with the reason (by path).

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> _ = write_artifact(root / "ok", kind="demo", config={})
        >>> (root / "bad").mkdir(); _ = (root / "bad" / META_FILE).write_text("{")
        >>> arts, bad = scan_runs(root)
        >>> [a.kind for a in arts], [b.path.name for b in bad]
        (['demo'], ['bad'])
    """
    root = Path(root)
    arts: list[Artifact] = []
    bad: list[UnreadableRun] = []
    if not root.is_dir():
        return arts, bad
    for meta in sorted(root.rglob(META_FILE)):
        if not _listed(meta.parent, root):
            continue
        try:
            arts.append(read_artifact(meta.parent))
        except SteerlabError as e:
            bad.append(UnreadableRun(meta.parent, str(e)))
    return sorted(arts, key=lambda a: a.created, reverse=True), bad


def list_runs(root: str | Path = "runs") -> list[Artifact]:
    """The readable artifacts under ``root`` (recursively), newest first; :func:`scan_runs` also
    reports the unreadable ones."""
    return scan_runs(root)[0]
