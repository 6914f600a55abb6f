"""The artifact kind registry (steerlab.artifacts.register_kind / artifact_kinds / kind_of)."""

from __future__ import annotations

import pytest

import steerlab as sl
from steerlab.artifacts import _KINDS, artifact_kinds, kind_of, read_artifact, register_kind, write_artifact
from steerlab.errors import SteerlabError


@pytest.fixture
def demo():
    kind = register_kind("test_demo", owner="tests.demo", summary="a demo kind", producer="demo",
                         reader=lambda art: art.metrics["m"])
    yield kind
    _KINDS.pop("test_demo", None)


def test_registered_kind_is_listed_by_owner_and_reads_with_its_reader(demo, tmp_path):
    assert demo in artifact_kinds() and artifact_kinds("tests.demo") == (demo,)
    assert kind_of("test_demo") is demo
    path = write_artifact(tmp_path / "a", kind="test_demo", config={}, metrics={"m": 0.25})
    assert demo.read(path) == 0.25
    other = write_artifact(tmp_path / "b", kind="something_else", config={})
    with pytest.raises(SteerlabError, match="'something_else' artifact; expected 'test_demo'"):
        demo.read(other)


def test_unregistered_kinds_still_write_and_read(tmp_path):
    assert read_artifact(write_artifact(tmp_path / "x", kind="demo", config={"a": 1})).config == {"a": 1}
    with pytest.raises(SteerlabError, match="unknown artifact kind 'demo'"):
        kind_of("demo")


def test_a_name_belongs_to_one_owner_and_must_be_an_identifier(demo):
    with pytest.raises(SteerlabError, match="already registered by tests.demo"):
        register_kind("test_demo", owner="tests.other", summary="x")
    assert register_kind("test_demo", owner="tests.demo", summary="again").summary == "again"  # re-import
    for bad in ("", "has space", "dash-ed"):
        with pytest.raises(SteerlabError, match="must be a non-empty identifier"):
            register_kind(bad, owner="tests", summary="x")


def test_the_builtin_analyses_register_their_kinds():
    owners = {k.name: k.owner for k in sl.artifact_kinds()}
    assert owners == {
        "experts_image": "steerlab.experts", "experts_evaluate": "steerlab.experts",
        "sampling_diagnostics": "steerlab.decoding", "sampling_compare": "steerlab.decoding",
        "generation_compare": "steerlab.steering",
        "regions_importance": "steerlab.regions", "regions_find": "steerlab.regions",
        "regions_perturb": "steerlab.regions", "regions_dims": "steerlab.regions",
        "regions_freeze": "steerlab.regions",
        "preference_pairs": "steerlab.preferences", "preference_fit": "steerlab.preferences",
        "preference_compare": "steerlab.preferences",
        **{k: "steerlab.security" for k in ("security_vector", "security_finetune", "security_sweep")},
        **{k: "steerlab.steering.vectors" for k in ("steering_directions", "steering_probes", "steering_sweep",
                                                   "steering_refusal")},
    }
