"""Steer: build a direction from a prompt suite (or load a saved one), the per-layer probe accuracy and
separation profile, the scale sweep's trade-off figure, and the same prompts generated with the direction
added, ablated at every layer, or added only where a probe fires, side by side."""

from __future__ import annotations

import streamlit as st

from dashboards.lib import runs, shell
from steerlab.steering.apply import ablate_everywhere, add, conditional
from steerlab.steering.artifact import (
    DIRECTIONS_KIND,
    PROBES_KIND,
    REFUSAL_KIND,
    SWEEP_KIND,
    write_directions_payload,
    write_probes_payload,
    write_sweep_payload,
)
from steerlab.steering.extract import METHODS, extract_directions
from steerlab.steering.figures import probe_profile_figure, sweep_figure
from steerlab.steering.linear_probes import load_probes, probe_profile
from steerlab.steering.sweep import scale_sweep
from steerlab.steering.vectors import Directions, load_directions
from steerlab.suites import default_suite, list_suites, load_suite

P = "steer"
st.title("Steer")
st.caption("Directions from contrasting prompt suites (diff-in-means, PCA of paired differences, probe weights), "
           "linear probes per layer, scale sweeps, and generation with a direction added, ablated or conditional.")

STATE = ["directions", "probes", "sweep", "generated", "refusal", "loaded"]  # made with one model

# -- reopened from the Runs page ---------------------------------------------------------------
opened = None
with shell.guard("Opening the saved run"):
    opened = runs.requested_run(P)
label = st.query_params.get("run")
if opened is not None and st.session_state.get(f"{P}.opened") != label:
    with shell.guard("Reading the saved run"):
        if opened.kind == DIRECTIONS_KIND:
            st.session_state[f"{P}.directions"] = load_directions(opened.path)
        elif opened.kind == PROBES_KIND:
            st.session_state[f"{P}.probes"] = load_probes(opened.path)
        elif opened.kind == SWEEP_KIND:
            st.session_state[f"{P}.sweep"] = (opened.data["rows"], opened.config)
        elif opened.kind == REFUSAL_KIND:  # the study's chosen direction, with its numbers
            site = opened.config["chosen"]["site"]
            st.session_state[f"{P}.directions"] = Directions({site: opened.tensors["direction"]}, dict(opened.config))
            st.session_state[f"{P}.refusal"] = opened.metrics
        st.session_state[f"{P}.opened"] = label
        shell.forget_on_model_change(P, STATE, model=opened.config.get("model", ""))
        shell.switch_model(opened.config.get("model", ""))
if opened is not None:
    runs.close_run_button(label)

h = shell.require_model()
shell.forget_on_model_change(P, STATE)
suites = list_suites()
shell.init_state(f"{P}.suite", default_suite(h))
suite_name = st.selectbox("Prompt suite", suites, key=f"{P}.suite")
suite = load_suite(suite_name)
components = [c for c in ("resid_pre", "resid_mid", "resid_post") if f"blocks.0.{c}" in h.sites]

TABS = ["Direction", "Probes", "Sweep", "Generate"]
tab_dir, tab_probe, tab_sweep, tab_gen = st.tabs(TABS)

