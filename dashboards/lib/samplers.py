"""Sampler choice as widgets, generated from the sampler registry (new samplers appear by themselves)."""

from __future__ import annotations

import inspect
import typing
from typing import Any, Literal

import streamlit as st

from dashboards.lib.shell import init_state
from steerlab.sampling import Sampler, available_samplers, make_sampler


def _choices(name: str) -> dict[str, tuple[Any, ...]]:
    """Parameters annotated ``Literal[...]`` (offered as a select box)."""
    init = type(make_sampler(name)).__init__
    try:
        hints = typing.get_type_hints(init)
    except Exception:  # noqa: BLE001  (unresolvable annotations: fall back to free input)
        return {}
    return {p: typing.get_args(t) for p, t in hints.items()
            if p in inspect.signature(init).parameters and typing.get_origin(t) is Literal}


def sampler_widgets(prefix: str, default: str = "greedy", container: Any = None) -> Sampler:
    """A sampler select box plus one input per parameter of the chosen sampler.

    Widget keys are ``{prefix}.sampler`` and ``{prefix}.{sampler}.{param}``, so a page can preset
    them (e.g. when reopening a saved run). Bad values raise ``SpecError`` with the reason.
    """
    c = container or st
    names = available_samplers()
    key = f"{prefix}.sampler"
    init_state(key, default if default in names else names[0])
    if st.session_state[key] not in names:
        st.session_state[key] = names[0]
    name = c.selectbox("Sampler", names, key=key, help="Temperature first, then the rule's truncation.")
    choices = _choices(name)
    params: dict[str, Any] = {}
    for p, v in make_sampler(name).params().items():
        k = f"{prefix}.{name}.{p}"
        init_state(k, v)
        if p in choices:
            params[p] = c.selectbox(p, choices[p], key=k)
        elif isinstance(v, bool):
            params[p] = c.checkbox(p, key=k)
        elif isinstance(v, int):
            params[p] = int(c.number_input(p, step=1, key=k))
        elif isinstance(v, float):
            params[p] = float(c.number_input(p, step=0.05, format="%.3f", key=k))
        else:
            params[p] = c.text_input(p, key=k)
    return make_sampler(name, **params)


def preset(prefix: str, config: dict[str, Any]) -> None:
    """Set the widgets of :func:`sampler_widgets` to a saved ``Sampler.config()``."""
    name = config.get("name")
    if name not in available_samplers():
        return
    st.session_state[f"{prefix}.sampler"] = name
    defaults = make_sampler(name).params()
    for p, v in (config.get("params") or {}).items():
        if p in defaults:  # keep the widget's type (JSON may have turned 1.0 into 1)
            d = defaults[p]
            st.session_state[f"{prefix}.{name}.{p}"] = type(d)(v) if isinstance(d, (int, float)) else v
