"""Crash safety of every replacement: a writer killed before ANY of its renames or deletions leaves
the path reading as the old content whole or the new content whole.

Each case forks a child that runs the writer with ``os.replace``/``rename``/``unlink``/``remove``/
``rmdir`` and the folder exchange patched to ``os._exit`` at their N-th call, for N = 1, 2, ... until
the writer completes; the parent then reads the path and compares it with the old and the new
content captured before (byte for byte, or the loaded values).
"""

from __future__ import annotations

import functools
import itertools
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import steerlab as sl
from steerlab import artifacts, atomic
from steerlab.activations import Capture
from steerlab.artifacts import read_artifact, write_artifact
from steerlab.atomic import atomic_dir, resolve_dir
from steerlab.errors import SpecError
from steerlab.interventions import AddVector, ExpertMask, InterventionSet, ProjectOut

CRASHED = 77
MUTATORS = ("replace", "rename", "unlink", "remove", "rmdir")


def _run(write: Callable[[], None], crash_at: int) -> int:
    """Run ``write`` in a forked child that exits at its ``crash_at``-th mutating call (0: never)."""
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        code = 1
        try:
            calls = 0

            def counted(fn: Callable) -> Callable:
                def call(*args, **kwargs):  # noqa: ANN202
                    nonlocal calls
                    calls += 1
                    if calls == crash_at:
                        os._exit(CRASHED)
                    return fn(*args, **kwargs)

                return call

            for name in MUTATORS:
                setattr(os, name, counted(getattr(os, name)))
            atomic._exchange = counted(atomic._exchange)
            write()
            code = 0
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def crash_everywhere(tmp: Path, setup: Callable[[Path], None], write: Callable[[Path], None],
                     state: Callable[[Path], object], old: object, new: object) -> list[object]:
    """For every crash point: fresh ``setup``, crashed ``write``, then ``state`` must be ``old`` or
    ``new``; then a complete ``write`` must give ``new``. Returns the states seen, in crash order."""
    seen = []
    for n in itertools.count(1):
        base = tmp / f"crash-{n}"
        base.mkdir()
        setup(base)
        code = _run(functools.partial(write, base), crash_at=n)
        assert code in (CRASHED, 0), f"writer failed (exit {code}) at crash point {n}"
        got = state(base)
        assert got == old or got == new, f"crash before mutating call {n}: neither old nor new: {got!r}"
        seen.append("old" if got == old else "new")
        assert _run(functools.partial(write, base), crash_at=0) == 0  # the next writer recovers and completes
        assert state(base) == new, f"rewrite after crash point {n} did not give the new content"
        if code == 0:
            return seen
    raise AssertionError("unreachable")


def snapshot(folder: Path) -> dict[str, bytes] | None:
    """Every file under ``folder`` (relative path -> bytes), None if there is no folder."""
    if not folder.is_dir():
        return None
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _exchange_supported(tmp: Path) -> bool:
    a, b = tmp / "xa", tmp / "xb"
    a.mkdir(), b.mkdir()
    try:
        return atomic._exchange(a, b)
    finally:
        a.rmdir(), b.rmdir()


@pytest.fixture(params=["exchange", "fallback"])
def mode(request, monkeypatch, tmp_path) -> str:
    """Both swaps: renameat2 exchange (Linux) and the rename-with-backup fallback (elsewhere)."""
    if request.param == "fallback":
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    else:  # the project runs on Linux, where the exchange must be available (else the fallback is all we test)
        assert _exchange_supported(tmp_path), "renameat2(RENAME_EXCHANGE) is unavailable on this filesystem"
    return request.param


OLD = {"a.txt": b"old a", "sub/x.bin": bytes(range(50)), "only-old.txt": b"1"}
NEW = {"a.txt": b"new a, longer", "sub/x.bin": bytes(range(50, 0, -1)), "only-new.txt": b"2"}


def _fill(folder: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)


@pytest.mark.parametrize("existing", [True, False])
def test_atomic_dir_reads_old_or_new_after_a_crash_anywhere(tmp_path, mode, existing):
    def setup(base: Path) -> None:
        if existing:
            with atomic_dir(base / "out", own=["a.txt"]) as d:
                _fill(d, OLD)

    def write(base: Path) -> None:
        with atomic_dir(base / "out", own=["a.txt"]) as d:  # (the folders' marker file here)
            _fill(d, NEW)

    old = OLD if existing else None
    # exchange: ``out`` itself is always whole, for any reader; fallback: through resolve_dir
    read = (lambda b: snapshot(b / "out")) if mode == "exchange" else (lambda b: snapshot(resolve_dir(b / "out")))
    seen = crash_everywhere(tmp_path, setup, write, read, old, NEW)
    assert seen[0] == "old" and seen[-1] == "new"  # the crash points span the swap
    if existing and mode == "fallback":
        assert len(seen) >= 4  # crash between the two renames was among them (out missing, backup whole)


