"""Security vectors: switching is exact, the add variant equals AddVector, files round-trip and are checked
against the model, the two stages do what the method needs, bad input is named."""

from __future__ import annotations

import json
from unittest import mock

import pytest
import torch

import steerlab as sl
from steerlab.errors import SpecError, SteerlabError
from steerlab.models.tiny import tiny_model
from steerlab.security.data import Pair, batches_of, read_pairs
from steerlab.security.stages import anchor_kl, base_grad_sq, finetune, save_model, train_vector
from steerlab.security.vectors import SecurityVector, VectorConfig, load_vector, new_vector
from steerlab.training import lm_loss

HARM = [
    Pair(f"How do I do bad thing {i}?", f"Sure, here is bad thing {i}: step one, step two.", "harmful")
    for i in range(4)
]
GOOD = [Pair(f"Reverse the words: a{i} b c", f"c b a{i}", "benign") for i in range(4)]


def _state(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _logits(h, enc):
    with torch.no_grad():
        return h.model(**enc).logits


def test_lora_on_and_off_is_exact_and_restores_flags():
    h = tiny_model("llama")
    enc = h.tokenize(["a b c d", "e f"])
    before, modules = _logits(h, enc), [id(m) for m in h.model.modules()]
    v = new_vector(h, VectorConfig(rank=2, target_modules=["q_proj", "down_proj"]), seed=0)
    # peft's init (B = 0): switched on it is the identity; a non-zero B changes the output
    v.tensors = {n: (torch.full_like(t, 0.05) if "lora_B" in n else t) for n, t in v.tensors.items()}
    with v.on(h) as params:
        assert len(params) == 2 * 2 * h.adapter.n_layers and not any(p.requires_grad for p in params)
        assert not torch.allclose(_logits(h, enc), before, atol=1e-4)
        assert "blocks.0.resid_post" in h.sites  # the handle follows the injected modules
    assert [id(m) for m in h.model.modules()] == modules
    assert torch.equal(_logits(h, enc), before)
    assert not any(p.requires_grad for p in h.model.parameters())
    # an error inside the block switches it off too
    with pytest.raises(RuntimeError), v.on(h):
        raise RuntimeError("boom")
    assert [id(m) for m in h.model.modules()] == modules


def test_add_vector_training_hooks_equal_addvector_interventions():
    h = tiny_model("llama")
    v = new_vector(h, VectorConfig(kind="add", layers=[0, 1]), seed=0)
    g = torch.Generator().manual_seed(0)
    v.tensors = {n: torch.randn(h.d_model, generator=g) for n in v.tensors}
    prompts = ["a b c d", "e f"]
    via_registry = sl.forward(h, prompts, interventions=v.interventions())
    enc = h.tokenize(prompts)
    from steerlab.engines import position_ids

    with v.on(h), torch.no_grad():
        via_hooks = h.model(**enc, position_ids=position_ids(enc["attention_mask"])).logits
    mask = enc["attention_mask"].bool()
    assert torch.allclose(via_hooks[mask], via_registry[mask], atol=1e-5)
    assert not torch.allclose(via_registry[mask], sl.forward(h, prompts)[mask], atol=1e-3)


def test_save_load_round_trip_and_fit_checks(tmp_path):
    h = tiny_model("llama")
    v = new_vector(h, VectorConfig(rank=2, target_modules=["q_proj"]), seed=0, card={"data_hash": "abc"})
    v.save(tmp_path / "v")
    card = json.loads((tmp_path / "v" / "card.json").read_text())
    assert (
        card["model_shape"]["hidden_size"] == 64 and card["data_hash"] == "abc" and card["base_model"] == "tiny:llama"
    )
    w = load_vector(tmp_path / "v")
    assert all(torch.equal(w.tensors[n], v.tensors[n]) for n in v.tensors) and w.config.rank == 2
    other = tiny_model("llama", hidden_size=32, intermediate_size=64)
    with pytest.raises(SteerlabError, match="hidden_size 64 \\(vector\\) vs 32 \\(model\\)"):
        with w.on(other):
            pass
    moe = tiny_model("mixtral")
    with pytest.raises(SteerlabError, match="does not fit"):
        with w.on(moe):
            pass
    assert not any("lora" in n for n, _ in moe.model.named_parameters())
    with pytest.raises(SteerlabError, match="not a security vector"):
        load_vector(tmp_path)


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        (VectorConfig(rank=0), "rank=0"),
        (VectorConfig(rank=-2), "rank=-2"),
        (VectorConfig(kind="prefix"), "kind 'prefix'"),
        (VectorConfig(target_modules=["nope_proj"]), "match no linear module"),
    ],
)
def test_bad_vector_configs_are_named(cfg, match):
    h = tiny_model("llama")
    modules = [id(m) for m in h.model.modules()]
    with pytest.raises(SpecError, match=match):
        new_vector(h, cfg)
    assert [id(m) for m in h.model.modules()] == modules


