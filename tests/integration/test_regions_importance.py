"""Importance scoring (steerlab.regions): the scores equal a from-scratch autograd computation, the model is
left untouched, bad input is refused in one line and an interrupted run leaves nothing behind."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from steerlab.errors import SpecError
from steerlab.regions import importance as I
from steerlab.regions.artifact import read_importance, write_importance
from steerlab.regions.importance import keep_count, score_importance

TEXTS = {
    "aa": ["Once upon a time there was a cat.", "The dog ran to the park and played.", "Lily saw a big red ball."],
    "bb": ["Tom had a toy car. He liked it.", "The sun was hot and the sky was blue.", "They ate cake at the party."],
}


def _files(tmp_path):
    out = {}
    for lang, lines in TEXTS.items():
        p = tmp_path / f"{lang}.txt"
        p.write_text("\n".join(lines + lines[:1]))  # the last line is the eval part (the last tenth, at least one)
        out[lang] = p
    return out


def _reference(h, texts, method):
    """|theta * sum of per-token NLL gradients| / tokens (taylor) or the sum of squared per-text gradients /
    tokens (fisher, one text per batch): each text run alone, unpadded, with F.cross_entropy."""
    params = dict(h.model.named_parameters())
    acc = {n: torch.zeros_like(p) for n, p in params.items()}
    n_tok = 0
    for p in params.values():
        p.requires_grad_(True)
    for t in texts:
        ids = torch.tensor([h.tokenizer(t)["input_ids"]])
        with torch.enable_grad():
            logits = h.model(input_ids=ids).logits[0, :-1]
            loss = F.cross_entropy(logits.float(), ids[0, 1:], reduction="sum")
            grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        n_tok += ids.shape[1] - 1
        for (n, _), g in zip(params.items(), grads, strict=True):
            if g is not None:
                acc[n] += g * g if method == "fisher" else g
    for p in params.values():
        p.requires_grad_(False)
    if method == "fisher":
        return {n: a / n_tok for n, a in acc.items()}
    return {n: (a * params[n].detach()).abs() / n_tok for n, a in acc.items()}


def _check_top(ref, top, bottom=None):
    for n, r in ref.items():
        flat = r.reshape(-1)
        k = keep_count(flat.numel(), 0.05)
        assert top[n].numel() == k
        torch.testing.assert_close(flat[top[n].long()], flat.topk(k).values, rtol=1e-4, atol=1e-10)
        if bottom is not None:
            torch.testing.assert_close(
                flat[bottom[n].long()], flat.topk(k, largest=False).values, rtol=1e-4, atol=1e-10
            )


def test_taylor_and_fisher_match_autograd_from_scratch(stories, tmp_path):
    h = stories
    assert I.plain_head(h, dict(h.model.named_parameters())) is not None  # taylor: the fused, chunked head
    files = _files(tmp_path)
    before = {n: p.detach().clone() for n, p in h.model.named_parameters()}
    imp = score_importance(
        h,
        ["aa", "bb"],
        files=files,
        token_budget=10_000,
        batch_size=2,
        max_len=64,
        keep=0.05,
        progress=False,
        scratch=tmp_path,
    )
    ref = {lang: _reference(h, TEXTS[lang], "taylor") for lang in TEXTS}
    _check_top(ref["aa"], imp.lang_top["aa"])
    _check_top({n: ref["aa"][n] + ref["bb"][n] for n in ref["aa"]}, imp.top, imp.bottom)
    n = "model.layers.2.mlp.up_proj.weight"
    assert abs(imp.summary["bb"][n]["sum"] - float(ref["bb"][n].sum())) < 1e-4 * float(ref["bb"][n].sum())
    fis = score_importance(
        h,
        ["aa"],
        method="fisher",
        files=files,
        token_budget=10_000,
        batch_size=1,
        max_len=64,
        keep=0.05,
        progress=False,
        scratch=tmp_path,
    )
    _check_top(_reference(h, TEXTS["aa"], "fisher"), fis.top)
    # the model is untouched: same weights, no gradients, requires_grad as before; scratch files removed
    for name, p in h.model.named_parameters():
        assert torch.equal(p, before[name]) and p.grad is None and not p.requires_grad
    assert list(tmp_path.glob("steerlab-regions-*")) == []


def test_token_budget_and_artifact_round_trip(stories, tmp_path):
    imp = score_importance(stories, ["eng"], token_budget=100, batch_size=4, max_len=30, progress=False)
    # 100 tokens fed in rows of <= 30 tokens: 4 rows (30, 30, 30, 10) -> 100 - 4 predicted tokens
    assert imp.tokens == {"eng": 96}
    back = read_importance(write_importance(tmp_path / "imp", imp))
    assert back.languages == ["eng"] and back.signature == imp.signature
    for n in imp.top:
        assert torch.equal(back.top[n], imp.top[n]) and torch.equal(back.lang_top["eng"][n], imp.lang_top["eng"][n])


def test_bad_input_is_one_line_and_leaves_nothing(stories, tmp_path, monkeypatch):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    cases = [
        (dict(languages=["klingon"]), "unknown language 'klingon'"),
        (dict(languages=["xx"], files={"xx": empty}), "is empty"),
        (dict(languages=["eng"], keep=0.0), "keep must be in (0, 0.5], got 0.0"),
        (dict(languages=["eng"], keep=0.6), "got 0.6"),
        (dict(languages=["eng"], method="hessian"), "'hessian' is not one of"),
        (dict(languages=[]), "no languages"),
    ]
    for kw, msg in cases:
        langs = kw.pop("languages")
        try:
            score_importance(stories, langs, progress=False, **kw)
        except SpecError as e:
            assert msg in str(e) and "\n" not in str(e), str(e)
        else:
            raise AssertionError(f"{kw} was accepted")

    calls = {"n": 0}
    real = I.nll_backward

    def dying(h, enc, head=None):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(h, enc, head)

    monkeypatch.setattr(I, "nll_backward", dying)
    out = tmp_path / "imp"
    try:
        write_importance(out, score_importance(stories, ["eng"], token_budget=512, progress=False, scratch=tmp_path))
    except KeyboardInterrupt:
        pass
    assert not out.exists() and list(tmp_path.glob("steerlab-regions-*")) == []
    assert all(p.grad is None and not p.requires_grad for p in stories.model.parameters())
    assert "forward" not in stories.model.get_input_embeddings().__dict__


def test_chunked_topk_equals_torch_topk():
    x = torch.randn(3_000_001, generator=torch.Generator().manual_seed(0))
    x[::7] = 0.5  # ties across chunks
    for largest in (True, False):
        for k in (1, 1000, 60_000):
            v, i = I.chunked_topk(x, k, largest=largest, chunk=1 << 20)
            ref = x.topk(k, largest=largest).values
            assert torch.equal(v, ref) and torch.equal(x[i], ref) and i.unique().numel() == k


def _grads(h, batches, direct):
    """Gradients of the summed NLL over ``batches`` accumulated in ``.grad`` (plain autograd, or with the
    vocabulary matrices' gradients added straight into ``.grad``)."""
    from steerlab.scoring import gradients, sequence_nll

    with gradients(h) as ps:
        with I.direct_vocab_grads(h, ps if direct else {}) as swapped:
            for enc in batches:
                sequence_nll(h, enc).backward()
        out = {n: p.grad.clone() for n, p in ps.items() if p.grad is not None}
    return out, swapped


def test_direct_vocab_grads_equal_autograd_tied_and_untied(stories, tiny):
    # stories260K ties lm_head to the embedding; the tiny Llama does not (and gets a padding row here)
    untied = tiny("llama")
    emb = untied.model.get_input_embeddings()
    assert stories.model.lm_head.weight is stories.model.get_input_embeddings().weight
    assert untied.model.lm_head.weight is not emb.weight
    ids = torch.tensor([[1, 5, 9, 12, 5, 7], [1, 3, 0, 8, 0, 0]])  # a 0 (the padding id) at a real position
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    batches = [
        {"input_ids": ids, "attention_mask": mask},
        {"input_ids": ids[:, :4].flip(0), "attention_mask": mask[:, :4]},
    ]
    emb.padding_idx = 0
    try:
        for h in (stories, untied):
            ref, none = _grads(h, batches, direct=False)
            got, swapped = _grads(h, batches, direct=True)
            assert none == [] and swapped == ["model.embed_tokens", "lm_head"]
            assert ref.keys() == got.keys()
            for n in ref:
                torch.testing.assert_close(got[n], ref[n], rtol=1e-5, atol=1e-7)
            # the swap is undone and nothing is left on the parameters
            for m in (h.model.get_input_embeddings(), h.model.lm_head):
                assert "forward" not in m.__dict__
            assert all(p.grad is None for p in h.model.parameters())
        assert float(ref["model.embed_tokens.weight"][0].abs().sum()) == 0.0  # padding row: no gradient
    finally:
        emb.padding_idx = None
    # restored on error too
    try:
        with I.direct_vocab_grads(stories, dict(stories.model.named_parameters())):
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    assert "forward" not in stories.model.lm_head.__dict__
    assert "forward" not in stories.model.get_input_embeddings().__dict__


def test_taylor_on_untied_model_matches_autograd_from_scratch(tiny, tmp_path):
    h = tiny("llama")
    params = dict(h.model.named_parameters())
    assert I.plain_head(h, params) == (h.model.model, h.model.lm_head)  # the fused, chunked head is what runs
    imp = score_importance(
        h, ["aa"], files=_files(tmp_path), token_budget=10_000, batch_size=2, max_len=64, keep=0.05, progress=False
    )
    ref = _reference(h, TEXTS["aa"], "taylor")
    _check_top(ref, imp.top, imp.bottom)
    n = "lm_head.weight"
    assert abs(imp.summary["aa"][n]["sum"] - float(ref[n].sum())) < 1e-4 * float(ref[n].sum())


def test_fused_head_nll_and_grads_equal_autograd_over_chunks(stories, monkeypatch):
    # several chunks (by default all 10 positions would be one), tied weight, padding, a pad id at a real position
    from steerlab.scoring import gradients, sequence_nll

    h = stories
    enc = {"input_ids": torch.tensor([[1, 5, 9, 12, 5, 7, 3], [1, 3, 40, 8, 2, 0, 0]]),
           "attention_mask": torch.tensor([[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0]])}  # fmt: skip
    with gradients(h) as ps:
        ref_loss = sequence_nll(h, enc)
        ref_loss.backward()
        ref = {n: p.grad.clone() for n, p in ps.items()}
        for p in ps.values():
            p.grad = None
        monkeypatch.setattr(I, "HEAD_CHUNK_ELEMENTS", 512 * 3)  # 10 predicted positions: chunks 3, 3, 3, 1
        head = I.plain_head(h, ps)
        with I.direct_vocab_grads(h, ps):
            loss = I.nll_backward(h, enc, head)
        got = {n: p.grad.clone() for n, p in ps.items()}
    assert abs(loss - float(ref_loss.detach())) < 1e-4 * float(ref_loss.detach())
    for n in ref:  # float32 summation order differs: entries within 1e-5 of the matrix's largest gradient
        torch.testing.assert_close(got[n], ref[n], rtol=1e-4, atol=1e-5 * float(ref[n].abs().max()))


def test_a_forward_already_set_on_the_instance_is_kept_and_run():
    """Claim (``direct_vocab_grads``): the forwards it swaps are "restored on exit" and the gradients are "the
    same sums autograd forms". A module whose instance already carries its own ``forward`` (as accelerate's hooks
    do) is not swapped: its forward runs, the gradients equal autograd's, and it is still there afterwards."""
    from steerlab.models.tiny import tiny_model

    h = tiny_model("llama")
    emb, head = h.model.get_input_embeddings(), h.model.lm_head

    def own(m, factor):
        cls_forward = type(m).forward
        m.forward = lambda x: cls_forward(m, x) * factor  # computes differently from the class's forward
        return m.forward

    fe, fh = own(emb, 1.5), own(head, 0.5)
    ids = torch.tensor([[1, 5, 9, 12, 5, 7], [1, 3, 4, 8, 0, 0]])
    batches = [{"input_ids": ids, "attention_mask": torch.tensor([[1] * 6, [1, 1, 1, 1, 0, 0]])}]
    ref, _ = _grads(h, batches, direct=False)
    got, swapped = _grads(h, batches, direct=True)
    assert swapped == []
    for n in ref:
        torch.testing.assert_close(got[n], ref[n], rtol=1e-5, atol=1e-7)
    assert emb.__dict__["forward"] is fe and head.__dict__["forward"] is fh
    assert I.plain_head(h, dict(h.model.named_parameters())) is None  # the fused head would skip the own forward
