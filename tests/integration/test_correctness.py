"""Defects found by review (issue 10), each pinned by a test that failed before its fix."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import steerlab as sl
from steerlab.errors import SpecError
from steerlab.interventions import AddVector, ExpertMask, InterventionSet, ParamEdit, ScaleUnits
from steerlab.interventions.spec import parse_intervention


# -- stop_at_eos=False ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dense():
    return sl.load("organism:dense")


def test_stop_at_eos_false_generates_exactly_max_new_tokens(dense):
    """The organism answers "What is 2 + 3?" in a few tokens and then emits EOS; without stopping at
    EOS every row must carry exactly max_new_tokens new tokens (transformers 5 used to refill an unset
    eos_token_id from the model's generation config, so rows still ended at EOS and were padded)."""
    prompts, n = ["What is 2 + 3?", "Tell me a story about a cat."], 24
    eos = dense.tokenizer.eos_token_id
    stopped = sl.generate(dense, prompts, max_new_tokens=n, chat=True)
    assert len(stopped.token_ids[0]) < n  # the premise: row 0 meets EOS early
    zero = [AddVector(site="blocks.1.resid_post", vector=torch.zeros(dense.d_model), scale=1.0)]
    for ivs in (None, zero):  # the bare model and the nnsight engine
        out = sl.generate(dense, prompts, interventions=ivs, max_new_tokens=n, chat=True, stop_at_eos=False)
        new = out.sequences[:, out.prompt_ids.shape[1] :]
        assert new.shape == (2, n)
        assert [len(t) for t in out.token_ids] == [n, n]
        row = new[0].tolist()
        k = row.index(eos)
        assert k == len(stopped.token_ids[0])  # the same answer up to EOS
        assert row[k + 1 :] != [dense.tokenizer.pad_token_id] * (n - k - 1)  # generation went on past EOS


# -- non-finite numbers --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "data",
    [
        dict(type="expert_mask", layer=0, scale={1: float("nan")}),
        dict(type="expert_mask", layer=0, scale={1: float("inf")}),
        dict(type="scale_units", site="blocks.0.resid_post", units=[1], scale=float("nan")),
        dict(type="param_edit", param="lm_head.weight", op="scale", value=float("nan")),
        dict(type="param_edit", param="lm_head.weight", op="noise", value=float("-inf")),
        dict(type="add_vector", site="blocks.0.resid_post", vector=[1.0, 2.0], scale=float("nan")),
    ],
)
def test_non_finite_numbers_are_rejected(data):
    with pytest.raises(SpecError, match="finite"):
        parse_intervention(data)
    with pytest.raises(SpecError):
        InterventionSet.from_json([data])


@pytest.mark.parametrize("mask", ["abc", 3, [[0, 2]], [[1, 0], [1]]])
def test_param_edit_mask_must_be_a_boolean_list(mask):
    with pytest.raises(SpecError, match="mask"):
        parse_intervention(dict(type="param_edit", param="lm_head.weight", op="zero", mask=mask))


def test_model_objects_reject_nan_too():
    with pytest.raises(Exception, match="finite"):
        ExpertMask(layer=0, scale={0: float("nan")})
    with pytest.raises(Exception, match="finite"):
        ScaleUnits(site="blocks.0.resid_post", units=[0], scale=float("nan"))


# -- positions past the prompt -------------------------------------------------------------------------
def _steer(h, positions):
    return [AddVector(site="blocks.1.resid_post", vector=torch.ones(h.d_model), scale=3.0, positions=positions)]


@pytest.mark.parametrize(("positions", "needle"), [([100], "position 100"), ({"last": 1000}, "last 1000")])
def test_positions_past_the_prompt_are_errors(stories, positions, needle):
    prompts = ["Once upon a time", "The dog"]
    n = int(stories.tokenize(prompts)["attention_mask"].sum(-1).min())
    before = [dict(m._forward_hooks) for m in stories.model.modules()]
    for call in (
        lambda: sl.generate(stories, prompts, interventions=_steer(stories, positions), max_new_tokens=2),
        lambda: sl.forward(stories, prompts, interventions=_steer(stories, positions)),
        lambda: sl.capture(stories, prompts, ["blocks.1.resid_post"], interventions=_steer(stories, positions)),
    ):
        with pytest.raises(SpecError, match=rf"{needle}.*row 1 has {n} tokens|{needle}.*row 1, which has {n} tokens"):
            call()
    assert [dict(m._forward_hooks) for m in stories.model.modules()] == before


def test_positions_at_the_edge_are_accepted(stories):
    prompts = ["Once upon a time", "The dog"]
    n = int(stories.tokenize(prompts)["attention_mask"].sum(-1).min())
    base = sl.forward(stories, prompts)
    for positions in ([n - 1], {"last": n}):
        steered = sl.forward(stories, prompts, interventions=_steer(stories, positions))
        assert not torch.equal(steered, base)


