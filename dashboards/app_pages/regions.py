"""Regions: per-language perplexity when the core region, its bottom and random controls are zeroed; the
language-overlap heatmap; where the core lives (layer x matrix); and live: pick a region or a single weight,
perturb it, and generate side by side with the unmodified model."""

from __future__ import annotations

import datetime as _dt

import pandas as pd
import streamlit as st

import steerlab as sl
from dashboards.lib import runs, shell
from steerlab.artifacts import read_artifact
from steerlab.interventions.regions import RegionEdit, model_signature
from steerlab.regions.artifact import (
    DIMS_KIND,
    FIND_KIND,
    FREEZE_KIND,
    IMPORTANCE_KIND,
    PERTURB_KIND,
    importance_from,
    write_importance,
)
from steerlab.regions.corpus import languages
from steerlab.regions.figures import freeze_curves, layer_map, overlap_heatmap, ratio_bars, single_weight_sweep
from steerlab.regions.importance import score_importance
from steerlab.regions.select import SCOPES, bottom_region, core_region, monolingual_region, random_region
from steerlab.viz.runs import run_label

P = "regions"
st.title("Regions")
st.caption(
    "Linguistic regions (Zhang et al. 2024): parameters scored by |θ · accumulated gradient| per language; the "
    "core region is the top fraction of every weight matrix. Zeroing it is compared with the bottom region and "
    "random regions of the same per-matrix counts."
)

opened = None
with shell.guard("Opening the saved run"):
    opened = runs.requested_run(P)
label = st.query_params.get("run")
if opened is not None and st.session_state.get(f"{P}.opened") != label:
    st.session_state[f"{P}.{'imp_run' if opened.kind == IMPORTANCE_KIND else 'run'}"] = label
    st.session_state[f"{P}.opened"] = label
    if opened.kind == IMPORTANCE_KIND:  # scores belong to one model: perturb that one
        shell.switch_model(opened.config.get("model", ""))
if opened is not None:
    runs.close_run_button(label)

TABS = ["Perturbation", "Perturb and generate"]
tab_runs, tab_live = st.tabs(TABS, default=TABS[1] if opened is not None and opened.kind == IMPORTANCE_KIND else None)

with tab_runs:
    arts = []
    with shell.guard("Listing regions runs"):
        arts = runs.runs_of_kind((PERTURB_KIND, FIND_KIND, DIMS_KIND, FREEZE_KIND))
    if not arts:
        st.info(
            f"No `{PERTURB_KIND}` artifact under `{shell.runs_root()}` yet: run `steerlab regions score MODEL --out "
            "DIR` then `steerlab regions perturb DIR --out DIR2` with DIR2 in that folder.",
            icon=":material/info:",
        )
    else:
        root = shell.runs_root()
        labels = [run_label(a, root) for a in arts]
        key = f"{P}.run"
        shell.init_state(key, labels[0])
        if st.session_state[key] not in labels:
            st.session_state[key] = labels[0]
        choice = st.selectbox("Regions run", labels, key=key)
        art = arts[labels.index(choice)]
        with shell.guard("Reading the run"):
            d = art.data
            if art.kind == PERTURB_KIND:
                st.caption(f"model `{d.get('model')}` · `{d.get('command', '')}`")
                rows = d.get("full_rows") or d.get("rows", [])
                table = pd.DataFrame(
                    [{"region": r["name"], "kind": r["kind"], "scope": r["scope"], "entries": r["size"],
                      "median ppl ratio": r["median_ratio"]} for r in rows]
                )  # fmt: skip
                st.dataframe(table, hide_index=True)
                for scope in dict.fromkeys(r["scope"] for r in rows):
                    st.plotly_chart(ratio_bars(rows, d["languages"], scope), key=f"{P}.bars.{scope}")
                ov = d.get("overlaps", {})
            elif art.kind == FREEZE_KIND:
                st.caption(f"model `{d.get('model')}` · trained on `{d['train_language']}` · `{d.get('command', '')}`")
                st.json(d["summary"], expanded=2)
                st.plotly_chart(freeze_curves(d["curves"], d["train_language"]), key=f"{P}.freeze")
                ov = {}
            elif art.kind == DIMS_KIND:
                st.caption(f"model `{d.get('model')}` · `{d.get('command', '')}`")
                st.json(d["summary"], expanded=1)
                cands = pd.DataFrame(
                    [{"weight": f"{c['param']}[{c['index']}]", "row": c["row"], "col": c["col"],
                      "on massive dim": c["on_massive_dim"], "min ppl ratio": c["min_ratio"]}
                     for c in d["candidates"]]
                )  # fmt: skip
                st.dataframe(cands, hide_index=True)
                st.plotly_chart(single_weight_sweep(d["candidates"], d["random_max_ratios"]), key=f"{P}.dims")
                st.dataframe(pd.DataFrame(d["massive"]), hide_index=True)
                ov = {}
            else:
                st.caption(f"region files: {', '.join(f for f in art.files if f.endswith('.safetensors'))}")
                sizes = [{"region": k, "entries": v} for k, v in d["sizes"].items()]
                st.dataframe(pd.DataFrame(sizes), hide_index=True)
                ov = {"languages": d["languages"], "jaccard": d["overlaps"]}
            if ov.get("jaccard"):
                st.plotly_chart(overlap_heatmap(ov["languages"], ov["jaccard"]), key=f"{P}.overlap")
            if d.get("map"):
                st.plotly_chart(layer_map(d["map"]), key=f"{P}.map")

