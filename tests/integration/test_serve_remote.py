"""The NDIF path: every registered intervention type through nnsight's ``remote="local"`` (serialize ->
deserialize with local modules hidden -> execute) gives exactly the local engine's tokens and logits.

Each case checks that nnsight's ``LocalSimulationBackend`` really ran (a counter around it), that the
remote tokens and per-step logits equal ``sl.generate`` with the local engine bit for bit (the same torch
ops in the same order on the same weights: no tolerance is needed, so none is allowed), that the
intervention changes the tokens (so equality is not vacuous) and that the model's weights are the same
bits afterwards. The registry is enumerated: a type registered in steerlab without a case here fails.
"""

from __future__ import annotations

import pytest
import torch

import steerlab as sl
from steerlab.engines import engine_for
from steerlab.errors import SpecError
from steerlab.interventions import (
    AddVector,
    ConditionalAdd,
    ExpertMask,
    ParamEdit,
    Patch,
    ProjectOut,
    RegionEdit,
    ScaleUnits,
    intervention_types,
)

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


def _probe(h, site: str, layer_prompts=PROMPTS) -> tuple[torch.Tensor, float]:
    """A probe on ``site`` whose threshold splits the rows' last prompt tokens (some fire, some not)."""
    w = _vec(h, 11)
    acts = sl.capture(h, layer_prompts, [site]).last(site) @ w
    return w, float(acts.median())


def _region(h, names: list[str], per: int, seed: int) -> tuple[list[str], list[int], torch.Tensor]:
    params = dict(h.model.named_parameters())
    g = torch.Generator().manual_seed(seed)
    idx = [torch.randperm(params[n].numel(), generator=g)[:per] for n in names]
    return names, [per] * len(names), torch.cat(idx)


def _dense_cases(h) -> dict:
    w, thr = _probe(h, "blocks.1.resid_post")
    mlp = "model.layers.1.mlp.down_proj.weight"
    shape = dict(h.model.named_parameters())[mlp].shape
    names, counts, idx = _region(h, ["model.layers.0.mlp.up_proj.weight", "model.layers.2.self_attn.o_proj.weight"],
                                 300, 5)
    return {
        "add_vector": [AddVector(site="blocks.1.resid_post", vector=_vec(h, 1))],
        "project_out_mid": [ProjectOut(site="blocks.1.resid_mid", direction=_vec(h, 2))],
        "scale_units_generated": [ScaleUnits(site="blocks.1.mlp_out", units=list(range(0, h.d_model, 2)),
                                             scale=4.0, positions="generated")],
        "patch_last": [Patch(site="blocks.0.resid_post", value=_vec(h, 3), positions={"last": 2})],
        "patch_rows": [Patch(site="blocks.1.resid_pre", value=torch.stack([_vec(h, 4), _vec(h, 5)]),
                             positions=[0, 2])],
        "conditional_row": [ConditionalAdd(site="blocks.1.resid_post", vector=_vec(h, 6), scale=2.0,
                                           probe_weight=w, threshold=thr)],
        "conditional_from_step_mid": [ConditionalAdd(site="blocks.2.resid_mid", vector=_vec(h, 8), mode="from_step",
                                                     probe_weight=_vec(h, 9), threshold=5.0, positions="generated")],
        "param_edit_scale_mask": [ParamEdit(param=mlp, op="scale", value=-2.0, mask=torch.rand(shape) < 0.5)],
        "param_edit_noise_then_add": [
            ParamEdit(param=mlp, op="noise", value=0.5, seed=3, indices=list(range(0, shape.numel(), 7))),
            ParamEdit(param=mlp, op="add", delta=torch.randn(shape, generator=torch.Generator().manual_seed(4))),
        ],
        "param_edit_zero_set": [ParamEdit(param="model.layers.3.self_attn.o_proj.weight", op="zero"),
                                ParamEdit(param="model.norm.weight", op="set", value=2.0, indices=[0, 5, 9])],
        "region_edit_noise": [RegionEdit(params=names, counts=counts, indices=idx, op="noise", value=0.3, seed=2)],
        "region_edit_scale": [RegionEdit(params=names, counts=counts, indices=idx, op="scale", value=-3.0)],
    }


