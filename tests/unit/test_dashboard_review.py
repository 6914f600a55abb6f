"""AppTests of defects a new user's review of the dashboard found (each fails without its fix): results that
outlived a model switch, a Save that wrote the widgets' settings instead of the run's, a saved sweep drawn
with another suite's labels, damaged runs shown as tracebacks, a half-built intervention that hid the stack,
weights that overflowed, a region fraction reset without a word, a blank status line."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from steerlab.artifacts import list_runs
from steerlab.steering.artifact import write_sweep

APP = str(Path(__file__).resolve().parents[2] / "dashboards" / "app.py")


def _app(monkeypatch, tmp_path, page: str, model: str = "shared:stories260K", run: str | None = None) -> AppTest:
    monkeypatch.setenv("STEERLAB_DASHBOARD_MODEL", model)
    monkeypatch.setenv("STEERLAB_RUNS", str(tmp_path / "runs"))
    at = AppTest.from_file(APP, default_timeout=240)
    if run is not None:
        at.query_params["run"] = run
    at.switch_page(f"app_pages/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def test_sampling_saves_the_settings_its_run_was_made_with_and_forgets_it_on_a_model_switch(monkeypatch, tmp_path):
    at = _app(monkeypatch, tmp_path, "sampling")
    at.number_input(key="sampling.max_new").set_value(5)
    at.number_input(key="sampling.seed").set_value(3)
    at.button(key="sampling.run").click().run()
    _clean(at)
    made = at.session_state["sampling.result"][0]
    at.number_input(key="sampling.seed").set_value(7)  # changed after the run, before Save
    at.number_input(key="sampling.max_new").set_value(99)
    at.button(key="sampling.save").click().run()
    _clean(at)
    (art,) = list_runs(tmp_path / "runs")
    assert (art.config["seed"], art.config["max_new_tokens"], art.config["model"]) == (3, 5, "shared:stories260K")
    assert art.data["text"] == made["text"] and art.data["steps"] == 5
    # another model: the result (its token ids are stories260K's) is cleared, with a caption saying so
    at.selectbox(key="model.choice").set_value("organism:dense").run()
    _clean(at)
    assert "sampling.result" not in at.session_state
    assert any("made with `shared:stories260K`" in c.value and "model changed" in c.value for c in at.caption)


def test_generate_forgets_results_of_another_model_and_flags_its_stack(monkeypatch, tmp_path):
    at = _app(monkeypatch, tmp_path, "generate")
    at.number_input(key="generate.max_new").set_value(3)
    at.button(key="generate.iv_add").click().run()
    at.button(key="generate.run").click().run()
    _clean(at)
    assert at.session_state["generate.result"] is not None
    at.selectbox(key="model.choice").set_value("organism:dense").run()
    assert "generate.result" not in at.session_state
    assert any("built on `shared:stories260K`" in w.value for w in at.warning)


def test_a_half_built_intervention_leaves_the_stack_usable(monkeypatch, tmp_path):
    at = _app(monkeypatch, tmp_path, "generate")
    at.number_input(key="generate.max_new").set_value(3)
    at.button(key="generate.iv_add").click().run()
    at.selectbox(key="generate.iv_src").set_value("Saved directions").run()  # its name box starts empty
    assert [e.value for e in at.error] == ["New intervention: give the name or path of saved directions (steerlab "
                                           "steer extract --name NAME)"]
    assert len(at.dataframe[0].value) == 1  # the stack built so far is still shown
    assert at.button(key="generate.iv_add").disabled and not at.button(key="generate.iv_pop").disabled
    assert not at.button(key="generate.run").disabled
    at.button(key="generate.run").click().run()
    assert len(at.session_state["generate.result"].labels) == 2


def test_a_damaged_run_is_a_message_with_a_close_button(monkeypatch, tmp_path):
    at = _app(monkeypatch, tmp_path, "generate")
    at.number_input(key="generate.max_new").set_value(3)
    at.button(key="generate.run").click().run()
    at.button(key="generate.save").click().run()
    (art,) = list_runs(tmp_path / "runs")
    bad = tmp_path / "runs" / "damaged"
    shutil.copytree(art.path, bad)
    meta = json.loads((bad / "artifact.json").read_text())
    del meta["data"]["steps"]
    (bad / "artifact.json").write_text(json.dumps(meta))
    at = _app(monkeypatch, tmp_path, "generate", run="damaged")
    assert [e.value for e in at.error] == ["Reading the saved run failed: KeyError: 'steps'"]
    at.button(key="run.close").click().run()
    _clean(at)
    assert "run" not in at.query_params


def test_a_saved_sweep_keeps_its_own_labels(monkeypatch, tmp_path, stories):
    rows = [{"scale": s, "harmful_refusal": r, "harmless_refusal": r / 2, "kl": s / 10, "ppl": 3.0,
             "example": ""} for s, r in ((0.0, 0.1), (4.0, 0.6))]
    cfg = {"model": "shared:stories260K", "site": "blocks.2.resid_post", "suite": "organism-refusal", "n": 1}
    write_sweep(tmp_path / "runs" / "sw", cfg, rows, "harmful", "harmless")
    at = _app(monkeypatch, tmp_path, "steer", run="sw")
    _clean(at)

    def traces():
        return [t["name"] for c in at.get("plotly_chart") for t in json.loads(c.proto.spec)["data"]
                if c.proto.id.endswith("steer.fig_sweep")]

    before = traces()
    assert any("harmful" in n for n in before)
    at.selectbox(key="steer.suite").set_value("sentiment").run()
    _clean(at)
    assert traces() == before


def test_weights_of_a_property_that_never_varies_render(monkeypatch, tmp_path):
    rows = [{"prompt": f"q{i}", "response_a": "long answer" if i % 2 else "s", "response_b": "s" if i % 2 else "long",
             "labels": {"human": "A" if i % 5 else "B"},
             "annotations": {"lengthy": [1, 0] if i % 2 else [0, 1], "code": [0, 0]}} for i in range(40)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    at = _app(monkeypatch, tmp_path, "preferences")
    at.text_input(key="preferences.data_source").set_value(str(data))
    at.selectbox(key="preferences.method").set_value("laplace")
    at.button(key="preferences.fit").click().run()
    at.multiselect(key="preferences.judges").set_value(["human"]).run()
    _clean(at)  # was: Drawing the weights failed: OverflowError: math range error
    table = next(d.value for d in at.dataframe if "human %" in d.value)
    code = table[table["property"] == "code"].iloc[0]
    lo, hi = (float(v) for v in code["human 90% interval"].split(" - "))
    assert code["human %"] == pytest.approx(50.0)  # the prior's 90% interval, +-b ln 10: 44.3% - 55.7%
    assert lo == pytest.approx(100 / (1 + math.exp(0.1 * math.log(10))), abs=0.6)
    assert hi == pytest.approx(100 - 100 / (1 + math.exp(0.1 * math.log(10))), abs=0.6)


def test_security_page_without_runs_keeps_the_status_line(monkeypatch, tmp_path):
    at = _app(monkeypatch, tmp_path, "security")
    assert any("No `security_sweep` artifact" in i.value for i in at.info)
    assert [c.value for c in at.sidebar.caption if "stories260K" in c.value]


def test_regions_says_when_it_lowers_the_fraction_and_reopens_an_importance_run_on_its_model(
        monkeypatch, tmp_path, stories):
    from steerlab.regions.artifact import write_importance
    from steerlab.regions.importance import score_importance

    runs_dir = tmp_path / "runs"
    write_importance(runs_dir / "wide", score_importance(stories, ["eng"], token_budget=64, keep=0.05, progress=False))
    write_importance(runs_dir / "narrow", score_importance(stories, ["eng"], token_budget=64, keep=0.005,
                                                           progress=False))
    at = _app(monkeypatch, tmp_path, "regions")
    at.selectbox(key="regions.imp_run").set_value("wide").run()
    at.number_input(key="regions.fraction").set_value(0.02).run()
    at.selectbox(key="regions.imp_run").set_value("narrow").run()
    _clean(at)
    assert at.number_input(key="regions.fraction").value == pytest.approx(0.005)  # was reset to 0.0001, silently
    assert any("Fraction set to 0.005" in c.value for c in at.caption)
    # reopened from another model, the importance run switches the page to its own model
    other = _app(monkeypatch, tmp_path, "regions", model="organism:dense", run="wide")
    _clean(other)
    assert other.session_state["model.key"][0] == "shared:stories260K"
