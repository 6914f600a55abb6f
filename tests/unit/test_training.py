"""The shared training loop: determinism, resume == uninterrupted, gradient masks, per-part curves, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from steerlab.errors import SpecError
from steerlab.models.tiny import tiny_model
from steerlab.training import lm_loss, train


def _batches(h, n=4):
    texts = ["a b c d e", "the cat sat", "one two three four", "x y z"]
    return [h.tokenize([texts[i % 4], texts[(i + 1) % 4]]) for i in range(n)]


def _state(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_deterministic_for_a_seed():
    runs = []
    for _ in range(2):
        h = tiny_model("llama", seed=0)
        r = train(h.model, _batches(h), steps=4, lr=1e-2, seed=0, progress=False)
        runs.append((_state(h.model), r))
    (a, ra), (b, rb) = runs
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert ra.losses == rb.losses
    assert [s for s, _ in ra.losses["train"]] == [0, 1, 2, 3]
    # the loss at step 0 is the untouched model's loss, re-derived from scratch
    h0 = tiny_model("llama", seed=0)
    b0 = _batches(h0)[0]
    ids, mask = b0["input_ids"], b0["attention_mask"]
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = h0.model(input_ids=ids, attention_mask=mask, position_ids=pos).logits.float()
    nll = nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2),
        ids[:, 1:].masked_fill(~(mask[:, 1:].bool() & mask[:, :-1].bool()), -100),
        ignore_index=-100,
    )
    assert math.isclose(ra.losses["train"][0][1], float(nll), rel_tol=1e-5)
    # training changed the weights and lowered the loss on the repeated batches
    assert not torch.equal(a["model.norm.weight"], h0.model.model.norm.weight)


def test_seed_reaches_dropout():
    outs = []
    for seed in (0, 0, 1):
        h = tiny_model("llama", seed=0, attention_dropout=0.5)
        train(h.model, _batches(h), steps=2, lr=1e-2, seed=seed, progress=False)
        outs.append(h.model.model.norm.weight.detach().clone())
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])


def test_resume_equals_uninterrupted(tmp_path):
    h_full = tiny_model("llama", seed=0)
    kw = dict(steps=6, lr=1e-2, seed=3, weight_decay=0.01, progress=False, checkpoint_every=2)
    full = train(h_full.model, _batches(h_full), **kw, checkpoint_dir=tmp_path / "a")

    h = tiny_model("llama", seed=0)
    calls = []

    def interrupted(step):
        if step == 3:
            raise KeyboardInterrupt
        calls.append(step)
        return _batches(h)[step % 4]

    with pytest.raises(KeyboardInterrupt):
        train(h.model, interrupted, **kw, checkpoint_dir=tmp_path / "b")
    # a fresh process: a fresh model from the same spec, resumed from the checkpoint at step 2
    h2 = tiny_model("llama", seed=0)
    r = train(h2.model, lambda s: _batches(h2)[s % 4], **kw, checkpoint_dir=tmp_path / "b")
    assert r.resumed_from == 2 and r.steps == 6
    a, b = _state(h_full.model), _state(h2.model)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert r.losses == full.losses
    # a finished checkpoint: the run is not repeated, the weights are restored
    h3 = tiny_model("llama", seed=0)
    r3 = train(h3.model, _batches(h3), **kw, checkpoint_dir=tmp_path / "a")
    assert r3.resumed_from == 6 and all(torch.equal(a[n], p) for n, p in _state(h3.model).items())
    # another run's checkpoint is refused by name
    with pytest.raises(SpecError, match="another run"):
        train(tiny_model("llama", seed=0).model, _batches(h3), **{**kw, "lr": 2e-2}, checkpoint_dir=tmp_path / "a")
    # and so is one of another run_key (e.g. another weight of a loss term)
    with pytest.raises(SpecError, match="another run"):
        train(tiny_model("llama", seed=0).model, _batches(h3), **kw, run_key={"w": 1.0}, checkpoint_dir=tmp_path / "a")
    # and one of another AdamW eps
    with pytest.raises(SpecError, match="another run"):
        train(tiny_model("llama", seed=0).model, _batches(h3), **kw, eps=1e-6, checkpoint_dir=tmp_path / "a")


def test_resume_on_other_data_is_refused_and_loads_nothing(tmp_path):
    """A checkpoint keeps a digest of each batch it trained on: resuming with another batch among them is refused,
    naming the batch, before the checkpoint touches the model; the checkpoint stays as it was."""
    kw = dict(steps=6, lr=1e-2, seed=3, progress=False, checkpoint_every=2)
    h = tiny_model("llama", seed=0)

    def interrupted(step):
        if step == 3:
            raise KeyboardInterrupt
        return _batches(h)[step % 4]

    with pytest.raises(KeyboardInterrupt):
        train(h.model, interrupted, **kw, checkpoint_dir=tmp_path / "c")
    state = (tmp_path / "c" / "state.json").read_bytes()
    h2 = tiny_model("llama", seed=0)
    before = _state(h2.model)
    orig = _batches(h2)
    other = orig[1:] + orig[:1]  # every batch shifted by one: batch 0 already differs
    same_first = [orig[0], orig[2], orig[3], orig[0]]  # batch 0 the same, batch 1 another
    for data, k in ((other, 0), (same_first, 1)):
        with pytest.raises(SpecError, match=f"other data: batch {k} differs"):
            train(h2.model, data, **kw, checkpoint_dir=tmp_path / "c")
        assert all(torch.equal(before[n], p) for n, p in _state(h2.model).items())
        assert (tmp_path / "c" / "state.json").read_bytes() == state
    # the same batches from an iterator (drawn once, in order) resume
    r = train(h2.model, iter([_batches(h2)[s % 4] for s in range(6)]), **kw, checkpoint_dir=tmp_path / "c")
    assert r.resumed_from == 2 and r.steps == 6


def test_batch_digests_only_with_a_checkpoint_and_cover_lists_dicts_and_sparse_tensors(monkeypatch):
    """Digests are kept only in a checkpoint: without one none is computed (a CUDA batch is not copied to the
    host every step). Lists, tuples and dicts of plain values are hashed by value; a sparse tensor by its values."""
    import steerlab.training as T

    calls = []
    real = T._digest
    monkeypatch.setattr(T, "_digest", lambda b: calls.append(1) or real(b))
    h = tiny_model("llama", seed=0)
    train(h.model, _batches(h, 2), steps=2, lr=1e-2, seed=0, progress=False)
    assert calls == []
    b = _batches(h, 1)[0]
    assert real({**b, "meta": [1, 2]}) != real({**b, "meta": [1, 3]})
    assert real({**b, "meta": ("a", {"x": 1})}) != real({**b, "meta": ("a", {"x": 2})})
    assert real({**b, "meta": {"x": 1, "y": 2}}) == real({**b, "meta": {"y": 2, "x": 1}})
    dense = torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    assert real({**b, "s": dense.to_sparse()}) == real({**b, "s": dense.to_sparse()})
    assert real({**b, "s": dense.to_sparse()}) != real({**b, "s": (dense * 2).to_sparse()})


def test_huge_seed_trains_and_small_seeds_keep_their_step_seeds():
    """The step seed ``seed * 1_000_003 + step`` overflowed torch's seed range for a huge seed (a RuntimeError);
    it is now reduced modulo 2**64 there and left as it was wherever it was valid."""
    from steerlab.values import derive_seed

    h = tiny_model("llama", seed=0)
    r = train(h.model, _batches(h, 2), steps=2, lr=1e-2, seed=2**62, progress=False)
    assert r.steps == 2
    for seed, k in ((0, 0), (3, 5), (-7, 2), (2**40, 9)):
        assert derive_seed(seed, k) == seed * 1_000_003 + k
    for seed in (2**62, 2**80, -(2**70)):
        assert 0 <= derive_seed(seed, 1) < 2**64 and derive_seed(seed, 1) == (seed * 1_000_003 + 1) % 2**64
        torch.Generator().manual_seed(derive_seed(seed, 1))


def test_eps_is_adams_one_step_update():
    """One step of the loop with ``eps`` moves a weight by AdamW's first update, computed here by hand from
    the gradient: ``lr * g / (|g| + eps)`` (bias-corrected first step, no weight decay, no clipping)."""
    for eps in (1e-8, 1e-3):
        h = tiny_model("llama", seed=0)
        b = _batches(h, 1)[0]
        w = h.model.model.norm.weight.requires_grad_(True)
        g = torch.autograd.grad(lm_loss(h.model, b), w)[0]
        before = w.detach().clone()
        train(h.model, [b], params=[w], steps=1, lr=1e-2, seed=0, eps=eps, grad_clip=None, progress=False)
        torch.testing.assert_close(before - w.detach(), 1e-2 * g / (g.abs() + eps), rtol=1e-4, atol=1e-7)


def test_grad_mask_keeps_masked_entries_bit_identical_under_weight_decay():
    h = tiny_model("llama", seed=0)
    before = _state(h.model)
    w = h.model.model.layers[0].mlp.up_proj.weight
    keep = torch.zeros_like(w, dtype=torch.bool)
    keep[::2] = True
    name = "model.layers.0.mlp.up_proj.weight"
    train(
        h.model,
        _batches(h),
        params=[w, h.model.model.norm.weight],
        grad_mask={name: keep},
        steps=3,
        lr=5e-2,
        seed=0,
        weight_decay=0.5,
        progress=False,
    )
    after = _state(h.model)
    assert torch.equal(after[name][~keep], before[name][~keep])
    assert (after[name][keep] != before[name][keep]).float().mean() > 0.9
    assert not torch.equal(after["model.norm.weight"], before["model.norm.weight"])
    untouched = [n for n in before if n not in (name, "model.norm.weight")]
    assert all(torch.equal(after[n], before[n]) for n in untouched)
    # requires_grad and train mode are restored
    assert not any(p.requires_grad or p.grad is not None for p in h.model.parameters())  # as the handle had them
    assert not h.model.training


def test_per_part_curves_and_eval_losses():
    h = tiny_model("llama", seed=0)
    data = _batches(h)
    for i, b in enumerate(data):
        b["part"] = "harmful" if i % 2 else "benign"
    r = train(
        h.model,
        data,
        steps=5,
        lr=1e-2,
        seed=0,
        part_of=lambda b: b["part"],
        progress=False,
        eval_batches={"benign": data[0]},
        eval_every=2,
    )
    assert [s for s, _ in r.losses["benign"]] == [0, 2, 4]
    assert [s for s, _ in r.losses["harmful"]] == [1, 3]
    assert [s for s, _ in r.eval_losses["benign"]] == [0, 2, 4, 5]
    # the step-0 eval loss is the untouched model's loss; and it decreased on the trained batch
    h0 = tiny_model("llama", seed=0)
    h0.model.eval()
    with torch.no_grad():
        assert math.isclose(r.eval_losses["benign"][0][1], float(lm_loss(h0.model, data[0])), rel_tol=1e-6)
    assert r.eval_losses["benign"][-1][1] < r.eval_losses["benign"][0][1]


def test_loss_terms_train_their_sum_and_get_a_curve_each():
    """A loss_fn returning {name: loss} steps exactly as one returning the sum; each term has its own curve."""

    def two(model, b):
        full = lm_loss(model, b)
        first = lm_loss(model, {**b, "target_mask": b["attention_mask"] * (torch.arange(b["input_ids"].shape[1]) < 3)})
        return full, 0.5 * first

    h1, h2 = tiny_model("llama", seed=0), tiny_model("llama", seed=0)
    data = _batches(h1)
    kw = dict(steps=3, lr=1e-2, seed=0, progress=False, eval_batches={"x": data[0]}, eval_every=1)
    r1 = train(h1.model, data, loss_fn=lambda m, b: dict(zip(("nll", "first"), two(m, b), strict=True)), **kw)
    r2 = train(h2.model, data, loss_fn=lambda m, b: sum(two(m, b)), **kw)
    a, b = _state(h1.model), _state(h2.model)
    assert all(torch.equal(a[n], b[n]) for n in a)  # the sum is what is minimised
    assert sorted(r1.losses) == ["first", "nll"] and sorted(r1.eval_losses) == ["first", "nll"]
    assert sorted(r2.losses) == ["train"]
    for step in range(3):  # the terms add up to the single-loss run's value
        assert math.isclose(
            r1.losses["nll"][step][1] + r1.losses["first"][step][1], r2.losses["train"][step][1], rel_tol=1e-6
        )
    # the step-0 terms, recomputed by hand on the untouched model
    h0 = tiny_model("llama", seed=0)
    h0.model.eval()
    with torch.no_grad():
        ids = data[0]["input_ids"]
        logp = torch.log_softmax(h0.model(**data[0]).logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None])[..., 0]
        m = data[0]["attention_mask"]
        sel = (m[:, 1:] * m[:, :-1]).bool()
        want_full = float(-(logp * sel).sum() / sel.sum())
        sel3 = sel & (torch.arange(1, ids.shape[1]) < 3)
        want_first = 0.5 * float(-(logp * sel3).sum() / sel3.sum())
    assert math.isclose(r1.eval_losses["nll"][0][1], want_full, rel_tol=1e-5)
    assert math.isclose(r1.eval_losses["first"][0][1], want_first, rel_tol=1e-5)
    with pytest.raises(SpecError, match="no loss terms"):
        train(tiny_model("llama").model, data, loss_fn=lambda m, b: {}, steps=1, lr=1e-2, seed=0, progress=False)


def test_target_mask_restricts_the_loss():
    h = tiny_model("llama", seed=0)
    b = h.tokenize(["a b c d e f"])
    tm = torch.zeros_like(b["attention_mask"])
    tm[:, -2:] = 1
    h.model.eval()
    with torch.no_grad():
        logits = h.model(**b).logits.float()
        ids = b["input_ids"]
        lp = torch.log_softmax(logits[0, :-1], -1)[torch.arange(ids.shape[1] - 1), ids[0, 1:]]
        expect = -lp[-2:].mean()
        assert math.isclose(float(lm_loss(h.model, {**b, "target_mask": tm})), float(expect), rel_tol=1e-5)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"steps": 0}, "steps=0"),
        ({"steps": -1}, "steps=-1"),
        ({"lr": float("nan")}, "lr=nan"),
        ({"lr": float("inf")}, "lr=inf"),
        ({"batches": []}, "batches is empty"),
        ({"batches": iter([])}, "batches is empty"),
        ({"batches": iter([None])}, "batch 0 is NoneType"),
        ({"params": [nn.Parameter(torch.zeros(3))]}, "not in the model"),
        ({"params": []}, "params is empty"),
        ({"grad_mask": {"nope": torch.ones(1, dtype=torch.bool)}}, "'nope'"),
        ({"grad_clip": 0.0}, r"grad_clip=0.0; expected a finite number > 0, or None"),
        ({"grad_clip": float("nan")}, "grad_clip=nan"),
        ({"grad_clip": -1}, "grad_clip=-1"),
        ({"eps": 0.0}, r"^eps=0.0; expected a finite number > 0$"),
        ({"eps": float("nan")}, r"^eps=nan; expected a finite number > 0$"),
        ({"eps": True}, r"^eps=True; expected a finite number > 0$"),
    ],
)
def test_bad_inputs_are_named(kw, match):
    h = tiny_model("llama", seed=0)
    before = _state(h.model)
    args = {"batches": _batches(h), "steps": 2, "lr": 1e-2, "seed": 0, "progress": False, **kw}
    batches = args.pop("batches")
    with pytest.raises(SpecError, match=match):
        train(h.model, batches, **args)
    assert all(torch.equal(before[n], p) for n, p in _state(h.model).items())


def test_requires_grad_and_each_modules_mode_are_restored_also_on_error():
    # claim (train's docstring): only the trained parameters require grad and the model is in train mode during the
    # call; both are restored afterwards, also on error. A submodule the caller kept in eval mode stays there.
    h = tiny_model("llama", seed=0)
    m = h.model
    m.train()
    m.model.layers[0].eval()
    m.model.norm.weight.requires_grad_(True)
    modes = {n: mod.training for n, mod in m.named_modules()}
    grads = {n: p.requires_grad for n, p in m.named_parameters()}
    seen = []

    def dies_at_step_1(model, batch):
        seen.append((model.model.layers[0].training, {n for n, p in model.named_parameters() if p.requires_grad}))
        if len(seen) == 2:
            raise KeyboardInterrupt
        return lm_loss(model, batch)

    trained = m.model.layers[1].mlp.up_proj.weight
    for fn in (dies_at_step_1, lm_loss):
        try:
            train(m, _batches(h), steps=3, lr=1e-2, seed=0, params=[trained], loss_fn=fn, progress=False)
        except KeyboardInterrupt:
            assert fn is dies_at_step_1
        assert {n: mod.training for n, mod in m.named_modules()} == modes
        assert {n: p.requires_grad for n, p in m.named_parameters()} == grads
        assert all(p.grad is None for p in m.parameters())
    assert seen[0] == (True, {"model.layers.1.mlp.up_proj.weight"})  # during the call: train mode, only the trained


def test_a_gradient_the_caller_had_is_given_back_also_on_error():
    """train sets the parameters' ``.grad`` aside and gives them back (the training's own gradients are dropped),
    as ``scoring.gradients`` does."""
    h = tiny_model("llama", seed=0)
    trained, other = h.model.model.norm.weight, h.model.model.layers[0].mlp.up_proj.weight
    g1, g2 = torch.full_like(trained, 3.0), torch.full_like(other, 5.0)
    trained.grad, other.grad = g1, g2

    def dies(model, batch):
        assert trained.grad is None and other.grad is None  # the steps' gradients are their own
        raise KeyboardInterrupt

    for fn in (lm_loss, dies):
        try:
            train(h.model, _batches(h), steps=2, lr=1e-2, seed=0, params=[trained], loss_fn=fn, progress=False)
        except KeyboardInterrupt:
            assert fn is dies
        assert trained.grad is g1 and other.grad is g2
        assert bool((g1 == 3.0).all()) and bool((g2 == 5.0).all())
        assert all(p.grad is None for p in h.model.parameters() if p is not trained and p is not other)


def test_iterator_that_runs_out_is_named():
    h = tiny_model("llama", seed=0)
    with pytest.raises(SpecError, match="ran out after 2 batches"):
        train(h.model, iter(_batches(h, 2)), steps=3, lr=1e-2, seed=0, progress=False)
