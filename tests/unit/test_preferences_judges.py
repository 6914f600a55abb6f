"""Judges against a direct computation: the mean log-probability per token of each response from a plain
forward pass of the model, and the DPO reward from two such passes; ties give no label."""

from __future__ import annotations

import pytest
import torch

import steerlab as sl
from steerlab.errors import SteerlabError
from steerlab.preferences.data import Pair, PairSet
from steerlab.preferences.judges import DPOJudge, LoglikJudge, agreement, judge_pairs

PAIRS = PairSet([Pair("1", "Human: tell me a story", " Once upon a time there was a cat.", " zq xx zq xx",
                      labels={"human": "A"}),
                 Pair("2", "Human: hi", " the the the the", " Lily went to the park.", labels={"human": "A"}),
                 Pair("3", "Human: same", " a dog", " a dog", labels={"human": "B"})])


def _direct_logp(h, prompt, response):
    """Summed log-probability of the response tokens after the prompt, from one unpadded forward pass."""
    tok = h.tokenizer
    p = tok(prompt + "\n\nAssistant:")["input_ids"]
    r = tok(response, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p + r])
    with torch.no_grad():
        logp = torch.log_softmax(h.model(input_ids=ids).logits[0].float(), -1)
    return sum(float(logp[len(p) - 1 + i, t]) for i, t in enumerate(r)), len(r)


def test_loglik_judge_equals_direct_forward(stories):
    ps, verdicts = judge_pairs(PAIRS, LoglikJudge(stories, "stories"))
    for pair, v in zip(PAIRS.pairs, verdicts, strict=True):
        sa, na = _direct_logp(stories, pair.prompt, pair.response_a)
        sb, nb = _direct_logp(stories, pair.prompt, pair.response_b)
        assert v.score_a == pytest.approx(sa / na, abs=1e-4) and v.score_b == pytest.approx(sb / nb, abs=1e-4)
    assert [v.label for v in verdicts][:2] == ["A" if verdicts[0].score_a > verdicts[0].score_b else "B",
                                               "A" if verdicts[1].score_a > verdicts[1].score_b else "B"]
    assert verdicts[2].label is None and "stories" not in ps.pairs[2].labels  # identical responses: a tie
    assert ps.pairs[0].labels["human"] == "A"  # other judges' labels kept
    assert agreement(ps, "human", "stories")["pairs"] == 2


def test_dpo_judge_equals_direct_forward():
    policy = sl.load("shared:stories260K", cache=False)
    ref = sl.load("shared:stories260K", cache=False)
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for prm in policy.model.parameters():
            prm.add_(0.05 * torch.randn(prm.shape, generator=g))
    _, verdicts = judge_pairs(PAIRS, DPOJudge(policy, ref, "dpo", beta=0.5))
    for pair, v in zip(PAIRS.pairs[:2], verdicts[:2], strict=True):
        for resp, got in ((pair.response_a, v.score_a), (pair.response_b, v.score_b)):
            expected = 0.5 * (_direct_logp(policy, pair.prompt, resp)[0] - _direct_logp(ref, pair.prompt, resp)[0])
            assert got == pytest.approx(expected, abs=1e-3)
        assert v.label == ("A" if v.score_a > v.score_b else "B")
    with pytest.raises(SteerlabError, match="tokenizers differ"):
        DPOJudge(policy, sl.load("organism:dense"), "x")
    with pytest.raises(SteerlabError, match="beta=0"):
        DPOJudge(policy, ref, "x", beta=0)


def test_prompt_is_cut_to_fit_keeping_bos(stories):
    j = LoglikJudge(stories, "s", max_prompt_tokens=8)
    from steerlab.preferences.judges import _Encoder

    ids = _Encoder(stories, max_prompt_tokens=8).prompt_ids("word " * 50)
    assert len(ids) == 8 and ids[0] == stories.tokenizer.bos_token_id
    long = PairSet([Pair("1", "word " * 2000, " a cat", " a dog")])
    assert judge_pairs(long, j)[1][0].label in ("A", "B")
