"""Bad input gets a clear error naming the bad value and what was expected."""

from __future__ import annotations

import json

import pytest
import torch

import steerlab as sl
from steerlab.errors import ModelSpecError, SpecError, SteerlabError, UnknownSiteError
from steerlab.interventions import AddVector, ExpertMask, InterventionSet, ParamEdit, ProjectOut, ScaleUnits


def test_unknown_site_suggests_names(stories):
    with pytest.raises(UnknownSiteError, match=r"'blocks.1.resid_pots'.*did you mean.*blocks.1.resid_post"):
        sl.forward(stories, ["Hi"], interventions=[AddVector(site="blocks.1.resid_pots", vector=torch.ones(64))])
    with pytest.raises(UnknownSiteError, match="layer 9 out of range, the model has 5 layers"):
        sl.capture(stories, ["Hi"], ["blocks.9.resid_post"])
    with pytest.raises(UnknownSiteError, match="not an MoE layer"):
        sl.capture(stories, ["Hi"], ["blocks.0.moe.router_logits"])


def test_wrong_vector_width(stories):
    with pytest.raises(
        SpecError, match=r"intervention 0: vector width 32 does not match site 'blocks.1.resid_post', whose width is 64"
    ):
        sl.forward(stories, ["Hi"], interventions=[AddVector(site="blocks.1.resid_post", vector=torch.ones(32))])
    with pytest.raises(SpecError, match="direction width 10"):
        sl.forward(stories, ["Hi"], interventions=[ProjectOut(site="blocks.1.resid_post", direction=torch.ones(10))])
    with pytest.raises(SpecError, match=r"units \[64\] out of range"):
        sl.forward(stories, ["Hi"], interventions=[ScaleUnits(site="blocks.1.mlp_out", units=[64])])


def test_nan_in_vector():
    with pytest.raises(SpecError, match=r"NaN or infinite values at indices \[\[2\]\]"):
        InterventionSet([{"type": "add_vector", "site": "blocks.0.resid_post", "vector": [1.0, 0.0, float("nan")]}])
    with pytest.raises(SpecError, match="NaN or infinite"):  # built directly: the same one-line SpecError
        AddVector(site="blocks.0.resid_post", vector=torch.tensor([1.0, float("inf")]))


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (lambda: AddVector(site="s", vector=torch.ones(4), positions="generate"), "positions must be 'all', 'prompt'"),
        (lambda: ExpertMask(layer=-1), "expert_mask.layer: Input should be greater than or equal to 0 (got -1)"),
        (lambda: ParamEdit(param="p", op="zap"), "param_edit.op: Input should be 'zero', 'scale'"),
        (lambda: AddVector(site="s", vector=torch.ones(4), scale=1e39), "scale=1e+39 does not fit float32"),
        (lambda: ParamEdit(param="p", op="set", value=-1e39), "value=-1e+39 does not fit float32"),
    ],
)
def test_an_intervention_built_directly_is_checked_like_a_spec(build, expected):
    """The classes the README builds directly raise the spec's one-line SpecError, not pydantic's report;
    numbers beyond float32 (the models' dtype: inf mid-run, or a torch overflow error when applied) too."""
    with pytest.raises(SpecError) as e:
        build()
    assert expected in str(e.value) and "\n" not in str(e.value) and "pydantic.dev" not in str(e.value)
    with pytest.raises(SpecError, match="zero norm"):
        InterventionSet([{"type": "project_out", "site": "blocks.0.resid_post", "direction": [0.0, 0.0]}])


