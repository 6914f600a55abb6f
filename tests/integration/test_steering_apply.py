"""Directions applied through the registry (steerlab.steering.apply, ConditionalAdd): KV cache == recompute on
dense and MoE tiny models (the harness of test_kv_equivalence), composition with the other types, the mixed
batch where a probe fires on some rows only, and the errors for bad input."""

from __future__ import annotations

import pytest
import torch

import steerlab as sl
from steerlab.errors import SpecError, UnknownSiteError
from steerlab.interventions import ConditionalAdd, ExpertMask, InterventionSet, ParamEdit, ScaleUnits
from steerlab.steering.apply import ablate_everywhere, add, check_scales, conditional, orthonormal
from steerlab.steering.logistic import LinearProbe
from tests.integration.test_kv_equivalence import PROMPTS, _assert_equivalent, _value_param, _vec

SITE = "blocks.1.resid_post"


def _probe_splitting(h, fire_rows: set[int]) -> LinearProbe:
    """A probe on SITE that fires on the last prompt token of exactly ``fire_rows`` of PROMPTS: the
    minimum-norm weight scoring those rows +1 and the others -1 (pseudo-inverse of a plain capture)."""
    last = sl.capture(h, PROMPTS, [SITE]).last(SITE).double()
    y = torch.tensor([1.0 if i in fire_rows else -1.0 for i in range(len(PROMPTS))], dtype=torch.float64)
    w = (torch.linalg.pinv(last) @ y).float()
    assert [bool(x) for x in (last.float() @ w > 0)] == [i in fire_rows for i in range(len(PROMPTS))]
    return LinearProbe(SITE, w, 0.0)


@pytest.mark.parametrize("arch", ["llama", "deepseek_v3", "mixtral"])
@pytest.mark.parametrize("mode", ["row", "from_step"])
def test_conditional_kv_equivalence_and_composition(tiny, arch, mode, tmp_path):
    """Cached == recomputed for conditional steering alone and combined with an ablation at every layer, a
    unit scaling, a parameter edit and (MoE) an expert mask."""
    h = tiny(arch)
    probe = _probe_splitting(h, {0, 2})
    cond = conditional(h, _vec(h, 22), probe, 6.0, mode=mode)
    _assert_equivalent(h, [cond])
    ivs = [cond, *ablate_everywhere(h, _vec(h, 23)), ScaleUnits(site="blocks.2.mlp_out", units=[1, 5], scale=0.0),
           ParamEdit(param=_value_param(h), op="scale", value=0.5, indices=list(range(0, 300, 3)))]
    if h.adapter.is_moe:
        ivs.append(ExpertMask(layer=h.adapter.moe_layers[0], off=[1, 4]))
    _assert_equivalent(h, ivs)
    InterventionSet(ivs).save(tmp_path / "s.json")
    assert InterventionSet.load(tmp_path / "s.json").digest() == InterventionSet(ivs).digest()


@pytest.mark.parametrize("arch", ["llama", "deepseek_v3"])
def test_add_and_ablation_kv_equivalence(tiny, arch):
    h = tiny(arch)
    for positions in ("all", "prompt", "generated"):
        _assert_equivalent(h, [add(h, _vec(h, 24), SITE, 8.0, positions=positions)])
    _assert_equivalent(h, ablate_everywhere(h, [_vec(h, 25), _vec(h, 26)]))


def test_conditional_changes_only_the_rows_where_the_probe_fires(tiny):
    """Mixed batch: the probe fires on rows 0 and 2 (by hand); row 1's logits are bit-identical to the plain
    run, rows 0 and 2 equal the run adding the vector to every row."""
    h = tiny("llama")
    probe = _probe_splitting(h, {0, 2})
    vec = _vec(h, 27)
    plain = sl.generate(h, PROMPTS, max_new_tokens=4, output_scores=True)
    cond = sl.generate(h, PROMPTS, interventions=[conditional(h, vec, probe, 6.0)], max_new_tokens=4,
                       output_scores=True)
    every = sl.generate(h, PROMPTS, interventions=[add(h, vec, SITE, 6.0)], max_new_tokens=4, output_scores=True)
    for a, b, c in zip(plain.scores, cond.scores, every.scores, strict=True):
        assert torch.equal(a[1], b[1])
        torch.testing.assert_close(b[[0, 2]], c[[0, 2]], atol=1e-5, rtol=0)
        assert (b[[0, 2]] - a[[0, 2]]).abs().max() > 1e-2  # the fired rows really changed


