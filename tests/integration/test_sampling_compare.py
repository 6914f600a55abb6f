"""Top-H in generation and the sampling-comparison harness, end to end on stories260K."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from typer.testing import CliRunner

import steerlab as sl
from steerlab.artifacts import read_artifact
from steerlab.cli.main import app
from steerlab.decoding.compare import (
    CompareConfig,
    judge_nll,
    nll_from_scores,
    run_compare,
)
from steerlab.decoding.diagnostics import generation_diagnostics
from steerlab.interventions import AddVector
from steerlab.sampling.top_h import TopH

PROMPTS = ["Once upon a time, there was a little girl named Lily.", "One day, a small boy named Tom went to the"]


def test_hf_variant_in_generate_matches_transformers_top_h(stories):
    """sl.generate with top_h(variant="hf") samples exactly what transformers' own ``top_h=`` samples.

    alpha = 1 keeps up to 100 tokens per step, so any extra truncation that ``generate`` might add
    after steerlab's sampler (such as an implicit top-k 50) would show up as a different sequence.
    """
    enc = stories.encode(PROMPTS)
    for alpha, temp in ((0.4, 1.5), (1.0, 3.0)):
        smp = sl.make_sampler("top_h", alpha=alpha, variant="hf", temperature=temp)
        ours = sl.generate(stories, PROMPTS, sampler=smp, max_new_tokens=24, seed=7, stop_at_eos=False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(7)
            theirs = stories.model.generate(
                **enc,
                do_sample=True,
                top_h=alpha,
                temperature=temp,
                top_k=0,
                top_p=1.0,
                max_new_tokens=24,
                pad_token_id=stories.tokenizer.pad_token_id,
                eos_token_id=None,
            )
        assert torch.equal(ours.sequences, theirs), (alpha, temp)


def test_generation_diagnostics_follow_the_sampled_steps(stories):
    smp = sl.make_sampler("top_h", alpha=0.5, temperature=2.0)
    res = sl.generate(stories, PROMPTS, sampler=smp, max_new_tokens=16, seed=3, output_scores=True)
    for row in range(len(PROMPTS)):
        d = generation_diagnostics(res, row, tokenizer=stories.tokenizer)
        json.dumps(d)
        n = len(res.token_ids[row])
        assert d["steps"] == min(16, n + 1) == len(d["tokens"]) == len(d["top_h"]["kept"]) == len(d["token_texts"])
        assert d["tokens"][:n] == res.token_ids[row]
        assert (d["top_h"]["alpha"], d["top_h"]["variant"], d["temperature"]) == (0.5, "paper", 2.0)
        for t in range(d["steps"]):
            kept = torch.isfinite(smp.filter_logits(res.scores[t][row : row + 1]))[0]
            assert d["top_h"]["kept"][t] == int(kept.sum())
            assert bool(kept[d["tokens"][t]])  # every sampled token came from the top-H set


def test_top_h_with_interventions(stories):
    v = torch.randn(stories.d_model, generator=torch.Generator().manual_seed(0))
    steer = [AddVector(site="blocks.2.resid_post", vector=v, scale=8.0)]
    smp = TopH(alpha=0.4, temperature=1.0)
    plain = sl.generate(stories, PROMPTS, sampler=smp, max_new_tokens=12, seed=1)
    steered = sl.generate(stories, PROMPTS, interventions=steer, sampler=smp, max_new_tokens=12, seed=1)
    again = sl.generate(stories, PROMPTS, interventions=steer, sampler=smp, max_new_tokens=12, seed=1)
    assert steered.texts == again.texts
    assert steered.texts != plain.texts
    assert steered.settings["sampler"] == {"name": "top_h", "params": smp.params()}


def test_compare_harness_end_to_end(stories, tmp_path):
    out = tmp_path / "cmp"
    res = CliRunner().invoke(
        app,
        [
            "sampling",
            "compare",
            "shared:stories260K",
            "--prompts",
            "story_openings",
            "--n-prompts",
            "3",
            "--samples",
            "2",
            "--samplers",
            "top_h:alpha=0.4,temperature",
            "--temperatures",
            "1.0,2.0",
            "-n",
            "10",
            "--out",
            str(out),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout[res.stdout.index("{") :])
    assert payload["artifact"] == str(out)
    art = read_artifact(out)
    assert art.kind == "sampling_compare"
    assert art.config["n_prompts"] == 3 and art.config["samples"] == 2 and art.config["chat"] is False
    keys = ["top_h(alpha=0.4)@T=1", "top_h(alpha=0.4)@T=2", "temperature@T=1", "temperature@T=2"]
    assert sorted(art.metrics) == sorted(keys)
    rows = art.data["rows"]
    assert len(rows) == 4
    for r in rows:
        for k in art.data["metric_names"]:
            m = r[k]
            assert m["lo"] <= m["mean"] <= m["hi"], (k, m)
        # distinct-2 recomputed by hand from the stored samples: pooled unique / all word bigrams per
        # prompt (words: lower-cased \w+ runs and single punctuation marks), averaged over prompts
        per_prompt = []
        for smp in art.data["samples"][r["sampler"] + f"@T={r['temperature']:g}"]:
            grams = []
            for t in smp["texts"]:
                w = re.findall(r"\w+|[^\w\s]", t.lower())
                grams += list(zip(w, w[1:], strict=False))
            per_prompt.append(len(set(grams)) / len(grams))
        assert r["distinct_2"]["mean"] == pytest.approx(sum(per_prompt) / len(per_prompt), abs=1e-9)
        assert math.isclose(r["judge_ppl"]["mean"], math.exp(r["judge_nll"]["mean"]))
    by = {(r["name"], r["temperature"]): r for r in rows}
    # hotter pure sampling is less likely under the T=1 judge
    assert by[("temperature", 2.0)]["judge_ppl"]["mean"] > by[("temperature", 1.0)]["judge_ppl"]["mean"]
    samples = art.data["samples"]["temperature@T=1"]
    assert [len(s["texts"]) for s in samples] == [2, 2, 2]
    step = art.data["per_step"]
    assert step["steps"] == len(step["top_h"]["kept"]) == len(step["entropy"])
    assert set(art.data["figures"]) == {"diversity_vs_coherence", "per_step"}
    assert (out / "diversity_vs_coherence.html").exists() and (out / "per_step.html").exists()
    assert (out / "plotly.min.js").exists()  # the HTML figures open offline

    # shared seeds: the same configuration reproduces the same samples
    cfg = CompareConfig(
        model="shared:stories260K",
        prompts=[s["prompt"] for s in samples],
        samplers=[{"name": "temperature", "params": {}}],
        temperatures=[1.0],
        samples=2,
        max_new_tokens=10,
        embed=False,
    )
    again = run_compare(cfg, tmp_path / "again", progress=False, handle=stories)
    assert again.data["samples"]["temperature@T=1"] == samples


def test_compare_cli_rejects_bad_input(tmp_path):
    runner = CliRunner()
    bad = runner.invoke(
        app, ["sampling", "compare", "shared:stories260K", "--samplers", "top_h:alpha=2", "--out", str(tmp_path / "x")]
    )
    assert bad.exit_code == 2 and "alpha must be in (0, 1]" in bad.output
    bad = runner.invoke(
        app, ["sampling", "compare", "shared:stories260K", "--temperatures", "0", "--out", str(tmp_path / "x")]
    )
    assert bad.exit_code == 2 and "temperatures must be finite numbers > 0" in bad.output
    bad = runner.invoke(
        app, ["sampling", "compare", "shared:stories260K", "--prompts", "nope", "--out", str(tmp_path / "x")]
    )
    assert bad.exit_code == 2 and "not found" in bad.output


def test_judge_from_generation_logits_equals_a_forward_pass(stories):
    """The harness's free judge (the generation's own raw logits) equals a separate forward pass."""
    smp = sl.make_sampler("temperature", temperature=1.5)
    prompts = [PROMPTS[0], PROMPTS[0], PROMPTS[1]]
    res = sl.generate(stories, prompts, sampler=smp, max_new_tokens=12, seed=5, output_scores=True)
    free = nll_from_scores(res)
    forward = judge_nll(stories, prompts, res.texts, res.token_ids, chat=False)
    assert all(math.isfinite(x) for x in free)
    assert free == pytest.approx(forward, abs=1e-4)
    retokenized = judge_nll(stories, prompts, res.texts, None, chat=False)  # the path used for another judge
    assert all(math.isfinite(x) for x in retokenized)
