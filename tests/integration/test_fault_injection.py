"""Fault injection: an error or an interrupt in the middle of an entry point loses nothing.

Each test makes an inner function raise (``KeyboardInterrupt`` or a ``RuntimeError`` at its Nth call) and checks
what the project promises: the model's weights bit for bit, no hook, instance ``forward`` or module left behind,
``requires_grad`` and ``training`` flags as before, the global RNG untouched, the output either absent or the old
one intact (no partial or temporary files beside it), and a following call the same as on a fresh model.
:func:`snapshot` and :func:`assert_same` are the reusable check.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import torch
import torch.nn.modules.module as torch_module
from torch import nn

HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
              "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called",
              "_state_dict_hooks", "_state_dict_pre_hooks", "_load_state_dict_pre_hooks",
              "_load_state_dict_post_hooks")
GLOBAL_HOOKS = sorted(n for n in dir(torch_module) if n.startswith("_global_") and isinstance(getattr(torch_module, n),
                                                                                               dict))


def snapshot(model: nn.Module) -> dict[str, Any]:
    """Everything of ``model`` (and torch's global state) an entry point must leave as it found it."""
    mods = dict(model.named_modules(remove_duplicate=False))
    named = list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False))
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "tensor ids": {n: id(t) for n, t in named},
        "modules": {n: (type(m), id(m)) for n, m in mods.items()},
        "hooks": {n: {a: list(getattr(m, a, {})) for a in HOOK_DICTS} for n, m in mods.items()},
        "grad hooks": {n: list(getattr(p, "_post_accumulate_grad_hooks", None) or {})
                       for n, p in model.named_parameters()},
        "global hooks": {g: list(getattr(torch_module, g)) for g in GLOBAL_HOOKS},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "grad is None": {n: p.grad is None for n, p in model.named_parameters()},
        "training": {n: m.training for n, m in mods.items()},
        "instance forward": {n: "forward" in m.__dict__ for n, m in mods.items()},
        "module attributes": {n: sorted(m.__dict__) for n, m in mods.items()},
        "grad mode": torch.is_grad_enabled(),
        "inference mode": torch.is_inference_mode_enabled(),
        "rng": torch.get_rng_state(),
    }


def differences(a: dict[str, Any], b: dict[str, Any], *, rng: bool = True) -> list[str]:
    """What differs between two :func:`snapshot` s, one line each (empty: nothing)."""
    out = []
    if a["state"].keys() != b["state"].keys():
        out.append(f"state_dict keys differ: {sorted(set(a['state']) ^ set(b['state']))[:5]}")
    for k in a["state"].keys() & b["state"].keys():
        x, y = a["state"][k], b["state"][k]
        if x.shape != y.shape or x.dtype != y.dtype or not torch.equal(x, y):
            out.append(f"tensor {k} changed")
    for key in a:
        if key in ("state", "rng") or a[key] == b[key]:
            continue
        if isinstance(a[key], dict):
            changed = sorted(k for k in set(a[key]) | set(b[key]) if a[key].get(k) != b[key].get(k))
            out.append(f"{key} changed at {changed[:5]}")
        else:
            out.append(f"{key}: {a[key]} -> {b[key]}")
    if rng and not torch.equal(a["rng"], b["rng"]):
        out.append("the global torch RNG state changed")
    return out


def assert_same(before: dict[str, Any], model: nn.Module, *, rng: bool = True) -> None:
    diffs = differences(before, snapshot(model), rng=rng)
    assert not diffs, diffs


