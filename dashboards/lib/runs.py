"""Reopening saved artifacts in their page: ``/PAGE?run=RELATIVE/PATH`` under the runs root."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

import streamlit as st

from dashboards.lib import registry
from dashboards.lib.shell import runs_root
from steerlab.artifacts import Artifact, list_runs, read_artifact, write_artifact
from steerlab.errors import SteerlabError
from steerlab.viz.runs import run_label


def resolve_run(label: str) -> Path:
    """The artifact folder named ``label`` (relative to the runs root; never outside it)."""
    root = runs_root()
    path = (root / label).resolve()
    if not path.is_relative_to(root):
        raise SteerlabError(f"run {label!r} is outside the runs folder {root}")
    return path


def requested_run(page: str) -> Artifact | None:
    """The artifact named by the ``run`` query parameter, if any and of a kind the page ``page`` (its
    registry key) reopens."""
    label = st.query_params.get("run")
    if not label:
        return None
    kinds = registry.page(page).kinds
    art = read_artifact(resolve_run(label))
    if art.kind not in kinds:
        raise SteerlabError(f"run {label!r} is a {art.kind!r} artifact; this page opens {list(kinds)}")
    return art


def open_in_page(art: Artifact) -> None:
    """Switch to the page that shows ``art`` (no return)."""
    page = registry.page_for_kind(art.kind)
    if page is None:
        raise SteerlabError(f"no page opens {art.kind!r} artifacts")
    st.switch_page(page.file, query_params={"run": run_label(art, runs_root())})


def close_run_button(label: str) -> None:
    """A banner saying which saved run is shown, with a button that goes back to a live page."""
    c1, c2 = st.columns([5, 1], vertical_alignment="center")
    c1.info(f"Showing saved run `{label}`. Change settings and run again to compare live.",
            icon=":material/history:")
    if c2.button("Close run", key="run.close"):
        st.query_params.clear()
        st.rerun()


def save_run(prefix: str, **artifact: Any) -> Path:
    """Write an artifact under the runs root as ``PREFIX-YYYYmmdd-HHMMSS`` and return its folder."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")[:-3]
    return write_artifact(runs_root() / f"{prefix}-{stamp}", overwrite=False, **artifact)


def runs_of_kind(kinds: tuple[str, ...]) -> list[Artifact]:
    return [a for a in list_runs(runs_root()) if a.kind in kinds]
