"""Sampling: per-step entropy, top-H budget and kept sets of top-H / top-p / min-p for one generation;
the comparison harness's figures (diversity vs coherence) when that artifact exists."""

from __future__ import annotations

import streamlit as st
import streamlit.components.v1 as components

from dashboards.lib import runs, samplers, shell
from steerlab.decoding.artifact import COMPARE_KIND, KIND, diagnostics_artifact, diagnostics_from_artifact
from steerlab.decoding.compare import table_markdown
from steerlab.decoding.diagnostics import diagnose_run, diagnostics_summary
from steerlab.decoding.figures import per_step_figure, step_cutoff_figure
from steerlab.sampling.top_h import VARIANTS
from steerlab.viz.runs import artifact_figures, html_figures, run_label

P = "sampling"
st.title("Sampling")
st.caption("One generation, step by step: the model's entropy H(p), top-H's entropy budget, and how many tokens "
           "top-H, top-p and min-p would keep at the same steps and temperature. Entropies in nats.")

# -- reopened from the Runs page ---------------------------------------------------------------
opened = None
with shell.guard("Opening the saved run"):
    opened = runs.requested_run(P)
label = st.query_params.get("run")
first_open = opened is not None and st.session_state.get(f"{P}.opened") != label
if opened is not None:
    runs.close_run_button(label)  # drawn first: a run that fails to read can still be closed
if first_open and opened.kind == COMPARE_KIND:
    st.session_state[f"{P}.compare_run"] = label
    st.session_state[f"{P}.opened"] = label
if first_open and opened.kind == KIND:
    with shell.guard("Reading the saved run"):
        diag, top = diagnostics_from_artifact(opened)
        cfg = opened.config
        st.session_state[f"{P}.prompt"] = cfg.get("prompt", "")
        st.session_state[f"{P}.max_new"] = int(cfg.get("max_new_tokens", 32))
        st.session_state[f"{P}.seed"] = int(cfg.get("seed", 0))
        samplers.preset(P, cfg.get("sampler") or {})
        for k in ("alpha", "variant", "top_p", "min_p"):
            if k in cfg:
                st.session_state[f"{P}.cmp_{k}"] = cfg[k]
        made_with = {"max_new_tokens": int(cfg.get("max_new_tokens", 32)), "seed": int(cfg.get("seed", 0))}
        st.session_state[f"{P}.result"] = (diag, top, made_with)
        st.session_state[f"{P}.opened"] = label
        shell.forget_on_model_change(P, ["result"], model=cfg.get("model", ""))
        shell.switch_model(cfg.get("model", ""))

TABS = ["One generation", "Sampler comparison"]
tab_step, tab_compare = st.tabs(TABS, default=TABS[1] if opened is not None and opened.kind == COMPARE_KIND else None)

# The comparison tab first: it needs no model, so it shows even when loading the model fails.
with tab_compare:
    st.caption(f"The comparison harness (artifact kind `{COMPARE_KIND}`) runs every sampler on the same prompts "
               "and seeds and saves diversity and coherence figures; they are shown here.")
    arts = []
    with shell.guard("Listing comparisons"):
        arts = runs.runs_of_kind((COMPARE_KIND,))
    if not arts:
        st.info(f"No `{COMPARE_KIND}` artifact under `{shell.runs_root()}` yet: run the sampling comparison "
                "harness with its output in that folder.", icon=":material/info:")
    else:
        root = shell.runs_root()
        labels = [run_label(a, root) for a in arts]
        key = f"{P}.compare_run"
        shell.init_state(key, labels[0])
        if st.session_state[key] not in labels:
            st.session_state[key] = labels[0]
        choice = st.selectbox("Comparison run", labels, key=key)
        art = arts[labels.index(choice)]
        with shell.guard("Reading the comparison"):
            cfg = art.config
            st.caption(f"model `{cfg.get('model')}` · {cfg.get('n_prompts', len(cfg.get('prompts', [])))} prompts x "
                       f"{cfg.get('samples', '?')} samples · judge `{cfg.get('judge', cfg.get('model'))}`")
            figs = artifact_figures(art)
            order = sorted(figs, key=lambda n: ("divers" not in n and "coheren" not in n, n))
            for name in order:
                st.plotly_chart(figs[name], key=f"{P}.cmp.{name}")
            for path in html_figures(art):
                components.html(path.read_text(), height=560, scrolling=True)
            if not figs and not html_figures(art):
                st.warning(f"`{choice}` has no figures; its metrics are on the Runs page.")
            if isinstance(art.data.get("rows"), list) and art.data["rows"]:
                st.markdown(table_markdown(art.data["rows"]))  # the harness's own table: mean [95% CI]
            elif art.metrics:
                st.json(art.metrics, expanded=1)

