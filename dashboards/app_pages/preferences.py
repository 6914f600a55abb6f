"""Preferences: which response properties drive a judge's pairwise preferences (after Li et al. 2024).

Weights as 100 x sigmoid(w) with credible intervals, judges side by side; the judge-similarity heatmap with
clustering; each property's shift across scenario groups; a pair browser (both responses, annotations, each
judge's verdict and the property contributions behind it); and annotate / judge / fit of your own JSONL.
"""

from __future__ import annotations

import datetime as _dt

import pandas as pd
import streamlit as st

from dashboards.lib import runs, shell
from steerlab.artifacts import read_artifact
from steerlab.preferences.annotate import RULE_NAMES
from steerlab.preferences.artifact import COMPARE_KIND, FIT_KIND, PAIRS_KIND, fit_from_artifact, pairs_from_artifact
from steerlab.preferences.data import PUBLISHED_ATTRIBUTION, PairSet, load_published_pairs
from steerlab.preferences.figures import (
    WeightsView,
    breakdown_figure,
    default_groups,
    percent,
    shift_figure,
    similarity_heatmap,
    weights_figure,
)
from steerlab.preferences.fit import pair_breakdown
from steerlab.preferences.runner import run_annotate, run_fit, run_judge
from steerlab.viz.runs import run_label

P = "preferences"
PUBLISHED = "published"
AVERAGE = "average over scenarios"
st.title("Preferences")
st.caption(
    "Which response properties drive a judge's pairwise preferences: each pair is described by per-property "
    "comparisons sign(A - B); a Bayesian logistic regression (no intercept, Laplace(0, 0.1) prior) per judge and "
    "group gives each property a weight read as 100 x sigmoid(w), the chance that A wins when it is better on "
    "this property alone. After Li et al., *Dissecting Human and LLM Preferences* (ACL 2024)."
)

# -- reopened from the Runs page / a run just written -------------------------------------------------
opened = None
with shell.guard("Opening the saved run"):
    opened = runs.requested_run(P)
label = st.query_params.get("run")
if opened is not None and st.session_state.get(f"{P}.opened") != label:
    if opened.kind == FIT_KIND:
        st.session_state[f"{P}.pending_source"] = label
    elif opened.kind == PAIRS_KIND:
        st.session_state[f"{P}.pending_data"] = label
    st.session_state[f"{P}.opened"] = label
if opened is not None:
    runs.close_run_button(label)
if opened is not None and opened.kind == COMPARE_KIND:
    with shell.guard("Showing the saved comparison"):
        import torch

        d = opened.data
        fig, _ = similarity_heatmap(torch.tensor(d["similarity"], dtype=torch.float64), d["judges"],
                                    title=f"Saved comparison: {opened.config.get('method', 'pearson')} r over "
                                          f"{len(d['groups'])} group(s) of {', '.join(opened.config['sources'])}")
        st.plotly_chart(fig, key=f"{P}.compare_fig")
pending = st.session_state.pop(f"{P}.pending_source", None)
if pending is not None:
    st.session_state[f"{P}.source"] = pending
pending = st.session_state.pop(f"{P}.pending_data", None)
if pending is not None:
    st.session_state[f"{P}.data_source"] = str(runs.resolve_run(pending))
    st.session_state[f"{P}.pairs_from"] = pending


@st.cache_data(show_spinner=False, max_entries=8)
def _published_view() -> WeightsView:
    return WeightsView.published()


@st.cache_data(show_spinner=False, max_entries=2)
def _published_pairs() -> PairSet:
    return load_published_pairs()


def _view(source: str) -> WeightsView:
    if source == PUBLISHED:
        return _published_view()
    return WeightsView.from_fit(fit_from_artifact(read_artifact(runs.resolve_run(source))), label=source)


fit_runs = [run_label(a, shell.runs_root()) for a in runs.runs_of_kind((FIT_KIND,))]
sources = [PUBLISHED, *fit_runs]
shell.init_state(f"{P}.source", PUBLISHED)
if st.session_state[f"{P}.source"] not in sources:
    sources.append(st.session_state[f"{P}.source"])
source = st.selectbox("Weights from", sources, key=f"{P}.source",
                      format_func=lambda s: "published weights (Li et al. 2024: 33 judges, 16 groups)"
                      if s == PUBLISHED else f"fit run {s}")
