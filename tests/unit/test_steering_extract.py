"""Directions from contrasting prompts, linear probes and saved directions (steerlab.steering), each
checked against values computed by hand or from activations captured separately."""

from __future__ import annotations

import json

import pytest
import torch

import steerlab as sl
from steerlab.errors import SpecError, SteerlabError, UnknownSiteError
from steerlab.steering.extract import (
    diff_in_means,
    expert_path_directions,
    extract_directions,
    pca_paired,
    pool,
    suite_prompts,
)
from steerlab.steering.linear_probes import auroc, fit_probe, load_probes, probe_profile, save_probes
from steerlab.steering.vectors import Directions, load_directions
from steerlab.suites import ProbeItem, ProbeSuite, suite_from_dict

POS = ["Once upon a time there was a dog", "The cat sat", "Lily saw a big red ball", "Tom ran home"]
NEG = ["The sun is hot", "Birds can fly high in the sky", "Mom made soup", "It was a rainy day today"]
TEST_POS = ["A girl found a shell", "The boy had a kite"]
TEST_NEG = ["Fish swim", "The tree was very tall and green"]


def _suite() -> ProbeSuite:
    return suite_from_dict({
        "format": "steerlab.suites", "name": "t", "labels": {"a": "A", "b": "B"}, "behavior": "a", "control": "b",
        "chat": False, "sources": [
            {"label": "a", "split": "train", "prompts": POS}, {"label": "b", "split": "train", "prompts": NEG},
            {"label": "a", "split": "test", "prompts": TEST_POS}, {"label": "b", "split": "test", "prompts": TEST_NEG},
        ]})


def _row_acts(h, prompts: list[str], site: str) -> list[torch.Tensor]:
    """Each prompt's activations [len, d], captured ONE prompt at a time (no padding at all)."""
    return [sl.capture(h, [p], [site])[site][0] for p in prompts]


def test_pool_by_hand():
    acts = torch.arange(24.0).view(2, 4, 3)  # row 0: one padding position; row 1: none
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    torch.testing.assert_close(pool(acts, mask, "last"), torch.tensor([[9.0, 10, 11], [21, 22, 23]]))
    torch.testing.assert_close(pool(acts, mask, "mean"), torch.tensor([[6.0, 7, 8], [16.5, 17.5, 18.5]]))
    torch.testing.assert_close(pool(acts, mask, [0]), torch.tensor([[3.0, 4, 5], [12, 13, 14]]))  # own coords
    torch.testing.assert_close(pool(acts, mask, [-2]), torch.tensor([[6.0, 7, 8], [18, 19, 20]]))
    torch.testing.assert_close(pool(acts, mask, [0, -1]), torch.tensor([[6.0, 7, 8], [16.5, 17.5, 18.5]]))
    torch.testing.assert_close(pool(acts, mask, "answer", [2, 1]), torch.tensor([[7.5, 8.5, 9.5], [21, 22, 23]]))
    with pytest.raises(SpecError, match="position 3 is outside prompt row 0, which has 3 tokens"):
        pool(acts, mask, [3])
    with pytest.raises(SpecError, match="is not one of 'last'"):
        pool(acts, mask, "first")


def test_diff_in_means_of_captured_activations(tiny):
    """extract_directions (batched, padded) == mean of per-prompt activations captured one by one."""
    h = tiny("llama")
    site = "blocks.1.resid_post"
    d = extract_directions(h, _suite(), [site, "blocks.0.resid_mid"], batch_size=3)
    a, b = _row_acts(h, POS, site), _row_acts(h, NEG, site)
    expect = torch.stack([r[-1] for r in a]).mean(0) - torch.stack([r[-1] for r in b]).mean(0)
    torch.testing.assert_close(d[site], expect, atol=1e-5, rtol=1e-5)
    assert d.sites == [site, "blocks.0.resid_mid"] and d.meta["method"] == "diff_in_means"
    assert d.meta["suite"] == "t" and d.meta["n_behavior"] == 4 and d.meta["model"] == h.spec
    # chosen indices: position 1 of each row (its own coordinates), averaged with the last token
    d2 = extract_directions(h, _suite(), [site], position=[1, -1], batch_size=3)
    pick = lambda rows: torch.stack([(r[1] + r[-1]) / 2 for r in rows]).mean(0)  # noqa: E731
    torch.testing.assert_close(d2[site], pick(a) - pick(b), atol=1e-5, rtol=1e-5)