with tab_step:
    h = shell.require_model()
    shell.forget_on_model_change(P, ["result"])  # its token ids are the model's
    shell.init_state(f"{P}.prompt", "Once upon a time")
    prompt = st.text_input("Prompt", key=f"{P}.prompt")
    c1, c2, c3 = st.columns([2, 2, 1])
    sampler = None
    with c1, shell.guard("Sampler"):
        st.markdown("**Generate with**")
        shell.init_state(f"{P}.top_h.temperature", 1.5)  # where truncation rules differ most
        sampler = samplers.sampler_widgets(P, default="top_h")
    with c2:
        st.markdown("**Compare at the same steps**")
        own_top_h = sampler is not None and sampler.name == "top_h"
        if own_top_h:
            st.caption(f"top-H: the generation's own alpha={sampler.alpha:g}, {sampler.variant}")
        else:
            shell.init_state(f"{P}.cmp_alpha", 0.4)
            st.number_input("top-H alpha", min_value=0.01, max_value=1.0, step=0.05, key=f"{P}.cmp_alpha")
            shell.init_state(f"{P}.cmp_variant", "paper")
            st.selectbox("top-H variant", VARIANTS, key=f"{P}.cmp_variant")
        shell.init_state(f"{P}.cmp_top_p", 0.9)
        top_p = st.number_input("top-p p", min_value=0.01, max_value=1.0, step=0.05, key=f"{P}.cmp_top_p")
        shell.init_state(f"{P}.cmp_min_p", 0.1)
        min_p = st.number_input("min-p p", min_value=0.0, max_value=1.0, step=0.05, key=f"{P}.cmp_min_p")
    with c3:
        shell.init_state(f"{P}.max_new", 32)
        max_new = st.number_input("Max new tokens", min_value=1, max_value=512, step=1, key=f"{P}.max_new")
        shell.init_state(f"{P}.seed", 0)
        seed = st.number_input("Seed", min_value=0, step=1, key=f"{P}.seed")

    if st.button("Run", type="primary", disabled=sampler is None or not prompt.strip(), key=f"{P}.run",
                 icon=":material/play_arrow:"):
        with shell.guard("The diagnostics"), st.spinner("Generating and measuring every step…"):
            extra = {} if own_top_h else {"alpha": st.session_state[f"{P}.cmp_alpha"],
                                          "variant": st.session_state[f"{P}.cmp_variant"]}
            diag, top, _ = diagnose_run(h, prompt, sampler, max_new_tokens=int(max_new), seed=int(seed),
                                        top_p=float(top_p), min_p=float(min_p), **extra)
            made_with = {"max_new_tokens": int(max_new), "seed": int(seed)}  # what Save writes, whatever the
            st.session_state[f"{P}.result"] = (diag, top, made_with)  # widgets say by then

    result = st.session_state.get(f"{P}.result")
    if result is not None:
        diag, top, made_with = result
        with shell.guard("Drawing the diagnostics"):
            st.markdown(f"**Completion** ({diag['steps']} steps, sampler `{(diag.get('sampler') or {}).get('name')}`, "
                        f"T={diag['temperature']:g}): `{diag.get('text', '')}`")
            st.plotly_chart(per_step_figure(diag), key=f"{P}.fig_steps")
            st.dataframe(diagnostics_summary(diag), hide_index=True, width="stretch")
            step = st.slider("Step", 0, diag["steps"] - 1, 0, key=f"{P}.step") if diag["steps"] > 1 else 0
            st.plotly_chart(step_cutoff_figure(diag, top, step, h.tokenizer), key=f"{P}.fig_cut")
        if st.button("Save as run", key=f"{P}.save", icon=":material/save:"):
            with shell.guard("Saving the run"):
                settings = {"model": h.spec, "max_new_tokens": made_with["max_new_tokens"], "seed": made_with["seed"]}
                path = runs.save_run("sampling", **diagnostics_artifact(diag, top, settings))
                st.success(f"Saved to `{path}`; it is listed on the Runs page.", icon=":material/check:")
