"""Crash-safe file and folder replacement: every writer in steerlab goes through these.

:func:`atomic_write_bytes`/:func:`atomic_write_text`/:func:`atomic_save_tensors` replace one file;
:func:`atomic_dir` replaces a whole folder, and :func:`resolve_dir` is what readers open. After a
crash at any point a path reads as its old content or its new content, whole (each function's
docstring says exactly what is guaranteed).

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> with atomic_dir(Path(tempfile.mkdtemp()) / "out") as tmp:
    ...     _ = (tmp / "a.txt").write_text("new")
    >>> (resolve_dir(tmp.parent / "out") / "a.txt").read_text()
    'new'
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import secrets
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from steerlab.errors import SpecError


def cpu_copies(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
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


# The file that marks a folder as one of steerlab's writers' own (an artifact, a capture, a checkpoint, a
# Hugging Face model folder, the suite): :func:`atomic_dir` replaces an existing folder only if it holds one.
OWN_MARKERS = ("artifact.json", "capture.json", "state.json", "config.json", "suite.json")


def check_target(path: str | Path, *, folder: bool, own: Sequence[str] | None = None) -> Path:
    """``path`` as a :class:`Path` if a folder (``folder=True``) or a file can be written there; else a
    one-line :class:`~steerlab.errors.SpecError` naming the obstacle: no name (``.``), an ancestor that is a
    file, ``path`` itself existing as the other kind, or (with ``own``, the marker files of the writer's
    folders) an existing folder of other files. Writers check before they write, so nothing of the user's is
    replaced.

    Example:
        >>> import tempfile
        >>> f = Path(tempfile.mkdtemp()) / "f.txt"
        >>> _ = f.write_text("mine")
        >>> try:
        ...     check_target(f / "out", folder=True)
        ... except SpecError as e:
        ...     print("refused:", "f.txt is a file" in str(e))
        refused: True
    """
    path = Path(path)
    if path.name in ("", ".", ".."):
        raise SpecError(f"{str(path)!r} has no name of its own; expected a path such as runs/NAME")
    for up in path.parents:
        if up.exists():
            if not up.is_dir():
                raise SpecError(f"{up} is a file; expected a folder there to write {path}")
            break
    if folder and path.exists() and not path.is_dir():
        raise SpecError(f"{path} is a file; expected a folder (or nothing) there")
    if folder and own is not None and path.is_dir() and any(path.iterdir()):
        if not any((path / m).exists() for m in own):
            raise SpecError(
                f"{path} is a folder of other files (none of {list(own)}), which writing there would replace; "
                "expected a new folder or one this command wrote"
            )
    if not folder and path.is_dir():
        raise SpecError(f"{path} is a folder; expected a file (or nothing) there")
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that a crash at any point leaves ``path`` holding its old
    content or ``data``, whole: written to a temporary sibling, fsynced, renamed over ``path``
    (``os.replace``, atomic), then the folder is fsynced (the new content is durable on return). A replaced
    file keeps its permission bits; a new one gets those of any new file (``0666`` less the umask, e.g. ``0644``).
    A crash before the rename may leave a hidden ``.NAME.*.tmp`` file behind.

    Example:
        >>> import tempfile
        >>> atomic_write_bytes(tempfile.mkdtemp() + "/f.bin", b"ab").read_bytes()
        b'ab'
    """
    path = check_target(path, folder=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o7777 if path.is_file() else None
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    fd, tmp = _fresh(path, lambda t: os.open(t, flags, 0o666))  # 0666 less the umask, as open() gives
    try:
        with os.fdopen(fd, "wb") as f:
            if mode is not None:
                os.chmod(tmp, mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync(path.parent)
    return path


def _fresh(path: Path, make: Callable[[Path], Any]) -> tuple[Any, Path]:
    """``make`` (creating exclusively) a hidden sibling ``.NAME.<random>.tmp`` of ``path`` not there yet."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return make(tmp), tmp
        except FileExistsError:
            continue


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8 (same guarantee)."""
    return atomic_write_bytes(path, text.encode())


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> bytes:
    """The safetensors file of ``tensors`` (CPU copies; a tensor used twice is fine), as bytes."""
    from safetensors.torch import save

    return save(cpu_copies(tensors), metadata=metadata)


def save_tensors_file(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> Path:
    """``safetensors.torch.save_file`` (contiguous CPU tensors: :func:`cpu_copies`) with the permission bits
    ``open()`` would give under the umask: safetensors makes its file ``0600`` whatever the umask. The bits are
    read off the file's folder (made with mode ``0777`` under the umask, as :func:`atomic_dir` makes its
    folders), less execute. For a file inside an :func:`atomic_dir` block (not crash-safe by itself)."""
    from safetensors.torch import save_file

    path = Path(path)
    save_file(tensors, str(path), metadata=metadata)
    path.chmod(path.parent.stat().st_mode & 0o666)
    return path


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
def atomic_dir(out_dir: str | Path, own: Sequence[str] = OWN_MARKERS) -> Iterator[Path]:
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

    Refused before anything is written (:func:`check_target`): ``out_dir`` under a file, a file itself, or an
    existing folder of other files, i.e. one holding none of ``own`` (by default any steerlab writer's marker,
    :data:`OWN_MARKERS`), so a mistyped ``--out .`` cannot replace a folder of the user's.

    The new folder keeps the old one's permission bits, or gets those of any new folder (``0777`` less the umask).

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
    _recover(out_dir)
    check_target(out_dir, folder=True, own=own)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    mode = out_dir.stat().st_mode & 0o7777 if out_dir.is_dir() else None
    _, tmp = _fresh(out_dir, lambda t: os.mkdir(t, 0o777))  # 0777 less the umask, as mkdir gives
    try:
        yield tmp
        if mode is not None:  # a replaced folder keeps its permission bits (set after the writes: 0555 stays 0555)
            tmp.chmod(mode)
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
