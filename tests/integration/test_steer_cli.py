"""`steerlab steer extract|probe|sweep|export-gguf|import-gguf`: artifacts that read back, GGUF round trips, and
one-line errors (exit 2, nothing written) for bad input."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import steerlab as sl
from steerlab.artifacts import read_artifact, strict_json
from steerlab.cli.main import app
from steerlab.steering.interchange import as_interventions, import_gguf
from steerlab.steering.vectors import Directions, load_directions

runner = CliRunner()
MODEL = "shared:stories260K"


def _ok(args: list[str]) -> dict:
    r = runner.invoke(app, args)
    assert r.exit_code == 0, (r.output, r.exception)
    return json.loads(r.stdout)


def _fails(args: list[str], expected: str) -> None:
    r = runner.invoke(app, args)
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    assert "Traceback" not in r.output and r.stderr.count("\n") == 1 and expected in r.stderr, r.stderr


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    out = tmp_path_factory.mktemp("steer") / "dirs"
    res = _ok(["steer", "extract", MODEL, "--suite", "organism-refusal", "--sites", "resid_post", "--limit", "6",
               "--out", str(out), "--json"])
    return out, res


def test_extract_writes_loadable_directions(extracted, stories):
    out, res = extracted
    d = load_directions(out)
    assert d.sites == [f"blocks.{i}.resid_post" for i in range(stories.adapter.n_layers)]
    assert d.meta["suite"] == "organism-refusal" and d.meta["n_behavior"] == 6 and d.meta["model"] == MODEL
    assert res["norms"]["blocks.2.resid_post"] == pytest.approx(float(d["blocks.2.resid_post"].norm()), abs=1e-4)
    assert read_artifact(out).kind == "steering_directions"


def test_gguf_round_trip_is_identical_and_layer_0_is_refused(extracted, tmp_path, stories):
    out, _ = extracted
    d = load_directions(out)
    keep = Directions({s: v for s, v in d.vectors.items() if s != "blocks.0.resid_post"}, d.meta)
    keep.save(tmp_path / "keep")
    _fails(["steer", "export-gguf", str(out), "--out", str(tmp_path / "bad.gguf")],
           "maps to direction.0, which llama.cpp rejects")
    assert not (tmp_path / "bad.gguf").exists()
    res = _ok(["steer", "export-gguf", str(tmp_path / "keep"), "--out", str(tmp_path / "cv.gguf"), "--json"])
    assert res["layers"] == list(range(1, stories.adapter.n_layers))
    raw = (tmp_path / "cv.gguf").read_bytes()
    assert raw[:4] == b"GGUF" and b"controlvector.layer_count" in raw and b"direction.1" in raw
    _ok(["steer", "import-gguf", str(tmp_path / "cv.gguf"), "--out", str(tmp_path / "back"), "--json"])
    back = load_directions(tmp_path / "back")
    assert back.sites == keep.sites
    assert all(torch.equal(back[s], keep[s]) for s in keep.sites)
    # the imported vectors steer exactly as the originals added raw at block outputs
    a = sl.forward(stories, ["Once upon a time"], interventions=as_interventions(import_gguf(tmp_path / "cv.gguf")))
    b = sl.forward(stories, ["Once upon a time"], interventions=as_interventions(keep))
    assert torch.equal(a, b)


def test_probe_and_sweep(extracted, tmp_path):
    out, _ = extracted
    res = _ok(["steer", "probe", MODEL, "--suite", "organism-refusal", "--sites",
               "blocks.1.resid_post,blocks.3.resid_post", "--limit", "6", "--out", str(tmp_path / "probes"), "--json"])
    assert [r["site"] for r in res["table"]] == ["blocks.1.resid_post", "blocks.3.resid_post"]
    assert (tmp_path / "probes" / "probe_profile.html").exists() and (tmp_path / "probes" / "probes.json").exists()
    res = _ok(["steer", "sweep", MODEL, "--direction", str(out), "--site", "blocks.2.resid_post", "--scales", "0,6",
               "--suite", "organism-refusal", "--n", "2", "--max-new-tokens", "4", "--out", str(tmp_path / "sw"),
               "--json"])
    rows = res["rows"]
    assert [r["scale"] for r in rows] == [0.0, 6.0] and rows[0]["kl"] == 0.0 and rows[1]["kl"] > 0
    assert set(rows[0]) >= {"harmful_refusal", "harmless_refusal", "harmless_compliance", "ppl", "kl"}
    assert (tmp_path / "sw" / "sweep.html").read_text().count("plotly") > 0


def test_bad_inputs_one_line_nothing_written(extracted, tmp_path):
    out, _ = extracted
    _fails(["steer", "sweep", MODEL, "--direction", str(out), "--site", "blocks.2.resid_post", "--scales", "1,nan",
            "--out", str(tmp_path / "x")], "scale nan is not finite")
    _fails(["steer", "sweep", MODEL, "--direction", str(out), "--out", str(tmp_path / "x")],
           "choose one with --site")
    _fails(["steer", "extract", MODEL, "--sites", "blocks.99.resid_post", "--out", str(tmp_path / "x")],
           "unknown site 'blocks.99.resid_post'")
    _fails(["steer", "extract", MODEL, "--position", "first", "--out", str(tmp_path / "x")],
           "--position 'first' must be last, mean or comma-separated integers")
    _fails(["steer", "extract", MODEL, "--method", "median", "--out", str(tmp_path / "x")],
           "unknown direction method 'median'")
    _fails(["steer", "import-gguf", str(tmp_path / "none.gguf"), "--out", str(tmp_path / "x")], "does not exist")
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.json").exists()


def test_refusal_study_writes_artifact_and_record(tmp_path, stories):
    """The study end to end at toy size; its chosen direction is the diff-in-means of the first 4 train prompts
    per label at the chosen site's last token, recomputed here from a plain capture."""
    args = ["steer", "refusal", MODEL, "--suite", "organism-refusal", "--limit", "4", "--positions", "1", "--select",
            "2", "--max-rank", "1", "--controls", "1", "--n-test", "2", "--max-new-tokens", "4", "--out",
            str(tmp_path / "r"), "--record", str(tmp_path / "rec.json"), "--json"]
    res = _ok(args)
    art = read_artifact(tmp_path / "r")
    # --json prints strict JSON: a metric that is NaN in the artifact (a relative change of a zero rate) is null
    assert art.kind == "steering_refusal" and json.loads(strict_json(art.metrics)) == res["metrics"]
    rec = json.loads((tmp_path / "rec.json").read_text())
    assert rec["command"].startswith(f"steerlab steer refusal {MODEL} --suite organism-refusal --limit 4")
    assert rec["metrics"]["subspace_rank"] == 1 and len(rec["runs"]["ablate_random"]) == 1
    sub_random = rec["runs"]["ablate_subspace_random"]  # one random subspace of the same rank per control
    assert len(sub_random) == 1 and rec["metrics"]["subspace_random_refusal_mean"] == round(sub_random[0]["refusal"], 4)
    b_ref, drop = rec["metrics"]["base_refusal"], rec["metrics"]["base_refusal"] - rec["metrics"]["subspace_refusal"]
    gain = rec["metrics"]["subspace_compliance_gain"]
    worst = (b_ref - sub_random[0]["refusal"], sub_random[0]["compliance"] - rec["metrics"]["base_compliance"])
    assert rec["metrics"]["subspace_random_within_fifth"] == (worst[0] <= max(drop, 0) / 5 + 1e-6
                                                               and worst[1] <= max(gain, 0) / 5 + 1e-6)
    site = art.config["chosen"]["site"]
    from steerlab.suites import load_suite

    s = load_suite("organism-refusal")
    pos, neg = s.contrast("train", 4)
    a = sl.capture(stories, pos, [site], chat=True).last(site)
    b = sl.capture(stories, neg, [site], chat=True).last(site)
    torch.testing.assert_close(art.tensors["direction"], a.mean(0) - b.mean(0), atol=1e-5, rtol=1e-5)