with tab_dir:
    c1, c2, c3, c4 = st.columns(4)
    shell.init_state(f"{P}.component", "resid_post")
    component = c1.selectbox("Sites: every layer's", components, key=f"{P}.component")
    method = c2.selectbox("Method", METHODS, key=f"{P}.method")
    position = c3.selectbox("Position", ["last", "mean"], key=f"{P}.position")
    shell.init_state(f"{P}.limit", 64)
    limit = c4.number_input("Prompts per label", min_value=2, step=16, key=f"{P}.limit")
    b1, b2 = st.columns([1, 3])
    if b1.button("Extract", type="primary", key=f"{P}.extract", icon=":material/explore:"):
        with shell.guard("Extracting"), st.spinner("Capturing activations…"):
            st.session_state[f"{P}.directions"] = extract_directions(h, suite, component, method=method,
                                                                     position=position, limit=int(limit))
    shell.init_state(f"{P}.load_path", "")
    path = b2.text_input("…or load saved directions (name, file or artifact folder)", key=f"{P}.load_path")
    if path.strip() and st.session_state.get(f"{P}.loaded") != path.strip():
        with shell.guard("Loading the directions"):
            st.session_state[f"{P}.directions"] = load_directions(path.strip())
            st.session_state[f"{P}.loaded"] = path.strip()
    if st.session_state.get(f"{P}.refusal") is not None:
        st.markdown("**Refusal-direction study** (held-out numbers of the saved run)")
        st.json(st.session_state[f"{P}.refusal"], expanded=1)
    d = st.session_state.get(f"{P}.directions")
    if d is None:
        st.info("Extract a direction from the suite or load a saved one.", icon=":material/info:")
    else:
        meta = d.meta
        st.caption(f"method `{meta.get('method')}` · suite `{meta.get('suite')}` · position `{meta.get('position')}` "
                   f"· model `{meta.get('model')}` · commit `{str(meta.get('commit', ''))[:10]}`")
        st.dataframe([{"site": s, "norm": round(float(v.norm()), 4)} for s, v in d.vectors.items()],
                     hide_index=True, width="stretch")
        if st.button("Save as run", key=f"{P}.save_dir", icon=":material/save:"):
            with shell.guard("Saving"):
                saved = runs.save_run("steer-directions", **write_directions_payload(d))
                st.success(f"Saved to `{saved}`.", icon=":material/check:")

with tab_probe:
    st.caption("A logistic-regression probe per site, fitted on the suite's train split and scored on its test "
               "split; the shuffled-label control should sit at chance.")
    if st.button("Fit probes", type="primary", key=f"{P}.fit", icon=":material/query_stats:"):
        with shell.guard("Fitting probes"), st.spinner("Capturing and fitting…"):
            st.session_state[f"{P}.probes"] = probe_profile(h, suite, st.session_state[f"{P}.component"],
                                                            limit=int(st.session_state[f"{P}.limit"]))
    prof = st.session_state.get(f"{P}.probes")
    if prof is not None:
        best = prof.best
        st.markdown(f"**Best site** `{best.site}`: held-out accuracy {best.test_acc:.3f}, AUROC "
                    f"{best.test_auroc:.3f}, shuffled-label control {best.shuffled_acc:.3f} (chance {best.chance:.3f})")
        st.plotly_chart(probe_profile_figure(prof.table()), key=f"{P}.fig_probe")
        st.dataframe(prof.table(), hide_index=True, width="stretch")
        if st.button("Save as run", key=f"{P}.save_probe", icon=":material/save:"):
            with shell.guard("Saving"):
                saved = runs.save_run("steer-probes", **write_probes_payload(prof))
                st.success(f"Saved to `{saved}`.", icon=":material/check:")