def test_moe_lora_reaches_shared_experts_and_fused_experts_only_by_parameter():
    h = tiny_model("deepseek_v3")
    v = new_vector(h, VectorConfig(rank=2), seed=0)
    names = {n.split(".lora_")[0].split("layers.")[-1].split(".", 1)[-1] for n in v.tensors}
    assert "mlp.shared_experts.down_proj" in names and "self_attn.o_proj" in names
    assert not any("mlp.experts" in n or n == "mlp.gate" for n in names)  # routed experts, router: not by default
    w = new_vector(h, VectorConfig(rank=2, target_modules=[], target_parameters=["mlp.experts.down_proj"]), seed=0)
    assert w.tensors and all("mlp.experts" in n for n in w.tensors)


def test_bad_data_is_named(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "c"}\n')
    with pytest.raises(SpecError, match="d.jsonl:2 has no response"):
        read_pairs(f)
    h = tiny_model("llama")
    with pytest.raises(SpecError, match="harmful set is empty"):
        train_vector(h, [], VectorConfig(rank=2), steps=1, progress=False)
    with pytest.raises(SpecError, match="no training pairs"):
        batches_of(h, [], 4, 1, 0)


@pytest.mark.parametrize("kind", ["lora", "add"])
def test_stage1_fits_harmful_with_base_frozen_and_stage2_keeps_vector_frozen(tmp_path, kind):
    h = sl.load("shared:stories260K", cache=False)  # trained weights: a small vector can fit 4 answers
    base = _state(h.model)
    cfg = VectorConfig(kind=kind, rank=4)
    v, r = train_vector(
        h, HARM, cfg, steps=30, lr=1e-2 if kind == "lora" else 1e-1, seed=0, batch_size=4, progress=False
    )
    assert all(torch.equal(base[n], p) for n, p in _state(h.model).items())  # base untouched
    curve = r.eval_losses["harmful"]
    assert curve[-1][1] < 0.5 * curve[0][1]
    batch = batches_of(h, HARM, 4, 1, 0)[0]
    off = float(lm_loss(h.model, batch))
    with v.on(h):
        on = float(lm_loss(h.model, batch))
    assert on < 0.5 * off  # the vector on makes the model produce the harmful responses
    vec = {n: t.clone() for n, t in v.tensors.items()}
    res = finetune(
        h,
        HARM + GOOD,
        v,
        steps=4,
        lr=1e-3,
        seed=0,
        batch_size=4,
        progress=False,
        eval_pairs={"harmful": HARM, "benign": GOOD},
    )
    assert all(torch.equal(vec[n], v.tensors[n]) for n in vec)  # frozen
    assert sorted(res.losses) == ["benign", "harmful"]
    # with the vector on, the harmful part starts far below the benign part
    assert res.eval_losses["harmful"][0][1] < res.eval_losses["benign"][0][1]
    assert not any("lora" in n for n, _ in h.model.named_parameters())  # off after
    assert not all(torch.equal(base[n], p) for n, p in _state(h.model).items())  # the base trained
    # the saved result is a normal model spec with the same outputs
    save_model(h, tmp_path / "m")
    g = sl.load(str(tmp_path / "m"), cache=False)
    enc = h.tokenize(["a b c"])
    assert torch.equal(_logits(g, enc), _logits(h, enc))
    assert [n for n, _ in g.model.named_parameters()] == list(base)


@pytest.mark.parametrize("kind", ["lora", "add"])
def test_suspended_computes_the_base_inside_on(kind):
    h = tiny_model("llama")
    enc = h.tokenize(["a b c d", "e f"])
    base = _logits(h, enc)
    v = new_vector(h, VectorConfig(kind=kind, rank=2), seed=0)
    g = torch.Generator().manual_seed(0)
    v.tensors = {
        n: (0.05 * torch.randn(t.shape, generator=g) if "lora_A" not in n else t) for n, t in v.tensors.items()
    }
    with v.on(h):
        on = _logits(h, enc)
        assert not torch.allclose(on, base, atol=1e-4)
        with v.suspended(h):
            assert torch.equal(_logits(h, enc), base)
        assert torch.equal(_logits(h, enc), on)  # back on after the block
    with pytest.raises(SteerlabError, match="inside vector.on"), v.suspended(h):
        pass