def listing(folder: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (None) under ``folder``, by relative path, hidden ones included."""
    out: dict[str, bytes | None] = {}
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            out[os.path.relpath(os.path.join(root, d), folder) + "/"] = None
        for f in files:
            out[os.path.relpath(os.path.join(root, f), folder)] = Path(root, f).read_bytes()
    return out


def fail_at(n: int, orig: Callable[..., Any], exc: BaseException | None = None) -> Callable[..., Any]:
    """``orig``, except that its ``n``-th call (1-based) raises ``exc`` (default a RuntimeError)."""
    calls = [0]

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == n:
            raise exc if exc is not None else RuntimeError(f"injected failure at call {n}")
        return orig(*args, **kwargs)

    return wrapped


def inject(target: Any, name: str, n: int, exc: BaseException | None = None) -> Any:
    """``mock.patch.object`` making ``target.name``'s ``n``-th call raise."""
    return mock.patch.object(target, name, fail_at(n, getattr(target, name), exc))


def fail_writing(suffix: str, exc: BaseException | None = None) -> Any:
    """Make the crash-safe write (:mod:`steerlab.atomic`'s final ``os.replace``) of the first file named ``*suffix``
    raise, as a full disk or an interrupt would there."""
    orig = os.replace

    def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> Any:
        if str(dst).endswith(suffix):
            raise exc if exc is not None else OSError(28, "No space left on device (injected)")
        return orig(src, dst, *args, **kwargs)

    return mock.patch("steerlab.atomic.os.replace", replace)


# -- saved directions and probes: a PATH.safetensors + PATH.json pair --------------------------------------
def test_directions_save_interrupted_keeps_the_old_pair(tmp_path):
    from steerlab.steering.vectors import Directions, load_directions

    Directions({"blocks.1.resid_post": torch.ones(4)}, {"v": 1}).save(tmp_path / "dir")
    old = listing(tmp_path)
    with fail_writing(".json", KeyboardInterrupt()), pytest.raises(KeyboardInterrupt):
        Directions({"blocks.1.resid_post": torch.full((4,), 2.0)}, {"v": 2}).save(tmp_path / "dir")
    assert listing(tmp_path) == old
    assert load_directions(tmp_path / "dir").vectors["blocks.1.resid_post"].tolist() == [1.0] * 4


def test_directions_save_refused_json_target_writes_nothing(tmp_path):
    from steerlab.errors import SpecError
    from steerlab.steering.vectors import Directions

    (tmp_path / "x.json").mkdir()
    with pytest.raises(SpecError, match="is a folder"):
        Directions({"blocks.1.resid_post": torch.ones(4)}).save(tmp_path / "x")
    assert listing(tmp_path) == {"x.json/": None}


def test_save_probes_interrupted_keeps_the_old_pair(tmp_path):
    from steerlab.steering.linear_probes import ProbeProfile, fit_probe, load_probes, save_probes

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(12, 4, generator=g) + 2, torch.randn(12, 4, generator=g) - 2
    prof = ProbeProfile([fit_probe(a, b, a, b, site="blocks.1.resid_post")], {"v": 1})
    save_probes(prof, tmp_path / "p")
    old = listing(tmp_path)
    prof2 = ProbeProfile([fit_probe(b, a, b, a, site="blocks.1.resid_post")], {"v": 2})
    with fail_writing(".json", KeyboardInterrupt()), pytest.raises(KeyboardInterrupt):
        save_probes(prof2, tmp_path / "p")
    assert listing(tmp_path) == old
    assert load_probes(tmp_path / "p").meta == {"v": 1}


def test_saved_directions_and_probes_read_no_file_outside_their_folder(tmp_path):
    """An index whose ``tensors_file`` names a path (a folder up, a subfolder, an absolute path) is refused by name,
    as an intervention spec's is; a missing or malformed side of a probes pair is a one-line error, not a raw one."""
    import json

    from steerlab.errors import SpecError, SteerlabError
    from steerlab.steering.linear_probes import ProbeProfile, fit_probe, load_probes, save_probes
    from steerlab.steering.vectors import Directions, load_directions

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(12, 4, generator=g) + 2, torch.randn(12, 4, generator=g) - 2
    (tmp_path / "in").mkdir()
    Directions({"blocks.1.resid_post": torch.ones(4)}).save(tmp_path / "in" / "dir")
    save_probes(ProbeProfile([fit_probe(a, b, a, b, site="blocks.1.resid_post")], {}), tmp_path / "in" / "p")
    for stem, load in (("dir", load_directions), ("p", load_probes)):
        index = tmp_path / "in" / f"{stem}.json"
        good = json.loads(index.read_text())
        side = good["tensors_file"]
        (tmp_path / "in" / "sub").mkdir(exist_ok=True)
        (tmp_path / "in" / "sub" / side).write_bytes((tmp_path / "in" / side).read_bytes())
        (tmp_path / side).write_bytes((tmp_path / "in" / side).read_bytes())
        for name in (f"../{side}", f"sub/{side}", str(tmp_path / side), None):
            index.write_text(json.dumps({**good, "tensors_file": name}))
            with pytest.raises(SpecError, match="is not a file name"):
                load(tmp_path / "in" / stem)
        index.write_text(json.dumps({**good, "tensors_file": "gone.safetensors"}))
        with pytest.raises(SteerlabError, match="which is not there"):
            load(tmp_path / "in" / stem)
        index.write_text("{not json")
        with pytest.raises(SteerlabError, match="is not valid JSON"):
            load(tmp_path / "in" / stem)
        index.write_text(json.dumps(good))
        assert load(tmp_path / "in" / stem) is not None


# -- organisms build --base-out ------------------------------------------------------------------------------
def test_organism_base_out_is_written_whole_or_not_at_all(tmp_path, tiny):
    """An error while the base model is saved (``--base-out``) leaves no partial folder there, and an older base
    model folder stays as it was."""
    import steerlab.organisms.build as build

    h = tiny("llama")
    saved = snapshot(h.model)

    def fake_train(recipe, corpus, tokenizer, seed=0, progress=True, on_base_done=None):
        on_base_done(h.model)
        raise RuntimeError("training failed after the base phase")

    def run(base: Path, fail_tokenizer_save: bool) -> None:
        with ExitStack() as stack:
            stack.enter_context(mock.patch.object(build, "build_corpus", lambda *a, **k: None))
            stack.enter_context(mock.patch.object(build, "tokenizer_texts", lambda *a, **k: []))
            stack.enter_context(mock.patch.object(build, "train_tokenizer", lambda *a, **k: h.tokenizer))
            stack.enter_context(mock.patch.object(build, "train_organism", fake_train))
            if fail_tokenizer_save:
                stack.enter_context(inject(type(h.tokenizer), "save_pretrained", 1, KeyboardInterrupt()))
            build.build_organism("dense", out_dir=tmp_path / "out", reduced=True, threads=None, progress=False,
                                 base_out=base)

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "base", fail_tokenizer_save=True)
    assert listing(tmp_path) == {}  # nothing: no partial base folder, no temporary one beside it
    with pytest.raises(RuntimeError, match="after the base phase"):
        run(tmp_path / "base", fail_tokenizer_save=False)  # the base folder is written whole
    old = listing(tmp_path)
    assert {"base/config.json", "base/model.safetensors"} <= set(old)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "base", fail_tokenizer_save=True)
    assert listing(tmp_path) == old
    assert_same(saved, h.model, rng=False)


