"""The intervention stack of a page: from a spec file, from a saved run, or built in the page."""

from __future__ import annotations

from typing import Any

import streamlit as st

from dashboards.lib.shell import init_state, runs_root
from steerlab.artifacts import list_runs
from steerlab.errors import SpecError, SteerlabError
from steerlab.interventions import AddVector, ExpertMask, Intervention, InterventionSet, LastK, ProjectOut, ScaleUnits
from steerlab.models.handle import ModelHandle
from steerlab.steering import directions
from steerlab.steering.artifact import INTERVENTIONS_FILE, load_interventions
from steerlab.steering.directions import embedding_direction, random_direction
from steerlab.steering.vectors import load_directions
from steerlab.viz.runs import run_label

SOURCES = ("Build here", "Spec file", "Saved run")
KINDS = {
    "add_vector": "Add a vector (steering)",
    "project_out": "Project out a direction (ablation)",
    "scale_units": "Scale hidden units",
    "expert_mask": "Switch experts off",
}
POSITIONS = {"all": "all", "prompt": "prompt", "generated": "generated", "last prompt token": LastK(last=1)}
VECTOR_SOURCES = ("Token embeddings: A − B", "Random direction", "Saved directions")


@st.cache_data(show_spinner=False, max_entries=64)
def activation_norm(_h: ModelHandle, spec: str, site: str, prompts: tuple[str, ...]) -> float:
    """Mean L2 norm of the activation at ``site`` over the prompts' real tokens (a scale for vectors)."""
    return directions.activation_norm(_h, site, list(prompts))


