"""Defects a new user's review of steering, preferences, sampling and organisms found (each test fails without
its fix): labels overwritten by a judge, properties and sources accepted silently, a similarity of a judge
with no varying weight, NaN in ``--json`` output, a Cohen's d of 1e12 from one prompt per label, repeated
options run and shown as one, an option ignored on a model it cannot apply to, loose scale coercion."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from steerlab.cli.main import app
from steerlab.decoding.compare import parse_samplers, parse_temperatures
from steerlab.errors import SpecError, SteerlabError
from steerlab.preferences.fit import check_varied
from steerlab.preferences.runner import run_annotate, run_compare, run_fit, run_judge
from steerlab.steering.apply import add, check_scales, conditional
from steerlab.steering.extract import resolve_sites
from steerlab.steering.linear_probes import fit_probe, probe_profile
from steerlab.values import parse_assignments

runner = CliRunner()


def _pairs(tmp_path, n=20):
    rows = [{"prompt": f"q{i}", "response_a": "long answer", "response_b": "short", "labels": {"human": "A"},
             "annotations": {"lengthy": [1, 0]}} for i in range(n)]
    f = tmp_path / "pairs.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return f


def test_judging_never_overwrites_labels(tmp_path):
    src = str(_pairs(tmp_path))
    with pytest.raises(SteerlabError, match=r"judge names \['human'\] already label pairs of"):
        run_judge(src, tmp_path / "j", judges=["human=loglik:shared:stories260K"])
    with pytest.raises(SteerlabError, match=r"judge names \['a'\] are given twice"):
        run_judge(src, tmp_path / "j", judges=["a=loglik:shared:stories260K", "a=loglik:shared:stories260K"])
    assert not (tmp_path / "j").exists()


def test_fit_refuses_properties_the_pairs_do_not_carry(tmp_path):
    with pytest.raises(SteerlabError, match=r"properties \['nosuch'\] are not annotated on the pairs"):
        run_fit(str(_pairs(tmp_path)), tmp_path / "f", properties=["lengthy", "nosuch"], method="laplace")
    assert not (tmp_path / "f").exists()


def test_compare_refuses_a_repeated_source_and_a_judge_with_no_varying_weight(tmp_path):
    with pytest.raises(SteerlabError, match=r"sources \['published'\] are given twice"):
        run_compare(["published", "published"], tmp_path / "c")
    w = torch.tensor([[[0.5, -0.2, 0.1], [0.0, 0.0, 0.0]]])  # [groups, judges, properties]
    with pytest.raises(SteerlabError, match="judge 'st' has one weight for every property in group 'all'"):
        check_varied(w, ["gpt", "st"], ["all"])
    check_varied(w[:, :1], ["gpt"], ["all"])


def test_json_output_is_strict_json(tmp_path):
    """``--json`` prints null, not NaN, for a metric that was not computed (here: the embedding diversity
    under --no-embed); a strict parser reads it."""
    r = runner.invoke(app, ["sampling", "compare", "shared:stories260K", "--n-prompts", "1", "--samples", "2", "-n",
                            "3", "--samplers", "top_p:p=0.9", "--temperatures", "1.0", "--no-embed", "--out",
                            str(tmp_path / "sc"), "--json"])
    assert r.exit_code == 0, r.output

    def refuse(token):
        raise ValueError(f"not strict JSON: {token}")

    out = json.loads(r.stdout, parse_constant=refuse)
    assert "NaN" not in r.stdout and None in _leaves(out)


def _leaves(x):
    if isinstance(x, dict):
        return [v for y in x.values() for v in _leaves(y)]
    if isinstance(x, list):
        return [v for y in x for v in _leaves(y)]
    return [x]


def test_probe_separation_needs_spread(stories):
    with pytest.raises(SpecError, match="limit must be an integer >= 2 or None, got 1"):
        probe_profile(stories, "organism-refusal", "blocks.1.resid_post", limit=1)
    with pytest.raises(SpecError, match=r"seed must be an integer in \[0, 2\*\*32\), got -1"):
        probe_profile(stories, "organism-refusal", "blocks.1.resid_post", limit=2, seed=-1)
    a, b = torch.randn(6, 8) + 1, torch.randn(6, 8) - 1
    one = fit_probe(a, b, a[:1], b[:1], site="s")  # one held-out row per label: no spread, no Cohen's d
    assert math.isnan(one.separation)
    two = fit_probe(a, b, a[:3], b[:3], site="s")
    u = (a.mean(0) - b.mean(0)) / (a.mean(0) - b.mean(0)).norm()
    pa, pb = a[:3] @ u, b[:3] @ u
    pooled = math.sqrt((pa.var(unbiased=False) * 3 + pb.var(unbiased=False) * 3).item() / 6)
    assert two.separation == pytest.approx((pa.mean() - pb.mean()).item() / pooled, rel=1e-5)


def test_repeated_options_are_refused():
    with pytest.raises(SpecError, match=r"samplers \['top_p'\] are given twice"):
        parse_samplers("top_p,top_p")
    with pytest.raises(SpecError, match="repeat a value"):
        parse_temperatures("1,1.0")
    with pytest.raises(SpecError, match="--param: 'p' is given twice"):
        parse_assignments(["p=0.5", "p=0.9"], "--param")


def test_localization_on_a_dense_organism_is_refused():
    r = runner.invoke(app, ["organisms", "eval", "dense", "--localization", "--limit", "1"])
    assert r.exit_code == 2 and "has no routed experts" in r.stderr and "Traceback" not in r.output


def test_steering_arguments_are_not_coerced(stories):
    v = torch.randn(stories.d_model)
    for bad, what in (("4", "scale '4' is not a number"), (True, "scale True is not a number")):
        with pytest.raises(SpecError, match=what):
            add(stories, v, "blocks.1.resid_post", bad)
    with pytest.raises(SpecError, match="normalize must be True or False, got 'no'"):
        add(stories, v, "blocks.1.resid_post", 4.0, normalize="no")
    assert check_scales([1, 2.5]) == [1.0, 2.5]
    probe = probe_profile(stories, "organism-refusal", "blocks.1.resid_post", limit=2).probe("blocks.1.resid_post")
    with pytest.raises(SpecError, match="threshold nan is not finite"):
        conditional(stories, v, probe, 4.0, threshold=float("nan"))


def test_sites_mix_components_and_names(stories):
    assert resolve_sites(stories, ["resid_post", "resid_pre"]) == [f"blocks.{i}.resid_post" for i in range(5)] + [
        f"blocks.{i}.resid_pre" for i in range(5)]
    assert resolve_sites(stories, ["blocks.1.resid_post", "resid_post"])[:2] == ["blocks.1.resid_post",
                                                                                 "blocks.0.resid_post"]
    with pytest.raises(SpecError, match="sites is empty"):
        resolve_sites(stories, [])


def test_the_published_pairs_have_no_texts_to_annotate_or_judge(tmp_path):
    with pytest.raises(SteerlabError, match="the published pairs carry labels only"):
        run_annotate("published", tmp_path / "a")
    with pytest.raises(SteerlabError, match="nothing to judge"):
        run_judge("published", tmp_path / "j", judges=["m=loglik:shared:stories260K"])
    assert not (tmp_path / "a").exists() and not (tmp_path / "j").exists()


def test_compare_one_source_keeps_its_judge_names_across_groups(tmp_path):
    """The name-clash rule renamed a source's own judges in its second group ('published:human'), so comparing
    the published weights without --judges found no group every judge was fitted in."""
    run_compare(["published"], tmp_path / "c", groups=["Advice"])
    data = json.loads((tmp_path / "c" / "artifact.json").read_text())["data"]
    assert len(data["judges"]) == 33 and not any(":" in j for j in data["judges"])


def test_export_gguf_takes_the_sites_to_export(tmp_path):
    from steerlab.steering.vectors import Directions

    d = Directions({f"blocks.{i}.resid_pre": torch.randn(64) for i in range(5)}, {"model": "shared:stories260K"})
    d.save(tmp_path / "dirs")
    r = runner.invoke(app, ["steer", "export-gguf", str(tmp_path / "dirs"), "--out", str(tmp_path / "a.gguf")])
    assert r.exit_code == 2 and "is the embedding output" in r.stderr  # all sites: blocks.0.resid_pre has no layer
    r = runner.invoke(app, ["steer", "export-gguf", str(tmp_path / "dirs"), "--sites",
                            "blocks.3.resid_pre,blocks.4.resid_pre", "--out", str(tmp_path / "b.gguf"), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["layers"] == [2, 3]  # blocks.N.resid_pre is block N-1's output
    r = runner.invoke(app, ["steer", "export-gguf", str(tmp_path / "dirs"), "--sites", "blocks.9.resid_pre",
                            "--out", str(tmp_path / "c.gguf")])
    assert r.exit_code == 2 and "not in the saved directions" in r.stderr and not (tmp_path / "c.gguf").exists()
