"""Experts: fTRI imaging of the experts a behavior selects, the tokens and prompts behind each expert,
switching experts off/on with side-by-side generations, and behavior vs k against random controls."""

from __future__ import annotations

import streamlit as st

import steerlab as sl
from dashboards.lib import runs, shell
from steerlab.behavior import classify
from steerlab.experts.artifact import EVALUATE_KIND as EVAL
from steerlab.experts.artifact import IMAGE_KIND as IMAGE
from steerlab.experts.artifact import image_payload, read_image, token_raster
from steerlab.experts.evaluate import default_ks, sweep_k
from steerlab.experts.figures import expert_raster, ftri_heatmap, rate_vs_k
from steerlab.experts.ftri import SCOPES, image_suite
from steerlab.experts.switching import forceable, off_masks, on_masks
from steerlab.organisms.evaluate import organism_safety_experts
from steerlab.suites import default_suite, list_suites, load_suite
from steerlab.viz.runs import run_label

P = "experts"
st.title("Experts")
st.caption(
    "Which routed experts fire for a behavior (fTRI: behavior prompts against control prompts of a probe "
    "suite), what selects them, and what happens when they are switched off or forced on (MoTE)."
)

STATE = ["image", "expert", "sw_result", "k_result"]  # made with one model

# -- reopened from the Runs page -------------------------------------------------------------------
opened = None
with shell.guard("Opening the saved run"):
    opened = runs.requested_run(P)
label = st.query_params.get("run")
if opened is not None and st.session_state.get(f"{P}.opened") != label:
    if opened.kind == IMAGE:
        view = read_image(opened.path)
        st.session_state[f"{P}.image"] = {k: view[k] for k in ("config", "metrics", "data", "tensors")}
    else:
        st.session_state[f"{P}.eval_run"] = label
    st.session_state[f"{P}.opened"] = label
    shell.forget_on_model_change(P, STATE, model=opened.config.get("model", ""))
    shell.switch_model(opened.config.get("model", ""))
if opened is not None:
    runs.close_run_button(label)

h = shell.require_model()
shell.forget_on_model_change(P, STATE)
if not h.adapter.is_moe:
    st.info(
        f"`{h.spec}` is a dense model ({h.adapter.family}): expert imaging needs an MoE model. Pick "
        "`organism:moe` (or another MoE model) in the sidebar.",
        icon=":material/info:",
    )
    shell.stop()
rule = h.adapter.layers[h.adapter.moe_layers[0]].rule

tab_image, tab_switch, tab_k = st.tabs(["Imaging", "Switch and regenerate", "Behavior vs k"])