with tab_live:
    h = shell.require_model()
    shell.forget_on_model_change(P, ["result"])
    sig = model_signature(h)
    imps = []
    with shell.guard("Listing importance runs"):
        imps = [a for a in runs.runs_of_kind((IMPORTANCE_KIND,)) if a.config.get("signature") == sig]
    with st.expander("Score importance on this model", expanded=not imps):
        c1, c2, c3 = st.columns([3, 1, 1])
        shell.init_state(f"{P}.langs", ["eng", "deu"])
        langs = c1.multiselect("Languages", list(languages()), key=f"{P}.langs")
        shell.init_state(f"{P}.budget", 256)
        budget = c2.number_input("Tokens per language", min_value=16, max_value=100_000, step=64, key=f"{P}.budget")
        c3.write("")
        if c3.button("Score", key=f"{P}.score", disabled=not langs, icon=":material/calculate:"):
            with shell.guard("Scoring"), st.spinner("Accumulating gradients per language…"):
                imp = score_importance(h, langs, token_budget=int(budget), keep=0.05, progress=False)
                stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")[:-3]
                path = write_importance(shell.runs_root() / f"regions-importance-{stamp}", imp)
                st.session_state[f"{P}.imp_run"] = run_label(read_artifact(path), shell.runs_root())
                st.rerun()
    if not imps:
        st.info(f"No importance run for `{h.spec}` yet: score one above.", icon=":material/info:")
        shell.stop()
    root = shell.runs_root()
    labels = [run_label(a, root) for a in imps]
    key = f"{P}.imp_run"
    shell.init_state(key, labels[0])
    if st.session_state[key] not in labels:
        st.session_state[key] = labels[0]
    choice = st.selectbox("Importance run", labels, key=key)
    imp = importance_from(imps[labels.index(choice)])
    c1, c2, c3, c4 = st.columns(4)
    shell.init_state(f"{P}.region", "core")
    region_kind = c1.selectbox("Region", ["core", "bottom", "random", "monolingual", "single weight"],
                               key=f"{P}.region")  # fmt: skip
    shell.init_state(f"{P}.fraction", min(0.01, imp.keep))
    if st.session_state[f"{P}.fraction"] > imp.keep:  # the widget would reset it to its minimum, silently
        st.session_state[f"{P}.fraction"] = min(0.01, imp.keep)
        st.caption(f"Fraction set to {min(0.01, imp.keep):g}: this importance run keeps the top {imp.keep:g} of "
                   "each matrix, so no region can be larger.")
    fraction = c2.number_input("Fraction per matrix", min_value=0.0001, max_value=float(imp.keep), step=0.005,
                               format="%.4f", key=f"{P}.fraction")  # fmt: skip
    shell.init_state(f"{P}.scope", "layers")
    scope = c3.selectbox("Scope", SCOPES, key=f"{P}.scope")
    shell.init_state(f"{P}.op", "zero")
    op = c4.selectbox("Edit", ["zero", "scale", "noise", "set"], key=f"{P}.op")
    c5, c6, c7 = st.columns(3)
    shell.init_state(f"{P}.value", 0.0)
    value = c5.number_input("Value (scale, noise std, set)", step=1.0, key=f"{P}.value")
    shell.init_state(f"{P}.seed", 0)
    seed = c6.number_input("Seed (random region, noise)", min_value=0, step=1, key=f"{P}.seed")
    shell.init_state(f"{P}.lang", imp.languages[0])
    lang = c7.selectbox("Language (monolingual)", imp.languages, key=f"{P}.lang")
    param, index = None, 0
    if region_kind == "single weight":
        c8, c9 = st.columns([3, 1])
        names = list(imp.top)
        shell.init_state(f"{P}.param", names[0])
        param = c8.selectbox("Parameter", names, key=f"{P}.param")
        shell.init_state(f"{P}.index", int(imp.top[param][0]))
        index = c9.number_input("Flat index (default: its most important)", min_value=0, step=1, key=f"{P}.index")
    shell.init_state(f"{P}.prompt", "Once upon a time")
    prompt = st.text_input("Prompt", key=f"{P}.prompt")
    shell.init_state(f"{P}.max_new", 24)
    max_new = st.number_input("Max new tokens", min_value=1, max_value=256, key=f"{P}.max_new")
    if st.button("Perturb and generate", type="primary", key=f"{P}.go", disabled=not prompt.strip(),
                 icon=":material/play_arrow:"):  # fmt: skip
        with shell.guard("Perturbing"), st.spinner("Generating with and without the edit…"):
            if region_kind == "single weight":
                edit = RegionEdit(params=[param], counts=[1], indices=[int(index)], op=op, value=value, seed=int(seed),
                                  signature=sig, name=f"{param}[{int(index)}]")  # fmt: skip
            else:
                make = {"core": lambda: core_region(imp, fraction, scope),
                        "bottom": lambda: bottom_region(imp, fraction, scope),
                        "random": lambda: random_region(imp, fraction, int(seed), scope),
                        "monolingual": lambda: monolingual_region(imp, lang, fraction, scope)}  # fmt: skip
                edit = make[region_kind]().edit(op, value, int(seed))
            kw = {"max_new_tokens": int(max_new), "sampler": "greedy"}
            plain = sl.generate(h, [prompt], **kw).texts[0]
            edited = sl.generate(h, [prompt], interventions=[edit], **kw).texts[0]
            st.session_state[f"{P}.result"] = (edit.describe(), prompt, plain, edited)
    if f"{P}.result" in st.session_state:
        what, made_on, plain, edited = st.session_state[f"{P}.result"]
        a, b = st.columns(2)
        a.markdown(f"**unmodified** · {made_on}")
        a.code(plain, language=None, wrap_lines=True)
        b.markdown(f"**{what}**")
        b.code(edited, language=None, wrap_lines=True)