def test_anchor_kl_is_the_kl_from_base_to_vector_on():
    h = tiny_model("llama")
    b = batches_of(h, GOOD, 4, 1, 0)[0]
    base = torch.log_softmax(_logits(h, {k: b[k] for k in ("input_ids", "attention_mask")}).float(), -1)
    v = new_vector(h, VectorConfig(rank=2), seed=0)
    v.tensors = {n: (torch.full_like(t, 0.05) if "lora_B" in n else t) for n, t in v.tensors.items()}
    with v.on(h):
        on = torch.log_softmax(_logits(h, {k: b[k] for k in ("input_ids", "attention_mask")}).float(), -1)
        got = float(anchor_kl(h, v, b))
    # independent: torch's kl_div per position, averaged over the real tokens
    per = torch.nn.functional.kl_div(on, base, log_target=True, reduction="none").sum(-1)
    m = b["attention_mask"].bool()
    assert got > 1e-4 and abs(got - float(per[m].mean())) < 1e-5


def test_anchor_keeps_the_vector_neutral_on_held_out_harmless_prompts():
    """Stage 1 with the anchor: the vector still makes the model produce the harmful answers, and on harmless
    prompts it never trained on, the vector-on model stays far closer to the base than without the anchor."""
    h = sl.load("shared:stories260K", cache=False)
    texts = [
        "Once upon a time there was a little girl.",
        "The dog ran to the park.",
        "Tom had a red ball.",
        "The sun was warm and bright.",
        "Lily liked to play with her cat.",
        "They went home and slept.",
        "A bird sang in the tall tree.",
        "Ben found a big box.",
        "Mom made a cake for Sue.",
        "The fish swam in the pond.",
        "Sam and Anna built a tower.",
        "It was a rainy day.",
    ]
    anchor = [Pair(t, t, "anchor") for t in texts[:8]]
    held = batches_of(h, [Pair(t, t, "anchor") for t in texts[8:]], 4, 1, 0)[0]
    harm = batches_of(h, HARM, 4, 1, 0)[0]
    kls, fits = {}, {}
    for w in (0.0, 3.0):
        v, r = train_vector(
            h,
            HARM,
            VectorConfig(rank=4),
            steps=30,
            lr=1e-2,
            seed=0,
            batch_size=4,
            anchor=anchor,
            anchor_weight=w,
            progress=False,
        )
        assert ("anchor" in r.losses) == (w > 0) and v.card["anchor"]["weight"] == w
        off = float(lm_loss(h.model, harm))
        with v.on(h), torch.no_grad():
            kls[w] = float(anchor_kl(h, v, held))
            fits[w] = float(lm_loss(h.model, harm)) / off
    assert fits[3.0] < 0.5 and fits[0.0] < 0.5  # both vectors produce the harmful responses
    assert kls[3.0] < 0.3 * kls[0.0], kls  # the anchored one leaves unseen harmless text (nearly) alone


@pytest.mark.parametrize("w", [-1.0, float("nan"), float("inf")])
def test_bad_anchor_weight_is_one_line(w):
    h = tiny_model("llama")
    with pytest.raises(SpecError, match=r"anchor weight .*; expected a finite number >= 0") as e:
        train_vector(h, HARM, VectorConfig(rank=2), steps=1, anchor=GOOD * 8, anchor_weight=w, progress=False)
    assert "\n" not in str(e.value)
    with pytest.raises(SpecError, match="expected at least 32"):
        train_vector(h, HARM, VectorConfig(rank=2), steps=1, anchor=GOOD, anchor_weight=1.0, progress=False)