def _moe_cases(h) -> dict:
    dense = _dense_cases_moe(h)
    return {
        "expert_mask_off": [ExpertMask(layer=1, off=[0, 1])],
        "expert_mask_on_scale": [ExpertMask(layer=1, on=[2], scale={3: 0.5}, renormalize=True)],
        "expert_mask_positions": [ExpertMask(layer=1, off=[0, 1], positions="prompt"),
                                  ExpertMask(layer=1, on=[3], positions="generated"),
                                  ExpertMask(layer=2, off=[2], scale={1: 0.3}, positions={"last": 1})],
        "expert_weights": [ParamEdit(param="model.layers.1.mlp.experts.down_proj", op="scale", value=-4.0)],
        "all_together": [*dense, ExpertMask(layer=2, off=[1]), ExpertMask(layer=1, off=[3]),
                         ExpertMask(layer=1, scale={0: 0.5}, positions="generated"),
                         RegionEdit(params=["model.layers.2.mlp.experts.gate_up_proj"], counts=[50],
                                    indices=torch.arange(0, 5000, 100), op="set", value=0.7)],
    }


def _dense_cases_moe(h) -> list:
    w, thr = _probe(h, "blocks.0.resid_post")
    return [AddVector(site="blocks.1.resid_post", vector=_vec(h, 1)),
            ProjectOut(site="blocks.1.resid_mid", direction=_vec(h, 2)),
            ScaleUnits(site="blocks.1.mlp_out", units=list(range(0, h.d_model, 2)), scale=4.0, positions="generated"),
            Patch(site="blocks.0.resid_post", value=_vec(h, 3), positions={"last": 2}),
            AddVector(site="blocks.0.resid_mid", vector=_vec(h, 7), positions="prompt"),
            ConditionalAdd(site="blocks.0.resid_post", vector=_vec(h, 6), probe_weight=w, threshold=thr),
            ParamEdit(param="model.layers.0.self_attn.o_proj.weight", op="scale", value=3.0)]


def _weights(h) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in h.model.state_dict().items()}


def _same_bits(h, before: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(before[k], v) for k, v in h.model.state_dict().items())


def _check(h, ivs, calls) -> None:
    enc = h.encode(PROMPTS)
    assert (enc["attention_mask"] == 0).any()
    before, n_calls = _weights(h), len(calls)
    out = engine_for(h).run_remote(enc, ivs, remote="local", max_new_tokens=N, output_logits=True)
    assert len(calls) == n_calls + 1, "nnsight's local simulation backend did not run"
    assert _same_bits(h, before), "the remote run left a weight changed"
    local = sl.generate(h, PROMPTS, interventions=ivs, max_new_tokens=N, stop_at_eos=False, output_scores=True)
    plain = sl.generate(h, PROMPTS, max_new_tokens=N, stop_at_eos=False).sequences
    assert torch.equal(out.sequences, local.sequences)
    assert len(out.logits) == N
    assert all(torch.equal(a.float(), b) for a, b in zip(out.logits, local.scores, strict=True))
    assert not torch.equal(local.sequences, plain), "the intervention changes nothing: the check would be vacuous"


@pytest.fixture(scope="module")
def dense_cases(stories):
    return _dense_cases(stories)


@pytest.fixture(scope="module")
def moe(tiny):
    return tiny("deepseek_v3")


@pytest.fixture(scope="module")
def moe_cases(moe):
    return _moe_cases(moe)


DENSE = ["add_vector", "project_out_mid", "scale_units_generated", "patch_last", "patch_rows", "conditional_row",
         "conditional_from_step_mid", "param_edit_scale_mask", "param_edit_noise_then_add", "param_edit_zero_set",
         "region_edit_noise", "region_edit_scale"]
MOE = ["expert_mask_off", "expert_mask_on_scale", "expert_mask_positions", "expert_weights", "all_together"]


@pytest.mark.parametrize("case", DENSE)
def test_every_type_on_a_dense_model(stories, dense_cases, backend_calls, case):
    _check(stories, dense_cases[case], backend_calls)


@pytest.mark.parametrize("case", MOE)
def test_every_type_on_an_moe_model(moe, moe_cases, backend_calls, case):
    _check(moe, moe_cases[case], backend_calls)


def test_all_together_on_a_softmax_router(tiny, backend_calls):
    h = tiny("mixtral")
    _check(h, _moe_cases(h)["all_together"], backend_calls)


def test_the_cases_cover_the_registry(dense_cases, moe_cases):
    """Every type registered in steerlab has a remote case above (a new type without one fails here);
    a type registered elsewhere is refused remotely with a one-line SpecError naming it."""
    covered = {iv.type for ivs in (*dense_cases.values(), *moe_cases.values()) for iv in ivs}
    assert set(dense_cases) == set(DENSE) and set(moe_cases) == set(MOE)
    ours = {name for name, cls in intervention_types().items() if cls.__module__.startswith("steerlab.")}
    assert ours - covered == set(), f"registered types without a remote test case: {sorted(ours - covered)}"


