"""AppTests of the Regions page's live tab: score importance from the page, then perturb a region or a single
weight and generate side by side; checked against weights edited by hand and plain greedy generation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

import steerlab as sl
from steerlab.regions.artifact import read_importance

APP = str(Path(__file__).resolve().parents[2] / "dashboards" / "app.py")


@pytest.fixture
def app(monkeypatch, tmp_path):
    monkeypatch.setenv("STEERLAB_DASHBOARD_MODEL", "shared:stories260K")
    monkeypatch.setenv("STEERLAB_RUNS", str(tmp_path / "runs"))
    at = AppTest.from_file(APP, default_timeout=240)
    at.switch_page("app_pages/regions.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _greedy(h, prompt, n):
    return sl.generate(h, [prompt], max_new_tokens=n, sampler="greedy").texts[0]


def test_score_then_perturb_core_and_a_single_weight(app, stories, tmp_path):
    assert app.title[0].value == "Regions"
    assert any("No importance run" in i.value for i in app.info)
    app.multiselect(key="regions.langs").set_value(["eng"])
    app.number_input(key="regions.budget").set_value(128)
    app.button(key="regions.score").click().run()
    assert not app.exception and not app.error, [e.value for e in app.error]
    art = read_importance(tmp_path / "runs" / app.session_state["regions.imp_run"])  # the run the page wrote
    assert art.languages == ["eng"] and art.keep == 0.05

    app.number_input(key="regions.max_new").set_value(12)
    app.button(key="regions.go").click().run()
    assert not app.exception and not app.error, [e.value for e in app.error]
    what, _, plain, edited = app.session_state["regions.result"]
    assert plain == _greedy(stories, "Once upon a time", 12)
    # the core region zeroed by hand: the first round(0.01 * numel) top entries of every parameter in the layers
    saved = {}
    with torch.no_grad():
        for name, p in stories.model.named_parameters():
            if ".layers." in name:
                idx = art.top[name][: max(1, round(0.01 * p.numel()))].long()
                saved[name] = (p, idx, p.view(-1)[idx].clone())
                p.view(-1)[idx] = 0.0
        try:
            by_hand = _greedy(stories, "Once upon a time", 12)
        finally:
            for p, idx, old in saved.values():
                p.view(-1)[idx] = old
    assert edited == by_hand and edited != plain
    assert what.startswith(f"zero {sum(len(v[1]) for v in saved.values())} entries")

    app.selectbox(key="regions.region").set_value("single weight")
    app.run()
    app.selectbox(key="regions.param").set_value("model.norm.weight")
    app.run()
    app.number_input(key="regions.index").set_value(3)
    app.selectbox(key="regions.op").set_value("set")
    app.number_input(key="regions.value").set_value(50.0)
    app.button(key="regions.go").click().run()
    assert not app.exception and not app.error, [e.value for e in app.error]
    what, _, plain, edited = app.session_state["regions.result"]
    w = stories.model.model.norm.weight
    old = float(w[3])
    with torch.no_grad():
        w[3] = 50.0
        try:
            by_hand = _greedy(stories, "Once upon a time", 12)
        finally:
            w[3] = old
    assert edited == by_hand and what == "set 1 entries of model.norm.weight to 50"
