"""Artifact listing and description (steerlab.viz.runs)."""

from __future__ import annotations

import plotly.graph_objects as go
import torch

from steerlab.artifacts import list_runs, read_artifact, scan_runs, write_artifact
from steerlab.viz.runs import (
    artifact_figures,
    figure_files,
    html_figures,
    model_of,
    run_rows,
    summarize,
    tensor_summary,
    unreadable_rows,
)


def test_rows_tensors_and_figures(tmp_path):
    fig = go.Figure(go.Scatter(x=[0, 1], y=[2, 3], name="line"))
    write_artifact(tmp_path / "a" / "one", kind="demo", config={"model": "shared:stories260K", "k": 3},
                   metrics={"acc": 0.123456, "n": 4, "curve": [1, 2, 3, 4, 5]},
                   tensors={"x": torch.zeros(2, 3), "m": torch.ones(4, dtype=torch.int64)},
                   extra_files={**figure_files({"curve": fig}), "raw.html": "<html></html>"})
    write_artifact(tmp_path / "two", kind="other", config={"model_spec": "organism:moe"})
    arts = list_runs(tmp_path)
    rows = {r["run"]: r for r in run_rows(arts, tmp_path)}
    assert set(rows) == {"a/one", "two"}
    assert rows["a/one"]["model"] == "shared:stories260K" and rows["two"]["model"] == "organism:moe"
    assert rows["a/one"]["metrics"] == "acc=0.1235, n=4"
    one = read_artifact(tmp_path / "a" / "one")
    assert {t["tensor"]: (t["shape"], t["dtype"]) for t in tensor_summary(one)} == {
        "x": ("[2, 3]", "F32"), "m": ("[4]", "I64")}
    figs = artifact_figures(one)
    assert list(figs) == ["curve"] and list(figs["curve"].data[0].y) == [2, 3]
    assert [p.name for p in html_figures(one)] == ["raw.html"]  # curve.html has a .plotly.json twin
    assert tensor_summary(read_artifact(tmp_path / "two")) == []


def test_figures_stored_in_data_are_read_too(tmp_path):
    fig = go.Figure(go.Scatter(x=[1], y=[4], name="in data"))
    write_artifact(tmp_path / "c", kind="sampling_compare", config={},
                   data={"figures": {"dc": fig.to_plotly_json()}}, extra_files={"dc.html": "<html></html>"})
    art = read_artifact(tmp_path / "c")
    figs = artifact_figures(art)
    assert list(figs) == ["dc"] and figs["dc"].data[0].name == "in data"
    assert html_figures(art) == []  # the HTML twin of a figure shown interactively is not repeated


def test_summaries():
    assert summarize({"a": 1, "b": 0.5, "c": "x", "d": True}, limit=2) == "a=1, b=0.5, ..."
    assert summarize({"t": [1, 2]}) == ""
    assert model_of({}) == ""


def test_unreadable_artifacts_are_reported_with_the_reason(tmp_path):
    write_artifact(tmp_path / "good", kind="demo", config={})
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "artifact.json").write_text('{"kind": "demo", ')
    (tmp_path / "listy").mkdir()
    (tmp_path / "listy" / "artifact.json").write_text("[1, 2]")
    write_artifact(tmp_path / "deep" / "partial", kind="demo", config={}, tensors={"x": torch.zeros(1)})
    (tmp_path / "deep" / "partial" / "tensors.safetensors").unlink()
    write_artifact(tmp_path / "torn", kind="demo", config={}, tensors={"x": torch.zeros(1)})
    (tmp_path / "torn" / "tensors.safetensors").write_bytes(b"\x05")
    arts, bad = scan_runs(tmp_path)
    assert [a.path.name for a in arts] == ["good"] and [a.path.name for a in list_runs(tmp_path)] == ["good"]
    rows = {r["run"]: r["error"] for r in unreadable_rows(bad, tmp_path)}
    assert sorted(rows) == ["broken", "deep/partial", "listy", "torn"]
    assert "torn/tensors.safetensors is not a readable safetensors file" in rows["torn"]
    assert "artifact.json is not valid JSON" in rows["broken"]
    assert "holds a JSON list; expected an object" in rows["listy"]
    assert "incomplete: ['tensors.safetensors'] listed in artifact.json but missing" in rows["deep/partial"]


def test_an_interrupted_swap_is_listed_from_its_backup(tmp_path):
    write_artifact(tmp_path / "gone", kind="old-of-gone", config={})
    (tmp_path / "gone").rename(tmp_path / ".gone.old")  # a crash between the fallback swap's renames
    write_artifact(tmp_path / "kept", kind="new-of-kept", config={})
    write_artifact(tmp_path / "stale", kind="stale-backup", config={})
    (tmp_path / "stale").rename(tmp_path / ".kept.old")  # its folder is back in place: not listed
    write_artifact(tmp_path / "scratch", kind="scratch", config={})
    (tmp_path / "scratch").rename(tmp_path / ".gone.1234.tmp")  # a temporary folder: never listed
    arts, bad = scan_runs(tmp_path)
    assert sorted(a.kind for a in arts) == ["new-of-kept", "old-of-gone"] and bad == []
    assert read_artifact(tmp_path / "gone").kind == "old-of-gone"
