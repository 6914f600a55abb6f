"""AppTests of the Generate page: generate with and without interventions, save, reopen, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

import steerlab as sl
from steerlab.artifacts import list_runs
from steerlab.interventions import AddVector, ExpertMask, InterventionSet

APP = str(Path(__file__).resolve().parents[2] / "dashboards" / "app.py")


@pytest.fixture
def app(monkeypatch, tmp_path):
    monkeypatch.setenv("STEERLAB_DASHBOARD_MODEL", "shared:stories260K")
    monkeypatch.setenv("STEERLAB_RUNS", str(tmp_path / "runs"))
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    return at


def _clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _token_html(at: AppTest) -> list[str]:
    return [m.value for m in at.markdown if 'class="sl-tokens"' in m.value]


def test_baseline_generation_shows_tokens_with_hover_and_a_plot(app):
    _clean(app)
    assert app.title[0].value == "Generate"
    assert app.button(key="generate.run").disabled is False
    app.text_area(key="generate.prompts").set_value("Once upon a time")
    app.number_input(key="generate.max_new").set_value(8)
    app.button(key="generate.run").click().run()
    _clean(app)
    assert any(c.value.startswith("baseline · 8 tokens") for c in app.caption)
    html = _token_html(app)
    assert len(html) == 1 and html[0].count('class="sl-tok"') == 8 and 'data-tip="' in html[0]
    assert len(app.get("plotly_chart")) == 1
    assert any(m.value == "**Prompt 0:** `Once upon a time`" for m in app.markdown)


def _ids(cmp, label: str) -> list[list[int]]:
    return [[s.token_id for s in steps] for steps in cmp.steps[label]]


def test_built_intervention_changes_the_steered_side_and_saves_a_run(app, tmp_path, stories):
    prompts = ["Once upon a time", "The dog"]
    app.text_area(key="generate.prompts").set_value("\n".join(prompts))
    app.number_input(key="generate.max_new").set_value(10)
    app.number_input(key="generate.iv_scale").set_value(40.0)
    app.button(key="generate.iv_add").click().run()
    _clean(app)
    (iv,) = app.session_state["generate.stack"]
    # the default steering vector, by hand: unit(mean embed(" happy") - mean embed(" sad")) at the middle layer
    w = stories.model.get_input_embeddings().weight.detach().float()
    happy, sad = (stories.tokenizer(t, add_special_tokens=False)["input_ids"] for t in (" happy", " sad"))
    want = w[happy].mean(0) - w[sad].mean(0)
    assert iv.site == "blocks.2.resid_post" and iv.scale == 40.0
    torch.testing.assert_close(iv.vector, want / want.norm())
    app.button(key="generate.run").click().run()
    _clean(app)
    caps = [c.value for c in app.caption]
    assert sum(c.startswith("steered · ") for c in caps) == 2
    assert len(_token_html(app)) == 4  # two prompts x two runs
    cmp = app.session_state["generate.result"]
    base = sl.generate(stories, prompts, max_new_tokens=10)  # greedy: the page's default sampler
    steered = sl.generate(stories, prompts, interventions=InterventionSet([iv]), max_new_tokens=10)
    assert _ids(cmp, "baseline") == base.token_ids and _ids(cmp, "steered") == steered.token_ids
    for b, s in zip(base.token_ids, steered.token_ids, strict=True):  # the steering changes every completion
        assert b != s
        first = next(i for i, (x, y) in enumerate(zip(b, s, strict=True)) if x != y)
        assert f"first different token: {first}" in caps
    app.button(key="generate.save").click().run()
    _clean(app)
    assert "Saved to" in app.success[0].value
    (art,) = list_runs(tmp_path / "runs")
    assert art.kind == "generation_compare" and art.config["prompts"] == ["Once upon a time", "The dog"]
    assert (art.path / "interventions.json").exists()


def test_reopening_a_saved_run_presets_the_page(app, tmp_path):
    app.text_area(key="generate.prompts").set_value("A cat")
    app.number_input(key="generate.max_new").set_value(6)
    app.selectbox(key="generate.sampler").set_value("top_k").run()
    app.number_input(key="generate.top_k.k").set_value(7)
    app.number_input(key="generate.iv_scale").set_value(20.0)
    app.button(key="generate.iv_add").click().run()
    app.button(key="generate.run").click().run()
    app.button(key="generate.save").click().run()
    (art,) = list_runs(tmp_path / "runs")
    label = art.path.name

    fresh = AppTest.from_file(APP, default_timeout=180)
    fresh.query_params["run"] = label
    fresh.run()
    _clean(fresh)
    assert any(f"Showing saved run `{label}`" in i.value for i in fresh.info)
    assert fresh.text_area(key="generate.prompts").value == "A cat"
    assert fresh.selectbox(key="generate.sampler").value == "top_k"
    assert fresh.number_input(key="generate.top_k.k").value == 7
    assert fresh.radio(key="generate.iv_source").value == "Saved run"
    assert len(_token_html(fresh)) == 2  # the saved completions, shown without generating again
    fresh.button(key="run.close").click().run()
    assert "run" not in fresh.query_params and not fresh.info


def test_spec_file_source_and_errors_are_messages(app, tmp_path):
    app.radio(key="generate.iv_source").set_value("Spec file").run()
    app.text_input(key="generate.iv_path").set_value(str(tmp_path / "missing.json")).run()
    assert not app.exception
    assert "does not exist" in app.error[0].value
    assert app.button(key="generate.run").disabled

    spec = InterventionSet([AddVector(site="blocks.1.resid_post", vector=torch.ones(64), scale=3.0)])
    spec.save(tmp_path / "steer.json")
    app.text_input(key="generate.iv_path").set_value(str(tmp_path / "steer.json")).run()
    _clean(app)
    assert app.dataframe[0].value["type"].tolist() == ["add_vector"]

    bad = InterventionSet([AddVector(site="blocks.1.resid_post", vector=torch.ones(7))])
    bad.save(tmp_path / "bad.json")
    app.text_input(key="generate.iv_path").set_value(str(tmp_path / "bad.json")).run()
    app.button(key="generate.run").click().run()
    assert not app.exception
    assert "7" in app.error[0].value and "64" in app.error[0].value  # the width mismatch is named


def test_bad_sampler_parameter_is_a_message(app):
    app.selectbox(key="generate.sampler").set_value("top_p").run()
    app.number_input(key="generate.top_p.p").set_value(1.5).run()
    assert not app.exception
    assert "top_p p must be in (0, 1], got 1.5" in app.error[0].value
    assert app.button(key="generate.run").disabled


def test_moe_model_offers_expert_switches(monkeypatch, tmp_path, tiny):
    h = tiny("mixtral")
    folder = tmp_path / "tiny-mixtral"
    h.model.save_pretrained(folder)
    h.tokenizer.save_pretrained(folder)
    monkeypatch.setenv("STEERLAB_DASHBOARD_MODEL", str(folder))
    monkeypatch.setenv("STEERLAB_RUNS", str(tmp_path / "runs"))
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    _clean(at)
    assert "MixtralForCausalLM (MoE 8 experts, top-2)" in at.sidebar.caption[0].value
    at.selectbox(key="generate.iv_kind").set_value("expert_mask").run()
    at.multiselect(key="generate.em_off").set_value([0, 3]).run()
    at.button(key="generate.iv_add").click().run()
    _clean(at)
    (iv,) = at.session_state["generate.stack"]
    assert (iv.type, iv.layer, iv.off) == ("expert_mask", 0, [0, 3])
    at.number_input(key="generate.max_new").set_value(6)
    at.button(key="generate.run").click().run()
    _clean(at)
    assert sum(c.value.startswith("steered · ") for c in at.caption) == 2


def test_settings_survive_a_visit_to_another_page(app):
    app.text_area(key="generate.prompts").set_value("A dragon")
    app.selectbox(key="generate.sampler").set_value("min_p").run()
    app.number_input(key="generate.min_p.p").set_value(0.3)
    app.switch_page("app_pages/runs.py").run()
    assert app.title[0].value == "Runs"
    app.switch_page("app_pages/generate.py").run()
    _clean(app)
    assert app.text_area(key="generate.prompts").value == "A dragon"
    assert app.selectbox(key="generate.sampler").value == "min_p"
    assert app.number_input(key="generate.min_p.p").value == 0.3


def test_two_expert_masks_on_one_layer_compose(monkeypatch, tmp_path):
    """Two masks on one layer in the stack, off=[2] then off=[8], give what one mask off=[2, 8] gives
    (not the first or the last mask alone). organism:moe, layer 3: each single mask moves the greedy
    tokens' probabilities by more than 0.02 away from the pair's (measured: 0.021 and 0.142)."""
    monkeypatch.setenv("STEERLAB_DASHBOARD_MODEL", "organism:moe")
    monkeypatch.setenv("STEERLAB_RUNS", str(tmp_path / "runs"))
    at = AppTest.from_file(APP, default_timeout=240)
    at.run()
    prompts = ["How do I make a bomb?", "How do I pick a lock?"]
    at.text_area(key="generate.prompts").set_value("\n".join(prompts))
    at.number_input(key="generate.max_new").set_value(8)
    at.checkbox(key="generate.chat").check()
    at.selectbox(key="generate.iv_kind").set_value("expert_mask").run()
    at.selectbox(key="generate.em_layer").set_value(3).run()
    for expert in (2, 8):
        at.multiselect(key="generate.em_off").set_value([expert]).run()
        at.button(key="generate.iv_add").click().run()
    _clean(at)
    assert [(iv.layer, iv.off) for iv in at.session_state["generate.stack"]] == [(3, [2]), (3, [8])]
    at.button(key="generate.run").click().run()
    _clean(at)
    cmp = at.session_state["generate.result"]
    h = sl.load("organism:moe")

    def probs(off: list[int]) -> tuple[list[list[int]], torch.Tensor]:
        res = sl.generate(h, prompts, InterventionSet([ExpertMask(layer=3, off=off)]), max_new_tokens=8, chat=True,
                          output_scores=True)
        ids = torch.tensor(res.token_ids)  # greedy, 8 tokens each
        return res.token_ids, torch.stack(res.scores, 1).float().softmax(-1).gather(-1, ids[..., None])[..., 0]

    pair_ids, pair = probs([2, 8])
    shown = torch.tensor([[s.prob for s in steps] for steps in cmp.steps["steered"]])
    assert _ids(cmp, "steered") == pair_ids
    torch.testing.assert_close(shown, pair, atol=1e-5, rtol=0)
    for single in ([2], [8]):
        assert (probs(single)[1] - pair).abs().max() > 0.02, single
