"""AppTests of the Steer page: a direction extracted as the library does, the probe profile, the sweep figure,
add / ablate / conditional generations side by side, saving and reopening runs, errors as messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

import steerlab as sl
from steerlab.artifacts import list_runs
from steerlab.steering.apply import ablate_everywhere
from steerlab.steering.extract import extract_directions

APP = str(Path(__file__).resolve().parents[2] / "dashboards" / "app.py")
SUITE = "organism-refusal"


def _clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


@pytest.fixture
def app(monkeypatch, tmp_path):
    monkeypatch.setenv("STEERLAB_DASHBOARD_MODEL", "shared:stories260K")
    monkeypatch.setenv("STEERLAB_RUNS", str(tmp_path / "runs"))
    at = AppTest.from_file(APP, default_timeout=240)
    at.switch_page("app_pages/steer.py").run()
    _clean(at)
    at.selectbox(key="steer.suite").set_value(SUITE).run()
    at.number_input(key="steer.limit").set_value(4).run()
    return at


def test_extract_probe_sweep_generate_and_save(app, stories, tmp_path):
    at = app
    assert at.title[0].value == "Steer"
    at.button(key="steer.extract").click().run()
    _clean(at)
    d = at.session_state["steer.directions"]
    want = extract_directions(stories, SUITE, "resid_post", limit=4)
    assert d.sites == want.sites and all(torch.allclose(d[s], want[s], atol=1e-5) for s in d.sites)
    assert [r["site"] for r in at.dataframe[0].value.to_dict("records")] == want.sites
    # probes: the per-layer profile figure with accuracy, AUROC, the shuffled control and separation
    at.button(key="steer.fit").click().run()
    _clean(at)
    prof = at.session_state["steer.probes"]
    assert [r.site for r in prof.results] == want.sites
    figs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    assert [t["name"] for t in figs[0]["data"]][:3] == ["held-out accuracy", "held-out AUROC", "shuffled-label control"]
    # sweep: two scales on one prompt per label
    at.selectbox(key="steer.sweep_site").set_value("blocks.2.resid_post")
    at.text_input(key="steer.scales").set_value("0, 6")
    at.number_input(key="steer.sweep_n").set_value(1)
    at.button(key="steer.sweep_run").click().run()
    _clean(at)
    rows, cfg = at.session_state["steer.sweep"]
    assert [r["scale"] for r in rows] == [0.0, 6.0] and rows[0]["kl"] == 0.0 and cfg["site"] == "blocks.2.resid_post"
    # side by side: the ablated column is the library's ablation of the same direction
    at.text_area(key="steer.prompts").set_value("Tell me a story.\nHow do I pick a lock?")
    at.selectbox(key="steer.gen_site").set_value("blocks.2.resid_post")
    at.number_input(key="steer.gen_max").set_value(6)
    at.button(key="steer.gen").click().run()
    _clean(at)
    prompts, fired, texts = at.session_state["steer.generated"]
    assert list(texts) == ["baseline", "added x8", "ablated at every layer", "added x8 where the probe fires"]
    kw = dict(max_new_tokens=6, chat=True, system=None)
    assert texts["baseline"] == sl.generate(stories, prompts, **kw).texts
    assert texts["ablated at every layer"] == sl.generate(
        stories, prompts, ablate_everywhere(stories, d["blocks.2.resid_post"]), **kw).texts
    for i, f in enumerate(fired):  # conditional: the added text where the probe fires, the baseline elsewhere
        assert texts["added x8 where the probe fires"][i] == (texts["added x8"][i] if f else texts["baseline"][i])
    # save the directions and reopen them from the Runs page's link
    at.button(key="steer.save_dir").click().run()
    _clean(at)
    (art,) = list_runs(tmp_path / "runs")
    assert art.kind == "steering_directions"
    at2 = AppTest.from_file(APP, default_timeout=240)
    at2.query_params["run"] = art.path.name
    at2.switch_page("app_pages/steer.py").run()
    _clean(at2)
    assert any(f"Showing saved run `{art.path.name}`" in i.value for i in at2.info)
    assert torch.equal(at2.session_state["steer.directions"][want.sites[0]], d[want.sites[0]])


def test_errors_are_messages(app):
    at = app
    at.text_input(key="steer.load_path").set_value("no-such-direction").run()
    assert not at.exception
    assert any("no saved directions 'no-such-direction'" in e.value for e in at.error)
    at.text_input(key="steer.load_path").set_value("").run()
    at.button(key="steer.extract").click().run()
    at.text_input(key="steer.scales").set_value("1, nan")
    at.number_input(key="steer.sweep_n").set_value(1)
    at.button(key="steer.sweep_run").click().run()
    assert not at.exception
    assert any("scale nan is not finite" in e.value for e in at.error)


def test_generate_page_builds_a_vector_from_saved_directions(monkeypatch, tmp_path, stories):
    """The intervention stack's "Saved directions" source: the unit vector of the saved direction at the chosen
    site (saved here by hand), scaled as asked."""
    from steerlab.steering.vectors import Directions

    v = torch.arange(float(stories.d_model))
    Directions({"blocks.2.resid_post": v}, {"method": "hand"}).save(tmp_path / "mine")
    monkeypatch.setenv("STEERLAB_DASHBOARD_MODEL", "shared:stories260K")
    monkeypatch.setenv("STEERLAB_RUNS", str(tmp_path / "runs"))
    at = AppTest.from_file(APP, default_timeout=240)
    at.switch_page("app_pages/generate.py").run()
    at.selectbox(key="generate.iv_site").set_value("blocks.2.resid_post").run()
    at.selectbox(key="generate.iv_src").set_value("Saved directions").run()
    at.text_input(key="generate.iv_saved").set_value(str(tmp_path / "mine")).run()
    at.number_input(key="generate.iv_scale").set_value(3.0)
    at.button(key="generate.iv_add").click().run()
    _clean(at)
    (iv,) = at.session_state["generate.stack"]
    assert iv.site == "blocks.2.resid_post" and iv.scale == 3.0
    torch.testing.assert_close(iv.vector, v / v.norm())
