"""Artifact listing and description (steerlab.viz.runs)."""

from __future__ import annotations

import plotly.graph_objects as go
import torch

from steerlab.artifacts import list_runs, read_artifact, write_artifact
from steerlab.viz.runs import (
    artifact_figures,
    figure_files,
    html_figures,
    model_of,
    run_rows,
    summarize,
    tensor_summary,
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
