"""Defects a researcher's review of the regions, security, experts and training APIs found (each test fails
without its fix): a hook left on the model after a failed switch-on, a nested switch-on that switched the outer
vector off, a LoRA target typo dropped, a misspelt ranking direction read as the other one, a resume across
another gradient mask, and counts, seeds and fractions silently truncated or raw library errors."""

from __future__ import annotations

import pytest
import torch

from steerlab.errors import SpecError, SteerlabError
from steerlab.experts.ftri import image
from steerlab.experts.switching import forceable, on_masks, random_controls
from steerlab.models.tiny import tiny_model
from steerlab.regions.perturb import language_nll
from steerlab.security.vectors import VectorConfig, new_vector
from steerlab.training import train


def _hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


@pytest.fixture(scope="module")
def llama():
    h = tiny_model("llama")
    return h, h.tokenize(["a b c d"])


def test_a_failed_switch_on_leaves_no_hook(llama, monkeypatch):
    h, ids = llama
    with pytest.raises(SpecError, match=r"layers \[1\] are given twice"):
        new_vector(h, VectorConfig(kind="add", layers=[1, 1]))
    base = h.model(**ids).logits.clone()
    v = new_vector(h, VectorConfig(kind="add", layers=[0, 1]))
    for t in v.tensors.values():
        t.fill_(0.5)
    layer1 = h.adapter.layers[1].layer

    def broken(*a, **k):
        raise RuntimeError("registration failed")

    monkeypatch.setattr(layer1, "register_forward_hook", broken)  # the second hook fails, the first is made
    with pytest.raises(RuntimeError, match="registration failed"):
        with v.on(h):
            pass
    monkeypatch.undo()
    assert _hooks(h.model) == 0 and torch.equal(h.model(**ids).logits, base)


@pytest.mark.parametrize("kind", ["lora", "add"])
def test_a_nested_switch_on_is_refused_and_the_outer_vector_stays_on(llama, kind):
    h, ids = llama
    cfg = VectorConfig(rank=2, target_modules=["q_proj"]) if kind == "lora" else VectorConfig(kind="add")
    v = new_vector(h, cfg)
    for t in v.tensors.values():
        torch.nn.init.normal_(t, std=0.5)
    base = h.model(**ids).logits.clone()
    with v.on(h) as params:
        on = h.model(**ids).logits.clone()
        assert not torch.equal(on, base)
        with pytest.raises(SteerlabError, match="already carries"):
            with v.on(h):
                pass
        assert torch.equal(h.model(**ids).logits, on)  # still on
        owned = {id(p) for p in h.model.parameters()}
        assert all(id(p) in owned for p in params)
    assert torch.equal(h.model(**ids).logits, base) and _hooks(h.model) == 0


def test_a_lora_target_typo_is_refused(llama):
    h, _ = llama
    with pytest.raises(SpecError, match=r"target_modules \['v_porj'\] match no linear module"):
        with new_vector(h, VectorConfig(rank=2, target_modules=["q_proj", "v_porj"])).on(h):
            pass
    assert not any("lora_" in n for n, _ in h.model.named_parameters())
    for alpha in ("16", float("inf"), True):
        with pytest.raises(SpecError, match="alpha="):
            new_vector(h, VectorConfig(alpha=alpha))


def test_resume_needs_the_same_mask(llama, tmp_path):
    h, ids = llama
    w = h.model.model.norm.weight
    m = torch.zeros_like(w, dtype=torch.bool)
    m[:4] = True
    kw = dict(params=[w], steps=4, lr=1e-2, seed=3, checkpoint_dir=tmp_path / "ck", checkpoint_every=2,
              progress=False)
    before = w.detach().clone()
    train(h.model, [ids] * 4, grad_mask={"model.norm.weight": m}, **kw)
    with pytest.raises(SpecError, match="is of another run"):
        train(h.model, [ids] * 4, grad_mask={"model.norm.weight": ~m}, **kw)
    with torch.no_grad():
        w.copy_(before)
    for bad, what in ((dict(betas=(1.5, 0.9)), "betas="), (dict(weight_decay="0.1"), "weight_decay="),
                      (dict(warmup=1.5), "warmup must be"), (dict(checkpoint_every=0.5), "checkpoint_every must be")):
        with pytest.raises(SpecError, match=what):
            train(h.model, [ids], params=[w], steps=1, lr=1e-2, seed=0, progress=False, **bad)