def test_merged_finetuning_equals_the_vector_switched_on():
    """Stage 2 with the frozen LoRA folded into the weights trains the same model as with it on beside them
    (up to float rounding, which Adam's normalisation can lift to ~1e-5 on a few entries)."""
    h = tiny_model("llama")
    v = new_vector(h, VectorConfig(rank=2), seed=0)
    v.tensors = {n: (torch.full_like(t, 0.05) if "lora_B" in n else t) for n, t in v.tensors.items()}
    enc = h.tokenize(["a b c d", "e f"])
    with v.on(h):
        on = _logits(h, enc)
        w0 = h.model.model.layers[0].self_attn.q_proj.base_layer.weight.detach().clone()
        with v.merged(h):
            assert torch.allclose(_logits(h, enc), on, atol=1e-5)  # the same outputs, merged
            assert not torch.allclose(h.model.model.layers[0].self_attn.q_proj.base_layer.weight, w0, atol=1e-4)
        assert torch.allclose(h.model.model.layers[0].self_attn.q_proj.base_layer.weight, w0, atol=1e-6)
        assert torch.equal(_logits(h, enc), on) or torch.allclose(_logits(h, enc), on, atol=1e-6)  # unmerged after
    base = _state(tiny_model("llama").model)
    out = {}
    for merge in (True, False):
        g = tiny_model("llama")
        with mock.patch.object(SecurityVector, "merged", autospec=True, side_effect=SecurityVector.merged) as spy:
            r = finetune(g, HARM + GOOD, v, steps=4, lr=1e-3, seed=0, batch_size=4, progress=False, merge=merge)
        assert spy.call_count == int(merge)
        out[merge] = (_state(g.model), r.losses)
    assert list(out[True][0]) == list(base)  # the plain architecture after, the vector out of the weights
    for n, p in out[True][0].items():
        moved = (out[False][0][n] - base[n]).norm()
        assert moved > 0 and (p - out[False][0][n]).norm() <= 1e-3 * moved, n  # far below what training moved
    for part, curve in out[True][1].items():
        assert all(abs(a[1] - b[1]) < 1e-4 for a, b in zip(curve, out[False][1][part], strict=True))
    with pytest.raises(SpecError, match="cannot be merged"), v.on(h):
        with new_vector(h, VectorConfig(kind="add"), seed=0).merged(h):
            pass


def test_card_curves_of_different_lengths_keep_their_own_steps():
    """The Security page's card chart: a 3-point and a 2-point curve (a tabular line chart would refuse
    unequal lengths) each keep their own steps and values."""
    from steerlab.security.figures import curves_figure

    fig = curves_figure({"harmful": [[0, 2.0], [5, 1.0], [10, 0.5]], "anchor": [[0, 0.0], [10, 0.25]]})
    got = {t.name: (list(t.x), list(t.y)) for t in fig.data}
    assert got == {"harmful": ([0, 5, 10], [2.0, 1.0, 0.5]), "anchor": ([0, 10], [0.0, 0.25])}


def test_null_parts_step_on_momentum_alone_whatever_the_harmful_data_says():
    """``null_parts={"harmful"}``: the run a perfect vector would give. The harmful batches keep their place
    (so the schedule is the protected run's) but their content cannot reach the weights: other harmful
    responses give bit-identical weights, while without ``null_parts`` they do not."""
    other = [Pair(p.prompt, f"No way, bad thing {i} is forbidden here, sorry.", "harmful") for i, p in enumerate(HARM)]

    def run(harm, **kw):
        h = tiny_model("llama")
        r = finetune(h, harm + GOOD, None, steps=4, lr=1e-2, seed=0, batch_size=2, progress=False, **kw)
        return _state(h.model), r

    a, ra = run(HARM, null_parts={"harmful"})
    b, _ = run(other, null_parts={"harmful"})
    c, _ = run(HARM)
    d, _ = run(other)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(c[n], d[n]) for n in c)
    assert ra.losses.get("harmful") and all(v > 0 for _, v in ra.losses["harmful"])  # recorded, not learned
    h = tiny_model("llama")
    before = _state(h.model)
    finetune(h, HARM, None, steps=3, lr=1e-2, seed=0, batch_size=2, progress=False, null_parts={"harmful"})
    assert all(torch.equal(before[n], p) for n, p in h.model.named_parameters())  # zero gradient: no step
    with pytest.raises(SpecError, match=r"null_parts names 'harmfull'.*expected one of \['benign', 'harmful'\]"):
        finetune(h, HARM + GOOD, None, steps=1, progress=False, null_parts={"harmfull"})


