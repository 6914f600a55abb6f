"""Routing under expert masks, checked against an independent plain-Python re-derivation of each
family's published selection rule (and, for a few cases, numbers worked out by hand), never against
steerlab's own ``route``. Also: masks on one layer compose, and the combined set is validated."""

from __future__ import annotations

import math

import pytest
import torch

import steerlab as sl
from steerlab.errors import SpecError
from steerlab.interventions import ExpertMask
from steerlab.interventions.compile import compile_plan
from steerlab.models.adapters.routing import RoutingRule, mask_problem, route


# ------------------------------------------------------------------------------------------------
# the oracle: one token, plain Python, from the modeling files' rules
# ------------------------------------------------------------------------------------------------
def oracle(fam: dict, logits: list[float], off=(), on=(), scale=None, renorm=False, bias=None) -> dict[int, float]:
    """Chosen expert -> gate weight for one token.

    ``fam``: score (softmax | sigmoid | topk_logits), k, norm, scaling, group (None | top2sum | max),
    n_group, topk_group. Off experts are dropped before anything (softmax renormalizes over the
    rest); forced-on experts are chosen first with their natural score; then gate scales, then
    ``renorm`` (sum to 1), then the routed scaling factor.
    """
    n, k = len(logits), fam["k"]
    live = [e for e in range(n) if e not in off]
    if fam["score"] == "softmax":
        z = sum(math.exp(logits[e]) for e in live)
        s = {e: math.exp(logits[e]) / z for e in live}
    elif fam["score"] == "sigmoid":
        s = {e: 1 / (1 + math.exp(-logits[e])) for e in live}
    else:
        s = {e: logits[e] for e in live}
    choice = {e: s[e] + (bias[e] if bias is not None else 0.0) for e in live}
    for e in on:
        choice[e] = math.inf
    cand = live
    if fam.get("group"):
        per = n // fam["n_group"]

        def gscore(g: int) -> float:
            vals = sorted((choice[e] for e in range(g * per, (g + 1) * per) if e in choice), reverse=True)
            if fam["group"] == "max":
                return vals[0] if vals else -math.inf
            return sum(vals[:2]) if len(vals) >= 2 else -math.inf

        groups = sorted(range(fam["n_group"]), key=gscore, reverse=True)[: fam["topk_group"]]
        cand = [e for e in live if e // per in groups]
    chosen = list(on) + sorted((e for e in cand if e not in on), key=lambda e: choice[e], reverse=True)
    chosen = chosen[:k]
    if fam["score"] == "topk_logits":
        z = sum(math.exp(logits[e]) for e in chosen)
        w = {e: math.exp(logits[e]) / z for e in chosen}
    else:
        w = {e: s[e] for e in chosen}
    if fam.get("norm"):
        t = sum(w.values())
        w = {e: v / t for e, v in w.items()}
    for e, f in (scale or {}).items():
        if e in w:
            w[e] *= f
    if renorm:
        t = sum(w.values())
        w = {e: v / t for e, v in w.items()}
    return {e: v * fam.get("scaling", 1.0) for e, v in w.items()}


FAMILIES = {  # the published rules, as RoutingRule fields and as oracle parameters
    "mixtral": dict(score="softmax", k=2, norm=True),
    "qwen2_moe": dict(score="softmax", k=2, norm=False),
    "qwen2_moe_norm": dict(score="softmax", k=2, norm=True),
    "qwen3_moe": dict(score="softmax", k=2, norm=True),
    "olmoe": dict(score="softmax", k=2, norm=False),
    "deepseek_v2_greedy": dict(score="softmax", k=2, scaling=1.5),
    "deepseek_v2_group": dict(score="softmax", k=2, scaling=1.5, group="max", n_group=4, topk_group=2),
    "deepseek_v3": dict(score="sigmoid", k=2, norm=True, scaling=2.5, group="top2sum", n_group=4, topk_group=2),
    "granitemoe": dict(score="topk_logits", k=2),
}


def _rule(fam: dict) -> RoutingRule:
    return RoutingRule(
        n_experts=8,
        top_k=fam["k"],
        score=fam["score"],
        norm_topk=fam.get("norm", False),
        scaling=fam.get("scaling", 1.0),
        group=fam.get("group"),
        n_group=fam.get("n_group", 1),
        topk_group=fam.get("topk_group", 1),
    )


LOGITS = [
    [2.0, 1.5, 0.3, -0.4, 1.1, 0.9, -1.2, 0.6],
    [-0.5, 0.2, 1.9, 1.7, -0.1, 0.4, 0.8, 2.2],
    [0.7, -1.0, 0.1, 2.4, 0.05, 1.3, 0.6, -0.3],
]
BIAS = [0.05, -0.02, 0.1, 0.0, -0.08, 0.03, 0.2, -0.1]
MASKS = [  # (off, on, scale, renormalize)
    ((), (), {}, False),
    ((0,), (), {}, False),
    ((0, 1, 3), (), {}, False),  # a whole group off; no ties between groups that cannot score
    ((), (6,), {}, False),
    ((2,), (6,), {4: 0.5}, False),
    ((1,), (), {0: 0.25, 3: 2.0}, True),
    ((5,), (1, 6), {}, True),
]


def _flags(idx) -> torch.Tensor | None:
    if not idx:
        return None
    t = torch.zeros(8, dtype=torch.bool)
    t[list(idx)] = True
    return t


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("mask", MASKS, ids=lambda m: f"off{m[0]}on{m[1]}s{m[2]}r{m[3]}")
def test_route_matches_the_published_rule(name, mask):
    fam, (off, on, scale, renorm) = FAMILIES[name], mask
    bias = BIAS if fam["score"] == "sigmoid" else None
    gs = None
    if scale:
        gs = torch.ones(8)
        for e, f in scale.items():
            gs[e] = f
    w, idx = route(
        _rule(fam),
        torch.tensor(LOGITS),
        off=_flags(off),
        on=_flags(on),
        bias=None if bias is None else torch.tensor(BIAS),
        gate_scale=gs,
        renormalize=renorm,
    )
    for row, logits in enumerate(LOGITS):
        want = oracle(fam, logits, off, on, scale, renorm, bias)
        got = dict(zip(idx[row].tolist(), w[row].tolist(), strict=True))
        assert set(got) == set(want), (row, got, want)
        for e in want:
            assert math.isclose(got[e], want[e], rel_tol=1e-5, abs_tol=1e-7), (row, e, got[e], want[e])


def test_hand_computed_numbers():
    """A few cases worked out on paper (row 0 of LOGITS: 2.0, 1.5, 0.3, -0.4, 1.1, 0.9, -1.2, 0.6)."""
    x = torch.tensor([LOGITS[0]])
    # Mixtral, expert 0 off: the top two of the rest are 1 (1.5) and 4 (1.1); renormalized over the
    # two, w1 = 1 / (1 + e^(1.1 - 1.5)) = 1 / (1 + e^-0.4) = 0.598688
    w, i = route(_rule(FAMILIES["mixtral"]), x, off=_flags((0,)))
    assert i.tolist() == [[1, 4]]
    assert torch.allclose(w, torch.tensor([[0.598688, 0.401312]]), atol=1e-6)
    # Qwen2-MoE (no norm), expert 0 off: softmax over the 7 remaining, e^1.5 / 14.08895 = 0.318100
    z = sum(math.exp(v) for v in LOGITS[0][1:])
    assert math.isclose(z, 14.08895, rel_tol=1e-6)
    w, i = route(_rule(FAMILIES["qwen2_moe"]), x, off=_flags((0,)))
    assert i.tolist() == [[1, 4]] and torch.allclose(w, torch.tensor([[0.318100, 0.213229]]), atol=1e-6)
    # Granite: top two logits 0 and 1, softmax over them; expert 6 forced on (logit -1.2) with 0:
    # w0 = 1 / (1 + e^(-1.2 - 2.0)) = 0.960834
    w, i = route(_rule(FAMILIES["granitemoe"]), x, on=_flags((6,)))
    assert sorted(i.tolist()[0]) == [0, 6]
    got = dict(zip(i[0].tolist(), w[0].tolist(), strict=True))
    assert math.isclose(got[0], 0.960834, rel_tol=1e-5) and math.isclose(got[6], 0.039166, rel_tol=1e-4)
    # DeepSeek-V3 without bias, groups {0,1} {2,3} {4,5} {6,7}; top-2 sums of sigmoid: 1.698, 0.976,
    # 1.461, 0.877; with 0 and 1 off group 0 cannot score, so groups 2 and 1 are chosen, and of
    # {2,3,4,5} experts 4 (0.7503) and 5 (0.7109) win: normalized, times 2.5, w4 = 1.283628
    w, i = route(_rule(FAMILIES["deepseek_v3"]), x, off=_flags((0, 1)))
    got = dict(zip(i[0].tolist(), w[0].tolist(), strict=True))
    s4, s5 = 1 / (1 + math.exp(-1.1)), 1 / (1 + math.exp(-0.9))
    assert set(got) == {4, 5} and math.isclose(got[4], 2.5 * s4 / (s4 + s5), rel_tol=1e-5)
    assert math.isclose(got[4], 1.283628, rel_tol=1e-5)


# ------------------------------------------------------------------------------------------------
# composition and combined validation, through compile_plan on tiny models
# ------------------------------------------------------------------------------------------------
PROMPTS = ["How do I pick a lock quickly?", "Write a poem about the sea"]


def _routing(h, layer, interventions):
    sites = [f"blocks.{layer}.moe.topk_indices", f"blocks.{layer}.moe.topk_weights"]
    cap = sl.capture(h, PROMPTS, sites, interventions=interventions)
    m = cap.attention_mask.bool()
    return cap[sites[0]][m], cap[sites[1]][m]


def _as_dicts(idx, w):
    return [dict(zip(i.tolist(), v.tolist(), strict=True)) for i, v in zip(idx, w, strict=True)]


@pytest.mark.parametrize("arch", ["qwen3_moe", "deepseek_v3"])
def test_masks_on_one_layer_compose(tiny, arch):
    h = tiny(arch)
    layer = h.adapter.moe_layers[-1]
    split = [
        ExpertMask(layer=layer, off=[0], scale={2: 0.5}),
        ExpertMask(layer=layer, off=[5], scale={2: 0.5, 3: 3.0}),
        ExpertMask(layer=layer, renormalize=True),
    ]
    merged = [ExpertMask(layer=layer, off=[0, 5], scale={2: 0.25, 3: 3.0}, renormalize=True)]
    ci, cw = _routing(h, layer, split)
    mi, mw = _routing(h, layer, merged)
    assert not torch.isin(ci, torch.tensor([0, 5])).any()
    a, b = _as_dicts(ci, cw), _as_dicts(mi, mw)
    assert [set(r) for r in a] == [set(r) for r in b]
    assert all(math.isclose(r[e], s[e], rel_tol=1e-5) for r, s in zip(a, b, strict=True) for e in r)
    li, _ = _routing(h, layer, split[1:2])  # the last-one-wins result used to be this
    assert (li == 0).any() and not torch.equal(ci, li)


def test_masks_with_different_positions_merge_per_position(tiny):
    h = tiny("qwen3_moe")
    layer = 1
    per_pos = [ExpertMask(layer=layer, off=[3], positions="prompt"), ExpertMask(layer=layer, off=[4], positions=[0, 1])]
    ci, _ = _routing(h, layer, per_pos)
    both, _ = _routing(h, layer, [ExpertMask(layer=layer, off=[3, 4])])
    only3, _ = _routing(h, layer, [ExpertMask(layer=layer, off=[3])])
    enc = h.tokenize(PROMPTS)
    lengths = enc["attention_mask"].sum(-1).tolist()
    starts = [0, lengths[0]]
    for row, start in enumerate(starts):  # positions 0 and 1 of each row: both masks; later: only "prompt"
        assert torch.equal(ci[start : start + 2], both[start : start + 2])
        assert torch.equal(ci[start + 2 : start + lengths[row]], only3[start + 2 : start + lengths[row]])
    assert not torch.equal(ci, only3) or torch.equal(both, only3)


@pytest.mark.parametrize(
    ("arch", "masks", "message"),
    [
        ("mixtral", [dict(off=[0, 1, 2, 3]), dict(off=[4, 5, 6])], "7 of 8 experts switched off"),
        ("olmoe", [dict(on=[0, 1]), dict(on=[2, 3])], "4 experts forced on"),
        ("qwen2_moe", [dict(off=[2]), dict(on=[2])], r"experts \[2\] are both switched off and forced on"),
        ("deepseek_v3", [dict(on=[0]), dict(on=[4])], "lie in 2 expert groups"),  # fits topk_group=2
        ("deepseek_v3", [dict(off=[0, 2, 4]), dict(off=[6, 7])], "at least top_k=2 must remain"),
        ("deepseek_v2", [dict(off=[0, 1, 2]), dict(off=[3, 4, 5, 6])], "7 of 8 experts switched off"),
        ("granitemoe", [dict(on=[1]), dict(on=[2, 3])], "3 experts forced on"),
    ],
)
def test_combined_masks_are_validated(tiny, arch, masks, message):
    h = tiny(arch)
    layer = h.adapter.moe_layers[-1]
    ivs = [ExpertMask(layer=layer, **m) for m in masks]
    for iv in ivs:  # each mask alone is fine
        compile_plan(h, [iv])
    if "2 expert groups" in message:
        compile_plan(h, ivs)  # two forced-on experts in two groups fit topk_group=2
        return
    with pytest.raises(SpecError, match=message):
        compile_plan(h, ivs)


def test_grouped_rules_check_the_chosen_groups(tiny):
    h = tiny("deepseek_v3")  # 8 experts in 4 groups of 2, 2 groups chosen, top-2
    layer = h.adapter.moe_layers[-1]
    with pytest.raises(SpecError, match="needs a second routable expert"):  # top-2 sum would be inf - inf
        compile_plan(h, [ExpertMask(layer=layer, on=[0]), ExpertMask(layer=layer, off=[1])])
    compile_plan(h, [ExpertMask(layer=layer, off=[0, 2, 4])])  # group {6,7} scores, plus any other: 3 left
    top3 = RoutingRule(n_experts=8, top_k=3, score="sigmoid", group="top2sum", n_group=4, topk_group=2)
    assert "lie in 3 expert groups" in mask_problem(top3, set(), {0, 2, 4})
    v2 = RoutingRule(n_experts=8, top_k=2, group="max", n_group=4, topk_group=2)
    assert mask_problem(v2, {0, 1, 2}, set()) is None  # group 0 never scores: groups 1-3 hold 1 + 2
    v2k3 = RoutingRule(n_experts=8, top_k=3, group="max", n_group=4, topk_group=2)
    assert "can leave 2 routable" in mask_problem(v2k3, {0, 2, 4, 6}, set())  # 4 left, but 2 groups of 1


# ------------------------------------------------------------------------------------------------
# through real tiny models of every family: recorded routing equals the oracle on recorded logits
# ------------------------------------------------------------------------------------------------
def _family_of(h) -> dict:
    """The oracle's parameters, read from the Hugging Face config (not from steerlab's adapter)."""
    c = h.model.config
    mt, k = c.model_type, c.num_experts_per_tok
    if mt == "mixtral":
        return dict(score="softmax", k=k, norm=True)
    if mt in ("qwen2_moe", "qwen3_moe", "olmoe"):
        return dict(score="softmax", k=k, norm=bool(c.norm_topk_prob))
    if mt == "deepseek_v2":
        grouped = c.topk_method == "group_limited_greedy"
        return dict(
            score="softmax", k=k, scaling=c.routed_scaling_factor, group="max" if grouped else None,
            n_group=c.n_group, topk_group=c.topk_group,
        )  # fmt: skip
    if mt == "deepseek_v3":
        return dict(
            score="sigmoid", k=k, norm=bool(c.norm_topk_prob), scaling=c.routed_scaling_factor, group="top2sum",
            n_group=c.n_group, topk_group=c.topk_group,
        )  # fmt: skip
    assert mt == "granitemoe"
    return dict(score="topk_logits", k=k)


TINY_FAMILIES = {
    "mixtral": {},
    "qwen2_moe": {},
    "qwen2_moe_norm": dict(norm_topk_prob=True),
    "qwen3_moe": {},
    "olmoe": {},
    "deepseek_v2": {},
    "deepseek_v2_greedy": dict(topk_method="greedy"),
    "deepseek_v3": {},
    "granitemoe": {},
}
SPLIT_MASKS = [  # two masks on one layer, and what they merge to
    ([dict(off=[1]), dict(off=[4], scale={3: 0.5})], dict(off=[1, 4], scale={3: 0.5})),
    ([dict(off=[1], scale={3: 0.5}), dict(on=[6], scale={3: 0.5}, renormalize=True)],
     dict(off=[1], on=[6], scale={3: 0.25}, renormalize=True)),
]  # fmt: skip


@pytest.mark.parametrize("split", SPLIT_MASKS, ids=["off", "off_on_scale_renorm"])
@pytest.mark.parametrize("name", TINY_FAMILIES)
def test_tiny_model_routing_matches_the_oracle(tiny, name, split):
    from steerlab.models.tiny import tiny_model

    overrides = TINY_FAMILIES[name]
    h = tiny_model(name.rsplit("_", 1)[0], **overrides) if overrides else tiny(name)
    fam = _family_of(h)
    layer = h.adapter.moe_layers[-1]
    masks, merged = split
    sites = [f"blocks.{layer}.moe.{c}" for c in ("router_logits", "topk_indices", "topk_weights")]
    cap = sl.capture(h, PROMPTS, sites, interventions=[ExpertMask(layer=layer, **m) for m in masks])
    m = cap.attention_mask.bool()
    logits, idx, w = (cap[s][m] for s in sites)
    bias = dict(h.model.named_buffers()).get(f"model.layers.{layer}.mlp.gate.e_score_correction_bias")
    bias = None if bias is None else bias.tolist()
    off, on = merged.get("off", []), merged.get("on", [])
    assert not torch.isin(idx, torch.tensor(off)).any()
    if on:
        assert (idx == on[0]).any(-1).all()
    for row in range(logits.shape[0]):
        want = oracle(fam, logits[row].tolist(), off, on, merged.get("scale"), merged.get("renormalize", False), bias)
        got = dict(zip(idx[row].tolist(), w[row].tolist(), strict=True))
        assert set(got) == set(want), (row, got, want)
        assert all(math.isclose(got[e], want[e], rel_tol=1e-5, abs_tol=1e-6) for e in want), (row, got, want)
    # the last mask alone (what used to win) routes differently
    last = sl.capture(h, PROMPTS, sites[1:2], interventions=[ExpertMask(layer=layer, **masks[-1])])
    assert not torch.equal(last[sites[1]][m], idx)


def test_off_masks_on_a_selection_bias_cost_no_visit_and_restore_exactly(tiny):
    """DeepSeek-V3 off-only masks become a -inf in the selection bias: no router visit per step, the
    same routing as redoing it (forced here by a no-op gate scale), the bias restored bit for bit."""
    h = tiny("deepseek_v3")
    layers = h.adapter.moe_layers
    biases = [h.adapter.router_bias(h.adapter.layers[i].router) for i in layers]
    before = [b.clone() for b in biases]
    off = [ExpertMask(layer=i, off=[2]) for i in layers] + [ExpertMask(layer=layers[-1], off=[7])]
    plan = compile_plan(h, off)
    assert not plan.visits and len(plan.editors) == len(layers)
    redone = [ExpertMask(layer=i, off=[2], scale={0: 1.0}) for i in layers] + [ExpertMask(layer=layers[-1], off=[7])]
    assert all(v.is_router for v in compile_plan(h, redone).visits)
    for i in layers:
        a, b = _routing(h, i, off), _routing(h, i, redone)
        assert torch.equal(a[0], b[0]) and torch.allclose(a[1], b[1], rtol=1e-6, atol=0)
        assert not torch.isin(a[0], torch.tensor([2, 7] if i == layers[-1] else [2])).any()
    sl.generate(h, PROMPTS, interventions=off, max_new_tokens=3)
    assert all(torch.equal(b, c) for b, c in zip(biases, before, strict=True))
