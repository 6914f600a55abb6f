"""Position-dependent edits at the ``logits`` site during generation act on exactly the positions they name.

Generation computes the logits of each forward's last position only (``logits_to_keep``), while the
other sites of the same forward span the whole prompt at step 0 (or the whole sequence without the KV
cache). Each case generates greedily on a left-padded batch, with and without the KV cache, together with
a residual steering vector and a weight edit, and checks every step's logits, token and recorded ``logits``
against an independent computation: the bare Hugging Face model run once, without cache, over the final
sequence (the residual vector added by a plain forward hook, the weight edited by hand), the edits then
added to the logits of the positions each selector names, derived here from the padding. The remote
path (nnsight's ``remote="local"``) gives the local run's tokens and logits bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

import steerlab as sl
from steerlab.interventions import AddVector, ConditionalAdd, ExpertMask, ParamEdit, Patch, ProjectOut
from tests.integration.test_kv_equivalence import PROMPTS, _assert_equivalent

N = 4
ATOL = 1e-5  # cached vs full recompute differ by summation order only (see test_kv_equivalence)
EFFECT = 1e-1  # the least change the logits edits must make to the observed logits
PARAM = "model.layers.0.self_attn.o_proj.weight"

Edit = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]  # (logits [b, T, V], pad [b], prompt_len)


def _rand(n: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed)) * scale


def _named(sel: Any, pad: torch.Tensor, P: int, T: int) -> torch.Tensor:
    """``[b, T]``: the columns ``sel`` names, each row counted from its first real token."""
    pos = torch.arange(T).unsqueeze(0) - pad.unsqueeze(1)
    n = (P - pad).unsqueeze(1)  # each row's prompt length
    if sel == "all":
        return torch.ones_like(pos, dtype=torch.bool)
    if sel == "prompt":
        return (pos >= 0) & (pos < n)
    if sel == "generated":
        return pos >= n
    if isinstance(sel, dict):
        return (pos >= n - sel["last"]) & (pos < n)
    return torch.isin(pos, torch.tensor(sel)) & (pos >= 0) & (pos < n)


def _add(vec: torch.Tensor, sel: Any) -> Edit:
    return lambda L, pad, P: L + _named(sel, pad, P, L.shape[1]).unsqueeze(-1) * vec


def _cond(vec: torch.Tensor, w: torch.Tensor, thr: float, mode: str, sel: Any = "all") -> Edit:
    def edit(L: torch.Tensor, pad: torch.Tensor, P: int) -> torch.Tensor:
        fires = (L @ w) > thr
        if mode == "row":  # the verdict of the last prompt token (column P - 1 in every left-padded row)
            active = fires[:, P - 1 : P].expand_as(fires)
        else:  # from the first real position that fires onwards
            real = torch.arange(L.shape[1]).unsqueeze(0) >= pad.unsqueeze(1)
            active = (fires & real).int().cumsum(1) > 0
        return L + (active & _named(sel, pad, P, L.shape[1])).unsqueeze(-1) * vec

    return edit


def _bare(h, seqs: torch.Tensor, prompt_mask: torch.Tensor, resid: torch.Tensor) -> torch.Tensor:
    """Logits ``[b, T, V]`` of the plain HF model over ``seqs`` in one forward without cache, with
    ``resid`` added to layer 0's output (a forward hook) and the o_proj weight of layer 0 doubled by hand."""
    b, T = seqs.shape
    mask = torch.cat([prompt_mask, torch.ones(b, T - prompt_mask.shape[1], dtype=prompt_mask.dtype)], 1)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)

    def hook(_m, _a, out):
        return out + resid if isinstance(out, torch.Tensor) else (out[0] + resid, *out[1:])

    p = dict(h.model.named_parameters())[PARAM]
    saved = p.detach().clone()
    handle = h.model.model.layers[0].register_forward_hook(hook)
    try:
        with torch.no_grad():
            p.mul_(2.0)
            return h.model(input_ids=seqs, attention_mask=mask, position_ids=pos).logits.float()
    finally:
        handle.remove()
        with torch.no_grad():
            p.copy_(saved)