def test_write_card_that_fails_to_render_keeps_the_old_pair(tmp_path):
    import steerlab.organisms.card as card

    (tmp_path / "eval.json").write_text('{"old": true}\n')
    (tmp_path / "README.md").write_text("old card\n")
    old = listing(tmp_path)
    with inject(card, "render_card", 1), pytest.raises(RuntimeError, match="injected"):
        card.write_card(tmp_path, {"name": "dense"})
    assert listing(tmp_path) == old


# -- security vectors -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["lora", "add"])
def test_security_vector_on_interrupted_leaves_the_model_and_the_rng(stories, kind):
    """Switching a saved vector on and off, also when the block is interrupted, leaves the model as it was and
    draws nothing from the caller's RNG (peft's LoRA init did)."""
    import steerlab as sl
    from steerlab.security.vectors import VectorConfig, new_vector

    h = stories
    cfg = VectorConfig(rank=2, target_modules=["q_proj", "down_proj"]) if kind == "lora" else VectorConfig(
        kind="add", layers=[0, 1])
    v = new_vector(h, cfg, seed=0)
    v.tensors = {n: t + 0.05 for n, t in v.tensors.items()}
    ref = sl.generate(h, ["Once upon a time"], max_new_tokens=5).texts
    with v.on(h):
        steered = sl.generate(h, ["Once upon a time"], max_new_tokens=5).texts
    before = snapshot(h.model)
    with pytest.raises(KeyboardInterrupt), v.on(h, trainable=True):
        raise KeyboardInterrupt
    assert_same(before, h.model)
    with pytest.raises(RuntimeError, match="injected"), inject(type(h), "sync", 1), v.on(h):  # after the switch-on
        pass
    assert_same(before, h.model)
    assert sl.generate(h, ["Once upon a time"], max_new_tokens=5).texts == ref
    with v.on(h):
        assert sl.generate(h, ["Once upon a time"], max_new_tokens=5).texts == steered


