"""Generate: side-by-side generations without and with a stack of interventions."""

from __future__ import annotations

import streamlit as st

from dashboards.lib import runs, samplers, shell
from dashboards.lib.interventions import intervention_stack
from steerlab.steering.artifact import comparison_payload, read_comparison
from steerlab.steering.compare import Comparison, compare_generations, first_divergence
from steerlab.steering.figures import token_prob_figure
from steerlab.viz.tokens import tokens_html

P = "generate"
st.title("Generate")
st.caption("The same prompts, sampler and seed, without and with interventions. "
           "Tokens are shaded by how unlikely they were; hover one for its probability and the top alternatives.")

# -- a saved run, reopened from the Runs page (preset the widgets once) -----------------------------
opened = None
with shell.guard("Opening the saved run"):
    opened = runs.requested_run(P)
if opened is not None:
    label = st.query_params["run"]
    runs.close_run_button(label)  # drawn first: a run that fails to read can still be closed
    if st.session_state.get(f"{P}.opened") != label:
        with shell.guard("Reading the saved run"):
            cmp = read_comparison(opened)
            base = next(iter(cmp.settings.values()))
            st.session_state[f"{P}.prompts"] = "\n".join(cmp.prompts)
            st.session_state[f"{P}.max_new"] = int(base.get("max_new_tokens", 32))
            st.session_state[f"{P}.seed"] = int(base.get("seed", 0))
            st.session_state[f"{P}.chat"] = bool(base.get("chat", False))
            samplers.preset(P, base.get("sampler", {}))
            st.session_state[f"{P}.iv_source"] = "Saved run" if cmp.interventions is not None else "Build here"
            st.session_state[f"{P}.iv_run"] = label
            run_model = cmp.settings[cmp.labels[0]].get("model", "")
            st.session_state[f"{P}.result"] = cmp
            st.session_state[f"{P}.opened"] = label
            shell.forget_on_model_change(P, ["result"], model=run_model)
            shell.switch_model(run_model)  # regenerate with the run's model

h = shell.require_model()
shell.forget_on_model_change(P, ["result"])  # made with another model: cleared, with a caption

# -- settings -----------------------------------------------------------------------------------
shell.init_state(f"{P}.prompts", "Once upon a time\nThe little dog")
prompts_text = st.text_area("Prompts, one per line", key=f"{P}.prompts", height=90)
c1, c2, c3, c4 = st.columns([2, 1, 1, 1])
sampler = None
with c1, shell.guard("Sampler"):
    sampler = samplers.sampler_widgets(P)
shell.init_state(f"{P}.max_new", 32)
max_new = c2.number_input("Max new tokens", min_value=1, max_value=512, step=1, key=f"{P}.max_new")
shell.init_state(f"{P}.seed", 0)
seed = c3.number_input("Seed", min_value=0, step=1, key=f"{P}.seed")
shell.init_state(f"{P}.chat", False)
chat = c4.checkbox("Chat template", key=f"{P}.chat", help="Wrap each prompt in the model's chat template.",
                   disabled=not getattr(h.tokenizer, "chat_template", None))

prompts = [p for p in prompts_text.splitlines() if p.strip()]
stack = None
with st.expander("Interventions", expanded=True), shell.guard("The intervention stack"):
    stack = intervention_stack(h, P, prompts)

ready = sampler is not None and stack is not None and bool(prompts)
if not prompts:
    st.warning("Type at least one prompt.")
if st.button("Generate", type="primary", disabled=not ready, key=f"{P}.run", icon=":material/play_arrow:"):
    with shell.guard("Generation"), st.spinner("Generating…"):
        st.session_state[f"{P}.result"] = compare_generations(
            h, prompts, stack, sampler=sampler, max_new_tokens=int(max_new), seed=int(seed), chat=chat)

# -- results ------------------------------------------------------------------------------------
cmp: Comparison | None = st.session_state.get(f"{P}.result")
if cmp is not None:
    st.subheader("Completions")
    for i, prompt in enumerate(cmp.prompts):
        st.markdown(f"**Prompt {i}:** `{prompt}`")
        cols = st.columns(len(cmp.labels))
        for col, label in zip(cols, cmp.labels, strict=True):
            steps = cmp.steps[label][i]
            mean_p = sum(s.prob for s in steps) / max(1, len(steps))
            col.caption(f"{label} · {len(steps)} tokens · mean p {mean_p:.2f}")
            col.markdown(tokens_html(steps), unsafe_allow_html=True)
        if len(cmp.labels) == 2:
            d = first_divergence(cmp.steps[cmp.labels[0]][i], cmp.steps[cmp.labels[1]][i])
            st.caption("identical completions" if d is None else f"first different token: {d}")
    which = 0
    if len(cmp.prompts) > 1:
        which = st.selectbox("Prompt for the probability plot", range(len(cmp.prompts)), key=f"{P}.plot_prompt",
                             format_func=lambda i: f"{i}: {cmp.prompts[i][:60]}")
    st.plotly_chart(token_prob_figure({lab: cmp.steps[lab][which] for lab in cmp.labels}), key=f"{P}.fig")
    with st.expander("Per-token table"):
        st.dataframe(
            [{"run": lab, "step": s.step, "token": repr(s.piece), "p": round(s.prob, 4),
              "sampler p": round(s.sampler_prob, 4),
              "top alternatives": ", ".join(f"{a!r} {q:.2f}" for a, q in s.alternatives)}
             for lab in cmp.labels for s in cmp.steps[lab][which]],
            hide_index=True, width="stretch",
        )
    if st.button("Save as run", key=f"{P}.save", icon=":material/save:"):
        with shell.guard("Saving the run"):
            path = runs.save_run("generate", **comparison_payload(cmp))
            st.success(f"Saved to `{path}`; it is listed on the Runs page.", icon=":material/check:")