def test_answer_position_means_over_the_answer_tokens(tiny):
    h = tiny("llama")
    site = "blocks.2.resid_post"
    answer = " and the end"
    n_ans = len(h.encode(["x" + answer])["input_ids"][0]) - len(h.encode(["x"])["input_ids"][0])
    from steerlab.steering.extract import collect

    got = collect(h, POS[:2], [site], "answer", answers=[answer, answer])[site]
    full = _row_acts(h, [p + answer for p in POS[:2]], site)
    torch.testing.assert_close(got, torch.stack([r[-n_ans:].mean(0) for r in full]), atol=1e-5, rtol=1e-5)


def test_pca_paired_by_hand():
    ctrl = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    e0 = torch.tensor([1.0, 0, 0, 0])
    beh = ctrl + torch.tensor([[1.0], [2.0], [3.0]]) * e0  # differences 1, 2, 3 along e0
    torch.testing.assert_close(pca_paired(beh, ctrl), 2.0 * e0)  # unit e0 x mean projection 2
    torch.testing.assert_close(pca_paired(ctrl, beh), -2.0 * e0)  # sign follows the behavior side
    torch.testing.assert_close(diff_in_means(beh, ctrl), 2.0 * e0)


def test_probe_numbers_by_hand():
    assert auroc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1])) == 0.75
    assert auroc(torch.tensor([1.0, 1.0]), torch.tensor([1, 0])) == 0.5  # a tie counts half
    g = torch.Generator().manual_seed(1)
    # classes differ along e1 only (by 6 sd): separable; the probe's weight must point along +e1
    a = torch.randn(200, 5, generator=g)
    b = torch.randn(200, 5, generator=g)
    a[:, 1] += 3
    b[:, 1] -= 3
    r = fit_probe(a[:150], b[:150], a[150:], b[150:], site="s", seed=0)
    assert r.test_acc == 1.0 and r.test_auroc == 1.0 and r.chance == 0.5
    # the shuffled-label control: at chance where no feature splits the data alone (shift 0.4 sd in 32 dims)
    c, e = torch.randn(300, 32, generator=g) + 0.2, torch.randn(300, 32, generator=g) - 0.2
    ctrl = fit_probe(c[:200], e[:200], c[200:], e[200:], n_shuffles=5)
    assert ctrl.test_acc > 0.8 and abs(ctrl.shuffled_acc - 0.5) < 0.05, ctrl.row()
    w = r.probe.weight / r.probe.weight.norm()
    assert float(w[1]) > 0.95
    # separation: Cohen's d of the held-out projections, recomputed from the diff-in-means direction
    u = (a[:150].mean(0) - b[:150].mean(0))
    u = u / u.norm()
    pa, pb = a[150:] @ u, b[150:] @ u
    sd = ((pa.var(unbiased=False) + pb.var(unbiased=False)) / 2).sqrt()
    assert r.separation == pytest.approx(float((pa.mean() - pb.mean()) / sd), rel=1e-5)
    # chance is the majority rate of the held-out split
    assert fit_probe(a[:150], b[:150], a[150:], b[150:180], site="s").chance == pytest.approx(50 / 80)
    # "lbfgs solves it to tolerance deterministically" (steering/logistic.py): a refit gives the same probe, bit for bit
    again = fit_probe(c[:200], e[:200], c[200:], e[200:], n_shuffles=5)
    assert torch.equal(again.probe.weight, ctrl.probe.weight) and again.probe.bias == ctrl.probe.bias
    assert again.row() == ctrl.row()


def test_probe_profile_save_load(tiny, tmp_path):
    h = tiny("llama")
    p = probe_profile(h, _suite(), ["blocks.0.resid_post", "blocks.2.resid_post"])
    assert [r.site for r in p.results] == ["blocks.0.resid_post", "blocks.2.resid_post"]
    assert p.meta["train_split"] == "train" and p.results[0].n_test == 4
    back = load_probes(save_probes(p, tmp_path / "probes"))
    dotted = load_probes(save_probes(p, tmp_path / "probes-v1.5"))  # a dot in the name stays
    assert (tmp_path / "probes-v1.5.json").exists() and dotted.results[0].row() == back.results[0].row()
    for r, q in zip(p.results, back.results, strict=True):
        assert torch.equal(r.probe.weight, q.probe.weight) and r.probe.bias == q.probe.bias
        assert r.row() == q.row()
    # the saved probe's verdicts on captured activations == its own logits > 0 computed by hand
    x = sl.capture(h, TEST_POS, ["blocks.2.resid_post"]).last("blocks.2.resid_post")
    pr = back.probe("blocks.2.resid_post")
    assert torch.equal(pr.fires(x), (x @ pr.weight + pr.bias) > 0)


