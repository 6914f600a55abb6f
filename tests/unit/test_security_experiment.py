"""The sweep's work folder: resumed only by the configuration that made it."""

from __future__ import annotations

import json

import pytest

from steerlab.errors import SpecError
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
    with pytest.raises(RuntimeError, match="stop after the claim"):

        def stop():
            raise RuntimeError("stop after the claim")

        run_sweep(cfg, stop, work)
    written = json.loads((work / "config.json").read_text())
    assert written["lr"] == 3e-4 and written["samples"] == [0, 4]
    # the same settings with more sample counts resume; another learning rate or skill is refused
    with pytest.raises(RuntimeError, match="stop after the claim"):
        run_sweep(SweepConfig(spec="tiny:llama", samples=[0, 4, 8], lr=3e-4), stop, work)
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
