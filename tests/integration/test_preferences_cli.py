"""``steerlab prefs annotate|judge|fit|compare``: artifacts that read back with their kind's reader, numbers
checked against hand computations, bad input refused with one line and nothing written."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from steerlab._paths import shared_dir
from steerlab.artifacts import kind_of
from steerlab.cli.main import app

runner = CliRunner()


def _ok(r):
    assert r.exit_code == 0, (r.output, r.exception)
    return json.loads(r.stdout)


def _one_line_exit_2(r, expected):
    assert r.exit_code == 2, (r.exit_code, r.output)
    assert "Traceback" not in r.output and r.stderr.count("\n") == 1 and expected in r.stderr, r.stderr


def _pairs_file(tmp_path, n=100, a_wins=80, bad=True):
    rows = [json.dumps({"prompt": "q", "response_a": "long answer", "response_b": "short",
                        "labels": {"human": "A" if i < a_wins else "B"}, "annotations": {"lengthy": [1, 0]}})
            for i in range(n)]
    if bad:
        rows.insert(3, json.dumps({"prompt": "q", "response_a": "x", "labels": {"human": "A"}}))  # line 4
        rows.insert(7, json.dumps({"prompt": "q", "response_a": "x", "response_b": "y", "labels": {"human": "C"}}))
    f = tmp_path / "pairs.jsonl"
    f.write_text("\n".join(rows) + "\n")
    return f


def test_fit_on_user_jsonl_matches_the_hand_solution(tmp_path):
    f = _pairs_file(tmp_path)
    r = runner.invoke(app, ["prefs", "fit", str(f), "--out", str(tmp_path / "x"), "--method", "laplace"])
    _one_line_exit_2(r, "line 4: missing or empty 'response_b'")
    assert not (tmp_path / "x").exists()
    out = tmp_path / "fit"
    s = _ok(runner.invoke(app, ["prefs", "fit", str(f), "--out", str(out), "--method", "laplace",
                                "--on-error", "skip", "--json"]))
    assert [p["line"] for p in s["problems"]] == [4, 8]
    row = s["fits"]["human"]["all"][0]
    # 80 of 100 A wins, A longer in all: the posterior mode solves 80 - 100 s(w) - 10 = 0 -> s(w) = 0.7
    assert row["property"] == "lengthy" and row["weight"] == pytest.approx(math.log(0.7 / 0.3), abs=1e-5)
    assert row["preferred"] == pytest.approx(70.0, abs=1e-3)
    run = kind_of("preference_fit").read(out)
    assert run.fits["human"]["all"].n_pairs == 100 and len(run.pairs) == 100


def test_annotate_judge_fit_chain_on_hh_rlhf(tmp_path):
    ann = tmp_path / "ann"
    s = _ok(runner.invoke(app, ["prefs", "annotate", "hh_rlhf:16", "--out", str(ann), "--annotators",
                                "lengthy,apology,refusal", "--json"]))
    assert s["kind"] == "preference_pairs" and s["metrics"]["pairs"] == 16 and s["metrics"]["properties"] == 3
    jud = tmp_path / "jud"
    s = _ok(runner.invoke(app, ["prefs", "judge", str(ann), "--out", str(jud), "--judge",
                                "stories=loglik:shared:stories260K", "--json"]))
    run = kind_of("preference_pairs").read(jud)
    v = run.verdicts["stories"]
    assert len(v) == 16 and all((x["label"] == "A") == (x["score_a"] > x["score_b"]) for x in v if x["label"])
    assert s["metrics"]["labelled_stories"] == sum(x["label"] is not None for x in v)
    assert run.pairs.pairs[0].annotations.keys() == {"lengthy", "apology", "refusal"}  # annotations carried over
    fit_dir = tmp_path / "fit"
    s = _ok(runner.invoke(app, ["prefs", "fit", str(jud), "--out", str(fit_dir), "--method", "laplace",
                                "--min-pairs", "5", "--json"]))
    assert set(s["fits"]) == {"human", "stories"} and s["metrics"]["judges"] == 2
    # on 16 pairs the human judge's posterior mode is 0 for every property (the Laplace prior wins): its
    # correlation with the model judge is undefined, and compare says so instead of writing NaN
    modes = kind_of("preference_fit").read(fit_dir).fits["human"]["all"].mean
    assert modes.abs().max().item() == 0.0
    cmp_dir = tmp_path / "cmp"
    _one_line_exit_2(runner.invoke(app, ["prefs", "compare", str(fit_dir), "--out", str(cmp_dir), "--json"]),
                     "judge 'human' has one weight for every property in group 'all'")
    assert not cmp_dir.exists()


def test_compare_published_equals_pearson_by_hand(tmp_path):
    rows = [json.loads(x) for x in (shared_dir() / "data/preference-dissection/fitted_paras_comparison/"
                                    "model_Advice_fitted_paras.jsonl").read_text().splitlines()]
    w = {r["model_name"]: r["parameters"] for r in rows}
    expected = float(np.corrcoef(w["human"], w["gpt-4-1106-preview"])[0, 1])
    out = tmp_path / "cmp"
    s = _ok(runner.invoke(app, ["prefs", "compare", "published", "--out", str(out), "--groups", "Advice",
                                "--judges", "human,gpt-4-1106-preview,yi-6b", "--json"]))
    assert s["metrics"]["judges"] == 3
    data = json.loads((out / "artifact.json").read_text())["data"]
    assert data["similarity"][0][1] == pytest.approx(expected, abs=1e-12)


def test_bad_input_is_one_line(tmp_path):
    _one_line_exit_2(runner.invoke(app, ["prefs", "fit", "published", "--out", str(tmp_path / "a")]),
                     "carry no property annotations")
    _one_line_exit_2(runner.invoke(app, ["prefs", "fit", "hh_rlhf:20", "--out", str(tmp_path / "a"),
                                         "--annotators", "lengthy", "--method", "mcmc"]), "--method must be one of")
    _one_line_exit_2(runner.invoke(app, ["prefs", "judge", "hh_rlhf:4", "--out", str(tmp_path / "a"),
                                         "--judge", "vibes:shared:stories260K"]), "judge spec 'vibes:")
    _one_line_exit_2(runner.invoke(app, ["prefs", "compare", "published", "--out", str(tmp_path / "a"),
                                         "--judges", "human,nobody"]), "unknown judges ['nobody']")
    _one_line_exit_2(runner.invoke(app, ["prefs", "annotate", "nope.jsonl", "--out", str(tmp_path / "a")]),
                     "pairs source 'nope.jsonl' not found")
    assert not (tmp_path / "a").exists()