def test_a_type_without_a_remote_form_is_refused(stories):
    from steerlab.interventions.base import ActOp, SiteIntervention

    class Negate(SiteIntervention):  # deliberately not registered: the registry stays as it is
        type: str = "negate_unregistered"

        def compile_op(self, h, ref, width):
            return ActOp(lambda x, m, s: -x, self.positions)

    before = _weights(stories)
    edit = ParamEdit(param="model.layers.0.self_attn.o_proj.weight", op="zero")
    with pytest.raises(SpecError, match=r"intervention 1: type 'negate_unregistered' has no remote form"):
        engine_for(stories).generate_remote(stories.encode(PROMPTS), [edit, Negate(site="blocks.0.resid_post")])
    assert _same_bits(stories, before)


def test_weights_come_back_when_the_run_raises(stories, backend_calls):
    """A forward that fails mid-generation (a hook on the traced model raising at the third forward): the
    traced ``finally`` restores every edited entry, and the error reaches the caller."""
    ivs = _dense_cases(stories)
    edits = [*ivs["param_edit_noise_then_add"], *ivs["region_edit_scale"]]
    before = _weights(stories)
    engine = engine_for(stories)
    seen = []

    def fail(module, args, out):
        seen.append(1)
        if len(seen) == 3:
            raise RuntimeError("planted failure at the third forward")

    hook = engine.lm.get("model.layers.4")._module.register_forward_hook(fail)
    try:
        with pytest.raises(Exception, match="planted failure"):
            engine.run_remote(stories.encode(PROMPTS), edits, remote="local", max_new_tokens=N)
    finally:
        hook.remove()
    assert len(seen) == 3 and backend_calls
    assert _same_bits(stories, before)


def test_the_public_api_takes_remote(stories, moe, dense_cases, moe_cases, backend_calls):
    """``sl.generate(..., remote="local")`` equals ``sl.generate`` with the local engine: texts, token ids,
    sequences and scores, from an intervention list or a compiled plan, dense and MoE."""
    from steerlab.interventions.compile import compile_plan

    for h, ivs in ((stories, [*dense_cases["conditional_row"], *dense_cases["param_edit_noise_then_add"],
                              *dense_cases["patch_rows"]]),
                   (moe, moe_cases["all_together"])):
        before, n_calls = _weights(h), len(backend_calls)
        kw = {"max_new_tokens": N, "stop_at_eos": False, "output_scores": True}
        local = sl.generate(h, PROMPTS, ivs, **kw)
        for spec in (ivs, None):
            remote = sl.generate(h, PROMPTS, ivs if spec else None, plan=None if spec else compile_plan(h, ivs),
                                 remote="local", **kw)
            assert remote.texts == local.texts and remote.token_ids == local.token_ids
            assert torch.equal(remote.sequences, local.sequences)
            assert all(torch.equal(a, b) for a, b in zip(remote.scores, local.scores, strict=True))
            assert remote.settings["remote"] == "local" and "remote" not in local.settings
        assert len(backend_calls) == n_calls + 2 and _same_bits(h, before)
        assert local.texts != sl.generate(h, PROMPTS, max_new_tokens=N, stop_at_eos=False).texts


def test_the_public_api_cuts_at_eos_as_the_local_run_does(stories, backend_calls):
    """With ``stop_at_eos`` the local run ends at the step where the last row reached EOS; the remote run
    makes all ``max_new_tokens`` and is cut the same way. Here a logit boost at generated positions sends
    every row to EOS at its second token."""
    eos = stories.tokenizer.eos_token_id
    boost = torch.zeros(stories.vocab_size)
    boost[eos] = 1e3
    ivs = [AddVector(site="logits", vector=boost, positions="generated"), *_dense_cases(stories)["patch_rows"]]
    local = sl.generate(stories, PROMPTS, ivs, max_new_tokens=8, output_scores=True)
    n_calls = len(backend_calls)
    remote = sl.generate(stories, PROMPTS, ivs, max_new_tokens=8, output_scores=True, remote="local")
    assert len(backend_calls) == n_calls + 1
    assert local.sequences.shape[1] == local.prompt_ids.shape[1] + 2, "not cut at EOS: the check would be vacuous"
    assert torch.equal(remote.sequences, local.sequences) and remote.token_ids == local.token_ids
    assert remote.texts == local.texts and len(remote.scores) == 2
    assert all(torch.equal(a, b) for a, b in zip(remote.scores, local.scores, strict=True))


