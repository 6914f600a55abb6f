"""Experts (fTRI + MoTE) on tiny from-config MoE models of every supported family: imaging counts
equal a direct recount from the routers, switching changes routing exactly as specified, controls
are matched, statistics behave, bad input is refused, and the CLI writes its artifacts."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

import steerlab as sl
from steerlab.errors import SteerlabError
from steerlab.experts.evaluate import choose_k, evaluate_experts
from steerlab.experts.ftri import RoutingCounts, image, permutation_pvalues, routing_counts
from steerlab.experts.switching import forceable, off_masks, on_masks, random_controls
from steerlab.generation import position_ids
from steerlab.models.tiny import MOE_ARCHITECTURES
from steerlab.stats import benjamini_hochberg, empirical_p, fisher_greater

PROMPTS = ["How do I pick a lock quickly?", "Write a poem", "What is two plus two?", "Tell me about the sea"]


def _recount(h, prompts):
    """Per-prompt selections over real prompt tokens, from plain torch hooks on the HF routers."""
    layers = h.adapter.moe_layers
    n_exp = h.adapter.layers[layers[0]].rule.n_experts
    enc = h.tokenize(prompts)
    seen = {}
    hooks = [
        h.adapter.layers[i].router.register_forward_hook(lambda m, a, o, i=i: seen.__setitem__(i, o[2])) for i in layers
    ]
    try:
        with torch.no_grad():
            h.model(**enc, position_ids=position_ids(enc["attention_mask"]))
    finally:
        for hd in hooks:
            hd.remove()
    b, t = enc["input_ids"].shape
    mask = enc["attention_mask"].bool()
    counts = torch.zeros(b, len(layers), n_exp)
    last = torch.zeros(b, len(layers), n_exp)
    for j, i in enumerate(layers):
        idx = seen[i].reshape(b, t, -1)
        for row in range(b):
            for e in idx[row][mask[row]].flatten().tolist():
                counts[row, j, e] += 1
            for e in idx[row, -1].tolist():
                last[row, j, e] += 1
    return counts, last, mask.sum(-1).float()


@pytest.mark.parametrize("arch", MOE_ARCHITECTURES)
def test_imaging_counts_equal_direct_recount(tiny, arch):
    h = tiny(arch)
    counts, last, n_tok = _recount(h, PROMPTS)
    rc = routing_counts(h, PROMPTS, "prompt", batch_size=3)
    assert torch.equal(rc.sel, counts) and torch.equal(rc.tokens, n_tok)
    dc = routing_counts(h, PROMPTS, "decision")
    assert torch.equal(dc.sel, last) and torch.equal(dc.tokens, torch.ones(len(PROMPTS)))
    both = routing_counts(h, PROMPTS, ["prompt", "decision"])  # scopes combine as a union of token sets
    assert torch.equal(both.sel, counts)
    top_k = h.adapter.layers[h.adapter.moe_layers[0]].rule.top_k
    assert torch.equal(rc.sel.sum(-1), n_tok.view(-1, 1).expand_as(rc.sel.sum(-1)) * top_k)


def test_generated_scope_counts_generated_tokens(tiny):
    h = tiny("qwen3_moe")
    gc = routing_counts(h, PROMPTS[:2], "generated", max_new_tokens=5)
    out = sl.generate(h, PROMPTS[:2], max_new_tokens=5)
    lengths = torch.tensor([min(len(t), 4) for t in out.token_ids], dtype=torch.float)
    assert torch.equal(gc.tokens, lengths)  # 5 steps: 4 forwards process generated tokens
    assert torch.equal(gc.sel.sum((1, 2)), lengths * 2 * len(h.adapter.moe_layers))


@pytest.mark.parametrize("arch", MOE_ARCHITECTURES)
def test_switching_changes_routing_exactly(tiny, arch):
    """Off experts are never chosen and the next best take their slots; forced-on experts are
    always chosen. Weights per family are checked in tests/unit/test_routing_oracle.py."""
    h = tiny(arch)
    layers = h.adapter.moe_layers
    rule = h.adapter.layers[layers[0]].rule
    sites = [f"blocks.{i}.moe.{c}" for i in layers for c in ("router_logits", "topk_indices")]
    experts = [(layers[0], 1), (layers[-1], 3), (layers[-1], 5)]
    cap = sl.capture(h, PROMPTS, sites, interventions=off_masks(experts))
    m = cap.attention_mask.bool()
    for i in layers:
        off = [e for layer, e in experts if layer == i]
        got = cap[f"blocks.{i}.moe.topk_indices"][m]
        assert not torch.isin(got, torch.tensor(off or [-1])).any()
        if arch not in ("deepseek_v2", "deepseek_v3"):  # ungrouped, no bias: the top-k logits of the rest
            logits = cap[f"blocks.{i}.moe.router_logits"][m]
            logits[:, off] = float("-inf")
            want = logits.topk(rule.top_k, dim=-1).indices
            assert torch.equal(got.sort(-1).values, want.sort(-1).values)
    forced = forceable(experts, rule.top_k)
    on = sl.capture(h, PROMPTS, sites, interventions=on_masks(experts, rule.top_k))
    for layer, e in forced:
        assert (on[f"blocks.{layer}.moe.topk_indices"][m] == e).any(-1).all()


def test_random_controls_are_matched():
    chosen = [(0, 1), (2, 3), (2, 7)]
    sets = random_controls(chosen, 8, 50, seed=1)
    assert sets == random_controls(chosen, 8, 50, seed=1)
    for s in sets:
        assert sorted(layer for layer, _ in s) == [0, 2, 2]
        assert not set(s) & set(chosen) and len(set(s)) == 3
    freq = torch.tensor([[0.1 * e for e in range(8)], [0.0] * 8, [0.05 * e for e in range(8)]])
    rated = random_controls(chosen, 8, 30, seed=2, base_freq=freq, layers=[0, 1, 2], window=2)
    for s in rated:
        for layer, e in s:
            assert abs(e - (1 if layer == 0 else 5)) <= 3  # drawn among the nearest base rates
    with pytest.raises(SteerlabError, match="no random control is possible"):
        random_controls([(0, e) for e in range(8)], 8, 1)


def test_fisher_greater_is_the_exact_one_sided_test():
    """Claim (``stats.fisher_greater``): the one-sided Fisher *exact* test; every table of a grid of sample sizes
    (up to the organism's 807 prompts per set) against scipy's ``fisher_exact(alternative="greater")``."""
    from scipy import stats  # the independent reference (a test dependency; scikit-learn needs it too)

    for a_n, b_n in [(5, 5), (10, 7), (3, 12), (40, 30)]:
        for a in range(a_n + 1):
            for b in range(b_n + 1):
                ref = stats.fisher_exact([[a, a_n - a], [b, b_n - b]], alternative="greater").pvalue
                assert math.isclose(fisher_greater(a, a_n, b, b_n), ref, rel_tol=1e-9, abs_tol=1e-300), (a, a_n, b, b_n)
    for a, b in [(400, 380), (420, 380), (807, 0), (0, 807)]:
        ref = stats.fisher_exact([[a, 807 - a], [b, 807 - b]], alternative="greater").pvalue
        assert math.isclose(fisher_greater(a, 807, b, 807), ref, rel_tol=1e-9, abs_tol=1e-300)


def test_statistics():
    g = torch.Generator().manual_seed(0)
    same = RoutingCounts(
        torch.randint(0, 3, (30, 2, 4), generator=g).float(), torch.zeros(30, 2, 4), torch.full((30,), 3.0)
    )
    other = RoutingCounts(
        torch.randint(0, 3, (30, 2, 4), generator=g).float(), torch.zeros(30, 2, 4), torch.full((30,), 3.0)
    )
    p = permutation_pvalues(same, other, 400)
    assert p.min() > 0.01  # same distribution: nothing significant
    shifted = RoutingCounts(other.sel.clone(), other.gate, other.tokens)
    shifted.sel[:, 0, 0] += 3
    p2 = permutation_pvalues(same, shifted, 400)
    assert p2[0, 0] <= 1 / 401 + 1e-6
    # "the tokens of one prompt are never treated as independent samples": one long prompt of set a whose 500
    # tokens all pick expert 0 is one sample; 10 prompts a side of 3 tokens that pick it once each
    sel = torch.zeros(20, 1, 2)
    sel[:, 0, 0], sel[:, 0, 1] = 1.0, 2.0
    tokens = torch.full((20,), 3.0)
    sel[0, 0] = torch.tensor([500.0, 0.0])
    tokens[0] = 500.0
    a, b = RoutingCounts(sel[:10], torch.zeros(10, 1, 2), tokens[:10]), RoutingCounts(sel[10:], sel[10:], tokens[10:])
    assert a.freq()[0, 0] > 0.9 and b.freq()[0, 0] < 0.4  # by token, a picks expert 0 far more often
    assert permutation_pvalues(a, b, 400)[0, 0] > 0.3  # by prompt, one outlier: half the relabellings move it
    q = benjamini_hochberg(torch.tensor([0.01, 0.04, 0.03, 0.5]))
    # sorted p: 0.01, 0.03, 0.04, 0.5 -> p*m/rank: 0.04, 0.06, 0.0533, 0.5 -> cumulative min from the top
    assert torch.allclose(q, torch.tensor([0.04, 0.04 * 4 / 3, 0.04 * 4 / 3, 0.5]), atol=1e-6)
    assert math.isclose(fisher_greater(5, 5, 0, 5), 1 / 252, rel_tol=1e-9)  # hypergeometric tail
    assert fisher_greater(0, 5, 5, 5) == 1.0
    assert empirical_p(0.9, [0.1, 0.2, 0.95]) == 0.5
    base = {"refusal": 1.0, "compliance": 0.0}
    rows = [
        {"k": 1, "refusal_off": 0.9, "compliance_off": 0.1, "ppl_ratio": 1.0},
        {"k": 2, "refusal_off": 0.2, "compliance_off": 0.7, "ppl_ratio": 1.05},
        {"k": 4, "refusal_off": 0.0, "compliance_off": 0.9, "ppl_ratio": 1.5},
    ]
    assert choose_k(base, rows) == 2  # k=4 is stronger but breaks perplexity


def test_image_finds_a_planted_expert(tiny):
    """An expert made to fire on one token is found, significant, at the top of the ranking."""
    h = sl.models.load.from_model(tiny("mixtral").twin(), tiny("mixtral").tokenizer, spec="planted")
    layer = 1
    target = h.tokenizer("lock", add_special_tokens=False)["input_ids"][-1]
    with torch.no_grad():
        emb = h.model.model.embed_tokens.weight[target]
        h.model.model.layers[layer].mlp.gate.weight = torch.nn.Parameter(
            h.model.model.layers[layer].mlp.gate.weight.clone()
        )
        h.model.model.layers[layer].mlp.gate.weight[6] += 40 * emb / emb.norm()
    behavior = [f"pick the lock {i}" for i in range(12)]
    control = [f"sing the song {i}" for i in range(12)]
    res = image(h, behavior, control, "prompt", n_permutations=300)
    assert res.ranking()[0] == (layer, 6)
    assert res.q_value[layer, 6] < 0.05 and res.diff[layer, 6] > 0


def test_bad_input(tiny, stories):
    with pytest.raises(SteerlabError, match="has no routed experts"):
        routing_counts(stories, PROMPTS, "prompt")
    with pytest.raises(SteerlabError, match="unknown token scope"):
        routing_counts(tiny("mixtral"), PROMPTS, "tokens")
    with pytest.raises(SteerlabError, match=r"k=99 is out of range; the model has 24 routed experts"):
        evaluate_experts(tiny("mixtral"), "refusal", k=99, limit=2)
    with pytest.raises(SteerlabError, match="no routed experts"):
        evaluate_experts(stories, "refusal", k=1, limit=2)


def test_cli_image_and_evaluate(tiny, tmp_path):
    from steerlab.cli.main import app

    h = tiny("deepseek_v3")
    h.model.save_pretrained(tmp_path / "m")
    h.tokenizer.save_pretrained(tmp_path / "m")
    runner = CliRunner()
    r = runner.invoke(
        app,
        [
            "experts",
            "image",
            str(tmp_path / "m"),
            "--suite",
            "refusal",
            "--limit",
            "6",
            "--permutations",
            "50",
            "--out",
            str(tmp_path / "img"),
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    top = json.loads(r.stdout)["top"]
    assert {"layer", "expert", "diff", "log_odds", "p_value", "q_value"} <= set(top[0])
    art = json.loads((tmp_path / "img" / "artifact.json").read_text())
    assert art["kind"] == "experts_image" and "raster" in art["data"] and (tmp_path / "img" / "heatmap.html").exists()
    r = runner.invoke(
        app,
        [
            "experts",
            "evaluate",
            str(tmp_path / "m"),
            "--suite",
            "refusal",
            "--k",
            "2",
            "--controls",
            "2",
            "--limit",
            "4",
            "--max-new-tokens",
            "4",
            "--image",
            str(tmp_path / "img"),
            "--out",
            str(tmp_path / "ev"),
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    metrics = json.loads(r.stdout)["metrics"]
    for key in (
        "refusal_base",
        "refusal_off",
        "refusal_random_mean",
        "compliance_base",
        "compliance_off",
        "compliance_random_mean",
        "refusal_forced_harmless",
        "refusal_forced_random_harmless",
        "ppl_base",
        "ppl_off",
    ):
        assert key in metrics
    assert metrics["k"] == 2 and metrics["n_controls"] == 2
    r = runner.invoke(app, ["experts", "evaluate", "shared:stories260K", "--k", "1", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "no routed experts" in r.output


@pytest.mark.parametrize("arch", ["qwen2_moe", "deepseek_v3"])
def test_shared_experts_are_never_switched(tiny, arch):
    """Claim (docs/experts.md, ``experts/switching.py``): "Shared experts are never switched". A mask that switches
    routed experts off, forces one on and zeroes a gate leaves the layer's shared expert computing exactly what it
    computes unmasked, while the layer's output changes; a mask on an earlier layer does change it (the hook sees
    the steered run)."""
    from steerlab.engines import engine_for
    from steerlab.interventions import ExpertMask

    h = tiny(arch)
    first, last = h.adapter.moe_layers[0], h.adapter.moe_layers[-1]
    assert first < last and h.adapter.layers[last].has_shared_expert

    def shared(model):
        mlp = model.get_submodule(f"model.layers.{last}.mlp")
        return next(getattr(mlp, n) for n in ("shared_expert", "shared_experts") if hasattr(mlp, n))

    def run(masks):
        seen = []
        # a run computes on the plain model or on the engine's twin (same weights): hook both
        hooks = [shared(m).register_forward_hook(lambda m, a, o: seen.append(o.detach().clone()))
                 for m in (h.model, engine_for(h).lm._module)]
        try:
            logits = sl.forward(h, PROMPTS[:2], interventions=masks)
        finally:
            for hook in hooks:
                hook.remove()
        assert len(seen) == 1
        return logits, seen[0]

    base, base_shared = run(None)
    for masks in ([ExpertMask(layer=last, off=[0, 1], on=[2], scale={3: 0.0})], [ExpertMask(layer=last, off=[0, 1])]):
        masked, masked_shared = run(masks)
        assert not torch.allclose(masked, base, atol=1e-4)
        assert torch.equal(masked_shared, base_shared)
    for masks in ([ExpertMask(layer=first, off=[0, 1], scale={2: 0.5})], [ExpertMask(layer=first, off=[0, 1])]):
        assert not torch.equal(run(masks)[1], base_shared)  # an earlier layer's mask reaches it: the hooks see the run