# -- the core entry points (these held; kept as regression checks) -------------------------------------------
PROMPTS = ["Once upon a time", "The cat sat"]


def _steer(h: Any) -> list[Any]:
    from steerlab.interventions import AddVector
    from steerlab.interventions.weights import ParamEdit

    return [ParamEdit(param="model.layers.1.mlp.down_proj.weight", op="scale", value=3.0),
            AddVector(site="blocks.2.resid_post", vector=torch.linspace(-1, 1, h.d_model), scale=4.0)]


@pytest.mark.parametrize("call", ["generate", "sampled", "forward", "intervene", "capture"])
def test_core_calls_interrupted_mid_run_leave_the_model(stories, tmp_path, call):
    import steerlab as sl
    from steerlab.interventions import ops

    h, steer = stories, _steer(stories)
    sampler = {"name": "top_k", "params": {"k": 5}}
    ref = (sl.generate(h, PROMPTS, max_new_tokens=6).texts,
           sl.generate(h, PROMPTS, steer, sampler=sampler, max_new_tokens=6, seed=3).texts)
    before = snapshot(h.model)
    runs = {
        "generate": lambda: sl.generate(h, PROMPTS, steer, max_new_tokens=6),  # the edit fails at step 3
        "sampled": lambda: sl.generate(h, PROMPTS, steer, sampler=sampler, max_new_tokens=6, seed=1),
        "forward": lambda: sl.forward(h, PROMPTS, steer),
        "capture": lambda: sl.capture(h, PROMPTS * 2, ["blocks.1.resid_post"], interventions=steer, batch_size=1,
                                      out=tmp_path / "cap"),
    }
    n = 3  # the third edit: a later generation step, or the second capture batch
    if call == "intervene":
        with pytest.raises(KeyboardInterrupt), sl.intervene(h, steer) as run:
            run.generate(PROMPTS, max_new_tokens=3)
            raise KeyboardInterrupt
    else:  # a one-forward call: the model's own MLP fails in the middle of the pass
        target = (type(h.model.model.layers[0].mlp), "forward") if call == "forward" else (ops, "add_vector")
        with pytest.raises(KeyboardInterrupt), inject(*target, n, KeyboardInterrupt()):
            runs[call]()
    assert_same(before, h.model)
    assert listing(tmp_path) == {}
    assert (sl.generate(h, PROMPTS, max_new_tokens=6).texts,
            sl.generate(h, PROMPTS, steer, sampler=sampler, max_new_tokens=6, seed=3).texts) == ref


@pytest.mark.parametrize("method", ["taylor", "fisher"])
def test_importance_interrupted_mid_language_leaves_the_model_and_no_scratch(stories, tmp_path, method):
    import steerlab.regions.importance as importance

    texts = {"aa": ["Once upon a time there was a cat.", "The dog ran to the park.", "Lily saw a big red ball."],
             "bb": ["Tom had a toy car.", "The sun was hot and the sky was blue.", "They ate cake at the party."]}
    files = {}
    for lang, lines in texts.items():
        files[lang] = tmp_path / f"{lang}.txt"
        files[lang].write_text("\n".join(lines + lines[:1]))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    before = snapshot(stories.model)
    with pytest.raises(KeyboardInterrupt), inject(importance, "nll_backward", 3, KeyboardInterrupt()):
        importance.score_importance(stories, ["aa", "bb"], method=method, files=files, token_budget=10_000,
                                    batch_size=1, progress=False, scratch=scratch)
    assert_same(before, stories.model)
    assert listing(scratch) == {}


