"""RegionEdit: each op by hand, restored bit for bit, serializable, refused on another model, and combined
with every other intervention type with and without the KV cache on dense and MoE tiny models (the
harness of test_kv_equivalence)."""

from __future__ import annotations

import pytest
import torch

import steerlab as sl
from steerlab.errors import SpecError, SteerlabError
from steerlab.interventions import (
    AddVector,
    ConditionalAdd,
    ExpertMask,
    InterventionSet,
    ParamEdit,
    Patch,
    ProjectOut,
    RegionEdit,
    ScaleUnits,
    intervention_types,
)
from steerlab.interventions.regions import model_signature
from tests.integration.test_kv_equivalence import _assert_equivalent, _mid, _value_param, _vec

A, B = "model.layers.1.mlp.down_proj.weight", "model.norm.weight"


def _edit(op, value=0.0, seed=0, **kw):
    return RegionEdit(
        params=[A, B], counts=[3, 2], indices=torch.tensor([5, 0, 99, 7, 1]), op=op, value=value, seed=seed, **kw
    )


@pytest.mark.parametrize("op,value", [("zero", 0.0), ("scale", -3.0), ("set", 2.5), ("noise", 0.5)])
def test_ops_by_hand_and_exact_restore(stories, op, value):
    params = dict(stories.model.named_parameters())
    a, b = params[A].detach().clone().view(-1), params[B].detach().clone()
    with sl.intervene(stories, [_edit(op, value, seed=4)]):
        got_a, got_b = params[A].detach().clone().view(-1), params[B].detach().clone()
    exp_a, exp_b = a.clone(), b.clone()
    ia, ib = torch.tensor([5, 0, 99]), torch.tensor([7, 1])
    if op == "zero":
        exp_a[ia], exp_b[ib] = 0.0, 0.0
    elif op == "scale":
        exp_a[ia], exp_b[ib] = a[ia] * -3.0, b[ib] * -3.0
    elif op == "set":
        exp_a[ia], exp_b[ib] = 2.5, 2.5
    else:  # parameter j draws N(0, 0.5^2) from a generator seeded seed + j
        exp_a[ia] = a[ia] + torch.randn(3, generator=torch.Generator().manual_seed(4)) * 0.5
        exp_b[ib] = b[ib] + torch.randn(2, generator=torch.Generator().manual_seed(5)) * 0.5
    assert torch.equal(got_a, exp_a) and torch.equal(got_b, exp_b)
    assert torch.equal(params[A].view(-1), a) and torch.equal(params[B], b)  # bit for bit


def test_serializes_with_int64_indices_and_refuses_other_models(stories, tiny, tmp_path):
    big = torch.tensor([2**31 + 5], dtype=torch.long)  # survives JSON + safetensors without a float round trip
    iv = RegionEdit(params=["p"], counts=[1], indices=big, op="set", value=1.0)
    back = InterventionSet.load(InterventionSet([iv]).save(tmp_path / "r.json")).items[0]
    assert back.indices.dtype == torch.long and back.indices.tolist() == [2**31 + 5]
    ok = _edit("zero", signature=model_signature(stories))
    sl.forward(stories, ["Once upon a time"], interventions=[ok])
    with pytest.raises(SpecError, match="region made for another model"):
        sl.forward(tiny("llama"), ["Once"], interventions=[ok])
    bad = RegionEdit(params=[A], counts=[1], indices=torch.tensor([10**6]), op="zero")
    with pytest.raises(SpecError, match="out of range"):
        sl.forward(stories, ["Once"], interventions=[bad])
    with pytest.raises(SpecError, match="counts"):
        InterventionSet([{"type": "region_edit", "params": [A], "counts": [2], "indices": [1]}])