# -- imaging -----------------------------------------------------------------------------------------
with tab_image:
    suites = list_suites()
    c1, c2, c3, c4 = st.columns([2, 1, 2, 1])
    preferred = default_suite(h)
    shell.init_state(f"{P}.suite", preferred if preferred in suites else suites[0])
    suite_name = c1.selectbox("Prompt suite", suites, key=f"{P}.suite")
    suite = load_suite(suite_name)
    shell.init_state(f"{P}.split", "train" if "train" in suite.splits else suite.splits[0])
    split = c2.selectbox("Split", suite.splits, key=f"{P}.split")
    shell.init_state(f"{P}.scope", ["decision"])
    scope = c3.multiselect(
        "Token scope",
        list(SCOPES),
        key=f"{P}.scope",
        help="prompt: every prompt token; decision: the last prompt token, whose prediction is "
        "the first assistant token; generated: the model's own greedy tokens",
    )
    shell.init_state(f"{P}.limit", 64)
    limit = c4.number_input("Prompts per set", 2, 5000, key=f"{P}.limit")
    st.caption(
        f"{suite.behavior!r} ({len(suite.prompts(suite.behavior, split))} prompts) against "
        f"{suite.control!r} ({len(suite.prompts(suite.control, split))}) from suite `{suite.name}` "
        f"{suite.version}, split `{split}`; p-values from 1,000 prompt-level permutations, BH-corrected."
    )
    if st.button("Image experts", type="primary", key=f"{P}.run", disabled=not scope):
        with shell.guard("Imaging"), st.spinner(f"Routing {2 * int(limit)} prompts through {h.spec}…"):
            res = image_suite(h, suite, split, scope, limit=int(limit), n_permutations=1000, by_token=True)
            behavior = suite.user_texts(suite.behavior, split)[: int(limit)]
            control = suite.user_texts(suite.control, split)[: int(limit)]
            raster = token_raster(h, behavior[0], **suite.chat_kwargs())
            st.session_state[f"{P}.image"] = image_payload(h, res, behavior, control, raster)
            st.session_state.pop(f"{P}.expert", None)

    view = st.session_state.get(f"{P}.image")
    if view is None:
        st.info("Run the imaging (or reopen an `experts_image` run from the Runs page).", icon=":material/hub:")
    else:
        cfg, data, t = view["config"], view["data"], view["tensors"]
        layers = cfg["layers"]
        st.markdown(
            f"**{cfg.get('suite')}** `{cfg.get('split')}` · scope {', '.join(cfg.get('scope', []))} · "
            f"{cfg.get('n_behavior')} vs {cfg.get('n_control')} prompts · model `{cfg.get('model')}`"
        )
        fig = ftri_heatmap(t["diff"], layers, q_values=t.get("q_value"))
        event = st.plotly_chart(fig, key=f"{P}.heatmap", on_select="rerun", selection_mode="points")
        points = (event or {}).get("selection", {}).get("points", []) if isinstance(event, dict) else []
        if not points and hasattr(event, "selection"):
            points = event.selection.get("points", [])
        if points:  # a click on the heatmap picks the expert
            pt = points[0]
            st.session_state[f"{P}.expert"] = f"{int(str(pt['y']).split()[-1])}.{int(pt['x'])}"
        ranking = data["ranking"]
        options = [f"{r['layer']}.{r['expert']}" for r in ranking]
        shell.init_state(f"{P}.expert", options[0])
        if st.session_state[f"{P}.expert"] not in options:
            st.session_state[f"{P}.expert"] = options[0]
        left, right = st.columns([3, 2])
        with left:
            st.markdown("**Ranked experts** (behavior minus control selection frequency)")
            st.dataframe(ranking[:20], hide_index=True, width="stretch", key=f"{P}.ranking")
        with right:
            chosen = st.selectbox("Expert (layer.expert; or click the heatmap)", options, key=f"{P}.expert")
            ex = data["examples"].get(chosen, {})
            row = ranking[options.index(chosen)]
            st.markdown(
                f"**Expert {chosen}**: selected for {row['freq_behavior']:.1%} of {cfg.get('behavior')} "
                f"tokens vs {row['freq_control']:.1%} of {cfg.get('control')} tokens (q = {row['q_value']:.3g})"
            )
            if ex.get("tokens"):
                st.markdown("Tokens that select it most: " + ", ".join(f"`{tok!r}` x{n}" for tok, n in ex["tokens"]))
            for lab, text, rate in ex.get("prompts", []):
                st.markdown(f"- *{lab}* ({rate:.0%} of scoped tokens): {text}")
        if "raster" in data:
            r = data["raster"]
            import torch

            hl = [(x["layer"], x["expert"]) for x in ranking[:10]]
            st.plotly_chart(
                expert_raster(
                    torch.tensor(r["experts"]),
                    r["tokens"],
                    r["layers"],
                    highlight=hl,
                    title=f"chosen expert per token: {r['prompt'][:80]!r}",
                ),
                key=f"{P}.raster",
            )
        if st.button("Save as run", key=f"{P}.save", icon=":material/save:"):
            with shell.guard("Saving the run"):
                path = runs.save_run("experts", **view)
                st.success(f"Saved `{path.name}`", icon=":material/check:")

# -- switch and regenerate ---------------------------------------------------------------------------
with tab_switch:
    view = st.session_state.get(f"{P}.image")
    ranking = view["data"]["ranking"] if view else []
    all_experts = [f"{i}.{e}" for i in h.adapter.moe_layers for e in range(rule.n_experts)]
    default = [f"{r['layer']}.{r['expert']}" for r in ranking[:3]]
    shell.init_state(f"{P}.sw_experts", default)
    if not st.session_state[f"{P}.sw_experts"] and default:
        st.session_state[f"{P}.sw_experts"] = default
    fill: dict[str, list[str]] = {"top 3 imaged": default} if default else {}
    trained = organism_safety_experts(h)
    if trained:
        fill["trained refusal experts (organism build record)"] = [f"{x}.{y}" for x, y in trained]
    with shell.guard("Listing evaluations"):
        for a in runs.runs_of_kind((EVAL,)):
            if a.config.get("model") == h.spec and a.data.get("experts"):
                fill[f"chosen by {run_label(a, shell.runs_root())}"] = [f"{x}.{y}" for x, y in a.data["experts"]]
    if fill:
        fc1, fc2 = st.columns([3, 1])
        src = fc1.selectbox("Fill the set from", list(fill), key=f"{P}.sw_fill")
        if fc2.button("Fill", key=f"{P}.sw_fill_btn"):
            st.session_state[f"{P}.sw_experts"] = fill[src]
    experts = st.multiselect(
        "Experts (layer.expert)", all_experts, key=f"{P}.sw_experts", help="Defaults to the top imaged experts"
    )
    shell.init_state(f"{P}.sw_mode", "off")
    mode = st.radio(
        "Switch",
        ["off", "on"],
        horizontal=True,
        key=f"{P}.sw_mode",
        help="off: removed before top-k (the next expert takes the slot); on: forced into the top-k "
        f"(at most top_k={rule.top_k} per layer)",
    )
    suite = load_suite(st.session_state.get(f"{P}.suite", preferred))
    shell.init_state(
        f"{P}.sw_prompts",
        "\n".join(
            suite.user_texts(
                suite.behavior if mode == "off" else suite.control, "test" if "test" in suite.splits else None
            )[:3]
        ),
    )
    prompts_text = st.text_area("Prompts (one per line)", key=f"{P}.sw_prompts", height=110)
    shell.init_state(f"{P}.sw_tokens", 32)
    max_new = st.number_input("Max new tokens", 1, 256, key=f"{P}.sw_tokens")
    if st.button("Generate side by side", type="primary", key=f"{P}.sw_run", disabled=not experts):
        with shell.guard("Generating"), st.spinner("Generating with and without the switch…"):
            pairs = [(int(x.split(".")[0]), int(x.split(".")[1])) for x in experts]
            masks = off_masks(pairs) if mode == "off" else on_masks(pairs, rule.top_k)
            prompts = [p for p in prompts_text.splitlines() if p.strip()]
            kw = dict(max_new_tokens=int(max_new), **suite.chat_kwargs())
            base, switched = sl.generate(h, prompts, **kw), sl.generate(h, prompts, masks, **kw)
            labels = [
                [v.label for v in classify(out.texts, prompts, reference=h, chat=suite.chat)]
                for out in (base, switched)
            ]
            st.session_state[f"{P}.sw_result"] = (
                prompts,
                base.texts,
                switched.texts,
                labels,
                mode,
                forceable(pairs, rule.top_k) if mode == "on" else pairs,
            )
    res = st.session_state.get(f"{P}.sw_result")
    if res:
        prompts, base_t, sw_t, (base_l, sw_l), used_mode, used = res
        st.caption(
            f"experts {', '.join(f'{a}.{b}' for a, b in used)} switched {used_mode}; labels from the shared "
            "behavior detector (refusal / compliance / broken)"
        )
        for p, a, b, la, lb in zip(prompts, base_t, sw_t, base_l, sw_l, strict=True):
            st.markdown(f"**{p}**")
            c1, c2 = st.columns(2)
            c1.caption(f"base · {la}")
            c1.write(a)
            c2.caption(f"experts {used_mode} · {lb}")
            c2.write(b)

