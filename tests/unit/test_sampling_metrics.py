"""Diversity metrics, bootstrap CIs, the offline sentence embedder, and the compare harness's spec parsing."""

from __future__ import annotations

import math

import pytest
import torch

from steerlab.decoding.compare import (
    aggregate,
    load_prompts,
    parse_sampler_spec,
    parse_samplers,
    parse_temperatures,
    sampler_label,
    table_markdown,
)
from steerlab.decoding.metrics import (
    distinct_n,
    embedding_diversity,
    self_bleu,
    sentence_bleu,
    words,
)
from steerlab.errors import SpecError
from steerlab.stats import mean_ci


def test_words_and_distinct_n():
    assert words("The cat, the CAT!") == ["the", "cat", ",", "the", "cat", "!"]
    assert distinct_n(["a b a b", "a b c"], 1) == 3 / 7
    assert distinct_n(["a b a b", "a b c"], 2) == 3 / 5
    assert math.isnan(distinct_n(["a b", "c"], 3))  # no trigram at all
    assert distinct_n(["x y z", "x y z"], 3) == 0.5


def test_sentence_bleu_hand_computed():
    hyp = "the cat sat on the mat".split()
    ref = "the cat is on the mat".split()
    # clipped matches: 1-grams 5/6, 2-grams 3/5, 3-grams 1/4, 4-grams 0/3; smoothed (m+1)/(c+1) for n>=2
    expected = math.exp((math.log(5 / 6) + math.log(4 / 6) + math.log(2 / 5) + math.log(1 / 4)) / 4)
    assert sentence_bleu(hyp, [ref]) == pytest.approx(expected)
    # brevity penalty: a 3-word hypothesis against a 6-word reference
    short = "the cat sat".split()
    # every n-gram matches (2-grams (2+1)/(2+1), 3-grams (1+1)/(1+1), 4-grams (0+1)/(0+1)): BLEU = BP
    assert sentence_bleu(short, ["the cat sat on the mat".split()]) == pytest.approx(math.exp(1 - 6 / 3))
    assert sentence_bleu([], [ref]) == 0.0
    assert sentence_bleu(["dog"], [ref]) == 0.0


def test_self_bleu_orders_diversity():
    same = ["the cat sat on the mat"] * 3
    varied = ["the cat sat on the mat", "a dog ran in the park", "birds sing at dawn quietly"]
    assert self_bleu(same) == pytest.approx(1.0)
    assert self_bleu(varied) < 0.2
    assert math.isnan(self_bleu(["only one"]))


def test_embedding_diversity():
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    # pairs: (0,1) distance 1, (0,2) 0, (1,2) 1
    assert embedding_diversity(e) == pytest.approx(2 / 3)
    assert embedding_diversity(torch.ones(4, 3)) == pytest.approx(0.0, abs=1e-6)
    assert math.isnan(embedding_diversity(torch.ones(1, 3)))


def test_mean_ci():
    ci = mean_ci([1.0, 2.0, 3.0, 4.0, float("nan")])
    assert ci["mean"] == 2.5 and ci["n"] == 4
    assert 1.0 <= ci["lo"] < 2.5 < ci["hi"] <= 4.0
    assert mean_ci([1.0, 2.0, 3.0, 4.0]) == mean_ci([1.0, 2.0, 3.0, 4.0])  # seeded
    assert mean_ci([5.0]) == {"mean": 5.0, "lo": 5.0, "hi": 5.0, "n": 1}
    assert mean_ci([])["n"] == 0


def test_aggregate_exponentiates_nll_for_perplexity():
    per_prompt = [{"judge_nll": 1.0, "distinct_2": 0.5}, {"judge_nll": 2.0, "distinct_2": 0.7}]
    agg = aggregate(per_prompt)
    assert agg["judge_ppl"]["mean"] == pytest.approx(math.exp(1.5))
    assert agg["judge_ppl"]["lo"] == pytest.approx(math.exp(agg["judge_nll"]["lo"]))
    assert agg["distinct_2"]["mean"] == pytest.approx(0.6)


def test_sentence_embedder_matches_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    from steerlab.decoding.metrics import SentenceEmbedder, model_path

    texts = ["A cat sat on the mat.", "Stock markets fell sharply today.", "A kitten rested on a rug."]
    ours = SentenceEmbedder().encode(texts)
    ref = torch.tensor(SentenceTransformer(model_path(), device="cpu").encode(texts))
    assert ours.shape == (3, 384)
    assert torch.allclose(ours, ref, atol=1e-5)
    sim = ours @ ours.T
    assert sim[0, 2] > sim[0, 1]  # the paraphrase is closer than the unrelated sentence


def test_sampler_specs():
    assert parse_sampler_spec("top_h:alpha=0.4:variant=hf") == {
        "name": "top_h",
        "params": {"alpha": 0.4, "variant": "hf"},
    }
    assert parse_sampler_spec(" temperature ") == {"name": "temperature", "params": {}}
    specs = parse_samplers("top_h:alpha=0.3, top_p:p=0.9,min_p:p=0.1")
    assert [sampler_label(s) for s in specs] == ["top_h(alpha=0.3)", "top_p(p=0.9)", "min_p(p=0.1)"]
    with pytest.raises(SpecError, match="alpha must be in"):
        parse_sampler_spec("top_h:alpha=1.5")
    with pytest.raises(SpecError, match="unknown sampler"):
        parse_sampler_spec("top_q:q=1")
    with pytest.raises(SpecError, match="not of the form key=value"):
        parse_sampler_spec("top_h:alpha")
    with pytest.raises(SpecError, match="set temperatures with the sweep"):
        parse_sampler_spec("top_p:p=0.9:temperature=2")
    with pytest.raises(SpecError, match="greedy"):
        parse_sampler_spec("greedy")
    assert parse_temperatures("1.0, 1.5,3") == [1.0, 1.5, 3.0]
    for bad in ("0", "1,-1", "x", "", "nan"):
        with pytest.raises(SpecError, match="temperatures"):
            parse_temperatures(bad)


def test_prompt_sets(tmp_path):
    for name in ("creative_writing", "story_openings"):
        ps = load_prompts(name)
        assert len(ps) == 20 and len(set(ps)) == 20  # counted with grep -cvE '^\s*(#|$)' on the file
        assert not any(p.startswith("#") for p in ps)
    assert load_prompts("story_openings")[0] == "Once upon a time, there was a little girl named Lily."
    f = tmp_path / "p.txt"
    f.write_text("# comment\n\nfirst\nsecond\\nline\n")
    assert load_prompts(f) == ["first", "second\nline"]
    with pytest.raises(SpecError, match="not found"):
        load_prompts(tmp_path / "missing.txt")


def test_table_markdown():
    m = {"mean": 0.5, "lo": 0.4, "hi": 0.6, "n": 2}
    row = {
        "sampler": "top_h(alpha=0.4)",
        "temperature": 1.5,
        "distinct_2": m,
        "distinct_3": m,
        "self_bleu": m,
        "embedding_diversity": {"mean": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": 0},
        "judge_ppl": {"mean": 12.34, "lo": 10.0, "hi": 15.0, "n": 2},
        "length": m,
    }
    md = table_markdown([row])
    assert "| top_h(alpha=0.4) | 1.5 | 0.500 [0.400, 0.600]" in md and "n/a" in md and "12.3 [10.0, 15.0]" in md
