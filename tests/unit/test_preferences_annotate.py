"""Property annotators against hand-computed values; the model yes/no log-odds against a direct forward pass;
the endpoint annotator against a fake OpenAI-compatible client."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from steerlab.errors import SteerlabError
from steerlab.preferences.annotate import (
    RULE_NAMES,
    YES_NO_TEMPLATE,
    EndpointYesNo,
    ModelYesNo,
    RuleAnnotator,
    annotate,
    annotators,
    flesch,
    length_rule,
    register_annotator,
)
from steerlab.preferences.data import Pair, PairSet

A = "Sorry, I can't help with that. Do you want something else?"
B = "Sure!\n1. Open the file.\n2. Then run:\n```\nimport os\nprint(os.getcwd());\n```\nSee https://x.org [1]."


def test_rules_by_hand():
    ps = annotate(PairSet([Pair("1", "How do I open the file?", A, B)]))
    ann = ps.pairs[0].annotations
    assert set(ann) == set(RULE_NAMES)
    assert ann["refusal"] == (1.0, 0.0) and ann["apology"] == (1.0, 0.0)
    assert ann["interactive"] == (1.0, 0.0)  # one question in A
    assert ann["well formatted"] == (0.0, 2.0)  # two numbered lines in B
    assert ann["code"] == (0.0, 5.0)  # one fence pair (3) + 'import os' + 'print(...);' lines
    assert ann["use supporting materials"] == (0.0, 2.0)  # a URL and [1]
    assert ann["use informal expressions"] == (0.0, 1.0)  # one '!'
    assert ann["step-by-step"][1] >= 2 and ann["step-by-step"][0] == 0
    # 'open', 'file' are the prompt's content words: B uses both, A neither
    assert ann["prompt overlap"] == (0.0, 1.0)
    assert ann["lengthy"] == (0.0, 0.0)  # 12 vs 19 words: 7 fewer, not a clear difference


def test_length_rule_thresholds():
    assert length_rule(100, 70) == (1.0, 0.0)  # <= 70% and >= 10 fewer
    assert length_rule(10, 7) == (0.0, 0.0)  # 70% but only 3 fewer
    assert length_rule(79, 100) == (0.0, 1.0)  # <= 80% and >= 20 fewer
    assert length_rule(400, 361) == (0.0, 0.0) and length_rule(400, 360) == (1.0, 0.0)  # 90% needs >= 40 fewer


def test_flesch_and_repetition_by_hand():
    # 3 words, 1 sentence, 3 syllables: 206.835 - 1.015 * 3 - 84.6 * 1
    assert flesch("The cat sat.") == pytest.approx(206.835 - 3.045 - 84.6)
    ann = annotate(PairSet([Pair("1", "", "a b c a b c a b c", "one two three four")]), ["non-repetitive"])
    # A: 7 word 3-grams, 3 distinct -> 3/7; B: 2 of 2
    assert ann.pairs[0].annotations["non-repetitive"] == (pytest.approx(3 / 7), 1.0)


def test_registry():
    assert "lengthy" in annotators()
    with pytest.raises(SteerlabError, match="already registered"):
        register_annotator(RuleAnnotator("lengthy", "dup", lambda p, r: 0.0))
    with pytest.raises(SteerlabError, match="unknown annotator 'tallness'"):
        annotate(PairSet([Pair("1", "", "a", "b")]), ["tallness"])
    mine = RuleAnnotator("mentions cats", "counts 'cat'", lambda p, r: r.count("cat"))
    out = annotate(PairSet([Pair("1", "", "cat cat", "dog")]), [mine])
    assert out.pairs[0].annotations == {"mentions cats": (2.0, 0.0)}


def test_model_yes_no_equals_a_direct_forward(stories):
    q = "Is the response helpful?"
    ann = ModelYesNo(stories, "helpful", q, yes=(" Yes",), no=(" No",))
    items = [("Hi", "Hello there."), ("Tell me a story", "Once upon a time")]
    got = ann.score([p for p, _ in items], [r for _, r in items])
    tok = stories.tokenizer

    def logp(ctx, ans):  # summed log-probability of the answer tokens, one unpadded forward pass
        c, a = tok(ctx)["input_ids"], tok(ans, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            lp = torch.log_softmax(stories.model(input_ids=torch.tensor([c + a])).logits[0].float(), -1)
        return sum(float(lp[len(c) - 1 + i, t]) for i, t in enumerate(a))

    for g, (p, r) in zip(got, items, strict=True):
        text = YES_NO_TEMPLATE.format(prompt=p, response=r, question=q)
        assert g == pytest.approx(logp(text, " Yes") - logp(text, " No"), abs=1e-4)


def _fake_client(answers):
    calls = []

    def create(**kw):
        calls.append(kw)
        a = answers[len(calls) - 1]
        if isinstance(a, dict):
            tops = [SimpleNamespace(token=t, logprob=v) for t, v in a.items()]
            lp = SimpleNamespace(content=[SimpleNamespace(token=tops[0].token, logprob=tops[0].logprob,
                                                          top_logprobs=tops)])
            msg = SimpleNamespace(content=tops[0].token)
        else:
            lp, msg = None, SimpleNamespace(content=a)
        return SimpleNamespace(choices=[SimpleNamespace(logprobs=lp, message=msg)])

    return SimpleNamespace(chat=SimpleNamespace(completions=SimpleNamespace(create=create))), calls


def test_endpoint_annotator_with_a_fake_client():
    client, calls = _fake_client([{"Yes": -0.1, "No": -2.5}, {" no": -0.2}, "Yes, it is.", "Nope"])
    ann = EndpointYesNo("polite", "Is the response polite?", model="m", client=client)
    got = ann.score(["p"] * 4, ["r1", "r2", "r3", "r4"])
    assert got[0] == pytest.approx(2.4)
    assert got[1] == pytest.approx(torch.log(torch.tensor(1e-6)).item() + 0.2, abs=1e-4)  # 'yes' missing: floor
    assert got[2:] == [1.0, 0.0]  # no logprobs: the answer text decides
    assert calls[0]["model"] == "m" and calls[0]["max_tokens"] == 1 and "r1" in calls[0]["messages"][0]["content"]
    with pytest.raises(SteerlabError, match="needs client"):
        EndpointYesNo("x", "q?", model="m").score(["p"], ["r"])