def _one_of_each(h, region: RegionEdit) -> dict[str, list]:
    """One instance of every built-in intervention type, the region edit among them (MoE: an expert mask too)."""
    name = _value_param(h)
    numel = dict(h.model.named_parameters())[name].numel()
    out: dict[str, list] = {
        "add_vector": [AddVector(site="blocks.0.resid_post", vector=_vec(h, 9), positions={"last": 2})],
        "param_edit": [ParamEdit(param=name, op="scale", value=2.0, indices=list(range(0, numel, 3)))],
        "region_edit": [region],
        "project_out": [ProjectOut(site=_mid(h, 1), direction=_vec(h, 10), positions="generated")],
        "scale_units": [ScaleUnits(site="blocks.1.mlp_out", units=[1, 5, 9], scale=0.0)],
        "patch": [Patch(site="blocks.2.resid_pre", value=_vec(h, 11), positions=[1])],
        "conditional_add": [ConditionalAdd(site="blocks.1.resid_post", vector=_vec(h, 12), probe_weight=_vec(h, 13))],
        "expert_mask": [ExpertMask(layer=h.adapter.moe_layers[0], off=[1, 4])] if h.adapter.moe_layers else [],
    }
    return out


@pytest.mark.parametrize("arch", ["llama", "deepseek_v3", "mixtral"])
@pytest.mark.parametrize("alone", [True, False])
def test_composes_with_every_type_kv_on_and_off(tiny, arch, alone):
    """Region edit alone, and with one instance of every other registered type (a parameter edit of the same
    matrix among them; the expert mask on MoE only): cached == recomputed, steered != plain, weights restored
    bit for bit (the harness asserts all three). A type registered later without a case here fails the test."""
    h = tiny(arch)
    name = _value_param(h)
    numel = dict(h.model.named_parameters())[name].numel()
    idx = torch.randperm(numel, generator=torch.Generator().manual_seed(0))[: numel // 10]
    region = RegionEdit(
        params=[name], counts=[idx.numel()], indices=idx, op="noise", value=1.0, seed=1, signature=model_signature(h)
    )
    if alone:
        _assert_equivalent(h, [region])
        return
    cases = _one_of_each(h, region)
    built_in = {name for name, cls in intervention_types().items() if cls.__module__.startswith("steerlab.")}
    assert set(cases) == built_in  # (other tests register types of their own in the same registry)
    ivs = [iv for group in cases.values() for iv in group]
    _assert_equivalent(h, ivs)


def test_inside_intervene_a_region_edit_is_applied_once(stories):
    """``sl.intervene`` applies the weight edits once for its block; its calls must not apply them again
    (a scale of 2 became 4). Checked against the same capture with the edit passed per call, and by hand."""
    re2 = RegionEdit(params=[B], counts=[64], indices=torch.arange(64), op="scale", value=2.0)
    prompts = ["Once upon a time"]
    per_call = sl.capture(stories, prompts, ["final_norm"], interventions=[re2])
    with sl.intervene(stories, [re2]) as run:
        inside = run.capture(prompts, ["final_norm"])
    plain = sl.capture(stories, prompts, ["final_norm"])
    a, b, p = (c.acts["final_norm"] for c in (per_call, inside, plain))
    torch.testing.assert_close(b, a, rtol=0, atol=0)
    torch.testing.assert_close(b, 2 * p, rtol=1e-6, atol=1e-6)  # the norm's weight doubled: its output too


def test_an_ended_intervene_block_refuses_calls(stories):
    """After the block its weight edits are restored, so a call through its context would run unsteered while
    looking steered: every call is refused with one line instead."""
    with sl.intervene(stories, [ParamEdit(param=B, op="scale", value=0.1)]) as run:
        inside = run.forward(["Once upon a time"])
    for call in (lambda: run.forward(["Once upon a time"]), lambda: run.generate(["Once"], max_new_tokens=2),
                 lambda: run.capture(["Once"], ["final_norm"])):
        with pytest.raises(SteerlabError, match="this intervene\\(\\) block has ended"):
            call()
    assert inside.shape[0] == 1  # (the call inside the block ran)
