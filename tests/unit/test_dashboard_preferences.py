"""AppTests of the Preferences page: every view against values computed here from the raw files (published
weights, human labels, group indices) or by hand; fitting your own JSONL from the page; reopening runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from steerlab._paths import shared_dir
from steerlab.artifacts import list_runs, write_artifact
from steerlab.preferences.runner import run_compare

APP = str(Path(__file__).resolve().parents[2] / "dashboards" / "app.py")
DATA = shared_dir() / "data" / "preference-dissection"
SCEN = ["Advice", "Code", "Communication", "Creative Writing", "Daily Tasks", "Exam Questions", "Functional Writing",
        "Knowledge-aware", "NLP Tasks", "Others", "Unsafe Queries"]


def _raw(group: str) -> dict[str, list[float]]:
    lines = (DATA / "fitted_paras_comparison" / f"model_{group}_fitted_paras.jsonl").read_text().splitlines()
    return {r["model_name"]: r["parameters"] for r in map(json.loads, lines)}


def _pct(w):
    return 100 / (1 + math.exp(-w))


@pytest.fixture
def runs(tmp_path):
    return tmp_path / "runs"


@pytest.fixture
def app(monkeypatch, runs):
    monkeypatch.setenv("STEERLAB_DASHBOARD_MODEL", "shared:stories260K")
    monkeypatch.setenv("STEERLAB_RUNS", str(runs))
    at = AppTest.from_file(APP, default_timeout=240)
    at.switch_page("app_pages/preferences.py").run()
    _clean(at)
    return at


def _clean(at):
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _fig(at, key):
    """The plotly figure drawn with ``key=preferences.KEY``."""
    ids = [c.proto.id for c in at.get("plotly_chart")]
    hit = [c for c in at.get("plotly_chart") if c.proto.id.endswith(f"preferences.{key}")]
    assert len(hit) == 1, ids
    return json.loads(hit[0].proto.spec)


def _df(at, column):
    """The first table with ``column``."""
    hit = [d.value for d in at.dataframe if column in d.value.columns]
    assert hit, [list(d.value.columns) for d in at.dataframe]
    return hit[0]


def test_weights_view_shows_the_published_values(app):
    assert app.title[0].value == "Preferences"
    assert app.multiselect(key="preferences.judges").value == ["human", "gpt-4-1106-preview"]
    fig = _fig(app, "weights_fig")
    raw = _raw("Advice")
    order = sorted(range(29), key=lambda i: raw["human"][i])  # sorted by the first judge
    for trace, judge in zip(fig["data"], ["human", "gpt-4-1106-preview"], strict=True):
        assert trace["name"] == judge
        assert trace["x"] == pytest.approx([_pct(raw[judge][i]) for i in order])
    table = _df(app, "human %")
    assert table["property"].iloc[0] == "contain rich info"
    assert table["human %"].iloc[0] == round(_pct(0.597716674208641), 1)
    app.selectbox(key="preferences.group").set_value("Code").run()
    _clean(app)
    raw = _raw("Code")
    fig = _fig(app, "weights_fig")
    assert max(fig["data"][1]["x"]) == pytest.approx(max(_pct(w) for w in raw["gpt-4-1106-preview"]))


def test_similarity_view_averages_pearson_over_scenarios(app):
    js = ["human", "gpt-4-1106-preview", "yi-6b"]
    app.multiselect(key="preferences.sim_judges").set_value(js)
    app.checkbox(key="preferences.cluster").uncheck().run()
    _clean(app)
    z = _fig(app, "sim_fig")["data"][0]["z"]
    by_hand = np.mean([np.corrcoef(_raw(g)["human"], _raw(g)["yi-6b"])[0, 1] for g in SCEN])
    assert z[0][2] == pytest.approx(by_hand, abs=1e-9) and z[1][1] == pytest.approx(1.0)
    app.selectbox(key="preferences.sim_group").set_value("Code").run()
    z = _fig(app, "sim_fig")["data"][0]["z"]
    assert z[0][1] == pytest.approx(np.corrcoef(_raw("Code")["human"], _raw("Code")["gpt-4-1106-preview"])[0, 1])
    app.checkbox(key="preferences.cluster").check().run()
    _clean(app)
    assert sorted(_fig(app, "sim_fig")["data"][0]["x"]) == sorted(js)


def test_shift_view_across_groups(app):
    app.selectbox(key="preferences.shift_judge").set_value("gpt-4-1106-preview").run()
    _clean(app)
    fig = _fig(app, "shift_fig")["data"][0]
    row = fig["y"].index("Unsafe Queries")
    assert fig["z"][row] == pytest.approx([_pct(w) for w in _raw("Unsafe Queries")["gpt-4-1106-preview"]])
    table = _df(app, "shift (max - min)")
    harmless = [_pct(_raw(g)["gpt-4-1106-preview"][0]) for g in fig["y"]]
    got = table[table["property"] == "harmless"]["shift (max - min)"].iloc[0]
    assert got == pytest.approx(round(round(max(harmless), 1) - round(min(harmless), 1), 1))


def test_pair_browser_published_pairs(app):
    idx = json.loads((DATA / "query_aware_idxs.json").read_text())["Advice"]
    labels = json.loads((DATA / "example_preference_labels.json").read_text())
    app.number_input(key="preferences.pair").set_value(3).run()
    _clean(app)
    assert any(f"**Pair `{idx[3]}`** - scenario: Advice" in m.value for m in app.markdown)
    v = _df(app, "prefers")
    assert list(v["judge"]) == ["human"] and v["prefers"].iloc[0] == labels[idx[3]]


def _jsonl(tmp_path):
    rows = [{"prompt": f"q{i}", "response_a": "long answer" if i % 2 else "s", "response_b": "s" if i % 2 else "long",
             "labels": {"human": "A" if (i % 2) == (i % 10 < 8) else "B"},
             "annotations": {"lengthy": [1, 0] if i % 2 else [0, 1]}} for i in range(100)]
    text = "\n".join(json.dumps(r) for r in rows[:5]) + "\n{broken\n" + "\n".join(json.dumps(r) for r in rows[5:])
    f = tmp_path / "mine.jsonl"
    f.write_text(text + "\n")
    return f


def test_fit_your_data_then_open_a_pair(app, tmp_path, runs):
    app.text_input(key="preferences.data_source").set_value(str(_jsonl(tmp_path)))
    app.selectbox(key="preferences.method").set_value("laplace")
    app.button(key="preferences.fit").click().run()
    _clean(app)
    assert any("skipped line 6: not valid JSON" in w.value for w in app.warning)
    fit_run = [a for a in list_runs(runs) if a.kind == "preference_fit"]
    assert len(fit_run) == 1 and app.selectbox(key="preferences.source").value.startswith("prefs-fit-")
    # the longer response wins 80 of 100 pairs: posterior mode s(w) = (80 - 10) / 100 = 0.7 (by hand)
    app.multiselect(key="preferences.judges").set_value(["human"]).run()
    table = _df(app, "human %")
    assert table["human %"].iloc[0] == pytest.approx(70.0, abs=0.05) and "human 90% interval" in table
    app.number_input(key="preferences.pair").set_value(1).run()  # pair q1: A longer, comparison +1
    _clean(app)
    assert any("predicted **A** (P(A) = 70%), actual **A**" in m.value for m in app.markdown), \
        [m.value for m in app.markdown]
    bars = _fig(app, "breakdown.human")["data"][0]
    assert bars["y"] == ["lengthy"] and bars["x"][0] == pytest.approx(math.log(0.7 / 0.3), abs=1e-5)


def test_annotate_and_judge_from_the_page(app, runs):
    app.text_input(key="preferences.data_source").set_value("hh_rlhf:6")
    app.multiselect(key="preferences.annotators").set_value(["lengthy", "apology"])
    app.button(key="preferences.annotate").click().run()
    _clean(app)
    ann = [a for a in list_runs(runs) if a.kind == "preference_pairs"]
    assert len(ann) == 1 and app.text_input(key="preferences.data_source").value == str(ann[0].path)
    app.text_area(key="preferences.judge_specs").set_value("st=loglik:shared:stories260K")
    app.button(key="preferences.judge").click().run()
    _clean(app)
    judged = [a for a in list_runs(runs) if a.kind == "preference_pairs" and a.config.get("judges")]
    assert judged and judged[0].metrics["pairs"] == 6
    v = _df(app, "prefers")
    assert set(v["judge"]) >= {"human", "st"} and "score_a" in v
    assert set(_df(app, "comparison")["property"]) == {"lengthy", "apology"}


def test_reopen_each_kind(monkeypatch, runs):
    monkeypatch.setenv("STEERLAB_DASHBOARD_MODEL", "shared:stories260K")
    monkeypatch.setenv("STEERLAB_RUNS", str(runs))
    run_compare(["published"], runs / "cmp", groups=["Advice"], judges=["human", "yi-6b", "qwen-7b"])
    write_artifact(runs / "bad", kind="preference_fit", config={}, data={})
    at = AppTest.from_file(APP, default_timeout=240)
    at.query_params["run"] = "cmp"
    at.switch_page("app_pages/preferences.py").run()
    _clean(at)
    assert any("Showing saved run `cmp`" in i.value for i in at.info)
    z = _fig(at, "compare_fig")["data"][0]["z"]
    assert len(z) == 3
    at.query_params["run"] = "bad"
    at.run()
    assert at.error and not at.exception  # a broken run is a message, not a traceback
