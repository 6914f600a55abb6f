"""Parity: captured activations and logits equal the plain Hugging Face forward, on the shared
models and a tiny from-config model of every supported architecture; router captures equal the
routers' own outputs; the TransformerBridge engine agrees with the nnsight engine."""

from __future__ import annotations

import pytest
import torch

import steerlab as sl
from steerlab.generation import position_ids
from steerlab.models.adapters import route
from steerlab.models.tiny import MOE_ARCHITECTURES, TINY_ARCHITECTURES

PROMPTS = ["Once upon a time there was", "The dog", "A"]
ATOL = 1e-4


def _reference(h, prompts):
    enc = h.tokenize(prompts)
    with torch.no_grad():
        ref = h.model(**enc, position_ids=position_ids(enc["attention_mask"]), output_hidden_states=True)
    return enc, ref


def _check_dense_parity(h, prompts=PROMPTS):
    L = h.adapter.n_layers
    sites = [s for s in h.sites if s.split(".")[-1] not in ("router_logits", "topk_weights", "topk_indices")]
    cap = sl.capture(h, prompts, sites)
    enc, ref = _reference(h, prompts)
    m = enc["attention_mask"].bool()
    assert torch.equal(cap.attention_mask.bool(), m.cpu())

    def close(a, b, what):
        err = (a[m] - b[m]).abs().max().item()
        assert err <= ATOL, f"{h.spec} {what}: max abs error {err}"

    for i in range(L):
        close(cap[f"blocks.{i}.resid_pre"], ref.hidden_states[i], f"resid_pre {i}")
        if i + 1 < L:
            close(cap[f"blocks.{i}.resid_post"], ref.hidden_states[i + 1], f"resid_post {i}")
        if f"blocks.{i}.resid_mid" in cap.sites:
            close(cap[f"blocks.{i}.resid_pre"] + cap[f"blocks.{i}.attn_out"], cap[f"blocks.{i}.resid_mid"], f"mid {i}")
            close(cap[f"blocks.{i}.resid_mid"] + cap[f"blocks.{i}.mlp_out"], cap[f"blocks.{i}.resid_post"], f"post {i}")
        else:  # parallel residual: post = pre + attn + mlp
            total = cap[f"blocks.{i}.resid_pre"] + cap[f"blocks.{i}.attn_out"] + cap[f"blocks.{i}.mlp_out"]
            close(total, cap[f"blocks.{i}.resid_post"], f"parallel post {i}")
    if h.adapter.family != "gpt2":  # GPT-2 adds position embeddings after the token embedding
        close(cap["embed"], ref.hidden_states[0], "embed")
    close(cap["final_norm"], ref.hidden_states[L], "final_norm")
    close(cap["logits"], ref.logits, "logits")
    # the steerlab forward itself is the plain forward
    assert torch.equal(sl.forward(h, enc), ref.logits)
    # a left-padded row computes what it computes alone
    alone = sl.capture(h, [prompts[1]], ["logits"])["logits"][0]
    n = alone.shape[0]
    assert (cap["logits"][1, -n:] - alone).abs().max().item() <= ATOL


def test_stories_parity(stories):
    _check_dense_parity(stories)


@pytest.mark.slow
def test_smollm_parity(smollm):
    _check_dense_parity(smollm, ["What is the capital of France?", "Hi"])


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_tiny_parity(tiny, arch):
    _check_dense_parity(tiny(arch))


@pytest.mark.parametrize("arch", MOE_ARCHITECTURES)
def test_router_captures_match_router_outputs(tiny, arch):
    h = tiny(arch)
    layers = h.adapter.moe_layers
    sites = [f"blocks.{i}.moe.{c}" for i in layers for c in ("router_logits", "topk_weights", "topk_indices")]
    truth: dict[int, tuple] = {}
    handles = [
        h.adapter.layers[i].router.register_forward_hook(lambda m, a, out, i=i: truth.__setitem__(i, out))
        for i in layers
    ]
    try:
        enc, _ = _reference(h, PROMPTS)  # the plain forward fills `truth`
    finally:
        for hd in handles:
            hd.remove()
    cap = sl.capture(h, PROMPTS, sites)
    m = enc["attention_mask"].bool()
    b, t = m.shape
    for i in layers:
        logits, weights, idx = (x.reshape(b, t, -1) for x in truth[i])
        assert torch.allclose(cap[f"blocks.{i}.moe.router_logits"][m], logits[m].float(), atol=ATOL)
        assert torch.equal(cap[f"blocks.{i}.moe.topk_indices"][m], idx[m])
        assert torch.allclose(cap[f"blocks.{i}.moe.topk_weights"][m], weights[m].float(), atol=ATOL)
        # steerlab's replica of the family's routing rule reproduces the router exactly
        rule = h.adapter.layers[i].rule
        w2, i2 = route(rule, truth[i][0], bias=h.adapter.router_bias(h.adapter.layers[i].router))
        assert torch.equal(i2.sort(-1).values, truth[i][2].sort(-1).values)
        order_a, order_b = i2.argsort(-1), truth[i][2].argsort(-1)
        assert torch.allclose(w2.gather(1, order_a), truth[i][1].gather(1, order_b), atol=1e-6)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox", "mixtral", "qwen2_moe", "deepseek_v3"])
def test_bridge_engine_agrees(tiny, arch):
    h = tiny(arch)
    sites = ["blocks.0.resid_pre", "blocks.1.attn_out", "blocks.1.mlp_out", "blocks.2.resid_post", "logits"]
    a = sl.capture(h, PROMPTS, sites)
    b = sl.capture(h, PROMPTS, sites, engine="bridge")
    for s in sites:
        assert (a[s] - b[s]).abs().max().item() <= ATOL, s


def test_bridge_engine_on_stories(stories):
    sites = ["blocks.1.resid_mid", "blocks.4.resid_post", "logits"]
    a = sl.capture(stories, PROMPTS, sites)
    b = sl.capture(stories, PROMPTS, sites, engine="bridge")
    for s in sites:
        assert (a[s] - b[s]).abs().max().item() <= ATOL, s
