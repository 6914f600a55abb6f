"""The NDIF path: every intervention type through nnsight's ``remote="local"`` (serialize -> deserialize
with local modules hidden -> execute) gives exactly the local engine's tokens.

Each case checks that nnsight's ``LocalSimulationBackend`` really ran (a counter around it), that the
remote tokens equal ``sl.generate`` with the local engine bit for bit, and that the intervention changes
the tokens (so equality is not vacuous). Parameter edits are refused remotely, with a one-line reason.
"""

from __future__ import annotations

import pytest
import torch

import steerlab as sl
from steerlab.engines import engine_for
from steerlab.errors import SpecError
from steerlab.interventions import AddVector, ExpertMask, ParamEdit, Patch, ProjectOut, ScaleUnits

PROMPTS = ["Once upon a time there was", "The dog ran to the", "Lily saw"]  # left padding in the batch
N = 5


@pytest.fixture
def backend_calls(monkeypatch):
    from nnsight.intervention.backends import local

    calls: list[int] = []
    orig = local.LocalSimulationBackend.__call__

    def counted(self, tracer):
        calls.append(1)
        return orig(self, tracer)

    monkeypatch.setattr(local.LocalSimulationBackend, "__call__", counted)
    return calls


def _vec(h, seed: int) -> torch.Tensor:
    return torch.randn(h.d_model, generator=torch.Generator().manual_seed(seed)) * 3


CASES = {
    "add_vector": lambda h: [AddVector(site="blocks.1.resid_post", vector=_vec(h, 1))],
    "project_out_mid": lambda h: [ProjectOut(site="blocks.1.resid_mid", direction=_vec(h, 2))],
    "scale_units_generated": lambda h: [ScaleUnits(site="blocks.1.mlp_out", units=list(range(0, h.d_model, 2)),
                                                   scale=4.0, positions="generated")],
    "patch_last": lambda h: [Patch(site="blocks.0.resid_post", value=_vec(h, 3), positions={"last": 2})],
    "patch_rows": lambda h: [Patch(site="blocks.1.resid_pre", value=torch.stack([_vec(h, 4), _vec(h, 5)]),
                                   positions=[0, 2])],
}
MOE_CASES = {
    "expert_mask_off": lambda h: [ExpertMask(layer=1, off=[0, 1])],
    "expert_mask_on_scale": lambda h: [ExpertMask(layer=1, on=[2], scale={3: 0.5}, renormalize=True)],
    "all_together": lambda h: [*CASES["add_vector"](h), *CASES["project_out_mid"](h),
                               *CASES["scale_units_generated"](h), *CASES["patch_last"](h),
                               AddVector(site="blocks.0.resid_mid", vector=_vec(h, 7), positions="prompt"),
                               ExpertMask(layer=2, off=[1]), ExpertMask(layer=1, off=[3])],
}


def _check(h, ivs, calls) -> None:
    enc = h.encode(PROMPTS)
    assert (enc["attention_mask"] == 0).any()
    before = len(calls)
    remote = engine_for(h).generate_remote(enc, ivs, remote="local", max_new_tokens=N)
    assert len(calls) == before + 1, "nnsight's local simulation backend did not run"
    local = sl.generate(h, PROMPTS, interventions=ivs, max_new_tokens=N, stop_at_eos=False).sequences
    plain = sl.generate(h, PROMPTS, max_new_tokens=N, stop_at_eos=False).sequences
    assert torch.equal(remote, local)
    assert not torch.equal(local, plain), "the intervention changes nothing: the check would be vacuous"


@pytest.mark.parametrize("case", list(CASES))
def test_activation_types_dense(stories, backend_calls, case):
    _check(stories, CASES[case](stories), backend_calls)


@pytest.mark.parametrize("case", list(MOE_CASES))
def test_moe_types(tiny, backend_calls, case):
    _check(tiny("deepseek_v3"), MOE_CASES[case](tiny("deepseek_v3")), backend_calls)


def test_all_together_on_a_softmax_router(tiny, backend_calls):
    h = tiny("mixtral")
    _check(h, MOE_CASES["all_together"](h), backend_calls)


def test_parameter_edits_are_refused_remotely(stories):
    enc = stories.encode(PROMPTS)
    before = {k: v.clone() for k, v in stories.model.state_dict().items()}
    with pytest.raises(SpecError, match=r"intervention 0 \(param_edit\): parameter edits cannot run remotely"):
        edit = ParamEdit(param="model.layers.0.self_attn.o_proj.weight", op="zero")
        engine_for(stories).generate_remote(enc, [edit], remote="local")
    with pytest.raises(SpecError, match="remote expert masks act at all positions"):
        from steerlab.models.tiny import tiny_model

        moe = tiny_model("deepseek_v3")
        engine_for(moe).generate_remote(moe.encode(PROMPTS), [ExpertMask(layer=1, off=[0], positions="prompt")])
    assert all(torch.equal(before[k], v) for k, v in stories.model.state_dict().items())


def test_the_server_over_the_remote_path(stories, backend_calls):
    """``ServerConfig(remote="local")``: the same HTTP answers as the local server, through nnsight's
    simulation backend; what cannot run remotely is a 422 before queueing."""
    from fastapi.testclient import TestClient

    from steerlab.server import ServerConfig, create_app

    steer = {"interventions": [{"type": "add_vector", "site": "blocks.1.resid_post",
                                "vector": _vec(stories, 1).tolist()}]}
    bodies = [{"model": "s", "prompt": p, "max_tokens": 8, "temperature": 0, "steerlab": steer} for p in PROMPTS]
    answers = {}
    for remote in (False, "local"):
        with TestClient(create_app(stories, ServerConfig(model_name="s", remote=remote))) as c:
            answers[remote] = [c.post("/v1/completions", json=b).json()["choices"][0] for b in bodies]
            if remote:
                streamed = c.post("/v1/completions", json={**bodies[0], "stream": True}).text
                edit = {"interventions": [{"type": "param_edit", "param": "model.layers.0.self_attn.o_proj.weight",
                                           "op": "zero"}]}
                r = c.post("/v1/completions", json={**bodies[0], "steerlab": edit})
                assert r.status_code == 422 and "parameter edits cannot run remotely" in r.json()["error"]["message"]
                r = c.post("/v1/completions", json={**bodies[0], "temperature": 1.0})
                assert r.status_code == 422 and r.json()["error"]["param"] == "temperature"
    assert len(backend_calls) >= len(PROMPTS)
    assert answers["local"] == answers[False]
    want = sl.generate(stories, PROMPTS[:1], interventions=steer["interventions"], max_new_tokens=8).texts[0]
    assert answers["local"][0]["text"] == want
    chunks = [json_text(line) for line in streamed.splitlines() if line.startswith("data: {")]
    assert "".join(chunks) == want


def json_text(line: str) -> str:
    import json

    return json.loads(line[len("data: "):])["choices"][0]["text"]