def test_fallback_window_is_read_from_the_backup_and_repaired(tmp_path, monkeypatch):
    """The state between the fallback's two renames: ``out`` missing, ``.out.old`` whole."""
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    write_artifact(tmp_path / "run", kind="demo", config={"v": "old"}, tensors={"x": torch.arange(3.0)})
    os.replace(tmp_path / "run", tmp_path / ".run.old")  # what a crash right after the first rename leaves
    art = read_artifact(tmp_path / "run")
    assert art.config == {"v": "old"} and art.tensors["x"].tolist() == [0.0, 1.0, 2.0]
    assert [a.config for a in artifacts.list_runs(tmp_path)] == [{"v": "old"}]
    write_artifact(tmp_path / "run", kind="demo", config={"v": "new"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert read_artifact(tmp_path / "run").config == {"v": "new"}


def test_write_artifact_reads_old_or_new_after_a_crash_anywhere(tmp_path, mode):
    def setup(base: Path) -> None:
        write_artifact(base / "run", kind="demo", config={"v": "old"}, metrics={"m": 1.0},
                       tensors={"x": torch.zeros(4)}, extra_files={"old.txt": "o"})

    def write(base: Path) -> None:
        write_artifact(base / "run", kind="demo", config={"v": "new"}, metrics={"m": 2.0},
                       tensors={"x": torch.arange(4.0), "y": torch.ones(2)}, extra_files={"new.txt": "n"})

    def state(base: Path) -> tuple:
        a = read_artifact(base / "run")
        files = {f: (a.path / f).read_bytes() for f in a.files if f.endswith(".txt")}
        return a.config["v"], a.metrics, sorted(a.files), {k: v.tolist() for k, v in a.tensors.items()}, files

    old = ("old", {"m": 1.0}, ["artifact.json", "old.txt", "tensors.safetensors"], {"x": [0.0] * 4}, {"old.txt": b"o"})
    new = ("new", {"m": 2.0}, ["artifact.json", "new.txt", "tensors.safetensors"],
           {"x": [0.0, 1.0, 2.0, 3.0], "y": [1.0, 1.0]}, {"new.txt": b"n"})
    seen = crash_everywhere(tmp_path, setup, write, state, old, new)
    assert seen[0] == "old" and seen[-1] == "new"


def test_capture_out_reads_old_or_new_after_a_crash_anywhere(tmp_path, mode, stories):
    site = "blocks.1.resid_post"
    old_prompts, new_prompts = ["Once upon a time", "The dog"], ["A cat sat", "Tim ran", "The sun was hot"]

    def run(base: Path, prompts: list[str]) -> None:
        sl.capture(stories, prompts, [site], out=base / "cap", batch_size=1)

    def state(base: Path) -> tuple | None:
        if not resolve_dir(base / "cap").exists():
            return None
        c = Capture.load(base / "cap")
        return c.prompts, [p.name for p in c.shards()], snapshot(resolve_dir(base / "cap"))

    ref = tmp_path / "ref"
    for name, prompts in (("old", old_prompts), ("new", new_prompts)):
        (ref / name).mkdir(parents=True)
        run(ref / name, prompts)
    old, new = state(ref / "old"), state(ref / "new")
    assert old[0] == old_prompts and len(old[1]) == 2 and new[0] == new_prompts and len(new[1]) == 3
    (tmp_path / "crashes").mkdir()
    seen = crash_everywhere(tmp_path / "crashes", lambda b: run(b, old_prompts), lambda b: run(b, new_prompts),
                            state, old, new)
    assert seen[0] == "old" and seen[-1] == "new"


# -- InterventionSet.save / load ---------------------------------------------------------------

OLD_SET = InterventionSet([AddVector(site="blocks.1.resid_post", vector=torch.ones(64), scale=1.0),
                           ExpertMask(layer=0, off=[1], scale={2: 0.5})])
NEW_SET = InterventionSet([AddVector(site="blocks.2.resid_post", vector=torch.arange(64.0), scale=3.0),
                           ProjectOut(site="blocks.0.resid_post", direction=torch.linspace(-1, 1, 64))])


def _set_state(path: Path) -> tuple:
    s = InterventionSet.load(path)
    return json.dumps(s.to_json(), sort_keys=True), {k: v.tolist() for k, v in s.tensors().items()}


def _expected(s: InterventionSet) -> tuple:
    # built from the set in memory: interventions as dicts, tensors by their values
    return json.dumps(s.to_json(), sort_keys=True), {k: v.tolist() for k, v in s.tensors().items()}


def test_intervention_set_save_loads_old_or_new_after_a_crash_anywhere(tmp_path):
    seen = crash_everywhere(tmp_path, lambda b: OLD_SET.save(b / "s.json"), lambda b: NEW_SET.save(b / "s.json"),
                            lambda b: _set_state(b / "s.json"), _expected(OLD_SET), _expected(NEW_SET))
    assert seen[0] == "old" and seen[-1] == "new"
    assert _expected(NEW_SET)[1]["0.vector"] == [float(i) for i in range(64)]


def test_save_keeps_one_side_file_named_by_the_json(tmp_path):
    path = tmp_path / "steer.json"
    (tmp_path / "steer.safetensors").write_bytes(b"left by an older steerlab")  # named by the spec it wrote
    path.write_text(json.dumps({"tensors_file": "steer.safetensors", "interventions": []}))
    (tmp_path / "steer.v2.json").write_text("{}")  # another spec's files are not touched
    OLD_SET.save(path)
    NEW_SET.save(path)
    side = json.loads(path.read_text())["tensors_file"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["steer.json", side, "steer.v2.json"])
    assert side.startswith("steer.") and side.endswith(".safetensors") and len(side.split(".")[1]) == 16
    InterventionSet([ExpertMask(layer=0, off=[1])]).save(path)  # no tensors: no side file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["steer.json", "steer.v2.json"]
    # a file of the same stem that no spec named is not the spec's: a model's weights beside a model.json spec
    (tmp_path / "model.safetensors").write_bytes(b"the user's weights")
    NEW_SET.save(tmp_path / "model.json")
    InterventionSet([ExpertMask(layer=0, off=[1])]).save(tmp_path / "model.json")
    assert (tmp_path / "model.safetensors").read_bytes() == b"the user's weights"


def test_corrupt_tensors_file_is_a_spec_error(tmp_path):
    path = OLD_SET.save(tmp_path / "steer.json")
    side = tmp_path / json.loads(path.read_text())["tensors_file"]
    side.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(SpecError, match=rf"tensors file '.*{side.name}'.*not a readable safetensors file"):
        InterventionSet.load(path)


def test_non_integer_scale_key_is_a_spec_error():
    spec = {"interventions": [{"type": "expert_mask", "layer": 0, "scale": {"2": 0.5, "two": 0.5}}]}
    with pytest.raises(SpecError, match=r"intervention 0: .*scale\.two.*valid integer"):
        InterventionSet.from_json(spec)


def test_a_writer_never_replaces_or_moves_a_file_of_the_other_kind(tmp_path):
    """A folder write onto an existing file, or under one, and a file write onto a folder are refused with one
    line naming the path, before anything is written: the user's file keeps its content and its place, and no
    temporary sibling is left (before, the swap moved such a file into a stray ``.NAME.*.tmp``)."""
    atomic_write_text = atomic.atomic_write_text
    mine = tmp_path / "mine.txt"
    mine.write_text("the user's file")
    with pytest.raises(SpecError, match=f"^{mine} is a file; expected a folder \\(or nothing\\) there$"):
        with atomic_dir(mine) as tmp:
            (tmp / "a").write_text("new")
    with pytest.raises(SpecError, match=f"^{mine} is a file; expected a folder there to write {mine}/out$"):
        with atomic_dir(mine / "out"):
            pass
    with pytest.raises(SpecError, match=f"^{mine} is a file; expected a folder there to write {mine}/f.json$"):
        atomic_write_text(mine / "f.json", "{}")
    (tmp_path / "d").mkdir()
    with pytest.raises(SpecError, match=f"^{tmp_path / 'd'} is a folder; expected a file \\(or nothing\\) there$"):
        atomic_write_text(tmp_path / "d", "{}")
    assert mine.read_text() == "the user's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "mine.txt"] and not any((tmp_path / "d").iterdir())


def test_a_folder_of_the_users_is_never_replaced(tmp_path):
    """An existing folder holding none of the writers' marker files (a project folder, ``--out .``) is refused
    before anything is written, by the folder writer and by a capture; one that holds a marker is replaced."""
    import steerlab as sl

    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "notes.txt").write_text("mine")
    with pytest.raises(SpecError, match=r"proj is a folder of other files .*expected a new folder"):
        with atomic_dir(proj):
            pass
    h = sl.load("shared:stories260K")
    with pytest.raises(SpecError, match="folder of other files"):
        sl.capture(h, ["Hi"], ["blocks.0.resid_post"], out=proj)
    with pytest.raises(SpecError, match="has no name of its own"):
        atomic.check_target(".", folder=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["proj"] and (proj / "notes.txt").read_text() == "mine"
    sl.capture(h, ["Hi"], ["blocks.0.resid_post"], out=tmp_path / "cap")
    sl.capture(h, ["Hello there"], ["blocks.0.resid_post"], out=tmp_path / "cap")  # its own folder: replaced
    assert json.loads((tmp_path / "cap" / "capture.json").read_text())["config"]["n_prompts"] == 1


@pytest.fixture
def umask():
    """Set the process umask for a test (``umask(0o077)``); the old one is restored after it."""
    old = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(old)


def test_a_replaced_file_keeps_its_mode_and_a_new_one_is_readable(tmp_path, umask):
    # a replaced file keeps its mode; a new one gets what open() gives under the umask (0644 under 022)
    umask(0o022)
    path = tmp_path / "out.json"
    atomic.atomic_write_text(path, "new")
    assert path.stat().st_mode & 0o777 == 0o644
    for mode in (0o640, 0o664):
        path.chmod(mode)
        atomic.atomic_write_text(path, "again")
        assert path.stat().st_mode & 0o777 == mode and path.read_text() == "again"
    atomic.atomic_save_tensors(tmp_path / "t.safetensors", {"x": torch.ones(2)})
    assert (tmp_path / "t.safetensors").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize(("mask", "file_mode", "dir_mode"), [(0o077, 0o600, 0o700), (0o022, 0o644, 0o755)])
def test_new_files_and_folders_follow_the_umask_and_replaced_ones_keep_their_mode(tmp_path, umask, mask, file_mode,
                                                                                   dir_mode):
    """A user's umask holds for what the writers make (a umask-077 user gets no world-readable outputs); a file or
    folder replaced keeps its mode, whatever the umask."""
    from steerlab.models.tiny import tiny_model
    from steerlab.organisms.build import save_model_folder

    umask(mask)
    f = atomic.atomic_write_text(tmp_path / "a.json", "x")
    assert f.stat().st_mode & 0o777 == file_mode
    f.chmod(0o640)
    atomic.atomic_write_text(f, "y")
    assert f.stat().st_mode & 0o777 == 0o640 and f.read_text() == "y"
    with atomic_dir(tmp_path / "run") as tmp:
        (tmp / "state.json").write_text("{}")
    assert (tmp_path / "run").stat().st_mode & 0o777 == dir_mode
    (tmp_path / "run").chmod(0o750)
    with atomic_dir(tmp_path / "run") as tmp:
        atomic.atomic_write_text(tmp / "state.json", "{}")
    assert (tmp_path / "run").stat().st_mode & 0o777 == 0o750
    assert (tmp_path / "run" / "state.json").stat().st_mode & 0o777 == file_mode
    h = tiny_model("llama")
    save_model_folder(h.model, h.tokenizer, tmp_path / "model", "float32")
    assert (tmp_path / "model").stat().st_mode & 0o777 == dir_mode
    assert {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "model").iterdir()} == {
        p.name: file_mode for p in (tmp_path / "model").iterdir()
    }
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize(("mask", "file_mode"), [(0o077, 0o600), (0o022, 0o644)])
def test_tensor_files_of_artifacts_captures_and_checkpoints_follow_the_umask(tmp_path, umask, mask, file_mode):
    """safetensors writes its file 0600 whatever the umask; an artifact's tensors, a capture's shards and a training
    checkpoint's parameters get what open() gives under the umask, as every other file beside them."""
    import steerlab as sl
    from steerlab.artifacts import write_artifact
    from steerlab.models.tiny import tiny_model
    from steerlab.training import train

    umask(mask)
    h = tiny_model("llama")
    write_artifact(tmp_path / "art", kind="test", config={}, tensors={"x": torch.ones(3)})
    sl.capture(h, ["a b c"], ["blocks.0.resid_post"], out=tmp_path / "cap")
    train(h.model, [h.tokenize(["a b c"])], params=[h.model.model.norm.weight], steps=1, lr=1e-3, seed=0,
          checkpoint_dir=tmp_path / "ckpt", progress=False)
    files = [p for d in ("art", "cap", "ckpt") for p in (tmp_path / d).iterdir()]
    assert any(p.suffix == ".safetensors" for p in files) and len({p.parent for p in files}) == 3
    assert {p.name: p.stat().st_mode & 0o777 for p in files} == {p.name: file_mode for p in files}


def test_a_read_only_folder_is_replaced_and_stays_read_only(tmp_path):
    """The replaced folder's mode is given to the new one after its files are written, so a read-only folder
    (0555) can still be rewritten by its owner and comes back read-only."""
    with atomic_dir(tmp_path / "run") as tmp:
        (tmp / "state.json").write_text("old")
    (tmp_path / "run").chmod(0o555)
    try:
        with atomic_dir(tmp_path / "run") as tmp:
            assert tmp.stat().st_mode & 0o200  # writable while written (root would write anyway: check the mode)
            (tmp / "state.json").write_text("new")
        assert (tmp_path / "run" / "state.json").read_text() == "new"
        assert (tmp_path / "run").stat().st_mode & 0o777 == 0o555
    finally:
        (tmp_path / "run").chmod(0o755)
