"""AppTests of the Sampling page: per-step diagnostics wired to the library, save/reopen, the
comparison tab, and errors as messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

import steerlab as sl
from steerlab.artifacts import list_runs
from steerlab.decoding.compare import CompareConfig, run_compare
from steerlab.decoding.diagnostics import generation_diagnostics

APP = str(Path(__file__).resolve().parents[2] / "dashboards" / "app.py")


@pytest.fixture
def runs(tmp_path):
    return tmp_path / "runs"


@pytest.fixture
def app(monkeypatch, runs):
    monkeypatch.setenv("STEERLAB_DASHBOARD_MODEL", "shared:stories260K")
    monkeypatch.setenv("STEERLAB_RUNS", str(runs))
    at = AppTest.from_file(APP, default_timeout=180)
    at.switch_page("app_pages/sampling.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _figures(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def test_diagnostics_are_the_librarys_for_the_chosen_settings(app, stories):
    assert app.title[0].value == "Sampling"
    app.number_input(key="sampling.top_h.alpha").set_value(0.3)
    app.number_input(key="sampling.cmp_top_p").set_value(0.5)
    app.number_input(key="sampling.cmp_min_p").set_value(0.2)
    app.number_input(key="sampling.max_new").set_value(12)
    app.number_input(key="sampling.seed").set_value(4)
    app.button(key="sampling.run").click().run()
    assert not app.exception and not app.error, [e.value for e in app.error]
    diag, _, _ = app.session_state["sampling.result"]
    smp = sl.make_sampler("top_h", alpha=0.3, temperature=1.5)  # 1.5: the page's default temperature
    res = sl.generate(stories, ["Once upon a time"], sampler=smp, max_new_tokens=12, seed=4, output_scores=True)
    want = generation_diagnostics(res, 0, top_p=0.5, min_p=0.2)
    for key in ("top_h", "top_p", "min_p"):
        assert diag[key]["kept"] == want[key]["kept"]
    assert diag["entropy"] == pytest.approx(want["entropy"])
    assert any(m.value.startswith("**Completion** (") and res.texts[0] in m.value for m in app.markdown)
    table = app.dataframe[0].value
    assert list(table["rule"]) == ["top-H", "top-p", "min-p"]
    assert table["mean kept"][1] == pytest.approx(round(sum(want["top_p"]["kept"]) / len(want["top_p"]["kept"]), 2))
    figs = _figures(app)
    assert len(figs) == 2
    assert [t["name"] for t in figs[0]["data"][:3]] == ["top-H (alpha=0.3, paper)", "top-p (p=0.5)", "min-p (p=0.2)"]
    app.slider(key="sampling.step").set_value(3).run()
    cut = _figures(app)[1]
    assert cut["layout"]["title"]["text"].startswith("step 3:")
    rules = (("top_h", "top-H"), ("top_p", "top-p"), ("min_p", "min-p"))
    assert {a["text"] for a in cut["layout"]["annotations"]} == {f"{n} keeps {want[k]['kept'][3]}" for k, n in rules}


def test_other_samplers_compare_against_a_chosen_top_h(app):
    app.selectbox(key="sampling.sampler").set_value("top_k").run()
    app.number_input(key="sampling.cmp_alpha").set_value(0.7)
    app.selectbox(key="sampling.cmp_variant").set_value("hf")
    app.number_input(key="sampling.max_new").set_value(6)
    app.button(key="sampling.run").click().run()
    assert not app.exception and not app.error
    diag, _, _ = app.session_state["sampling.result"]
    assert diag["sampler"]["name"] == "top_k"
    assert (diag["top_h"]["alpha"], diag["top_h"]["variant"]) == (0.7, "hf")


def test_save_and_reopen(app, runs):
    app.number_input(key="sampling.max_new").set_value(8)
    app.button(key="sampling.run").click().run()
    app.button(key="sampling.save").click().run()
    assert "Saved to" in app.success[0].value
    (art,) = list_runs(runs)
    assert art.kind == "sampling_diagnostics" and art.config["prompt"] == "Once upon a time"
    assert art.tensors["step_top_probs"].shape[0] == art.data["steps"]

    fresh = AppTest.from_file(APP, default_timeout=180)
    fresh.query_params["run"] = art.path.name
    fresh.switch_page("app_pages/sampling.py").run()
    assert not fresh.exception and not fresh.error
    assert any(f"Showing saved run `{art.path.name}`" in i.value for i in fresh.info)
    assert fresh.number_input(key="sampling.max_new").value == 8
    assert len(_figures(fresh)) == 2  # the saved diagnostics, drawn without generating again


def test_comparison_tab_shows_the_harness_figures_and_table(app, runs, stories):
    assert any("No `sampling_compare` artifact" in i.value for i in app.info)
    cfg = CompareConfig(model="shared:stories260K", prompts=["Once upon a time", "The dog"],
                        samplers=[{"name": "top_h", "params": {"alpha": 0.4}}, {"name": "min_p", "params": {"p": 0.1}}],
                        temperatures=[1.0, 1.5], samples=2, max_new_tokens=6, embed=False)
    art = run_compare(cfg, runs / "cmp", progress=False, handle=stories)
    app.run()
    assert not app.exception and not app.error
    assert app.selectbox(key="sampling.compare_run").value == "cmp"
    figs = _figures(app)
    want = art.data["figures"]["diversity_vs_coherence"]
    assert figs[0]["data"][0]["y"] == want["data"][0]["y"]  # diversity vs coherence first, as saved
    assert len(figs) == 2  # + the harness's own per-step figure
    assert any(m.value.startswith("| sampler | T |") and "top_h(alpha=0.4)" in m.value for m in app.markdown)
    assert not app.get("iframe")  # the HTML twins are not embedded again

    fresh = AppTest.from_file(APP, default_timeout=180)
    fresh.query_params["run"] = "cmp"
    fresh.switch_page("app_pages/sampling.py").run()
    assert not fresh.exception and not fresh.error
    assert fresh.selectbox(key="sampling.compare_run").value == "cmp"


def test_bad_parameters_are_messages(app):
    app.number_input(key="sampling.top_h.alpha").set_value(1.5).run()
    assert not app.exception
    assert "top_h alpha must be in (0, 1], got 1.5" in app.error[0].value
    assert app.button(key="sampling.run").disabled