view = None
with shell.guard("Loading the weights"):
    view = _view(source)
if view is None:
    shell.stop()
if source == PUBLISHED:
    st.caption(PUBLISHED_ATTRIBUTION + " The published weights are posterior means only (no intervals).")

judges_all = view.judges
default_judges = [j for j in ("human", "gpt-4-1106-preview") if j in judges_all] or judges_all[:2]
if any(j not in judges_all for j in st.session_state.get(f"{P}.judges", [])):
    del st.session_state[f"{P}.judges"]
shell.init_state(f"{P}.judges", default_judges)
groups_all = view.groups
if st.session_state.get(f"{P}.group") not in groups_all:
    st.session_state.pop(f"{P}.group", None)
shell.init_state(f"{P}.group", "Advice" if "Advice" in groups_all else groups_all[0])
c1, c2 = st.columns([3, 1])
judges = c1.multiselect("Judges", judges_all, key=f"{P}.judges")
group = c2.selectbox("Scenario group", groups_all, key=f"{P}.group")

tab_w, tab_sim, tab_shift, tab_pairs, tab_run = st.tabs(
    ["Weights", "Judge similarity", "Across groups", "Pairs", "Fit your data"])

# -- weights --------------------------------------------------------------------------------------------
with tab_w:
    if not judges:
        st.info("Choose one or more judges above.", icon=":material/info:")
    else:
        with shell.guard("Drawing the weights"):
            st.plotly_chart(weights_figure(view, judges, group), key=f"{P}.weights_fig")
            rows = []
            for i, prop in enumerate(view.properties):
                row: dict = {"property": prop}
                for j in judges:
                    mean, lo, hi = view.weights[j].get(group, (view.mean(j, group), None, None))
                    row[f"{j} %"] = round(percent(mean[i]), 1)
                    if lo is not None and hi is not None:
                        row[f"{j} 90% interval"] = f"{percent(lo[i]):.1f} - {percent(hi[i]):.1f}"
                rows.append(row)
            table = pd.DataFrame(rows).sort_values(f"{judges[0]} %", ascending=False)
            st.dataframe(table, hide_index=True, key=f"{P}.weights_table")
            fits = view.extra.get("fits", {})
            diag = [(j, g, f) for j, per in fits.items() for g, f in per.items() if f.rhat is not None]
            if diag:
                st.caption("NUTS diagnostics: " + "; ".join(
                    f"{j}/{g}: max R-hat {float(f.rhat.max()):.3f}, min ESS {float(f.ess.min()):.0f}"
                    for j, g, f in diag))

# -- similarity -----------------------------------------------------------------------------------------
with tab_sim:
    sim_groups = [AVERAGE, *groups_all]
    shell.init_state(f"{P}.sim_group", AVERAGE)
    shell.init_state(f"{P}.sim_judges", judges_all)
    shell.init_state(f"{P}.cluster", True)
    s1, s2 = st.columns([3, 1])
    sim_judges = s1.multiselect("Judges to compare", judges_all, key=f"{P}.sim_judges")
    sim_group = s2.selectbox("Group", sim_groups, key=f"{P}.sim_group")
    cluster = s2.checkbox("Cluster (average linkage on 1 - r)", key=f"{P}.cluster")
    if len(sim_judges) < 2:
        st.info("Choose at least two judges.", icon=":material/info:")
    else:
        with shell.guard("Computing the similarity"):
            gs = default_groups(view) if sim_group == AVERAGE else [sim_group]
            sim = view.similarity(sim_judges, gs)
            fig, order = similarity_heatmap(sim, sim_judges, cluster=cluster,
                                            title=f"Pearson r of property weights, {sim_group}")
            st.plotly_chart(fig, key=f"{P}.sim_fig")
            st.caption(f"Averaged over {len(gs)} group(s): {', '.join(gs)}. Order: {', '.join(order)}.")

