"""Self-describing analysis artifacts: ``artifact.json`` + ``tensors.safetensors`` in one folder.

Every analysis (capture, expert imaging, sampling comparison, ...) writes one artifact folder.
Writes are atomic: the folder is assembled under a temporary name and renamed into place, so
a crash never leaves a half-written artifact. The dashboard and CLI read artifacts through
:func:`read_artifact` and list them with :func:`list_runs`.

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
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from steerlab.errors import SteerlabError

SCHEMA_VERSION = 1
META_FILE = "artifact.json"
TENSOR_FILE = "tensors.safetensors"


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


def _own(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU copies that share no memory (safetensors refuses aliased tensors)."""
    return {k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()}


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` via a temporary file and rename (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> Path:
    """Save tensors to a safetensors file atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(_own(tensors), tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextmanager
def atomic_dir(out_dir: str | Path) -> Iterator[Path]:
    """Fill a temporary sibling folder, then swap it into ``out_dir`` in one rename; on an exception
    the temporary folder is removed and ``out_dir`` is left as it was (no half-written folder)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp"))
    tmp.chmod(0o755)
    try:
        yield tmp
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
    from steerlab import __version__

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    if out_dir.exists() and not overwrite:
        raise SteerlabError(f"artifact folder {out_dir} exists; pass overwrite=True or choose another --out")
    with atomic_dir(out_dir) as tmp:
        files = [META_FILE]
        if tensors:
            save_file(_own(tensors), str(tmp / TENSOR_FILE))
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
    """Read an artifact folder written by :func:`write_artifact`."""
    path = Path(path)
    meta_file = path / META_FILE
    if not meta_file.exists():
        raise SteerlabError(f"{path} is not a steerlab artifact: expected a folder containing {META_FILE}")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as e:
        raise SteerlabError(f"{meta_file} is not valid JSON: {e}") from e
    return Artifact(
        path=path,
        kind=meta.get("kind", "unknown"),
        config=meta.get("config", {}),
        metrics=meta.get("metrics", {}),
        data=meta.get("data", {}),
        created=meta.get("created", ""),
        steerlab_version=meta.get("steerlab_version", ""),
        files=meta.get("files", []),
    )


def list_runs(root: str | Path = "runs") -> list[Artifact]:
    """All artifacts under ``root`` (recursively), newest first."""
    root = Path(root)
    if not root.exists():
        return []
    arts = []
    for meta in root.rglob(META_FILE):
        if any(part.startswith(".") for part in meta.relative_to(root).parts):
            continue
        try:
            arts.append(read_artifact(meta.parent))
        except SteerlabError:
            continue
    return sorted(arts, key=lambda a: a.created, reverse=True)