d = st.session_state.get(f"{P}.directions")
sites = d.sites if d is not None else []
with tab_sweep:
    if d is None:
        st.info("Build or load a direction first (Direction tab).", icon=":material/info:")
    else:
        c1, c2, c3 = st.columns(3)
        site = c1.selectbox("Add at", sites, index=len(sites) // 2, key=f"{P}.sweep_site")
        shell.init_state(f"{P}.scales", "0, 2, 4, 8")
        scales_text = c2.text_input("Scales (x unit vector)", key=f"{P}.scales")
        shell.init_state(f"{P}.sweep_n", 8)
        n = c3.number_input("Held-out prompts per label", min_value=1, step=8, key=f"{P}.sweep_n")
        if st.button("Sweep", type="primary", key=f"{P}.sweep_run", icon=":material/tune:"):
            with shell.guard("The sweep"), st.spinner("Generating at every scale…"):
                from steerlab.errors import SpecError

                try:
                    scales = [float(x) for x in scales_text.split(",") if x.strip()]
                except ValueError as e:
                    raise SpecError(f"scales {scales_text!r} must be comma-separated numbers") from e
                rows = scale_sweep(h, d[site], site, scales, suite, n=int(n), max_new_tokens=24)
                st.session_state[f"{P}.sweep"] = (rows, {"model": h.spec, "site": site, "suite": suite.name,
                                                          "behavior": suite.behavior, "control": suite.control,
                                                          "scales": scales, "n": int(n)})
    sw = st.session_state.get(f"{P}.sweep")
    if sw is not None:
        rows, cfg = sw
        # the sweep's own labels (a reopened run's, or the suite it ran on), not the suite selected now
        behavior, control = cfg.get("behavior", suite.behavior), cfg.get("control", suite.control)
        st.caption(f"suite `{cfg.get('suite')}` · site `{cfg.get('site')}` · {cfg.get('n')} prompts per label")
        st.plotly_chart(sweep_figure(rows, behavior, control), key=f"{P}.fig_sweep")
        st.dataframe([{k: v for k, v in r.items() if k != "example"} for r in rows], hide_index=True,
                     width="stretch")
        if st.button("Save as run", key=f"{P}.save_sweep", icon=":material/save:"):
            with shell.guard("Saving"):
                saved = runs.save_run("steer-sweep", **write_sweep_payload(cfg, rows, behavior, control))
                st.success(f"Saved to `{saved}`.", icon=":material/check:")

with tab_gen:
    if d is None:
        st.info("Build or load a direction first (Direction tab).", icon=":material/info:")
    else:
        shell.init_state(f"{P}.prompts", "\n".join(suite.user_texts(suite.control, "test")[:2]
                                                 + suite.user_texts(suite.behavior, "test")[:2]))
        text = st.text_area("Prompts (one per line)", key=f"{P}.prompts", height=120)
        c1, c2, c3 = st.columns(3)
        gsite = c1.selectbox("Direction at", sites, index=len(sites) // 2, key=f"{P}.gen_site")
        shell.init_state(f"{P}.gen_scale", 8.0)
        gscale = c2.number_input("Scale (x unit vector)", step=1.0, key=f"{P}.gen_scale")
        shell.init_state(f"{P}.gen_max", 24)
        gmax = c3.number_input("Max new tokens", min_value=1, max_value=256, key=f"{P}.gen_max")
        if st.button("Generate", type="primary", key=f"{P}.gen", icon=":material/play_arrow:"):
            import steerlab as sl

            prompts = [p for p in text.splitlines() if p.strip()]
            with shell.guard("Generating"), st.spinner("Generating four ways…"):
                prof = st.session_state.get(f"{P}.probes")
                try:
                    probe = prof.probe(gsite) if prof is not None else None
                except Exception:  # noqa: BLE001  (no probe at that site: fit one below)
                    probe = None
                if probe is None:
                    probe = probe_profile(h, suite, [gsite], limit=int(st.session_state[f"{P}.limit"])).probe(gsite)
                runs_ = {
                    "baseline": None,
                    f"added x{gscale:g}": [add(h, d[gsite], gsite, gscale)],
                    "ablated at every layer": ablate_everywhere(h, d[gsite]),
                    f"added x{gscale:g} where the probe fires": [conditional(h, d[gsite], probe, gscale)],
                }
                kw = dict(max_new_tokens=int(gmax), **suite.chat_kwargs())
                fired = probe.fires(sl.capture(h, prompts, [gsite], **suite.chat_kwargs()).last(gsite)).tolist()
                st.session_state[f"{P}.generated"] = (
                    prompts, fired, {k: sl.generate(h, prompts, v, **kw).texts for k, v in runs_.items()})
        gen = st.session_state.get(f"{P}.generated")
        if gen is not None:
            prompts, fired, texts = gen
            cols = st.columns(len(texts))
            for col, (k, v) in zip(cols, texts.items(), strict=True):
                col.markdown(f"**{k}**")
                for p, f, t in zip(prompts, fired, v, strict=True):
                    col.markdown(f"*{p[:60]}*" + (" · probe fires" if f else ""))
                    col.code(t or "(empty)", language=None, wrap_lines=True)
