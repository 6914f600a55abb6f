"""AppTests of the Runs page: listing, describing, filtering, and reopening an artifact in its page."""

from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go
import pytest
import torch
from streamlit.testing.v1 import AppTest

import steerlab as sl
from steerlab.artifacts import write_artifact
from steerlab.steering.artifact import comparison_payload
from steerlab.steering.compare import Comparison
from steerlab.viz.runs import figure_files
from steerlab.viz.tokens import TokenStep

APP = str(Path(__file__).resolve().parents[2] / "dashboards" / "app.py")


@pytest.fixture
def runs_dir(tmp_path, stories):
    root = tmp_path / "runs"
    fig = go.Figure(go.Bar(x=["a", "b"], y=[1, 2]))
    write_artifact(root / "demo-1", kind="demo", config={"model": "shared:stories260K", "layers": [1, 2]},
                   metrics={"score": 0.75}, tensors={"acts": torch.zeros(3, 64)},
                   extra_files=figure_files({"bars": fig}))
    res = sl.generate(stories, ["Once upon a time"], max_new_tokens=5, output_scores=True)
    cmp = Comparison.from_results(stories.tokenizer, {"baseline": res})
    write_artifact(root / "gen" / "one", **comparison_payload(cmp))
    return root


def _app(monkeypatch, root, model: str = "shared:stories260K") -> AppTest:
    monkeypatch.setenv("STEERLAB_DASHBOARD_MODEL", model)
    monkeypatch.setenv("STEERLAB_RUNS", str(root))
    at = AppTest.from_file(APP, default_timeout=180)
    at.switch_page("app_pages/runs.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_empty_runs_folder_says_how_to_make_one(monkeypatch, tmp_path):
    smollm = "shared:SmolLM2-135M-Instruct-Q4_1-gguf"  # 20-30 s to load: the page must not wait for it
    at = _app(monkeypatch, tmp_path / "nothing", model=smollm)
    assert at.title[0].value == "Runs"
    assert "No saved runs under" in at.info[0].value
    assert at.sidebar.caption[0].value.startswith(f"{smollm} · not loaded yet")


def test_lists_describes_and_filters_artifacts(monkeypatch, runs_dir):
    at = _app(monkeypatch, runs_dir)
    table = at.dataframe[0].value
    assert sorted(table["run"]) == ["demo-1", "gen/one"]
    assert set(table["kind"]) == {"demo", "generation_compare"}
    at.selectbox(key="runs.run").set_value("demo-1").run()
    assert not at.exception and not at.error
    assert at.json[0].value and '"layers"' in at.json[0].value
    assert '"score": 0.75' in at.json[1].value
    assert at.dataframe[1].value.to_dict("records") == [{"tensor": "acts", "shape": "[3, 64]", "dtype": "F32"}]
    assert len(at.get("plotly_chart")) == 1  # the saved figure, re-rendered
    assert any("No page shows `demo` artifacts" in c.value for c in at.caption)
    at.multiselect(key="runs.kinds").set_value(["generation_compare"]).run()
    assert list(at.dataframe[0].value["run"]) == ["gen/one"]


def test_unreadable_runs_are_shown_with_the_reason(monkeypatch, runs_dir):
    (runs_dir / "broken").mkdir()
    (runs_dir / "broken" / "artifact.json").write_text("{not json")
    at = _app(monkeypatch, runs_dir)
    (note,) = [w.value for w in at.warning if "cannot be read" in w.value]
    assert note.startswith(f"1 folder(s) under `{runs_dir}` hold an `artifact.json` that cannot be read")
    assert "- `broken`: " in note and "artifact.json is not valid JSON" in note
    assert sorted(at.dataframe[0].value["run"]) == ["demo-1", "gen/one"]  # the readable ones are still listed


def test_only_unreadable_runs_still_says_why(monkeypatch, tmp_path):
    (tmp_path / "runs" / "x").mkdir(parents=True)
    (tmp_path / "runs" / "x" / "artifact.json").write_text("[]")
    at = _app(monkeypatch, tmp_path / "runs")
    assert "No saved runs under" in at.info[0].value
    assert any("- `x`: " in w.value and "holds a JSON list" in w.value for w in at.warning)

def test_open_in_page_reopens_the_run(monkeypatch, runs_dir):
    at = _app(monkeypatch, runs_dir)
    at.selectbox(key="runs.run").set_value("gen/one").run()
    at.button(key="runs.open").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.title[0].value == "Generate"
    assert at.query_params["run"] == "gen/one"
    assert any("Showing saved run `gen/one`" in i.value for i in at.info)
    assert at.text_area(key="generate.prompts").value == "Once upon a time"


def test_a_run_outside_the_runs_folder_is_refused(monkeypatch, runs_dir):
    monkeypatch.setenv("STEERLAB_DASHBOARD_MODEL", "shared:stories260K")
    monkeypatch.setenv("STEERLAB_RUNS", str(runs_dir))
    at = AppTest.from_file(APP, default_timeout=180)
    at.query_params["run"] = "../../etc"
    at.run()
    assert not at.exception
    assert "outside the runs folder" in at.error[0].value


def test_reopening_switches_to_the_runs_model(monkeypatch, tmp_path, tiny):
    h = tiny("llama")
    folder = tmp_path / "tiny-llama"
    h.model.save_pretrained(folder)
    h.tokenizer.save_pretrained(folder)
    root = tmp_path / "runs"
    for name, model in (("mine", str(folder)), ("gone", str(tmp_path / "deleted-model"))):
        settings = {"model": model, "sampler": {"name": "greedy", "params": {}}, "max_new_tokens": 3, "seed": 0}
        cmp = Comparison(prompts=["Hi"], settings={"baseline": settings},
                         steps={"baseline": [[TokenStep(0, 5, " there", 0.5, 1.0, ((" there", 0.5),))]]})
        write_artifact(root / name, **comparison_payload(cmp))
    monkeypatch.setenv("STEERLAB_DASHBOARD_MODEL", "shared:stories260K")
    monkeypatch.setenv("STEERLAB_RUNS", str(root))
    at = AppTest.from_file(APP, default_timeout=180)
    at.query_params["run"] = "mine"
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.sidebar.text_input(key="model.other").value == str(folder)
    assert at.sidebar.caption[0].value.startswith(f"{folder} · LlamaForCausalLM")
    at = AppTest.from_file(APP, default_timeout=180)
    at.query_params["run"] = "gone"
    at.run()
    assert not at.exception
    assert "which does not load here" in at.warning[0].value
    assert at.sidebar.caption[0].value.startswith("shared:stories260K · LlamaForCausalLM")