# -- the engine's twin follows the model ---------------------------------------------------------------
def test_twin_follows_replaced_parameters():
    """A zero-scale steering vector is the identity; after a parameter object is replaced on the
    model, the steered run (nnsight twin) must still equal the unsteered run (the bare model)."""
    from steerlab.models.tiny import tiny_model

    h = tiny_model("llama")
    prompts = ["a b c", "d e"]
    ident = [AddVector(site="blocks.0.resid_post", vector=torch.ones(h.d_model), scale=0.0)]
    assert torch.equal(sl.forward(h, prompts, interventions=ident), sl.forward(h, prompts))  # builds the twin
    g = torch.Generator().manual_seed(1)
    head = h.model.get_output_embeddings()
    head.weight = nn.Parameter(torch.randn(head.weight.shape, generator=g))
    plain = sl.forward(h, prompts)
    assert torch.equal(sl.forward(h, prompts, interventions=ident), plain)
    gen_plain = sl.generate(h, prompts, max_new_tokens=4).token_ids
    assert sl.generate(h, prompts, interventions=ident, max_new_tokens=4).token_ids == gen_plain


def test_param_edits_still_reach_the_twin_after_a_replacement():
    from steerlab.models.tiny import tiny_model

    h = tiny_model("llama")
    head = h.model.get_output_embeddings()
    head.weight = nn.Parameter(head.weight.detach().clone() * 2)
    ident = [AddVector(site="blocks.0.resid_post", vector=torch.ones(h.d_model), scale=0.0)]
    edit = ParamEdit(param="lm_head.weight", op="zero")
    logits = sl.forward(h, ["a b"], interventions=[*ident, edit])
    assert torch.count_nonzero(logits) == 0  # the edit lands on the weight the twin now uses


# -- the nnsight engine hands off only where the plan reads or writes ---------------------------------
def _controlled(root: nn.Module) -> set[str]:
    return {n for n, m in root.named_modules() if type(m.__dict__.get("forward")).__name__ == "Controller"}


def test_only_the_plan_modules_hand_off_during_a_run_and_all_come_back():
    """During a steered generation the modules the plan does not visit run their plain forward (nnsight's
    per-module handoff is off there); the visited module keeps it; afterwards every module has it back.
    The steered ids equal a plain PyTorch forward hook doing the same addition (an independent path)."""
    from steerlab.engines import engine_for
    from steerlab.models.tiny import tiny_model

    h = tiny_model("llama")
    vec = torch.randn(h.d_model, generator=torch.Generator().manual_seed(0))
    iv = [AddVector(site="blocks.1.resid_post", vector=vec, scale=3.0)]
    sl.generate(h, ["a b c"], interventions=iv, max_new_tokens=2)  # builds the twin
    twin = engine_for(h).lm._module
    before = _controlled(twin)
    assert len(before) > 10
    seen: dict[str, bool] = {}
    blocks = dict(twin.named_modules())

    def spy(name):
        return lambda m, a, o: seen.__setitem__(name, type(m.__dict__.get("forward")).__name__ == "Controller")

    hooks = [blocks[n].register_forward_hook(spy(n)) for n in ("model.layers.1", "model.layers.0", "lm_head")]
    try:
        got = sl.generate(h, ["a b c", "d"], interventions=iv, max_new_tokens=5, stop_at_eos=False)
    finally:
        for hk in hooks:
            hk.remove()
    assert seen == {"model.layers.1": True, "model.layers.0": False, "lm_head": False}
    assert _controlled(twin) == before
    layer = h.model.model.layers[1]
    hk = layer.register_forward_hook(
        lambda m, a, o: (o[0] + 3.0 * vec, *o[1:]) if isinstance(o, tuple) else o + 3.0 * vec
    )
    try:
        enc = h.encode(["a b c", "d"])
        ref = h.model.generate(**enc, max_new_tokens=5, do_sample=False, eos_token_id=[],
                               pad_token_id=h.tokenizer.pad_token_id)
    finally:
        hk.remove()
    assert torch.equal(got.sequences, ref)
    assert not torch.equal(got.sequences, sl.generate(h, ["a b c", "d"], max_new_tokens=5, stop_at_eos=False).sequences)


def test_handoffs_come_back_when_the_run_raises():
    from steerlab.engines import engine_for
    from steerlab.engines.nnsight_engine import _handoffs_only_at, _plain_forward_controllers
    from steerlab.models.tiny import tiny_model

    h = tiny_model("llama")
    sl.forward(h, ["a b"], interventions=[AddVector(site="blocks.0.resid_post", vector=torch.ones(h.d_model))])
    twin = engine_for(h).lm._module
    before = _controlled(twin)
    candidates = _plain_forward_controllers(twin)
    with pytest.raises(RuntimeError, match="boom"), _handoffs_only_at({id(twin)}, candidates) as n:
        assert n == len(before) - 1 and _controlled(twin) == {""}
        raise RuntimeError("boom")
    assert _controlled(twin) == before