def test_experts_helpers_refuse_what_they_used_to_truncate():
    pairs = [(0, 1), (0, 2), (0, 3)]
    for call in (lambda: on_masks(pairs, top_k=-1), lambda: on_masks(pairs, top_k=0),
                 lambda: forceable(pairs, top_k=-1)):
        with pytest.raises(SpecError, match="top_k must be an integer >= 1"):
            call()
    with pytest.raises(SpecError, match="n must be an integer >= 0, got -3"):
        random_controls([(0, 1)], 8, -3)
    with pytest.raises(SteerlabError, match=r"experts \[\(0, 99\)\] are out of range"):
        random_controls([(0, 99)], 8, 2)
    with pytest.raises(SpecError, match="seed must be an integer >= 0, got 1.5"):
        random_controls([(0, 1)], 8, 1, seed=1.5)
    with pytest.raises(SteerlabError, match="base_freq of shape"):
        random_controls([(5, 1)], 8, 2, base_freq=torch.rand(3, 8), layers=[0, 1, 2])


def test_ftri_reads_one_prompt_as_one_and_a_direction_by_name():
    h = tiny_model("mixtral")
    r = image(h, "How do I pick a lock?", ["Tell me a story.", "Name a fruit."], scope="prompt", n_permutations=20)
    assert (r.config["n_behavior"], r.config["n_control"]) == (1, 2)
    with pytest.raises(SteerlabError, match="direction 'behaviour'; expected 'behavior' or 'control'"):
        r.ranking(direction="behaviour")
    with pytest.raises(SpecError, match="top must be an integer >= 1, got -1"):
        r.table(top=-1)
    with pytest.raises(SpecError, match="seed must be an integer"):
        image(h, ["a"], ["b"], scope="prompt", seed=1.5)


def test_regions_counts_and_fractions(stories):
    from steerlab.regions.importance import score_importance
    from steerlab.regions.select import core_region, random_region

    with pytest.raises(SpecError, match="n_eval must be an integer >= 1 or None, got -60"):
        language_nll(stories, ["eng"], n_eval=-60)  # was texts[:-60]: 4 passages, no word
    with pytest.raises(SpecError, match="token_budget must be an integer >= 1, got 40.5"):
        score_importance(stories, ["eng"], token_budget=40.5, progress=False)
    imp = score_importance(stories, ["eng"], token_budget=64, progress=False)
    with pytest.raises(SpecError, match=r"fraction must be in \(0, 0.5\], got .0.01."):
        core_region(imp, "0.01")
    with pytest.raises(SpecError, match="seed must be an integer >= 0, got 1.5"):
        random_region(imp, 0.01, seed=1.5)
    import numpy as np

    assert core_region(imp, np.float32(0.01)).size() == core_region(imp, 0.01).size()


def test_a_lora_and_an_add_vector_can_be_on_together_and_both_come_off(llama):
    h, ids = llama
    lora = new_vector(h, VectorConfig(rank=2, target_modules=["q_proj"]))
    add = new_vector(h, VectorConfig(kind="add", layers=[1]))
    for t in [*lora.tensors.values(), *add.tensors.values()]:
        torch.nn.init.normal_(t, std=0.5)
    base = h.model(**ids).logits.clone()
    with lora.on(h):
        only_lora = h.model(**ids).logits.clone()
        with add.on(h):
            both = h.model(**ids).logits.clone()
        assert torch.equal(h.model(**ids).logits, only_lora) and not torch.equal(both, only_lora)
    assert torch.equal(h.model(**ids).logits, base) and _hooks(h.model) == 0
    assert not any("lora_" in n for n, _ in h.model.named_parameters())


def test_finetune_checkpoints_every_n_steps_and_resumes_bit_for_bit(tmp_path, monkeypatch):
    import steerlab.training as training
    from steerlab.security.data import benign_pairs
    from steerlab.security.stages import finetune

    pairs = benign_pairs(16, "train", 0)
    kw = dict(steps=4, batch_size=4, lr=1e-3, seed=0, progress=False, checkpoint_every=2)
    whole = tiny_model("llama")
    finetune(whole, pairs, **kw)
    h = tiny_model("llama")
    calls = {"n": 0}
    real = training.lm_loss

    def fail_at_step_3(model, b):
        calls["n"] += 1
        if calls["n"] == 4:  # steps 0-2 run and step 2's checkpoint is written; step 3 fails
            raise RuntimeError("interrupted")
        return real(model, b)

    monkeypatch.setattr(training, "lm_loss", fail_at_step_3)
    with pytest.raises(RuntimeError, match="interrupted"):
        finetune(h, pairs, checkpoint_dir=tmp_path / "ck", **kw)
    monkeypatch.setattr(training, "lm_loss", real)
    res = finetune(h, pairs, checkpoint_dir=tmp_path / "ck", **kw)
    assert res.resumed_from == 2
    assert all(torch.equal(a, b) for a, b in zip(h.model.parameters(), whole.model.parameters(), strict=True))
