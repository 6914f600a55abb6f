"""Self-describing analysis artifacts: ``artifact.json`` + ``tensors.safetensors`` in one folder.

Every analysis (capture, expert imaging, sampling comparison, ...) writes one artifact folder
through :func:`atomic_dir`: after a crash at any point the folder reads as the old one or the new
one, whole (see :func:`atomic_dir` for exactly what is guaranteed). The dashboard and CLI read
artifacts through :func:`read_artifact` and list them with :func:`list_runs` (:func:`scan_runs`
also says which folders could not be read, and why).

Example:
    >>> import tempfile, torch
    >>> from steerlab.artifacts import write_artifact, read_artifact
    >>> d = write_artifact(tempfile.mkdtemp() + "/run", kind="demo", config={"a": 1},
    ...                    metrics={"m": 0.5}, tensors={"x": torch.zeros(2)})
    >>> read_artifact(d).metrics["m"]
    0.5
"""

from __future__ import annotations

import ctypes
import datetime as _dt
import errno
import functools
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
from safetensors import SafetensorError, safe_open
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


def _fsync(path: str | Path) -> None:
    """Flush a file's (or a folder's entries') contents to stable storage; a no-op where a folder
    cannot be opened (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except (IsADirectoryError, PermissionError):
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            _fsync(Path(folder) / name)
        _fsync(folder)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that a crash at any point leaves ``path`` holding its old
    content or ``data``, whole: written to a temporary sibling, fsynced, renamed over ``path``
    (``os.replace``, atomic), then the folder is fsynced (the new content is durable on return).
    A crash before the rename may leave a hidden ``.NAME.*.tmp`` file behind.

    Example:
        >>> import tempfile
        >>> atomic_write_bytes(tempfile.mkdtemp() + "/f.bin", b"ab").read_bytes()
        b'ab'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8 (same guarantee)."""
    return atomic_write_bytes(path, text.encode())


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> bytes:
    """The safetensors file of ``tensors`` (CPU copies; a tensor used twice is fine), as bytes."""
    from safetensors.torch import save

    return save(_own(tensors), metadata=metadata)


def atomic_save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> Path:
    """Save tensors to a safetensors file with the guarantee of :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, safetensors_bytes(tensors, metadata))


_AT_FDCWD = -100  # linux/fcntl.h
_RENAME_EXCHANGE = 2  # linux/fs.h


@functools.cache
def _renameat2() -> Any:
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28, musl >= 1.2.1
    except (AttributeError, OSError, TypeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one ``renameat2(RENAME_EXCHANGE)`` call (Linux >= 3.15; ext4, xfs,
    btrfs, tmpfs, ...). Returns False, changing nothing, where the C library or the filesystem lacks it."""
    fn = _renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _backup(out_dir: Path) -> Path:
    return out_dir.with_name(f".{out_dir.name}.old")


def resolve_dir(path: str | Path) -> Path:
    """Where the folder that :func:`atomic_dir` wrote at ``path`` is: ``path``, or its backup
    ``.NAME.old`` when a crash between the two renames of the fallback swap left ``path`` missing
    (the backup is then the old folder, whole). Readers call this; it changes nothing on disk.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> (d / ".run.old").mkdir()
        >>> resolve_dir(d / "run").name
        '.run.old'
    """
    path = Path(path)
    if not path.exists() and _backup(path).is_dir():
        return _backup(path)
    return path


def _recover(out_dir: Path) -> None:
    """Finish a fallback swap that a crash interrupted: put the backup back where ``out_dir`` is
    missing, else delete it (the new folder was in place)."""
    old = _backup(out_dir)
    if not old.exists():
        return
    if out_dir.exists():
        shutil.rmtree(old)
    else:
        os.replace(old, out_dir)
        _fsync(out_dir.parent)


@contextmanager
def atomic_dir(out_dir: str | Path) -> Iterator[Path]:
    """Fill a fresh temporary sibling folder (yielded), then put it at ``out_dir`` in place of any
    old folder.

    Guarantee: after a crash (process or power loss) at any point, ``out_dir`` read through
    :func:`resolve_dir` is the old folder whole or the new folder whole, never a mix; an exception in
    the ``with`` body leaves the old folder as it was and removes the temporary one. The new tree's
    files and folders are fsynced before it is swapped in and the parent folder after, so the new
    folder is durable once the ``with`` block exits. The swap:

    * no folder at ``out_dir`` yet: one ``rename``;
    * Linux (``renameat2(RENAME_EXCHANGE)``): the two folders trade places in one atomic call, so
      ``out_dir`` itself is always old or new, for any reader; the old tree is then deleted;
    * elsewhere: ``out_dir`` -> ``.NAME.old``, temporary -> ``out_dir``, delete ``.NAME.old``. Between
      the renames ``out_dir`` is missing and ``.NAME.old`` is the old folder whole: readers that use
      :func:`resolve_dir` (:func:`read_artifact`, :func:`list_runs`, ``Capture.load``) read it there,
      and the next ``atomic_dir`` on ``out_dir`` first moves it back. Other readers (a model loader,
      git) see no folder during that window.

    Not guaranteed: two writers of one ``out_dir`` at once (one may fail); a crash may leave a hidden
    ``.NAME.*.tmp`` folder behind (never read; safe to delete).

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp()) / "run"
        >>> with atomic_dir(out) as tmp:
        ...     _ = (tmp / "a.txt").write_text("new")
        >>> (out / "a.txt").read_text()
        'new'
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _recover(out_dir)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp"))
    tmp.chmod(0o755)
    try:
        yield tmp
        _fsync_tree(tmp)
        if not out_dir.exists():
            os.replace(tmp, out_dir)
        elif not _exchange(tmp, out_dir):  # on success tmp holds the old tree, deleted below
            old = _backup(out_dir)
            os.replace(out_dir, old)
            try:
                os.replace(tmp, out_dir)
            except BaseException:
                os.replace(old, out_dir)
                raise
            _fsync(out_dir.parent)
            shutil.rmtree(old, ignore_errors=True)  # what is left, the next atomic_dir deletes
        _fsync(out_dir.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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
    from steerlab._version import __version__

    out_dir = Path(out_dir)
    if resolve_dir(out_dir).exists() and not overwrite:
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
    """Read an artifact folder written by :func:`write_artifact` (through :func:`resolve_dir`, so a
    swap interrupted by a crash reads as the old folder); raises :class:`SteerlabError` naming the
    folder and what is wrong when it is not a readable artifact."""
    path = resolve_dir(path)
    meta_file = path / META_FILE
    if not meta_file.exists():
        raise SteerlabError(f"{path} is not a steerlab artifact: expected a folder containing {META_FILE}")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as e:
        raise SteerlabError(f"{meta_file} is not valid JSON: {e}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise SteerlabError(f"{meta_file} cannot be read: {e}") from e
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