def test_directions_round_trip_and_by_name(tmp_path, monkeypatch):
    v = torch.randn(8)
    d = Directions({"blocks.1.resid_post": v, "blocks.2.resid_post": 2 * v}, {"method": "pca", "suite": "s"})
    path = d.save(tmp_path / "dirs" / "mine")
    back = load_directions(tmp_path / "dirs" / "mine.safetensors")
    assert torch.equal(back["blocks.2.resid_post"], 2 * v) and back.meta == {"method": "pca", "suite": "s"}
    monkeypatch.setenv("STEERLAB_DIRECTIONS", str(tmp_path / "dirs"))
    assert torch.equal(load_directions("mine")["blocks.1.resid_post"], v)
    blob = (tmp_path / "dirs" / "mine.safetensors").read_bytes()
    (tmp_path / "dirs" / "mine.safetensors").write_bytes(blob[:-4] + b"\0\0\0\0")
    with pytest.raises(SteerlabError, match="does not match the recorded SHA-256"):
        load_directions("mine")
    assert json.loads(path.read_text())["sites"] == ["blocks.1.resid_post", "blocks.2.resid_post"]
    with pytest.raises(SpecError, match="no saved directions 'nothing'"):
        load_directions("nothing")
    with pytest.raises(SpecError, match="NaN or infinite"):
        Directions({"s": torch.tensor([1.0, float("nan")])})
    # a dot in the name is part of it: v0.2 and v0.3 are two saves, each loadable by the name it was saved under
    d.save(tmp_path / "dirs" / "refusal-v0.2")
    Directions({"blocks.1.resid_post": 3 * v}, {}).save(tmp_path / "dirs" / "refusal-v0.3")
    assert sorted(p.name for p in (tmp_path / "dirs").glob("refusal-*")) == [
        "refusal-v0.2.json", "refusal-v0.2.safetensors", "refusal-v0.3.json", "refusal-v0.3.safetensors"]
    assert torch.equal(load_directions(tmp_path / "dirs" / "refusal-v0.2")["blocks.2.resid_post"], 2 * v)
    assert torch.equal(load_directions("refusal-v0.3")["blocks.1.resid_post"], 3 * v)
    (tmp_path / "dirs" / "refusal-v0.3.safetensors").unlink()
    with pytest.raises(SteerlabError, match="names the tensors file 'refusal-v0.3.safetensors', which is not there"):
        load_directions("refusal-v0.3")


def test_bad_inputs(tiny):
    h = tiny("llama")
    with pytest.raises(UnknownSiteError, match="unknown site .blocks.99.resid_post.: layer 99 out of range"):
        extract_directions(h, _suite(), ["blocks.99.resid_post"])
    with pytest.raises(SpecError, match="unknown direction method 'mean'"):
        extract_directions(h, _suite(), method="mean")
    one_sided = ProbeSuite("half", "1", "", {"a": "", "b": ""}, "a", "b", ["train"],
                           [ProbeItem("x y", "a", "train", "inline")], chat=False)
    with pytest.raises(SpecError, match="has 1 'a' and 0 'b' prompts; a direction needs both labels"):
        suite_prompts(one_sided, "train", None)


def test_expert_path_directions(tiny):
    """One direction per routed expert of the MoE layer, each the diff-in-means of the rows whose top-1
    expert at the last token is that expert (grouped here by hand from a separate capture)."""
    h = tiny("deepseek_v3")
    layer = h.adapter.moe_layers[-1]
    site, router = f"blocks.{layer}.resid_post", f"blocks.{layer}.moe.topk_indices"
    pos, neg = POS + TEST_POS + NEG[:2], NEG[2:] + TEST_NEG + POS[:2]
    d = expert_path_directions(h, pos, neg, site, layer, min_count=1)
    ca, cb = sl.capture(h, pos, [site, router]), sl.capture(h, neg, [site, router])
    ea, eb = ca[router][:, -1, 0], cb[router][:, -1, 0]
    both = sorted(set(ea.tolist()) & set(eb.tolist()))
    assert both and sorted(int(k.split("expert")[1]) for k in d.sites) == both
    for e in both:
        expect = ca.last(site)[ea == e].mean(0) - cb.last(site)[eb == e].mean(0)
        torch.testing.assert_close(d[f"{site}@expert{e}"], expect, atol=1e-5, rtol=1e-5)
    with pytest.raises(SpecError, match="is not an MoE layer"):
        expert_path_directions(tiny("llama"), pos, neg, "blocks.1.resid_post", 1)