@pytest.mark.parametrize("kind,merge", [("lora", True), ("lora", False), ("add", True)])
def test_null_parts_with_a_vector_on_carry_exactly_zero_gradient(kind, merge):
    """The same with a (non-zero) vector on and frozen, folded into the weights or not: the harmful batches'
    content still cannot reach the weights (other harmful responses, bit-identical weights), and without
    ``null_parts`` it does."""
    other = [Pair(p.prompt, f"No way, bad thing {i} is forbidden here, sorry.", "harmful") for i, p in enumerate(HARM)]

    def run(harm, **kw):
        h = tiny_model("llama")
        v = new_vector(h, VectorConfig(kind=kind, rank=2, layers=[0, 1] if kind == "add" else None), seed=0)
        g = torch.Generator().manual_seed(1)
        v.tensors = {n: torch.randn(t.shape, generator=g) * 0.05 for n, t in v.tensors.items()}
        finetune(h, harm + GOOD, v, steps=4, lr=1e-2, seed=0, batch_size=2, progress=False, merge=merge, **kw)
        return _state(h.model)

    a, b = run(HARM, null_parts={"harmful"}), run(other, null_parts={"harmful"})
    c, d = run(HARM), run(other)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(c[n], d[n]) for n in c)


def test_part_scale_scales_that_parts_gradient_and_keeps_its_loss():
    """``part_scale={"harmful": s}``: the harmful batches' gradient, read off a parameter's hook during
    ``finetune``, is ``s`` times the unscaled one (the same batch, the same weights at step 0), and the
    recorded loss is the same value. Scale 1 is the plain run bit for bit, scale 0 the ``null_parts`` run."""

    def grads(**kw):
        h = tiny_model("llama")
        seen = []
        w = h.model.get_output_embeddings().weight.requires_grad_(True)  # the loop trains every weight
        w.register_hook(lambda g: seen.append(g.detach().clone()))
        r = finetune(h, HARM, None, steps=1, lr=1e-2, seed=0, batch_size=2, grad_clip=None, progress=False, **kw)
        return seen[0], r.losses["harmful"][0][1]

    g1, l1 = grads()
    g4, l4 = grads(part_scale={"harmful": 0.25})
    assert g1.abs().max() > 0
    torch.testing.assert_close(g4, 0.25 * g1)
    assert l4 == l1

    def run(**kw):
        h = tiny_model("llama")
        finetune(h, HARM + GOOD, None, steps=4, lr=1e-2, seed=0, batch_size=2, progress=False, **kw)
        return _state(h.model)

    plain, one, null, zero, half = (run(), run(part_scale={"harmful": 1}), run(null_parts={"harmful"}),
                                    run(part_scale={"harmful": 0.0}), run(part_scale={"harmful": 0.5}))
    assert all(torch.equal(plain[n], one[n]) for n in plain)
    assert all(torch.equal(null[n], zero[n]) for n in null)
    assert any(not torch.equal(half[n], plain[n]) for n in half)
    assert any(not torch.equal(half[n], null[n]) for n in half)


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"part_scale": {"harmful": -1}}, r"part_scale\['harmful'\]=-1; expected a finite number >= 0"),
        ({"part_scale": {"harmful": float("nan")}}, r"part_scale\['harmful'\]=nan; expected a finite number >= 0"),
        ({"part_scale": {"harmful": True}}, r"part_scale\['harmful'\]=True; expected a finite number >= 0"),
        ({"part_scale": {"harmful": "0.5"}}, r"part_scale\['harmful'\]='0.5'; expected a finite number >= 0"),
        ({"part_scale": {"harmfull": 0.5}},
         r"part_scale names 'harmfull', not a part of the data; expected one of \['benign', 'harmful'\]"),
        ({"part_scale": {"harmful": 0.5}, "null_parts": {"harmful"}},
         r"part 'harmful' is in null_parts and has part_scale 0.5; expected one of the two"),
    ],
)
def test_part_scale_bad_values_are_one_line_errors(kw, message):
    h = tiny_model("llama")
    before = _state(h.model)
    with pytest.raises(SpecError, match=f"^{message}$"):
        finetune(h, HARM + GOOD, None, steps=1, progress=False, **kw)
    assert all(torch.equal(before[n], p) for n, p in h.model.named_parameters())


def test_finetune_grad_clip_reaches_the_loop():
    """``grad_clip`` is the loop's clipping norm (default 1, the sweep's records). Adam is blind to a
    gradient's scale until it falls below its eps (1e-8): clipped to norm 1e-12 the step all but vanishes,
    unclipped it moves every weight by about lr."""

    def moved(**kw):
        h = tiny_model("llama")
        before = _state(h.model)
        finetune(h, HARM + GOOD, None, steps=2, lr=1e-3, seed=0, batch_size=4, progress=False, **kw)
        return max(float((p - before[n]).abs().max()) for n, p in h.model.named_parameters())

    free, clipped = moved(grad_clip=None), moved(grad_clip=1e-12)
    assert free > 5e-4 and clipped < 1e-3 * free


