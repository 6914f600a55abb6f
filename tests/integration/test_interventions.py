"""Interventions on real models: identity cases are bit-exact, KV-cached steering equals the
no-cache reference, expert masks take effect on every MoE family, nothing leaks after errors."""

from __future__ import annotations

import json

import pytest
import torch

import steerlab as sl
from steerlab.errors import SpecError
from steerlab.interventions import (
    AddVector,
    ExpertMask,
    InterventionSet,
    LastK,
    ParamEdit,
    Patch,
    ProjectOut,
    ScaleUnits,
)
from steerlab.models.tiny import MOE_ARCHITECTURES

PROMPTS = ["Once upon a time", "The little dog ran to the", "Lily"]


def _hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_zero_scale_and_empty_list_are_bit_identical(stories):
    base_logits = sl.forward(stories, PROMPTS)
    base = sl.generate(stories, PROMPTS, max_new_tokens=12)
    v = torch.randn(stories.d_model)
    for ivs in ([], InterventionSet([]), [AddVector(site="blocks.2.resid_post", vector=v, scale=0.0)]):
        assert torch.equal(sl.forward(stories, PROMPTS, interventions=ivs), base_logits)
        out = sl.generate(stories, PROMPTS, interventions=ivs, max_new_tokens=12)
        assert torch.equal(out.sequences, base.sequences)


@pytest.mark.parametrize("positions", ["all", "generated", "prompt", {"last": 2}])
def test_kv_cache_matches_recompute(stories, positions):
    v = torch.randn(stories.d_model, generator=torch.Generator().manual_seed(1)) * 3
    ivs = [
        AddVector(site="blocks.1.resid_post", vector=v, positions=positions),
        ProjectOut(site="blocks.3.resid_mid", direction=v, positions=positions),
    ]
    cached = sl.generate(stories, PROMPTS, interventions=ivs, max_new_tokens=16, output_scores=True)
    recomputed = sl.generate(
        stories, PROMPTS, interventions=ivs, max_new_tokens=16, use_cache=False, output_scores=True
    )
    assert torch.equal(cached.sequences, recomputed.sequences)
    for a, b in zip(cached.scores, recomputed.scores, strict=True):
        assert torch.allclose(a, b, atol=1e-4)
    plain = sl.generate(stories, PROMPTS, max_new_tokens=16)
    assert not torch.equal(cached.sequences, plain.sequences)


def test_generated_only_leaves_the_first_token(stories):
    """'generated' steers tokens produced by generation; the first new token is computed at the
    last prompt position, so it is unchanged, and later ones change."""
    v = torch.randn(stories.d_model, generator=torch.Generator().manual_seed(2)) * 8
    plain = sl.generate(stories, PROMPTS, max_new_tokens=8, output_scores=True)
    steered = sl.generate(
        stories,
        PROMPTS,
        [AddVector(site="blocks.2.resid_post", vector=v, positions="generated")],
        max_new_tokens=8,
        output_scores=True,
    )
    assert torch.equal(steered.scores[0], plain.scores[0])
    assert not torch.equal(steered.scores[2], plain.scores[2])


def test_positions_select_the_right_tokens(stories):
    v = torch.ones(stories.d_model)
    site = "blocks.0.resid_post"
    base = sl.capture(stories, PROMPTS, [site])[site]
    for positions, expect in [("all", None), ({"last": 1}, "last"), ([0], "first")]:
        cap = sl.capture(stories, PROMPTS, [site], interventions=[AddVector(site=site, vector=v, positions=positions)])
        diff = (cap[site] - base).abs().sum(-1) > 0  # [n, pos]
        mask = cap.attention_mask.bool()
        if expect is None:
            assert torch.equal(diff, mask)
        elif expect == "last":
            assert diff[:, -1].all() and diff.sum() == len(PROMPTS)
        else:
            first = mask.int().argmax(-1)  # first real position of each left-padded row
            assert diff[torch.arange(len(PROMPTS)), first].all() and diff.sum() == len(PROMPTS)


def test_project_out_removes_the_direction(stories):
    d = torch.randn(stories.d_model, generator=torch.Generator().manual_seed(3))
    u = d / d.norm()
    for site in ("blocks.2.resid_post", "blocks.2.resid_mid"):
        cap = sl.capture(stories, PROMPTS, [site], interventions=[ProjectOut(site=site, direction=d)])
        proj = cap.masked(site) @ u
        assert proj.abs().max().item() < 1e-4
        # resid_mid edits carry into the residual stream: resid_post = edited mid + mlp_out
        if site.endswith("resid_mid"):
            c2 = sl.capture(
                stories,
                PROMPTS,
                [site, "blocks.2.mlp_out", "blocks.2.resid_post"],
                interventions=[ProjectOut(site=site, direction=d)],
            )
            err = (c2[site] + c2["blocks.2.mlp_out"] - c2["blocks.2.resid_post"]).abs().max().item()
            assert err < 1e-4