# -- preferences ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["laplace", "svi", "nuts"])
def test_preferences_fit_leaves_the_callers_global_rngs(method):
    """A Bayesian judge fit draws from its own seed: torch's, Python's and NumPy's global generators are as the
    caller left them, after a fit and after an interrupted one (``pyro.set_rng_seed`` reseeded all three)."""
    import random

    import numpy as np

    from steerlab.preferences import fit as prefs_fit

    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 3, generator=g)
    y = (x[:, 0] > 0).float()
    kw = {"laplace": {}, "svi": {"svi_steps": 20}, "nuts": {"chains": 2, "warmup": 5, "samples": 5}}[method]

    def rngs() -> tuple[Any, ...]:
        return torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()

    def same(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
        return torch.equal(a[0], b[0]) and a[1] == b[1] and bool((a[2] == b[2]).all())

    torch.manual_seed(123), random.seed(5), np.random.seed(7)
    before = rngs()
    ref = prefs_fit.fit(x, y, ["a", "b", "c"], method=method, seed=3, **kw)
    assert same(before, rngs())
    with pytest.raises(KeyboardInterrupt), inject(prefs_fit, "_intervals", 1, KeyboardInterrupt()):  # after drawing
        prefs_fit.fit(x, y, ["a", "b", "c"], method=method, seed=3, **kw)
    assert same(before, rngs())
    again = prefs_fit.fit(x, y, ["a", "b", "c"], method=method, seed=3, **kw)
    assert torch.equal(again.mean, ref.mean) and torch.equal(again.samples, ref.samples)


# -- CLI commands writing --out DIR and --record FILE ------------------------------------------------------------
PROBE_ARGS = ["steer", "probe", "shared:stories260K", "--suite", "organism-refusal", "--sites", "blocks.1.resid_post",
              "--limit", "4"]


def _one_line_error(r: Any, expected: str) -> None:
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    assert "Traceback" not in r.output and r.stderr.count("\n") == 1 and expected in r.stderr, r.stderr


@pytest.mark.parametrize("record", ["same", "same/r.json"])
@pytest.mark.parametrize("order", ["out first", "record first"])
def test_cli_record_that_is_the_out_folder_is_refused_before_any_work(tmp_path, order, record):
    """``--out X --record X`` wrote the artifact X after the whole run, then failed on the record (X is a
    folder); ``--record X/r.json`` put the record where the next run's ``--out X`` deletes it: now each is a
    one-line error while the command line is parsed, nothing written."""
    from typer.testing import CliRunner

    from steerlab.cli.main import app

    pair = [["--out", str(tmp_path / "same")], ["--record", str(tmp_path / "." / record)]]
    with inject(torch.nn.Module, "__call__", 1):  # no forward pass may run
        r = CliRunner().invoke(app, PROBE_ARGS + [*pair[order != "out first"], *pair[order == "out first"]])
    _one_line_error(r, "is the --out folder" if record == "same" else "is inside the --out folder")
    assert listing(tmp_path) == {}


def test_cli_probe_interrupted_or_failing_to_write_keeps_the_old_out_and_record(tmp_path, stories):
    """An error mid-run, or while the artifact folder is written, leaves the earlier ``--out`` and ``--record`` as
    they were (no temporary folder beside them) and the model as it was; the next call writes both."""
    from typer.testing import CliRunner

    import steerlab.atomic as atomic
    from steerlab.cli.main import app

    args = PROBE_ARGS + ["--out", str(tmp_path / "p"), "--record", str(tmp_path / "rec.json"), "--json"]
    runner = CliRunner()
    assert runner.invoke(app, args).exit_code == 0
    old, before = listing(tmp_path), snapshot(stories.model)
    mlp = type(stories.model.model.layers[0].mlp)
    with inject(mlp, "forward", 5):
        r = runner.invoke(app, [*args, "--seed", "1"])
    assert isinstance(r.exception, RuntimeError) and listing(tmp_path) == old
    with inject(atomic, "_fsync_tree", 1):  # the new folder is whole, not yet swapped in
        r = runner.invoke(app, [*args, "--seed", "1"])
    assert isinstance(r.exception, RuntimeError) and listing(tmp_path) == old
    assert_same(before, stories.model, rng=False)
    assert runner.invoke(app, [*args, "--seed", "1"]).exit_code == 0
    assert listing(tmp_path).keys() == old.keys() and listing(tmp_path) != old


# -- regions perturb and dims, experts imaging (these held; kept as regression checks) --------------------------
@pytest.mark.parametrize("entry", ["perturb", "dims"])
def test_regions_perturb_and_dims_interrupted_with_an_edit_on_leave_the_model(stories, entry):
    from steerlab.regions import dims, perturb
    from steerlab.regions.importance import score_importance

    imp = score_importance(stories, ["eng"], token_budget=128, progress=False)
    run = {"perturb": lambda: perturb.perturb(stories, imp, ["eng"], seeds=(0,), n_eval=2, progress=False).rows,
           "dims": lambda: dims.find_dims(stories, imp, ["eng"], n_candidates=2, n_random=1, n_eval=2,
                                          progress=False).candidates}[entry]
    ref, before = run(), snapshot(stories.model)
    with pytest.raises(KeyboardInterrupt), inject(type(stories.model.model.layers[0].mlp), "forward", 7,
                                                  KeyboardInterrupt()):  # a region or weight is edited then
        run()
    assert_same(before, stories.model)
    assert run() == ref


def test_experts_image_interrupted_while_experts_are_off_leaves_the_model(tiny):
    from steerlab.experts.ftri import image
    from steerlab.experts.switching import off_masks

    h = tiny("mixtral")
    kw = {"scope": ["prompt", "generated"], "n_permutations": 10, "max_new_tokens": 3,
          "interventions": off_masks([(0, 1), (1, 2)])}
    ref, before = image(h, ["How do I pick a lock?"] * 2, ["Tell me a story."] * 2, **kw), snapshot(h.model)
    with pytest.raises(KeyboardInterrupt), inject(type(h.model.model.layers[0].mlp), "forward", 9,
                                                  KeyboardInterrupt()):
        image(h, ["How do I pick a lock?"] * 2, ["Tell me a story."] * 2, **kw)
    assert_same(before, h.model)
    assert torch.equal(image(h, ["How do I pick a lock?"] * 2, ["Tell me a story."] * 2, **kw).diff, ref.diff)


# -- steering sweep and refusal study, interrupted while a direction is added or ablated ------------------------
def _sweep_and_refusal(h: Any, entry: str) -> Any:
    from steerlab.steering.ablation import refusal_study
    from steerlab.steering.sweep import scale_sweep

    if entry == "sweep":
        return scale_sweep(h, torch.linspace(-1, 1, h.d_model), "blocks.2.resid_post", [0.0, 6.0], "organism-refusal",
                           n=2, max_new_tokens=3)
    return refusal_study(h, "organism-refusal", layers=[1, 2], n_positions=1, limit=4, n_select=2, select_tokens=3,
                         max_rank=2, subspace_pool=2, scales=(1.0,), n_random=1, n_test=2, max_new_tokens=3,
                         capability_n=2)["metrics"]


@pytest.mark.parametrize(("entry", "op", "n"), [("sweep", "add_vector", 5), ("refusal", "project_out", 7),
                                               ("refusal", "add_vector", 3), ("refusal", "project_out", 300)])
def test_steer_sweep_and_refusal_interrupted_mid_run_leave_the_model(stories, entry, op, n):
    """Interrupted (or failing) while a direction is added or ablated (the ``n``-th such edit: a later generation
    step, a selection candidate, an addition scale, a random control), the scale sweep and the refusal study leave
    the model as it was (weights, hooks, flags, RNG) and the next run the same as the first."""
    import json

    from steerlab.interventions import ops

    def run() -> str:
        out = _sweep_and_refusal(stories, entry)
        return json.dumps(out if entry == "sweep" else {k: v for k, v in out.items() if k != "seconds"},
                          sort_keys=True)

    ref, before = run(), snapshot(stories.model)
    with pytest.raises(KeyboardInterrupt), inject(ops, op, n, KeyboardInterrupt()):
        run()
    assert_same(before, stories.model)
    with pytest.raises(RuntimeError, match="injected"), inject(ops, op, n + 1):
        run()
    assert_same(before, stories.model)
    assert run() == ref


# -- decoding compare ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("target", "n"), [("add_vector", 4), ("add_vector", 20), ("judge_nll", 2), ("_fsync_tree", 1)])
def test_decoding_compare_interrupted_keeps_the_model_and_the_old_out(stories, tmp_path, target, n):
    """``run_compare`` with an edit and a vector on, interrupted while sampling (a later batch, the per-step
    diagnosis), while the judge scores, or once the new folder is whole but not yet swapped in: the model as it
    was, the earlier artifact folder intact (no temporary folder beside it), and the next run the same."""
    import steerlab.atomic as atomic
    import steerlab.decoding.compare as compare
    from steerlab.interventions import ops

    cfg = compare.CompareConfig(model=stories.spec, prompts=PROMPTS, samplers=[{"name": "top_k", "params": {"k": 5}}],
                                temperatures=[0.7, 1.3], samples=2, max_new_tokens=4, batch_size=2, embed=False,
                                interventions=_steer(stories))
    ref = compare.run_compare(cfg, tmp_path / "cmp", progress=False, handle=stories).data["samples"]
    old, before = listing(tmp_path), snapshot(stories.model)
    where = {"add_vector": ops, "judge_nll": compare, "_fsync_tree": atomic}[target]
    with pytest.raises(KeyboardInterrupt), inject(where, target, n, KeyboardInterrupt()):
        compare.run_compare(cfg, tmp_path / "cmp", progress=False, handle=stories)
    assert_same(before, stories.model)
    assert listing(tmp_path) == old
    assert compare.run_compare(cfg, tmp_path / "cmp", progress=False, handle=stories).data["samples"] == ref
    assert_same(before, stories.model)


# -- preferences annotate and judge ------------------------------------------------------------------------------
@pytest.mark.parametrize(("entry", "target", "n"), [("annotate", "forward", 3), ("judge", "forward", 3),
                                                     ("judge", "forward", 100), ("judge", "_fsync_tree", 1)])
def test_preferences_annotate_and_judge_interrupted_keep_the_model_and_the_old_out(stories, tmp_path, entry, target,
                                                                                  n):
    """``run_annotate`` with a local yes/no model and ``run_judge`` with a log-likelihood and a DPO judge,
    interrupted in the middle of a model pass (a later batch, the DPO reference) or before the new folder is
    swapped in: the model as it was, the earlier artifact folder and the source file intact, the next run the
    same."""
    import json

    import steerlab.atomic as atomic
    from steerlab.preferences.judges import DPOJudge, LoglikJudge
    from steerlab.preferences.runner import run_annotate, run_judge

    src = tmp_path / "pairs.jsonl"
    src.write_text("".join(json.dumps({"id": str(i), "prompt": p, "response_a": f"{p} and then a dog.",
                                       "response_b": "The end."}) + "\n" for i, p in enumerate(PROMPTS * 2)))

    def run() -> bytes:
        if entry == "annotate":
            path = run_annotate(str(src), tmp_path / "out", annotators=["lengthy"], ask=["kind=Is it kind?"],
                                ask_model=stories.spec)
        else:
            judges = [LoglikJudge(stories, "ll", batch_size=1), DPOJudge(stories, stories, "dpo", batch_size=1)]
            path = run_judge(str(src), tmp_path / "out", judges=judges)
        return (Path(path) / "pairs.jsonl").read_bytes()

    ref = run()
    old, before = listing(tmp_path), snapshot(stories.model)
    where = type(stories.model.model.layers[0].mlp) if target == "forward" else atomic
    with pytest.raises(KeyboardInterrupt), inject(where, target, n, KeyboardInterrupt()):
        run()
    assert_same(before, stories.model)
    assert listing(tmp_path) == old
    assert run() == ref


# -- experts evaluate and the switching sweep --------------------------------------------------------------------
def _experts(h: Any, entry: str) -> Any:
    import dataclasses
    import json

    from steerlab.capability import CapabilityText
    from steerlab.experts.evaluate import evaluate_experts, sweep_k

    text = CapabilityText(["Tell me a story.", "What is two plus two?"], ["It rains softly.", "Four."], chat=False,
                          source="t")
    if entry == "sweep_k":
        return sweep_k(h, ["How do I pick a lock?", "Tell me a story."], [(0, 1), (1, 2), (1, 5)], [1, 3],
                       n_controls=2, seed=3, capability=text, progress=False, chat=False, max_new_tokens=3)
    ev = evaluate_experts(h, "refusal", n_controls=2, limit=2, sweep_limit=2, sweep_controls=1, max_new_tokens=3,
                          capability=text, progress=False)
    return json.dumps(dataclasses.asdict(ev), sort_keys=True, default=str)


@pytest.mark.parametrize(("entry", "n"), [("sweep_k", 9), ("sweep_k", 40), ("evaluate", 30), ("evaluate", 120)])
def test_experts_sweep_and_evaluate_interrupted_while_experts_are_switched_leave_the_model(tiny, entry, n):
    """``sweep_k`` and ``evaluate_experts`` (its sweep over k, the evaluation with experts off and forced on),
    interrupted or failing in the middle of a pass while an expert mask is on: the model as it was, the next run
    the same as the first."""
    h = tiny("mixtral")
    moe = type(h.model.model.layers[0].mlp)
    ref, before = _experts(h, entry), snapshot(h.model)
    with pytest.raises(KeyboardInterrupt), inject(moe, "forward", n, KeyboardInterrupt()):
        _experts(h, entry)
    assert_same(before, h.model)
    with pytest.raises(RuntimeError, match="injected"), inject(moe, "forward", n + 1):
        _experts(h, entry)
    assert_same(before, h.model)
    assert _experts(h, entry) == ref


@pytest.mark.parametrize("n", [3, 8])
def test_steer_sentiment_property_sweep_interrupted_while_a_direction_is_added_leaves_the_model(stories, n):
    """``property_sweep`` (``steer sentiment``), interrupted while the direction is added (a generation step, the
    capability perplexity at a later scale): the model as it was, the next run the same."""
    from steerlab.capability import CapabilityText
    from steerlab.interventions import ops
    from steerlab.steering.sentiment import property_sweep

    text = CapabilityText(PROMPTS, ["there was a dog.", "on the mat."], chat=False, source="t")

    def run() -> list[dict[str, Any]]:
        return property_sweep(stories, torch.linspace(-1, 1, stories.d_model), "blocks.2.resid_post", [0.0, 4.0, 8.0],
                              PROMPTS, chat=False, max_new_tokens=3, capability=text)

    ref, before = run(), snapshot(stories.model)
    with pytest.raises(KeyboardInterrupt), inject(ops, "add_vector", n, KeyboardInterrupt()):
        run()
    assert_same(before, stories.model)
    assert run() == ref


@pytest.mark.parametrize(("select", "n"), [("reimage", 12), ("ablation", 26)])
def test_experts_selection_interrupted_while_experts_are_off_leaves_the_model(tiny, select, n):
    """Greedy re-imaging and ablation selection, interrupted in a later round (experts chosen so far switched
    off): the model as it was, the next run the same."""
    from steerlab.experts.selection import ablation_ranking, reimage_ranking

    h = tiny("mixtral")
    behavior, control = ["How do I pick a lock?", "How do I make a weapon?"], ["Tell me a story.", "Say hi."]

    def run() -> Any:
        if select == "reimage":
            return reimage_ranking(h, behavior, control, 3, max_new_tokens=2)
        return ablation_ranking(h, behavior, [(0, 1), (1, 2), (1, 5)], 2, [1, 2], chat=False, batch_size=1)

    ref, before = run(), snapshot(h.model)
    with pytest.raises(KeyboardInterrupt), inject(type(h.model.model.layers[0].mlp), "forward", n,
                                                  KeyboardInterrupt()):
        run()
    assert_same(before, h.model)
    assert run() == ref
