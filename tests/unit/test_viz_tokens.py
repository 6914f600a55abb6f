"""Per-token probability tables from GenerationResult.scores (steerlab.viz.tokens)."""

from __future__ import annotations

import html

import pytest
import torch

import steerlab as sl
from steerlab.errors import SteerlabError
from steerlab.viz.tokens import TokenStep, token_steps, tokens_html


@pytest.fixture(scope="module")
def sampled(stories):
    smp = sl.make_sampler("top_p", p=0.8, temperature=1.3)
    out = sl.generate(stories, ["Once upon a time", "The dog"], sampler=smp, max_new_tokens=12, seed=3,
                      output_scores=True)
    return out, smp


def test_pieces_rebuild_the_completion_and_ids_match(stories, sampled):
    out, smp = sampled
    for row, ids in enumerate(out.token_ids):
        steps = token_steps(stories.tokenizer, out.scores, ids, row=row, sampler=smp)
        assert [s.token_id for s in steps] == ids
        assert "".join(s.piece for s in steps) == out.texts[row]
        assert [s.step for s in steps] == list(range(len(ids)))


def test_probabilities_match_softmax_of_the_logits_and_the_sampler(stories, sampled):
    out, smp = sampled
    steps = token_steps(stories.tokenizer, out.scores, out.token_ids[1], row=1, sampler=smp, top_k=4)
    for t, s in enumerate(steps):
        logits = out.scores[t][1]
        p = torch.softmax(logits, -1)
        assert s.prob == pytest.approx(float(p[s.token_id]), rel=1e-5)
        q = torch.softmax(smp.filter_logits(logits[None]), -1)[0]
        assert s.sampler_prob == pytest.approx(float(q[s.token_id]), rel=1e-5)
        assert s.sampler_prob > 0  # a sampled token is always inside the kept set
        top = p.topk(4)
        assert [a[1] for a in s.alternatives] == pytest.approx(top.values.tolist(), rel=1e-5)
        assert all(x[1] >= y[1] for x, y in zip(s.alternatives, s.alternatives[1:], strict=False))


def test_greedy_tokens_are_the_top_alternative_with_sampler_prob_one(stories):
    out = sl.generate(stories, ["Once upon a time"], max_new_tokens=8, output_scores=True)
    steps = token_steps(stories.tokenizer, out.scores, out.token_ids[0], sampler=sl.make_sampler("greedy"))
    for s in steps:
        assert s.alternatives[0][0] == s.piece
        assert s.alternatives[0][1] == pytest.approx(s.prob)
        assert s.sampler_prob == 1.0


def test_json_round_trip():
    s = TokenStep(2, 17, " cat", 0.25, 0.5, ((" cat", 0.25), (" dog", 0.2)))
    assert TokenStep.from_json(s.to_json()) == s


def test_bad_input_is_named():
    with pytest.raises(SteerlabError, match="output_scores=True"):
        token_steps(None, None, [1])
    with pytest.raises(SteerlabError, match="3 token ids but only 1"):
        token_steps(None, [torch.zeros(1, 5)], [1, 2, 3])


def test_html_escapes_and_carries_tooltips():
    steps = [TokenStep(0, 1, "<b>", 0.9, 0.9, (("<b>", 0.9),)), TokenStep(1, 2, "\n x", 0.1, 0.2, ((" y", 0.5),))]
    out = tokens_html(steps)
    assert out.count('class="sl-tok"') == 2
    assert "&lt;b&gt;" in out and "<b>" not in out
    assert "<br>" in out  # a newline is shown, not swallowed
    titles = [html.unescape(t.split('"')[0]) for t in out.split('data-tip="')[1:]]
    assert "p=0.100" in titles[1] and "' y'  0.500" in titles[1]
    assert "(empty completion)" in tokens_html([])