def test_scale_units_zeroes_units(stories):
    site = "blocks.1.mlp_out"
    cap = sl.capture(stories, PROMPTS, [site], interventions=[ScaleUnits(site=site, units=[0, 5], scale=0.0)])
    assert cap.masked(site)[:, [0, 5]].abs().max() == 0
    assert cap.masked(site)[:, 1].abs().max() > 0


def test_patching_reproduces_the_source_run(stories):
    """Patching every position of resid_pre at layer 0 with another prompt's activations gives
    that prompt's logits (same length)."""
    a, b = "Once upon a time", "Lily and Tom"
    assert stories.tokenize([a])["input_ids"].shape == stories.tokenize([b])["input_ids"].shape
    src = sl.capture(stories, [b], ["blocks.0.resid_pre"])["blocks.0.resid_pre"]
    patched = sl.forward(stories, [a], interventions=[Patch(site="blocks.0.resid_pre", value=src)])
    assert torch.allclose(patched, sl.forward(stories, [b]), atol=1e-5)
    # a [P, d] patch at explicit positions changes only those positions' residual
    cap = sl.capture(
        stories,
        [a],
        ["blocks.0.resid_pre"],
        interventions=[Patch(site="blocks.0.resid_pre", value=src[0, [1, 3]], positions=[1, 3])],
    )
    got = cap["blocks.0.resid_pre"][0]
    assert torch.equal(got[[1, 3]], src[0, [1, 3]])
    orig = sl.capture(stories, [a], ["blocks.0.resid_pre"])["blocks.0.resid_pre"][0]
    assert torch.equal(got[[0, 2, 4]], orig[[0, 2, 4]])


def test_param_edit_is_reversible_and_takes_effect(stories):
    before = _state(stories.model)
    name = "model.layers.1.mlp.down_proj.weight"
    base = sl.forward(stories, PROMPTS)
    for op, kw in [
        ("zero", {}),
        ("scale", {"value": 2.0}),
        ("noise", {"value": 0.5, "seed": 3}),
        ("add", {"delta": torch.ones(64, 172)}),
    ]:
        with sl.intervene(stories, [ParamEdit(param=name, op=op, indices=[0, 1, 2, 500], **kw)]) as run:
            assert not torch.equal(run.forward(PROMPTS), base)
        after = _state(stories.model)
        assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(sl.forward(stories, PROMPTS), base)


def test_serialization_round_trip(stories, tmp_path):
    g = torch.Generator().manual_seed(4)
    ivs = InterventionSet(
        [
            AddVector(
                site="blocks.1.resid_post", vector=torch.randn(64, generator=g), scale=2.5, positions=LastK(last=2)
            ),
            ProjectOut(site="blocks.2.resid_mid", direction=torch.randn(64, generator=g), positions="generated"),
            ScaleUnits(site="blocks.3.mlp_out", units=[1, 2], scale=0.5),
            ParamEdit(param="model.layers.0.mlp.up_proj.weight", op="noise", value=0.1, seed=7, indices=[3, 4]),
        ]
    )
    path = ivs.save(tmp_path / "spec.json")
    assert (tmp_path / json.loads(path.read_text())["tensors_file"]).exists()
    loaded = InterventionSet.load(path)
    assert [type(i) for i in loaded] == [type(i) for i in ivs]
    a = sl.generate(stories, PROMPTS, interventions=ivs, max_new_tokens=8)
    b = sl.generate(stories, PROMPTS, interventions=loaded, max_new_tokens=8)
    assert torch.equal(a.sequences, b.sequences)
    c = sl.generate(stories, PROMPTS, interventions=str(path), max_new_tokens=8)
    assert torch.equal(a.sequences, c.sequences)