def test_remote_errors_are_one_line(stories, monkeypatch):
    """No NDIF key, an unknown ``remote``, and what the remote path does not do: one line each, before
    anything runs (weights untouched)."""
    import nnsight

    from steerlab.errors import SteerlabError

    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    monkeypatch.setattr(nnsight.CONFIG.API, "APIKEY", None)
    edit = [ParamEdit(param="model.layers.0.self_attn.o_proj.weight", op="zero")]
    before = _weights(stories)
    cases = [({"remote": True}, SteerlabError, "remote=True runs on NDIF and needs an API key, and nnsight's "
              "config has none: set NDIF_API_KEY or call nnsight.CONFIG.set_default_api_key(KEY)"),
             ({"remote": "ndif"}, SpecError, "remote must be False, True (NDIF) or 'local'"),
             ({"remote": "local", "sampler": "top_p"}, SpecError, "got a sampled generation"),
             ({"remote": "local", "record": ["blocks.0.resid_post"]}, SpecError, "got record="),
             ({"remote": "local", "use_cache": False}, SpecError, "got use_cache=False")]
    for kw, err, msg in cases:
        with pytest.raises(err) as e:
            sl.generate(stories, PROMPTS, edit, max_new_tokens=2, **kw)
        assert msg in str(e.value) and "\n" not in str(e.value)
    from steerlab.server import ServerConfig, create_app

    with pytest.raises(SteerlabError, match="remote=True runs on NDIF and needs an API key"):
        create_app(stories, ServerConfig(model_name="s", remote=True))
    assert _same_bits(stories, before)


def test_the_generate_command_takes_remote(stories, tmp_path, monkeypatch):
    """``steerlab generate --remote local`` prints what the local run prints; ``--remote ndif`` without a key,
    or with ``--compare``, is one line and exit status 2."""
    import nnsight
    from typer.testing import CliRunner

    from steerlab.cli.main import app
    from steerlab.interventions import InterventionSet

    spec = tmp_path / "steer.json"
    InterventionSet(_dense_cases(stories)["param_edit_zero_set"]).save(spec)
    argv = ["generate", "shared:stories260K", "-p", PROMPTS[0], "-p", PROMPTS[2], "-i", str(spec), "-n", "6", "--json"]
    runner = CliRunner()
    local = runner.invoke(app, argv)
    remote = runner.invoke(app, [*argv, "--remote", "local"])
    assert local.exit_code == 0 and remote.exit_code == 0, remote.output
    import json

    got, want = json.loads(remote.stdout), json.loads(local.stdout)
    assert got["completions"] == want["completions"] and got["settings"]["remote"] == "local"
    plain = [a for a in argv if a not in ("-i", str(spec))]
    assert want["completions"] != json.loads(runner.invoke(app, plain).stdout)["completions"]
    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    monkeypatch.setattr(nnsight.CONFIG.API, "APIKEY", None)
    for extra, msg in [(["--remote", "ndif"], "remote=True runs on NDIF and needs an API key"),
                       (["--remote", "local", "--compare"], "--remote runs one plain generation"),
                       (["--remote", "vllm"], "--remote must be 'ndif' or 'local', got 'vllm'")]:
        r = runner.invoke(app, [*argv, *extra])
        assert r.exit_code == 2 and r.stderr.startswith("error: ") and msg in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


def test_the_server_over_the_remote_path(stories, backend_calls):
    """``ServerConfig(remote="local")``: the same HTTP answers as the local server, through nnsight's
    simulation backend, parameter edits included; what cannot run remotely is a 422 before queueing."""
    from fastapi.testclient import TestClient

    from steerlab.server import ServerConfig, create_app

    steer = {"interventions": [{"type": "add_vector", "site": "blocks.1.resid_post",
                                "vector": _vec(stories, 1).tolist()},
                               {"type": "param_edit", "param": "model.layers.3.self_attn.o_proj.weight",
                                "op": "zero"}]}
    bodies = [{"model": "s", "prompt": p, "max_tokens": 8, "temperature": 0, "steerlab": steer} for p in PROMPTS]
    answers = {}
    before = _weights(stories)
    for remote in (False, "local"):
        with TestClient(create_app(stories, ServerConfig(model_name="s", remote=remote))) as c:
            answers[remote] = [c.post("/v1/completions", json=b).json()["choices"][0] for b in bodies]
            if remote:
                streamed = c.post("/v1/completions", json={**bodies[0], "stream": True}).text
                r = c.post("/v1/completions", json={**bodies[0], "temperature": 1.0})
                assert r.status_code == 422 and r.json()["error"]["param"] == "temperature"
    assert _same_bits(stories, before)
    assert len(backend_calls) >= len(PROMPTS)
    assert answers["local"] == answers[False]
    want = sl.generate(stories, PROMPTS[:1], interventions=steer["interventions"], max_new_tokens=8).texts[0]
    assert answers["local"][0]["text"] == want
    chunks = [json_text(line) for line in streamed.splitlines() if line.startswith("data: {")]
    assert "".join(chunks) == want


def json_text(line: str) -> str:
    import json

    return json.loads(line[len("data: "):])["choices"][0]["text"]
