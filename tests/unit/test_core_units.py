"""Pure pieces of the core: position masks, tensor ops, routing rules, specs, artifacts."""

from __future__ import annotations

import json

import pytest
import torch

from steerlab.artifacts import list_runs, read_artifact, write_artifact
from steerlab.errors import SpecError, SteerlabError
from steerlab.interventions import ops
from steerlab.interventions.positions import StepState
from steerlab.interventions.spec import AddVector, ExpertMask, InterventionSet, LastK, parse_intervention
from steerlab.models.adapters import RoutingRule, route

CPU = torch.device("cpu")


def test_positions_with_and_without_cache():
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])  # row 0 has 2 pads; prompt_len 4
    st = StepState.start(mask, prompt_len=4)
    prompt = st.at_step(0, seq=4).mask("prompt", CPU)
    assert prompt.tolist() == [[False, False, True, True], [True, True, True, True]]
    assert st.mask("generated", CPU) is False
    assert st.mask(LastK(last=1), CPU).tolist() == [[False, False, False, True]] * 2
    assert st.mask([0], CPU).tolist() == [[False, False, True, False], [True, False, False, False]]
    # step 2 with the KV cache: one token at padded position 5, generated for both rows
    assert st.at_step(2, seq=1).mask("generated", CPU) is None
    assert st.mask("prompt", CPU) is False
    # the same step without the cache covers the whole sequence
    full = st.at_step(2, seq=6).mask("generated", CPU)
    assert full.tolist() == [[False] * 4 + [True] * 2] * 2


def test_ops_are_pure_and_correct():
    x = torch.randn(2, 3, 4)
    x0 = x.clone()
    m = torch.tensor([[True, False, True], [False, False, True]])
    y = ops.add_vector(x, torch.ones(4), 2.0, m)
    assert torch.equal(x, x0)
    assert torch.equal(y[m], x[m] + 2) and torch.equal(y[~m], x[~m])
    d = torch.tensor([1.0, 1.0, 0.0, 0.0])
    z = ops.project_out(x, d)
    assert torch.allclose(z @ (d / d.norm()), torch.zeros(2, 3), atol=1e-6)
    s = ops.scale_units(x, torch.tensor([1]), 0.0)
    assert (s[..., 1] == 0).all() and torch.equal(s[..., 0], x[..., 0])
    p = ops.patch(x, torch.full((4,), 7.0), m)
    assert (p[m] == 7).all() and torch.equal(p[~m], x[~m])


def test_route_softmax_off_on_scale():
    r = RoutingRule(n_experts=4, top_k=2, norm_topk=True)
    logits = torch.tensor([[4.0, 3.0, 0.0, -1.0]])
    w, i = route(r, logits)
    assert i.tolist() == [[0, 1]] and torch.allclose(w.sum(-1), torch.ones(1))
    off = torch.tensor([True, False, False, False])
    w, i = route(r, logits, off=off)
    assert i.tolist() == [[1, 2]]  # the next expert takes the slot
    on = torch.tensor([False, False, False, True])
    w, i = route(r, logits, on=on)
    assert 3 in i.tolist()[0] and 0 in i.tolist()[0]
    w, i = route(r, logits, gate_scale=torch.tensor([0.5, 1.0, 1.0, 1.0]))
    w_plain, _ = route(r, logits)
    assert torch.isclose(w[0, 0], w_plain[0, 0] * 0.5)


def test_route_group_limited_sigmoid_keeps_masked_experts_out():
    r = RoutingRule(
        n_experts=8,
        top_k=2,
        score="sigmoid",
        norm_topk=True,
        scaling=2.5,
        group="top2sum",
        n_group=4,
        topk_group=2,
        sorted_topk=False,
    )
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 8, generator=g)
    bias = torch.randn(8, generator=g) * 0.1
    w, i = route(r, logits, bias=bias)
    assert torch.allclose(w.sum(-1), torch.full((64,), 2.5), atol=1e-5)
    off = torch.zeros(8, dtype=torch.bool)
    off[[0, 5]] = True
    _, i2 = route(r, logits, bias=bias, off=off)
    assert not torch.isin(i2, torch.tensor([0, 5])).any()


def test_spec_json_round_trip_and_validation(tmp_path):
    s = InterventionSet(
        [
            AddVector(site="blocks.0.resid_post", vector=[1.0, 2.0], positions={"last": 3}, name="steer"),
            ExpertMask(layer=1, off=[2], scale={3: 0.5}),
        ]
    )
    path = s.save(tmp_path / "s.json")
    meta = json.loads(path.read_text())
    assert meta["interventions"][0]["vector"] == {"$tensor": "0.vector"}
    back = InterventionSet.load(path)
    assert back.items[0].positions == LastK(last=3) and back.items[1].scale == {3: 0.5}
    assert torch.equal(back.items[0].vector, torch.tensor([1.0, 2.0]))
    with pytest.raises(SpecError, match="vector must be 1-D"):
        parse_intervention({"type": "add_vector", "site": "x", "vector": [[1.0]]})
    with pytest.raises(SpecError, match="scale.*finite"):
        parse_intervention({"type": "add_vector", "site": "x", "vector": [1.0], "scale": float("nan")})
    with pytest.raises(SpecError, match="expert_mask.of: Extra inputs are not permitted"):
        parse_intervention({"type": "expert_mask", "layer": 0, "of": [1]})


def test_artifacts_are_atomic_and_listed(tmp_path):
    d = write_artifact(
        tmp_path / "runs" / "a",
        kind="demo",
        config={"k": 1},
        metrics={"m": 0.5},
        tensors={"x": torch.arange(3.0)},
        extra_files={"fig.html": "<div></div>"},
    )
    art = read_artifact(d)
    assert art.kind == "demo" and art.metrics == {"m": 0.5} and torch.equal(art.tensors["x"], torch.arange(3.0))
    assert "fig.html" in art.files
    # a failing write leaves the previous artifact intact and no temporary folder behind

    class Boom:
        pass

    with pytest.raises(TypeError):
        write_artifact(tmp_path / "runs" / "a", kind="demo", config={"bad": Boom()})
    assert read_artifact(d).metrics == {"m": 0.5}
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["a"]
    assert [a.kind for a in list_runs(tmp_path / "runs")] == ["demo"]
    with pytest.raises(SteerlabError, match="not a steerlab artifact"):
        read_artifact(tmp_path)


def test_spec_owns_its_tensors_and_saves_shared_ones(tmp_path):
    v = torch.ones(4)
    s = InterventionSet([AddVector(site="a", vector=v), AddVector(site="b", vector=v)])
    v += 1  # the caller's tensor changes; the spec keeps what it was given
    assert torch.equal(s.items[0].vector, torch.ones(4))
    back = InterventionSet.load(s.save(tmp_path / "s.json"))  # one tensor used twice still saves
    assert torch.equal(back.items[1].vector, torch.ones(4))