def test_no_leaks_after_errors(stories, monkeypatch):
    before = _state(stories.model)
    base = sl.forward(stories, PROMPTS)
    hooks = _hook_count(stories.model)
    # an edit that fails inside the run, after the weight edit is applied (the patch op raises when it runs)
    from steerlab.interventions import ops

    def boom(*args, **kwargs):
        raise RuntimeError("failed inside the run")

    bad_patch = Patch(site="blocks.1.resid_post", value=torch.zeros(64))
    param = ParamEdit(param="model.layers.0.mlp.up_proj.weight", op="zero")
    with monkeypatch.context() as m:
        m.setattr(ops, "patch", boom)
        with pytest.raises(RuntimeError, match="failed inside the run"):
            sl.forward(stories, PROMPTS, interventions=[param, bad_patch])
        with pytest.raises(RuntimeError, match="failed inside the run"):
            sl.generate(stories, PROMPTS, interventions=[param, bad_patch], max_new_tokens=4)
    # an exception raised by user code inside the block
    with pytest.raises(RuntimeError, match="user code"):
        with sl.intervene(stories, [param, AddVector(site="blocks.1.resid_post", vector=torch.ones(64))]) as run:
            run.forward(PROMPTS)
            raise RuntimeError("user code failed")
    # a spec that fails validation touches nothing
    with pytest.raises(SpecError):
        sl.forward(stories, PROMPTS, interventions=[param, AddVector(site="blocks.1.resid_post", vector=torch.ones(3))])
    after = _state(stories.model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert _hook_count(stories.model) == hooks
    assert torch.equal(sl.forward(stories, PROMPTS), base)


@pytest.mark.parametrize("arch", MOE_ARCHITECTURES)
def test_expert_masks_take_effect(tiny, arch):
    h = tiny(arch)
    layer = h.adapter.moe_layers[-1]
    site = f"blocks.{layer}.moe.topk_indices"
    base = sl.capture(h, PROMPTS, [site])
    m = base.attention_mask.bool()
    counts = torch.bincount(base[site][m].flatten(), minlength=8)
    busiest, idlest = int(counts.argmax()), int(counts.argmin())

    off = sl.capture(h, PROMPTS, [site], interventions=[ExpertMask(layer=layer, off=[busiest])])
    assert not (off[site][m] == busiest).any()
    on = sl.capture(h, PROMPTS, [site], interventions=[ExpertMask(layer=layer, on=[idlest])])
    assert (on[site][m] == idlest).any(-1).all()

    plain = sl.forward(h, PROMPTS)
    assert not torch.allclose(sl.forward(h, PROMPTS, interventions=[ExpertMask(layer=layer, off=[busiest])]), plain)
    assert not torch.allclose(sl.forward(h, PROMPTS, interventions=[ExpertMask(layer=layer, on=[idlest])]), plain)
    # generation with the KV cache honours the mask at every step
    out = sl.generate(
        h,
        PROMPTS,
        interventions=[ExpertMask(layer=layer, off=[busiest])],
        max_new_tokens=6,
        record=[site],
        stop_at_eos=False,
    )
    assert all(not (step == busiest).any() for step in out.records[site])
    assert len(out.records[site]) == 6


def test_expert_mask_positions_and_gate_scale(tiny):
    h = tiny("mixtral")
    site_i, site_w = "blocks.1.moe.topk_indices", "blocks.1.moe.topk_weights"
    base = sl.capture(h, PROMPTS, [site_i, site_w])
    busiest = int(torch.bincount(base[site_i][base.attention_mask.bool()].flatten()).argmax())
    cap = sl.capture(h, PROMPTS, [site_i], interventions=[ExpertMask(layer=1, off=[busiest], positions={"last": 1})])
    assert not (cap[site_i][:, -1] == busiest).any()
    assert torch.equal(cap[site_i][:, :-1], base[site_i][:, :-1])
    scaled = sl.capture(h, PROMPTS, [site_i, site_w], interventions=[ExpertMask(layer=1, scale={busiest: 0.5})])
    sel = base[site_i] == busiest
    assert torch.allclose(scaled[site_w][sel], base[site_w][sel] * 0.5, atol=1e-6)


def test_forced_expert_weight_in_sigmoid_router(tiny):
    """DeepSeek-V3: selection uses the biased score, weights use the unbiased one, renormalized."""
    h = tiny("deepseek_v3")
    layer = h.adapter.moe_layers[0]
    cap = sl.capture(
        h,
        PROMPTS,
        [f"blocks.{layer}.moe.topk_indices", f"blocks.{layer}.moe.topk_weights"],
        interventions=[ExpertMask(layer=layer, on=[3])],
    )
    m = cap.attention_mask.bool()
    assert (cap[f"blocks.{layer}.moe.topk_indices"][m] == 3).any(-1).all()
    w = cap[f"blocks.{layer}.moe.topk_weights"][m]
    assert torch.allclose(w.sum(-1), torch.full((w.shape[0],), 2.5), atol=1e-4)  # norm_topk x routed_scaling_factor


@pytest.mark.parametrize("arch", ["granite", "granitemoe", "llama"])
def test_edits_are_in_site_units_on_rescaled_residuals(tiny, arch):
    """Granite multiplies each residual update: an edit of v at attn_out or resid_mid moves the
    site's value by exactly v (and resid_pre + attn_out = resid_mid still holds)."""
    h = tiny(arch)
    v = torch.randn(h.d_model, generator=torch.Generator().manual_seed(5))
    sites = ["blocks.1.resid_pre", "blocks.1.attn_out", "blocks.1.resid_mid"]
    base = sl.capture(h, PROMPTS, sites)
    m = base.attention_mask.bool()
    for site in ("blocks.1.attn_out", "blocks.1.resid_mid"):
        for iv in (AddVector(site=site, vector=v), ScaleUnits(site=site, units=[0], scale=3.0)):
            cap = sl.capture(h, PROMPTS, sites, interventions=[iv])
            if isinstance(iv, AddVector):
                assert torch.allclose(cap[site][m], base[site][m] + v, atol=1e-4)
            else:
                assert torch.allclose(cap[site][m][:, 0], base[site][m][:, 0] * 3.0, atol=1e-4)
            mid = cap["blocks.1.resid_pre"] + cap["blocks.1.attn_out"]
            assert torch.allclose(mid[m], cap["blocks.1.resid_mid"][m], atol=1e-4)


def test_the_handle_model_stays_plain_hugging_face(tiny):
    """Engines patch a twin that shares the weights; the user's model keeps its own forwards and hooks."""
    h = tiny("olmoe")
    seen = []
    hd = h.model.model.layers[0].register_forward_hook(lambda m, a, o: seen.append(1))
    try:
        sl.generate(h, PROMPTS, [AddVector(site="blocks.1.resid_post", vector=torch.ones(h.d_model))], max_new_tokens=3)
        assert seen == []  # the engine ran on the twin, without the user's hook
        with torch.no_grad():
            h.model(**h.tokenize(PROMPTS))
        assert seen == [1]
    finally:
        hd.remove()
    import types

    assert all(isinstance(m.forward, types.MethodType) for m in h.model.modules())
    # weights are shared: a parameter edit made through the handle shows in the engine's runs
    with sl.intervene(h, [ParamEdit(param="lm_head.weight", op="zero")]) as run:
        assert run.forward(PROMPTS).abs().max() == 0


@pytest.mark.parametrize("arch", ["llama", MOE_ARCHITECTURES[0]])
def test_generation_runs_in_inference_mode_but_hands_back_normal_tensors(arch):
    """Steered generation runs under ``torch.inference_mode`` (cheaper per op than ``no_grad``); what it
    returns is normal tensors (editable in place, usable under autograd) and the model still trains after."""
    from steerlab.models.tiny import tiny_model

    h = tiny_model(arch)
    site = "blocks.1.resid_post"
    seen: list[bool] = []
    real_generate = h.model.generate.__func__

    def spy(model, *a, **kw):
        seen.append(torch.is_inference_mode_enabled())
        return real_generate(model, *a, **kw)

    add = AddVector(site=site, vector=torch.randn(h.d_model), scale=2.0)
    out = sl.generate(h, PROMPTS, interventions=[add], max_new_tokens=4, record=[site], output_scores=True)
    plain = sl.generate(h, PROMPTS, max_new_tokens=4, output_scores=True)
    tensors = [out.sequences, plain.sequences, *out.scores, *plain.scores, *out.records[site]]
    assert tensors and not any(t.is_inference() for t in tensors)
    out.sequences[0, 0] = 7  # in place: an inference tensor would refuse this outside inference mode
    out.records[site][0].mul_(2)
    import types

    h.model.generate = types.MethodType(spy, h.model)
    try:
        sl.generate(h, PROMPTS, max_new_tokens=2)
    finally:
        del h.model.generate
    assert seen == [True]
    h.model.requires_grad_(True)  # autograd after steered runs: no inference tensor was left in the model
    loss = h.model(**h.encode(PROMPTS)).logits.float().pow(2).mean()
    loss.backward()
    assert all(p.grad is not None for p in h.model.parameters() if p.requires_grad)