def _prompt_probe(h, resid: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    enc = h.encode(PROMPTS)
    P = enc["input_ids"].shape[1]
    return _bare(h, enc["input_ids"], enc["attention_mask"], resid)[:, :P] @ w, enc["attention_mask"], P


def _cases(h) -> dict[str, tuple[list, list[Edit]]]:
    """name -> (logits-site interventions, their independent edits in the same order)."""
    V = h.vocab_size
    resid = _rand(h.d_model, 0, 2.0)
    w = _rand(V, 1)
    scores, mask, P = _prompt_probe(h, resid, w)
    pad = (mask == 0).sum(1)
    last = scores[:, P - 1].sort().values
    thr_row = float((last[-2] + last[-1]) / 2)  # fires on one row's last prompt token, not on the others
    # from_step: a threshold one row crosses inside its prompt but not at its last token (the case a
    # step-0 forward that computes the last position's logits only cannot see)
    real = torch.arange(P).unsqueeze(0) >= pad.unsqueeze(1)
    early = scores[:, : P - 1].masked_fill(~real[:, : P - 1], -torch.inf).max(1).values
    r0 = int((early - scores[:, P - 1]).argmax())
    assert early[r0] > scores[r0, P - 1], "no row fires early in its prompt only: the from_step case would be vacuous"
    thr_step = float((early[r0] + scores[r0, P - 1]) / 2)
    v1, v2, v3 = _rand(V, 2, 3.0), _rand(V, 3, 3.0), _rand(V, 4, 3.0)
    cases: dict[str, tuple[list, list[Edit]]] = {
        "cond_row": ([ConditionalAdd(site="logits", vector=v1, probe_weight=w, threshold=thr_row)],
                     [_cond(v1, w, thr_row, "row")]),
        "cond_from_step": ([ConditionalAdd(site="logits", vector=v1, probe_weight=w, threshold=thr_step,
                                           mode="from_step"),
                            AddVector(site="logits", vector=v2, positions="generated")],
                           [_cond(v1, w, thr_step, "from_step"), _add(v2, "generated")]),
        "cond_row_generated": ([ConditionalAdd(site="logits", vector=v1, probe_weight=w, threshold=thr_row,
                                               positions="generated"),
                                AddVector(site="logits", vector=v3, positions={"last": 1})],
                               [_cond(v1, w, thr_row, "row", "generated"), _add(v3, {"last": 1})]),
    }
    for sel, name in (("prompt", "prompt"), ("generated", "generated"), ([0, 2], "list"), ({"last": 2}, "last2")):
        cases[f"add_{name}"] = ([AddVector(site="logits", vector=v2, positions=sel)], [_add(v2, sel)])
    return cases


def _with_others(h, logits_ivs: list) -> list:
    return [AddVector(site="blocks.0.resid_post", vector=_rand(h.d_model, 0, 2.0)),
            ParamEdit(param=PARAM, op="scale", value=2.0), *logits_ivs]


CASES = ["cond_row", "cond_from_step", "cond_row_generated", "add_prompt", "add_generated", "add_list", "add_last2"]
_CACHE: dict[str, Any] = {}


@pytest.fixture(scope="module", params=["stories", "moe"])
def model(request, stories, tiny):
    h = stories if request.param == "stories" else tiny("deepseek_v3")
    if h.spec not in _CACHE:
        _CACHE[h.spec] = _cases(h)
    return h, _CACHE[h.spec]


@pytest.mark.parametrize("case", CASES)
def test_logits_edits_act_on_the_positions_they_name(model, case):
    h, cases = model
    logits_ivs, edits = cases[case]
    ivs = _with_others(h, logits_ivs)
    enc = h.encode(PROMPTS)
    mask, P = enc["attention_mask"], enc["input_ids"].shape[1]
    pad = (mask == 0).sum(1)
    full = case == "cond_from_step"  # a verdict carried from earlier positions: every prompt logit is computed
    runs = {}
    for use_cache in (True, False):
        r = sl.generate(h, PROMPTS, ivs, max_new_tokens=N, use_cache=use_cache, stop_at_eos=False,
                        output_scores=True, record=["logits"])
        base = _bare(h, r.sequences, mask, _rand(h.d_model, 0, 2.0))
        want = base
        for edit in edits:
            want = edit(want, pad, P)
        T = r.sequences.shape[1]
        real = torch.arange(T).unsqueeze(0) >= pad.unsqueeze(1)
        for s in range(N):
            err = (r.scores[s] - want[:, P - 1 + s]).abs().max().item()
            assert err <= ATOL, f"cache={use_cache} step {s}: logits differ from the independent ones by {err}"
            assert torch.equal(r.sequences[:, P + s], want[:, P - 1 + s].argmax(-1))
            rec = r.records["logits"][s]  # the logits this forward computed, after the edits
            n = (P if s == 0 else 1) if use_cache else P + s
            assert rec.shape == (len(PROMPTS), n if full else 1, h.vocab_size), (s, tuple(rec.shape))
            cols = slice(P + s - rec.shape[1], P + s)
            keep = real[:, cols]
            assert (rec.float() - want[:, cols])[keep].abs().max().item() <= ATOL
        runs[use_cache] = r
        observed = (want - base)[:, P - 1 : P - 1 + N].abs().amax(-1)  # [b, N]: the edit at each generated token
        assert observed.max() > EFFECT, "the logits edits changed nothing: the check would be vacuous"
        if case != "cond_from_step":
            assert (observed == 0).any(), "the edit acts at every observed position: the selector goes unchecked"
    assert torch.equal(runs[True].sequences, runs[False].sequences)


@pytest.mark.parametrize("case", ["cond_row", "cond_from_step", "add_list", "add_last2"])
def test_the_remote_path_gives_the_same_logits(model, case):
    """``remote="local"`` equals the local engine bit for bit (tokens and every step's logits)."""
    h, cases = model
    ivs = _with_others(h, cases[case][0])
    kw = {"max_new_tokens": N, "stop_at_eos": False, "output_scores": True}
    local = sl.generate(h, PROMPTS, ivs, **kw)
    remote = sl.generate(h, PROMPTS, ivs, remote="local", **kw)
    assert torch.equal(remote.sequences, local.sequences)
    assert all(torch.equal(a, b) for a, b in zip(remote.scores, local.scores, strict=True))
    assert not torch.equal(local.sequences, sl.generate(h, PROMPTS, _with_others(h, []), **kw).sequences)


def test_logits_edits_compose_with_every_type(model):
    """Logits edits with every other type (an expert mask on the MoE model): KV cache == full recompute
    (the harness of test_kv_equivalence), and the remote path == the local engine."""
    h, cases = model
    ivs = [*_with_others(h, [*cases["cond_from_step"][0], *cases["add_list"][0]]),
           ProjectOut(site="blocks.1.resid_mid", direction=_rand(h.d_model, 5)),
           Patch(site="logits", value=_rand(h.vocab_size, 6), positions=[2])]
    if h.adapter.moe_layers:
        ivs.append(ExpertMask(layer=h.adapter.moe_layers[0], off=[0, 1], positions="generated"))
    _assert_equivalent(h, ivs)
    kw = {"max_new_tokens": N, "stop_at_eos": False, "output_scores": True}
    local, remote = sl.generate(h, PROMPTS, ivs, **kw), sl.generate(h, PROMPTS, ivs, remote="local", **kw)
    assert torch.equal(remote.sequences, local.sequences)
    assert all(torch.equal(a, b) for a, b in zip(remote.scores, local.scores, strict=True))