def test_expert_errors(tiny, stories):
    h = tiny("mixtral")
    with pytest.raises(SpecError, match=r"expert index \[8\] in 'off' out of range for layer 0; expected 0..7"):
        sl.forward(h, ["Hi"], interventions=[ExpertMask(layer=0, off=[8])])
    with pytest.raises(SpecError, match="both switched off and forced on"):
        sl.forward(h, ["Hi"], interventions=[ExpertMask(layer=0, off=[1], on=[1])])
    with pytest.raises(SpecError, match=r"3 experts forced on \(\[1, 2, 3\]\), but top_k is 2 in layer 0"):
        sl.forward(h, ["Hi"], interventions=[ExpertMask(layer=0, on=[1, 2, 3])])
    with pytest.raises(SpecError, match="at least top_k=2 must remain"):
        sl.forward(h, ["Hi"], interventions=[ExpertMask(layer=0, off=list(range(7)))])
    with pytest.raises(SpecError, match="layer 7 out of range"):
        sl.forward(h, ["Hi"], interventions=[ExpertMask(layer=7, off=[0])])
    with pytest.raises(SpecError, match="needs an MoE model"):
        sl.forward(stories, ["Hi"], interventions=[ExpertMask(layer=0, off=[0])])
    d2 = tiny("deepseek_v2")
    with pytest.raises(SpecError, match="layer 0 is not an MoE layer; MoE layers: \\[1, 2\\]"):
        sl.forward(d2, ["Hi"], interventions=[ExpertMask(layer=0, off=[0])])


def test_spec_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"interventions": [ {"type": "add_vector",, } ]}')
    with pytest.raises(SpecError, match=r"bad.json' is not valid JSON: Expecting .* at line 1"):
        InterventionSet.load(bad)
    with pytest.raises(SpecError, match="does not exist"):
        InterventionSet.load(tmp_path / "missing.json")
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"interventions": [{"type": "add_vectr", "site": "x"}]}))
    with pytest.raises(SpecError, match="add_vectr"):
        InterventionSet.load(wrong)
    no_list = tmp_path / "nolist.json"
    no_list.write_text(json.dumps({"steer": 1}))
    with pytest.raises(SpecError, match="'interventions' list"):
        InterventionSet.load(no_list)


def test_param_edit_errors(stories):
    with pytest.raises(SpecError, match=r"unknown parameter 'model.layers.1.mlp.down_prj.weight'; did you mean"):
        sl.forward(stories, ["Hi"], interventions=[ParamEdit(param="model.layers.1.mlp.down_prj.weight", op="zero")])
    with pytest.raises(SpecError, match="out of range for parameter"):
        sl.forward(stories, ["Hi"], interventions=[ParamEdit(param="model.norm.weight", op="zero", indices=[64])])


def test_missing_model_path(tmp_path):
    with pytest.raises(ModelSpecError, match=r"model path '/no/such/model' does not exist"):
        sl.load("/no/such/model")
    with pytest.raises(ModelSpecError, match="has no config.json"):
        sl.load(str(tmp_path))
    with pytest.raises(ModelSpecError, match="no shared model 'nope'"):
        sl.load("shared:nope")
    with pytest.raises(ModelSpecError, match="organism 'nope' not found"):
        sl.load("organism:nope")
    with pytest.raises(ModelSpecError, match="unknown dtype 'fp8'"):
        sl.load("shared:stories260K", dtype="fp8")


def test_generation_argument_errors(stories):
    with pytest.raises(SpecError, match="prompts is empty"):
        sl.generate(stories, [])
    with pytest.raises(SpecError, match="max_new_tokens must be an integer >= 1, got 0"):
        sl.generate(stories, ["Hi"], max_new_tokens=0)
    with pytest.raises(SpecError, match="unknown sampler 'nucleus'"):
        sl.generate(stories, ["Hi"], sampler="nucleus")
    with pytest.raises(SpecError, match="temperature must be a finite number > 0"):
        sl.generate(stories, ["Hi"], sampler={"name": "top_p", "params": {"temperature": 0}})


def test_capture_errors(stories, tmp_path):
    with pytest.raises(SteerlabError, match="sites is empty"):
        sl.capture(stories, ["Hi"], [])
    with pytest.raises(SteerlabError, match=r"over max_memory_mb=0.001; pass out=DIR"):
        sl.capture(stories, ["Once upon a time"] * 4, ["blocks.0.resid_post"], max_memory_mb=0.001)
    with pytest.raises(SteerlabError, match="unknown capture engine 'jax'"):
        sl.capture(stories, ["Hi"], ["logits"], engine="jax")
