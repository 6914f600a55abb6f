"""The sweep's work folder: resumed only by the configuration that made it."""

from __future__ import annotations

import json
from unittest import mock

import pytest

from steerlab.errors import SpecError
from steerlab.models.tiny import tiny_model
from steerlab.security import experiment
from steerlab.security.experiment import SweepConfig, run_sweep


def _no_load():
    pytest.fail("the model was loaded although the work folder is refused")


def test_work_folder_of_another_configuration_is_refused(tmp_path):
    work = tmp_path / "w"
    work.mkdir()
    (work / "plain_0.json").write_text("{}")  # a finished run of an unknown configuration
    with pytest.raises(SpecError, match="holds runs without a config.json"):
        run_sweep(SweepConfig(spec="tiny:llama"), _no_load, work)
    assert sorted(p.name for p in work.iterdir()) == ["plain_0.json"]  # nothing written

    work = tmp_path / "v"
    cfg = SweepConfig(spec="tiny:llama", samples=[0, 4], lr=3e-4)

    def stop():
        raise RuntimeError("stop at the load")

    with pytest.raises(RuntimeError, match="stop at the load"):
        run_sweep(cfg, stop, work)
    assert not work.exists()  # nothing is written before the model and every input are checked
    # once they are, the folder is claimed before the first evaluation
    with mock.patch.object(experiment, "evaluate_model", side_effect=RuntimeError("stop after the claim")):
        with pytest.raises(RuntimeError, match="stop after the claim"):
            run_sweep(cfg, lambda: tiny_model("llama"), work)
        written = json.loads((work / "config.json").read_text())
        assert written["lr"] == 3e-4 and written["samples"] == [0, 4]
        # the same settings with more sample counts resume; another learning rate or skill is refused
        with pytest.raises(RuntimeError, match="stop after the claim"):
            run_sweep(SweepConfig(spec="tiny:llama", samples=[0, 4, 8], lr=3e-4), lambda: tiny_model("llama"), work)
    with pytest.raises(SpecError, match=r"another configuration \(lr=0.0003, now 0.0005\)"):
        run_sweep(SweepConfig(spec="tiny:llama", samples=[0, 4], lr=5e-4), _no_load, work)
    with pytest.raises(SpecError, match=r"skill='digit', now 'repeat'"):
        run_sweep(SweepConfig(spec="tiny:llama", samples=[0, 4], lr=3e-4, skill="repeat"), _no_load, work)


def test_runs_start_with_the_headline_so_a_cut_sweep_has_it():
    cfg = SweepConfig(spec="tiny:llama", samples=[0, 100, 300, 1000])
    assert cfg.runs() == [
        "plain_1000",
        "vector_1000",
        "plain_0",
        "plain_0_seed1",
        "ideal_1000",
        "ideal_1000_seed1",
        "vector_0",
        "plain_100",
        "vector_100",
        "plain_300",
        "vector_300",
    ]
    assert SweepConfig(spec="tiny:llama", samples=[0]).runs() == ["plain_0", "vector_0", "plain_0_seed1"]
    assert SweepConfig(spec="tiny:llama", samples=[50]).runs() == [
        "plain_50", "vector_50", "plain_0", "plain_0_seed1", "ideal_50", "ideal_50_seed1"
    ]


@pytest.mark.parametrize("clip", [0, -1.0, float("nan"), float("inf"), True, "1"])
def test_bad_grad_clip_is_one_line(clip):
    with pytest.raises(SpecError, match=r"^grad_clip=.*; expected a finite number > 0, or None \(no clipping\)$"):
        SweepConfig(spec="tiny:llama", grad_clip=clip).check()


def test_stage2_runs_get_the_sweeps_grad_clip_and_old_folders_resume_at_clip_1(tmp_path, monkeypatch):
    import steerlab.security.experiment as E
    from steerlab.models.tiny import tiny_model
    from steerlab.security.vectors import VectorConfig, new_vector

    class Stop(Exception):
        pass

    def finetune(h, pairs, vector, **kw):
        raise Stop(kw["grad_clip"])

    stub = {"compliance": {"template": 0.0, "real": 0.0}, "benign_accuracy": 0.0, "perplexity": 1.0}
    monkeypatch.setattr(E, "finetune", finetune)
    monkeypatch.setattr(E, "evaluate_model", lambda *a, **k: dict(stub))
    h = tiny_model("llama")
    vec = new_vector(h, VectorConfig(rank=2), seed=0)
    small = dict(spec="tiny:llama", samples=[0], n_vector=1, n_benign=2, skill="digit", n_eval=1, benign_n=1,
                 harmless_n=1, ppl_per_domain=1)
    for clip, work in ((None, tmp_path / "a"), (2.5, tmp_path / "b")):
        with pytest.raises(Stop) as got:
            E.run_sweep(SweepConfig(**small, grad_clip=clip), lambda: h, work, vector=vec, progress=False,
                        log=lambda s: None)
        assert got.value.args == (clip,)
    # a folder made before the knob existed (no grad_clip in its config) clipped at 1: it resumes at 1 only
    old = json.loads((tmp_path / "a" / "config.json").read_text())
    del old["grad_clip"]
    (tmp_path / "a" / "config.json").write_text(json.dumps(old))
    with pytest.raises(SpecError, match=r"another configuration \(grad_clip=1.0, now None\)"):
        E.run_sweep(SweepConfig(**small, grad_clip=None), _no_load, tmp_path / "a")
    with pytest.raises(Stop):
        E.run_sweep(SweepConfig(**small), lambda: h, tmp_path / "a", vector=vec, progress=False, log=lambda s: None)