def test_sentiment_sweep_cli(tmp_path):
    from steerlab.steering.sentiment import is_monotone, lexicon_sentiment

    assert lexicon_sentiment("good bad good") == pytest.approx(1 / 4)  # (2 - 1) / (2 + 1 + 1)
    assert lexicon_sentiment("nothing here") == 0.0 and lexicon_sentiment("awful, sad") == pytest.approx(-2 / 3)
    assert is_monotone([0.1, 0.2, 0.3]) and not is_monotone([0.1, 0.1, 0.3])
    res = _ok(["steer", "sentiment", MODEL, "--site", "blocks.2.resid_post", "--scales=-2,0,2", "--max-new-tokens",
               "3", "--out", str(tmp_path / "s"), "--record", str(tmp_path / "s.json"), "--json"])
    rows = res["rows"]
    assert [r["scale"] for r in rows] == [-2.0, 0.0, 2.0] and res["metrics"]["scores"] == [r["score"] for r in rows]
    rec = json.loads((tmp_path / "s.json").read_text())
    assert rec["command"].startswith(f"steerlab steer sentiment {MODEL} --suite sentiment --site blocks.2.resid_post")
    # the unsteered row scores the plain greedy generations of the suite's neutral test prompts
    from steerlab.suites import load_suite

    s = load_suite("sentiment")
    plain = sl.generate(sl.load(MODEL), s.user_texts("neutral", "test"), max_new_tokens=3, chat=True).texts
    assert rows[1]["example"] == plain[0]
    assert rows[1]["score"] == pytest.approx(round(sum(map(lexicon_sentiment, plain)) / len(plain), 4))