# -- behavior vs k -----------------------------------------------------------------------------------
with tab_k:
    arts = []
    with shell.guard("Listing evaluations"):
        arts = runs.runs_of_kind((EVAL,))
    if arts:
        root = shell.runs_root()
        labels_ = [run_label(a, root) for a in arts]
        shell.init_state(f"{P}.eval_run", labels_[0])
        if st.session_state[f"{P}.eval_run"] not in labels_:
            st.session_state[f"{P}.eval_run"] = labels_[0]
        choice = st.selectbox("Evaluation run", labels_, key=f"{P}.eval_run")
        art = arts[labels_.index(choice)]
        m = art.metrics
        st.markdown(
            f"k = **{m.get('k')}** ({m.get('k_source')}) · refusal {m.get('refusal_base')} → "
            f"**{m.get('refusal_off')}** (random {m.get('refusal_random_mean')}) · compliance "
            f"{m.get('compliance_base')} → **{m.get('compliance_off')}** (random "
            f"{m.get('compliance_random_mean')}) · perplexity {m.get('ppl_base')} → {m.get('ppl_off')}"
        )
        if art.data.get("sweep"):
            st.plotly_chart(rate_vs_k(art.data["sweep"]), key=f"{P}.eval_fig")
        with st.expander("All metrics"):
            st.json(m)
    else:
        st.info(
            "No `experts_evaluate` run yet: `steerlab experts evaluate MODEL --out runs/NAME`, or run a quick "
            "sweep below.",
            icon=":material/info:",
        )
    st.markdown("**Quick sweep** on the imaged ranking (few prompts and controls, for a first look)")
    c1, c2, c3 = st.columns(3)
    shell.init_state(f"{P}.k_limit", 16)
    k_limit = c1.number_input("Behavior prompts", 2, 500, key=f"{P}.k_limit")
    shell.init_state(f"{P}.k_controls", 3)
    k_controls = c2.number_input("Random sets per k", 1, 50, key=f"{P}.k_controls")
    shell.init_state(f"{P}.k_tokens", 24)
    k_tokens = c3.number_input("Max new tokens", 1, 128, key=f"{P}.k_tokens")
    view = st.session_state.get(f"{P}.image")
    if st.button(
        "Run sweep", key=f"{P}.k_run", disabled=view is None, help=None if view else "Image experts first (Imaging tab)"
    ):
        with shell.guard("Sweeping k"), st.spinner("Switching the top-k and random experts off for each k…"):
            suite = load_suite(view["config"].get("suite", "refusal"))
            ranking = [(r["layer"], r["expert"]) for r in view["data"]["ranking"]]
            harmful = suite.user_texts(suite.behavior, "train")[: int(k_limit)]
            base, rows = sweep_k(
                h,
                harmful,
                ranking,
                default_ks(h),
                n_controls=int(k_controls),
                max_new_tokens=int(k_tokens),
                progress=False,
                **suite.chat_kwargs(),
            )
            st.session_state[f"{P}.k_result"] = (base, rows)
    if st.session_state.get(f"{P}.k_result"):
        base, rows = st.session_state[f"{P}.k_result"]
        st.plotly_chart(rate_vs_k(rows, base=base), key=f"{P}.k_fig")
