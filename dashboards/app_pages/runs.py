"""Runs: every saved artifact (any analysis) with its configuration; reopen one in its page."""

from __future__ import annotations

import streamlit as st

from dashboards.lib import registry, runs, shell
from steerlab.artifacts import META_FILE, scan_runs
from steerlab.viz.runs import artifact_figures, html_figures, run_label, run_rows, tensor_summary, unreadable_rows

P = "runs"
st.title("Runs")
root = shell.runs_root()
st.caption(f"Artifacts under `{root}` (set with `steerlab dashboard --runs DIR`), newest first. "
           "Every analysis writes one: `artifact.json` (kind, configuration, metrics, data) + tensors + figures.")

arts, unreadable = [], []
with shell.guard("Listing runs"):
    arts, unreadable = scan_runs(root)
if unreadable:
    st.warning(f"{len(unreadable)} folder(s) under `{root}` hold an `{META_FILE}` that cannot be read; "
               "they are not listed:\n\n" + "\n".join(f"- `{r['run']}`: {r['error']}"
                                                       for r in unreadable_rows(unreadable, root)),
               icon=":material/report:")
if not arts:
    st.info(f"No saved runs under `{root}` yet. Save one from the Generate or Sampling page, "
            f"or write one with an analysis command's `--out {root}/NAME`.", icon=":material/folder_off:")
    shell.stop()

kinds = sorted({a.kind for a in arts})
chosen_kinds = st.multiselect("Kinds", kinds, default=kinds, key=f"{P}.kinds")
arts = [a for a in arts if a.kind in chosen_kinds]
st.dataframe(run_rows(arts, root), hide_index=True, width="stretch", key=f"{P}.table")
if not arts:
    shell.stop()

labels = [run_label(a, root) for a in arts]
label = st.selectbox("Run", labels, key=f"{P}.run", format_func=lambda s: f"{s}  ({arts[labels.index(s)].kind})")
art = arts[labels.index(label)]

page = registry.page_for_kind(art.kind)
if page is not None:
    if st.button(f"Open in {page.title}", type="primary", key=f"{P}.open", icon=page.icon):
        with shell.guard("Opening the run"):
            runs.open_in_page(art)
else:
    st.caption(f"No page shows `{art.kind}` artifacts yet; everything the artifact holds is below.")

st.markdown(f"**{art.kind}** · created {art.created} · steerlab {art.steerlab_version} · `{art.path}`")
c1, c2 = st.columns(2)
with c1:
    st.markdown("**Configuration**")
    st.json(art.config, expanded=2)
with c2:
    st.markdown("**Metrics**")
    st.json(art.metrics, expanded=True)
    tensors = tensor_summary(art)
    if tensors:
        st.markdown("**Tensors**")
        st.dataframe(tensors, hide_index=True, width="stretch")
    st.markdown("**Files**: " + ", ".join(f"`{f}`" for f in art.files))

with shell.guard("Reading the figures"):
    for name, fig in artifact_figures(art).items():
        st.plotly_chart(fig, key=f"{P}.fig.{name}")
    for path in html_figures(art):
        st.download_button(f"Download {path.name}", path.read_bytes(), file_name=path.name, mime="text/html",
                           key=f"{P}.html.{path.name}")
if art.data:
    with st.expander("Data"):
        st.json(art.data, expanded=1)