# -- across groups --------------------------------------------------------------------------------------
with tab_shift:
    if len(groups_all) < 2:
        st.info("This source has weights for one group only; fit several groups to see shifts.",
                icon=":material/info:")
    else:
        if st.session_state.get(f"{P}.shift_judge") not in judges_all:
            st.session_state.pop(f"{P}.shift_judge", None)
        shell.init_state(f"{P}.shift_judge", default_judges[0])
        shift_judge = st.selectbox("Judge", judges_all, key=f"{P}.shift_judge")
        with shell.guard("Drawing the shifts"):
            gs = [g for g in groups_all if g in view.weights[shift_judge]]
            st.plotly_chart(shift_figure(view, shift_judge, gs), key=f"{P}.shift_fig")
            pct = [[percent(w) for w in view.mean(shift_judge, g)] for g in gs]
            spread = pd.DataFrame({"property": view.properties,
                                   "min %": [round(min(c), 1) for c in zip(*pct, strict=True)],
                                   "max %": [round(max(c), 1) for c in zip(*pct, strict=True)]})
            spread["shift (max - min)"] = (spread["max %"] - spread["min %"]).round(1)
            st.dataframe(spread.sort_values("shift (max - min)", ascending=False), hide_index=True,
                         key=f"{P}.shift_table")

# -- pairs ----------------------------------------------------------------------------------------------
with tab_pairs:
    pairs_from = st.session_state.get(f"{P}.pairs_from")
    pairs: PairSet | None = None
    verdicts: dict = {}
    with shell.guard("Loading the pairs"):
        if pairs_from:
            run = pairs_from_artifact(read_artifact(runs.resolve_run(pairs_from)))
            pairs, verdicts = run.pairs, run.verdicts
            st.caption(f"Pairs of run `{pairs_from}`.")
        elif view.pairs is not None:
            pairs = view.pairs
            st.caption(f"The pairs fitted in `{source}`.")
        else:
            pairs = _published_pairs()
            st.caption("The paper's 5,240 pairs: the human label, scenario and query-specific cases. Their texts "
                       "and GPT-4 annotations were not released with the viewer, so contributions cannot be shown.")
    if pairs is not None and len(pairs):
        in_group = [i for i, p in enumerate(pairs.pairs) if p.in_group(group)] or list(range(len(pairs)))
        shell.init_state(f"{P}.pair", 0)
        k = st.number_input(f"Pair (of {len(in_group)} in group {group!r})", 0, len(in_group) - 1,
                            key=f"{P}.pair")
        pair = pairs.pairs[in_group[min(int(k), len(in_group) - 1)]]
        st.markdown(f"**Pair `{pair.id}`** - scenario: {pair.scenario or '-'}; cases: "
                    f"{', '.join(pair.cases) or '-'}")
        if pair.prompt or pair.response_a:
            st.markdown("**Prompt**")
            st.code(pair.prompt[-3000:] or "(empty)", language=None, wrap_lines=True)
            a_col, b_col = st.columns(2)
            a_col.markdown("**Response A**")
            a_col.code(pair.response_a, language=None, wrap_lines=True)
            b_col.markdown("**Response B**")
            b_col.code(pair.response_b, language=None, wrap_lines=True)
        verdict_rows = [{"judge": j, "prefers": lab} for j, lab in pair.labels.items()]
        for j, vs in verdicts.items():
            for v in vs:
                if v["pair_id"] == pair.id:
                    for r in verdict_rows:
                        if r["judge"] == j:
                            r.update(score_a=v["score_a"], score_b=v["score_b"])
                    if v["label"] is None:
                        verdict_rows.append({"judge": j, "prefers": "no preference (tie)"})
        st.markdown("**Verdicts**")
        st.dataframe(pd.DataFrame(verdict_rows), hide_index=True, key=f"{P}.verdicts")
        if pair.annotations:
            ann = pd.DataFrame([{"property": p, "A": a, "B": b, "comparison": (a > b) - (a < b)}
                                for p, (a, b) in pair.annotations.items()])
            st.markdown("**Annotations**")
            st.dataframe(ann, hide_index=True, key=f"{P}.annotations")
        fits = view.extra.get("fits", {})
        if fits and pair.annotations:
            st.markdown("**Why: property contributions to each fitted judge's predicted verdict**")
            x_props = view.properties
            x = PairSet([pair]).features(x_props)[0]
            for j in [j for j in judges if j in fits]:
                g = group if group in fits[j] else next(iter(fits[j]))
                b = pair_breakdown(x, fits[j][g].mean, x_props)
                actual = pair.labels.get(j, "no label")
                st.markdown(f"`{j}` ({g}): predicted **{b['verdict']}** (P(A) = {100 * b['p_a']:.0f}%), "
                            f"actual **{actual}**")
                if b["contributions"]:
                    st.plotly_chart(breakdown_figure(b, j), key=f"{P}.breakdown.{j}")
                else:
                    st.caption("No property differs between A and B: the model predicts 50%.")