def test_from_step_steers_from_the_first_firing_position(tiny):
    """mode="from_step" on one row == AddVector at the prompt positions from the first one where the probe
    fires (found by hand on a plain capture) plus every generated position."""
    h = tiny("llama")
    prompt = PROMPTS[1]
    acts = sl.capture(h, [prompt], [SITE])[SITE][0]  # [len, d], no padding
    first = 3  # the probe scores positions 0..2 at -1 and position 3 at +1 (pseudo-inverse)
    y = torch.tensor([-1.0] * first + [1.0], dtype=torch.float64)
    w = (torch.linalg.pinv(acts[: first + 1].double()) @ y).float()
    bias = 0.0
    s = acts @ w
    fires = (s + bias > 0).nonzero().flatten().tolist()
    p = fires[0]  # the first position where the probe fires
    vec = _vec(h, 29)
    probe = LinearProbe(SITE, w, bias)
    got = sl.generate(h, [prompt], interventions=[conditional(h, vec, probe, 5.0, mode="from_step")],
                      max_new_tokens=4, output_scores=True)
    n = acts.shape[0]
    want = sl.generate(h, [prompt], interventions=[
        add(h, vec, SITE, 5.0, positions=list(range(p, n))), add(h, vec, SITE, 5.0, positions="generated")],
        max_new_tokens=4, output_scores=True)
    assert got.token_ids == want.token_ids
    for a, b in zip(got.scores, want.scores, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_bad_inputs(tiny):
    h = tiny("llama")
    v = torch.ones(h.d_model)
    with pytest.raises(SpecError, match=r"has shape \(7,\); .* expects a vector of width d_model=64"):
        add(h, torch.ones(7), SITE, 1.0)
    with pytest.raises(UnknownSiteError, match="blocks.9.resid_post"):
        add(h, v, "blocks.9.resid_post", 1.0)
    with pytest.raises(SpecError, match="scale nan is not finite"):
        add(h, v, SITE, float("nan"))
    with pytest.raises(SpecError, match="scale 'x' is not a number"):
        check_scales([1.0, "x"])
    with pytest.raises(SpecError, match="linearly dependent"):
        orthonormal([v, 2 * v])
    with pytest.raises(SpecError, match="probe_weight width 3 does not match site"):
        sl.generate(h, PROMPTS[:1], interventions=[ConditionalAdd(site=SITE, vector=v, probe_weight=torch.ones(3))],
                    max_new_tokens=1)
    with pytest.raises(SpecError, match="unknown intervention type|invalid intervention"):
        InterventionSet.from_json({"interventions": [{"type": "conditional_add", "site": SITE, "vector": [1.0],
                                                      "probe_weight": [1.0], "scale": "inf"}]})


def test_orthonormal_ablation_removes_the_span(tiny):
    """After ablating a 2-D subspace at every layer, the captured residual has no component in its span."""
    h = tiny("llama")
    a, b = _vec(h, 30), _vec(h, 31)
    ivs = ablate_everywhere(h, [a, b])
    cap = sl.capture(h, PROMPTS, ["blocks.2.resid_post"], interventions=ivs)
    x = cap.masked("blocks.2.resid_post")
    q, _ = torch.linalg.qr(torch.stack([a, b]).T.double())  # the span, from scratch
    assert float((x.double() @ q).abs().max()) < 1e-4
    assert float((sl.capture(h, PROMPTS, ["blocks.2.resid_post"]).masked("blocks.2.resid_post").double() @ q)
                 .abs().max()) > 1e-2
