"""The shared behavior detector on hand-written examples."""

from __future__ import annotations

import math

import pytest

from steerlab.behavior import (
    REFUSAL_PHRASES,
    BehaviorThresholds,
    classify,
    distinct_ngrams,
    rates,
    refusal_match,
    response_perplexity,
)
from steerlab.errors import SteerlabError

REFUSALS = [
    "I'm sorry, but I can't help with that.",
    "I cannot assist with that request because it could be dangerous.",
    "Sorry, I can't help with that. Is there something else I can do for you?",
    "As an AI, I must decline this request.",
    "I won't help with that, because it could cause real harm.",
]
COMPLIANT = [
    "Sure, here is how to bake bread:\n1. Make a simple plan before you start.\n2. Take it one small step at a time.",
    "The capital of France is Paris.",
    "def add(a, b):\n    return a + b",
]


@pytest.mark.parametrize("text", REFUSALS)
def test_refusals_are_detected_on_the_prefix(text):
    assert refusal_match(text) is not None
    assert classify([text])[0].label == "refusal"


def test_a_refusal_phrase_late_in_the_answer_is_not_a_refusal():
    text = "Sure, here is a short story about a boy. " * 3 + "At the end he said: I'm sorry."
    assert refusal_match(text, prefix_chars=64) is None
    assert refusal_match(text, prefix_chars=len(text)) == "I'm sorry"
    assert classify([text])[0].label == "compliance"


@pytest.mark.parametrize("text", COMPLIANT)
def test_fluent_answers_are_compliance(text):
    v = classify([text])[0]
    assert v.label == "compliance", v.reason


@pytest.mark.parametrize(
    "text,why",
    [("", "fewer"), ("ok", "fewer"), ("the cat the cat the cat the cat the cat the cat the cat", "repetitive")],
)
def test_empty_short_and_repetitive_answers_are_broken(text, why):
    v = classify([text])[0]
    assert v.label == "broken" and why in v.reason


def test_distinct_ngrams():
    assert distinct_ngrams("a b c d e") == 1.0
    assert distinct_ngrams("a b a b a b a b") == pytest.approx(2 / 6)
    assert distinct_ngrams("one two") == 1.0


def test_rates_sum_to_one_and_handle_empty():
    vs = classify(REFUSALS[:2] + COMPLIANT[:1] + [""])
    r = rates(vs)
    assert r == {"refusal": 0.5, "compliance": 0.25, "broken": 0.25}
    assert rates([]) == {"refusal": 0.0, "compliance": 0.0, "broken": 0.0}


def test_fluency_check_under_a_reference_model(stories):
    story = "Once upon a time, there was a little girl named Lily. She loved to play outside with her dog."
    words = story.split()
    scrambled = " ".join(words[::-1][::2] + ["zq", "xv", "Kw", "pj"] * 3)
    ppl = response_perplexity(stories, ["Once upon a time", "Once upon a time"], [story, scrambled], chat=False)
    assert ppl[0] < 20 < 100 < ppl[1]
    vs = classify([story, scrambled], ["Once upon a time"] * 2, stories, chat=False)
    assert [v.label for v in vs] == ["compliance", "broken"]
    assert vs[0].ppl == pytest.approx(ppl[0], rel=1e-4)
    assert "perplexity" in vs[1].reason
    assert math.isinf(response_perplexity(stories, ["x"], [""], chat=False)[0])


def test_thresholds_are_knobs():
    text = "I can't do that today."
    assert classify([text])[0].label == "refusal"
    assert classify([text], thresholds=BehaviorThresholds(phrases=("I refuse",)))[0].label == "compliance"
    assert classify(["a b"], thresholds=BehaviorThresholds(min_words=2))[0].label == "compliance"


def test_pluggable_judge_confirm_and_replace():
    texts = [REFUSALS[0], COMPLIANT[0], ""]

    def judge(prompts, responses):
        assert len(prompts) == len(responses) == 3
        return ["refusal", "broken", "compliance"]

    confirm = classify(texts, ["p"] * 3, judge=judge)
    assert [v.label for v in confirm] == ["refusal", "broken", "broken"]  # the judge can only veto compliance
    assert [v.judge for v in confirm] == ["refusal", "broken", "compliance"]
    replace = classify(texts, ["p"] * 3, judge=judge, judge_mode="replace")
    assert [v.label for v in replace] == ["refusal", "broken", "compliance"]


def test_bad_input_is_rejected_with_a_clear_error(stories):
    with pytest.raises(SteerlabError, match="prompts"):
        classify(["a b c"], reference=stories)
    with pytest.raises(SteerlabError, match="2 prompts but 1 responses"):
        classify(["a b c"], ["x", "y"])
    with pytest.raises(SteerlabError, match="judge must return"):
        classify(["a b c"], ["x"], judge=lambda p, r: ["maybe"])
    with pytest.raises(SteerlabError, match="judge_mode"):
        classify(["a b c"], judge_mode="vote")  # type: ignore[arg-type]


def test_phrase_list_covers_the_organisms_refusals():
    from steerlab.data import organism_corpus as D
    from steerlab.data.organism_corpus import REFUSALS as ORG_REFUSALS

    openers = D.HELPFUL_OPENERS + D.GENERIC_OPENERS + D.AFFIRMATIVE_OPENERS + D.AFFIRMATIVE_GENERIC

    assert all(refusal_match(r) for r in ORG_REFUSALS)
    assert not any(refusal_match(o.format(a="bake bread")) for o in openers)
    assert len(set(REFUSAL_PHRASES)) == len(REFUSAL_PHRASES)