# -- annotate / judge / fit your data ----------------------------------------------------------------------
with tab_run:
    st.markdown("Point to a JSONL file (format in docs/preferences.md), upload one, or use `hh_rlhf:N`; then "
                "annotate, judge and fit. Each step writes a run under the runs folder.")
    up = st.file_uploader("Upload a pairs JSONL", type=["jsonl", "json"], key=f"{P}.upload")
    if up is not None and st.session_state.get(f"{P}.uploaded") != up.name:
        dest = shell.save_upload(up.name, up.getvalue())
        st.session_state[f"{P}.uploaded"] = up.name
        st.session_state[f"{P}.data_source"] = str(dest)
    shell.init_state(f"{P}.data_source", "hh_rlhf:40")
    data_source = st.text_input("Pairs: hh_rlhf:N, a JSONL path, or a run folder", key=f"{P}.data_source")
    r1, r2, r3 = st.columns(3)
    shell.init_state(f"{P}.on_error", "skip")
    on_error = r1.radio("Malformed lines", ["skip", "raise"], key=f"{P}.on_error", horizontal=True)
    shell.init_state(f"{P}.method", "laplace")
    method = r2.selectbox("Fit method", ["laplace", "nuts", "svi"], key=f"{P}.method")
    shell.init_state(f"{P}.fit_groups", "all")
    fit_groups = r3.text_input("Groups to fit (comma-separated)", key=f"{P}.fit_groups")
    shell.init_state(f"{P}.annotators", list(RULE_NAMES))
    annotators = st.multiselect("Rule annotators", list(RULE_NAMES), key=f"{P}.annotators")
    shell.init_state(f"{P}.judge_specs", "stories260K=loglik:shared:stories260K")
    judge_specs = st.text_area("Model judges (one per line: [NAME=]loglik:MODEL or [NAME=]dpo:POLICY,REF[,BETA])",
                               key=f"{P}.judge_specs", height=80)
    b1, b2, b3 = st.columns(3)
    action = ("annotate" if b1.button("Annotate", key=f"{P}.annotate") else
              "judge" if b2.button("Judge", key=f"{P}.judge") else
              "fit" if b3.button("Fit", key=f"{P}.fit", type="primary") else None)
    if action:
        bar = st.progress(0.0, text=f"{action}...")

        def progress(stage: str, frac: float) -> None:
            bar.progress(min(max(frac, 0.0), 1.0), text=stage)

        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")[:-3]
        out = shell.runs_root() / f"prefs-{action}-{stamp}"
        done = None
        with shell.guard(action.capitalize()):
            if action == "annotate":
                done = run_annotate(data_source, out, annotators=annotators, on_error=on_error, progress=progress)
            elif action == "judge":
                specs = [s.strip() for s in judge_specs.splitlines() if s.strip()]
                done = run_judge(data_source, out, judges=specs, on_error=on_error, progress=progress)
            else:
                groups = [g.strip() for g in fit_groups.split(",") if g.strip()] or ["all"]
                done = run_fit(data_source, out, groups=groups, method=method,  # type: ignore[arg-type]
                               on_error=on_error, min_pairs=5, progress=progress)
        if done is not None:
            bar.progress(1.0, text=f"{action}: done")
            art = read_artifact(done)
            name = run_label(art, shell.runs_root())
            st.session_state[f"{P}.last"] = {"action": action, "run": name, "metrics": art.metrics,
                                             "problems": art.data.get("problems", [])}
            if action == "fit":
                st.session_state[f"{P}.pending_source"] = name
                st.session_state.pop(f"{P}.pairs_from", None)
            else:
                st.session_state[f"{P}.pending_data"] = name
            st.rerun()
    last = st.session_state.get(f"{P}.last")
    if last:
        st.success(f"{last['action']}: wrote run `{last['run']}`", icon=":material/check:")
        st.json(last["metrics"], expanded=False)
        for p in last["problems"]:
            st.warning(f"skipped line {p['line']}: {p['message']}", icon=":material/warning:")