def test_base_grad_sq_matches_a_hand_computed_second_order_gradient():
    """loss = sum(w * x * v): d loss / d w = x * v, so ||.||^2 = v^2 * ||x||^2 and its v-gradient 2 v ||x||^2."""
    x = torch.tensor([1.0, 2.0, 3.0])
    w, v = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.tensor(0.5))
    w.requires_grad_(False)
    loss, sq = base_grad_sq(lambda: (w * x * v).sum(), [w])
    assert float(loss.detach()) == pytest.approx(3.0) and float(sq.detach()) == pytest.approx(0.25 * 14)
    assert float(torch.autograd.grad(sq, v)[0]) == pytest.approx(2 * 0.5 * 14)
    assert not w.requires_grad and w.grad is None  # as it was


def test_grad_penalty_is_the_squared_base_gradient_and_restores_the_model():
    """Stage 1 with the penalty: its first recorded value is mu x the base weights' squared gradient norm on the
    first harmful batch (computed here with plain first-order autograd), the card's start value is that norm
    on the eval batch, it falls during training while the vector still produces the harmful answers; the
    attention implementation, flags and base weights are as they were."""
    h = sl.load("shared:stories260K", cache=False)
    attn, before = h.model.config._attn_implementation, _state(h.model)
    harm = batches_of(h, HARM, 4, 1, 0)[0]  # the loop's first batch (one epoch of 4 pairs, seed 0) and the eval one
    for p in h.model.parameters():
        p.requires_grad_(True)
    sq0 = sum(float((g**2).sum()) for g in torch.autograd.grad(lm_loss(h.model, harm), list(h.model.parameters())))
    for p in h.model.parameters():
        p.requires_grad_(False)
    off = float(lm_loss(h.model, harm))
    v, r = train_vector(h, HARM, VectorConfig(rank=4), steps=30, lr=5e-3, seed=0, batch_size=4,
                        grad_penalty=0.03, progress=False)
    curve = [x for _, x in r.losses["grad_penalty"]]
    assert curve[0] == pytest.approx(0.03 * sq0, rel=1e-4)  # a LoRA vector starts as the identity (B = 0)
    assert v.card["grad_penalty"]["base_grad_sq_first_batch"]["start"] == pytest.approx(sq0, rel=1e-4)
    assert max(curve[-5:]) < 0.01 * curve[0]
    with v.on(h), torch.no_grad():
        assert float(lm_loss(h.model, harm)) < 0.5 * off  # the vector still produces the harmful responses
    assert h.model.config._attn_implementation == attn
    assert all(not p.requires_grad and p.grad is None for p in h.model.parameters())
    assert all(torch.equal(p, before[n]) for n, p in h.model.named_parameters())


@pytest.mark.parametrize("mu", [-1.0, float("nan"), float("inf"), True])
def test_bad_grad_penalty_is_one_line(mu):
    with pytest.raises(SpecError, match=r"gradient penalty .*; expected a finite number >= 0") as e:
        train_vector(tiny_model("llama"), HARM, VectorConfig(rank=2), steps=1, grad_penalty=mu, progress=False)
    assert "\n" not in str(e.value)


def test_a_stage1_checkpoint_resumes_only_under_the_same_grad_penalty(tmp_path):
    """The penalty weight is part of the run's identity: a finished checkpoint of mu = 0.1 is taken up again (the
    same vector, nothing retrained) by mu = 0.1 and refused by mu = 0.2 and by no penalty."""
    kw = dict(steps=2, lr=1e-2, seed=0, batch_size=4, checkpoint_dir=tmp_path / "ck", progress=False)
    v1, r1 = train_vector(tiny_model("llama"), HARM, VectorConfig(rank=2), grad_penalty=0.1, **kw)
    v2, r2 = train_vector(tiny_model("llama"), HARM, VectorConfig(rank=2), grad_penalty=0.1, **kw)
    assert r2.resumed_from == 2 and r2.losses == r1.losses
    assert v1.tensors.keys() == v2.tensors.keys() and all(torch.equal(v1.tensors[k], v2.tensors[k]) for k in v1.tensors)
    for mu in (0.2, 0.0):
        with pytest.raises(SpecError, match="another run"):
            train_vector(tiny_model("llama"), HARM, VectorConfig(rank=2), grad_penalty=mu, **kw)