def _vector_sites(h: ModelHandle) -> list[str]:
    return [s for s in h.sites if s.split(".")[-1] in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")]


def _describe(iv: Intervention) -> dict[str, Any]:
    """A row of the stack table: every type describes itself (registry types included)."""
    pos = getattr(iv, "positions", "all")
    pos = f"last {pos.last}" if isinstance(pos, LastK) else str(pos)
    return {"type": iv.type, "name": iv.name or "", "where": iv.where(), "positions": pos, "detail": iv.describe()}


def stack_table(ivs: InterventionSet) -> list[dict[str, Any]]:
    """One row per intervention, for display."""
    return [{"#": i, **_describe(iv)} for i, iv in enumerate(ivs)]


def _builder(h: ModelHandle, prefix: str, prompts: list[str]) -> None:
    """The new intervention's widgets, then Add / Remove last / Clear. A half-filled new intervention is an
    error message here, and leaves the stack already built (and its buttons) as they were."""
    stack: list[Any] = st.session_state[f"{prefix}.stack"]
    new: Any = None
    try:
        new = _new_intervention(h, prefix, prompts)
    except (SteerlabError, OSError) as e:
        st.error(f"New intervention: {e}", icon=":material/error:")
    b1, b2, b3, _ = st.columns([1, 1, 1, 3])
    if b1.button("Add to stack", key=f"{prefix}.iv_add", disabled=new is None, icon=":material/add:"):
        if not stack:
            st.session_state[f"{prefix}.stack_model"] = h.spec
        stack.append(new)
        st.rerun()
    if b2.button("Remove last", key=f"{prefix}.iv_pop", disabled=not stack):
        stack.pop()
        st.rerun()
    if b3.button("Clear", key=f"{prefix}.iv_clear", disabled=not stack):
        stack.clear()
        st.rerun()


def _new_intervention(h: ModelHandle, prefix: str, prompts: list[str]) -> Intervention | None:
    """The intervention the builder's widgets describe (None until it is complete)."""
    kinds = [k for k in KINDS if k != "expert_mask" or h.adapter.is_moe]
    kind = st.selectbox("Intervention", kinds, format_func=KINDS.get, key=f"{prefix}.iv_kind")
    new: Any = None
    c1, c2, c3 = st.columns(3)
    if kind == "expert_mask":
        moe = h.adapter.moe_info()
        layer = c1.selectbox("MoE layer", moe["layers"], key=f"{prefix}.em_layer")
        off = c2.multiselect("Experts off", list(range(moe["n_experts"])), key=f"{prefix}.em_off")
        renorm = c3.checkbox("Renormalize kept weights", key=f"{prefix}.em_renorm")
        if off:
            new = ExpertMask(layer=int(layer), off=[int(e) for e in off], renormalize=renorm,
                             name=f"experts {off} off @ L{layer}")
    else:
        sites = _vector_sites(h)
        mid = f"blocks.{h.adapter.n_layers // 2}.resid_post"
        site = c1.selectbox("Site", sites, index=sites.index(mid) if mid in sites else 0, key=f"{prefix}.iv_site")
        pos_label = c2.selectbox("Positions", list(POSITIONS), key=f"{prefix}.iv_pos")
        positions = POSITIONS[pos_label]
        if kind == "scale_units":
            units_text = c3.text_input("Units (comma separated)", "0, 1", key=f"{prefix}.su_units")
            scale = st.number_input("Scale", value=0.0, step=0.5, key=f"{prefix}.su_scale")
            try:
                units = [int(u) for u in units_text.replace(" ", "").split(",") if u]
            except ValueError as e:
                raise SpecError(f"units {units_text!r} must be comma-separated integers") from e
            new = ScaleUnits(site=site, positions=positions, units=units, scale=scale,
                             name=f"units {units} x {scale:g}")
        else:
            source = c3.selectbox("Direction", VECTOR_SOURCES, key=f"{prefix}.iv_src")
            d1, d2, d3 = st.columns(3)
            if source == VECTOR_SOURCES[0]:
                plus = d1.text_input("A", " happy", key=f"{prefix}.iv_plus")
                minus = d2.text_input("B (optional)", " sad", key=f"{prefix}.iv_minus")
                vec = embedding_direction(h, plus, minus)
                label = f"embed({plus.strip()!r})" + (f" - embed({minus.strip()!r})" if minus else "")
            elif source == VECTOR_SOURCES[1]:
                seed = d1.number_input("Seed", value=0, step=1, key=f"{prefix}.iv_seed")
                vec = random_direction(h.d_model, seed)
                label = f"random(seed={seed})"
            else:  # saved by `steerlab steer extract` or the Steer page: unit vector of the chosen site's direction
                name = d1.text_input("Name, file or folder", key=f"{prefix}.iv_saved").strip()
                if not name:
                    raise SpecError("give the name or path of saved directions (steerlab steer extract --name NAME)")
                saved = load_directions(name)
                at = site if site in saved.sites else saved.sites[0]
                vec = saved.unit(at)
                label = f"{name}[{at}]"
            if kind == "add_vector":
                scale = d3.number_input("Scale (x unit vector)", value=4.0, step=1.0, key=f"{prefix}.iv_scale")
                if prompts:
                    norm = activation_norm(h, f"{h.spec}@{h.device}", site, tuple(prompts[:8]))
                    d3.caption(f"mean ‖activation‖ at this site on the prompts: {norm:.3g}")
                new = AddVector(site=site, positions=positions, vector=vec, scale=scale, name=f"+{scale:g} {label}")
            else:
                new = ProjectOut(site=site, positions=positions, direction=vec, name=f"ablate {label}")
    return new


def intervention_stack(h: ModelHandle, prefix: str, prompts: list[str] | None = None) -> InterventionSet:
    """Widgets choosing the intervention stack; returns it (raises ``SteerlabError`` if it is bad).

    Keys: ``{prefix}.iv_source`` (one of :data:`SOURCES`), ``{prefix}.iv_path`` (spec file),
    ``{prefix}.iv_run`` (saved run), ``{prefix}.stack`` (the list built in the page). ``prompts``
    (optional) are used to show the typical activation norm at the chosen site.
    """
    st.session_state.setdefault(f"{prefix}.stack", [])
    init_state(f"{prefix}.iv_source", SOURCES[0])
    source = st.radio("Interventions from", SOURCES, horizontal=True, key=f"{prefix}.iv_source")
    if source == "Spec file":
        init_state(f"{prefix}.iv_path", "")
        path = st.text_input("Intervention spec file (JSON, as written by InterventionSet.save)",
                             key=f"{prefix}.iv_path", placeholder="steer.json").strip()
        ivs = InterventionSet.load(path) if path else InterventionSet([])
    elif source == "Saved run":
        root = runs_root()
        arts = [a for a in list_runs(root) if (a.path / INTERVENTIONS_FILE).exists()]
        if not arts:
            st.caption(f"No saved run under `{root}` carries an intervention set ({INTERVENTIONS_FILE}).")
            return InterventionSet([])
        labels = [run_label(a, root) for a in arts]
        key = f"{prefix}.iv_run"
        init_state(key, labels[0])
        if st.session_state[key] not in labels:
            st.session_state[key] = labels[0]
        choice = st.selectbox("Saved run", labels, key=key)
        ivs = load_interventions(arts[labels.index(choice)].path)
    else:
        _builder(h, prefix, prompts or [])
        ivs = InterventionSet(list(st.session_state[f"{prefix}.stack"]))
        built_on = st.session_state.get(f"{prefix}.stack_model")
        if len(ivs) and built_on != h.spec:
            st.warning(f"This stack was built on `{built_on}`; its vectors come from that model's embeddings or "
                       f"activations, and are applied to `{h.spec}` as they are. Clear it to start over.",
                       icon=":material/warning:")
    if len(ivs):
        st.dataframe(stack_table(ivs), hide_index=True, width="stretch")
    else:
        st.caption("The stack is empty: only the baseline will be generated.")
    return ivs
