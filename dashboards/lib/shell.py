"""The app shell: settings, the model picker, cached model loading, the status line, error display.

Pages call :func:`model_handle` when (and only when) they need the model, and wrap user actions
in :func:`guard`, which turns errors into ``st.error`` messages instead of stack traces.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import streamlit as st

from steerlab.errors import SteerlabError
from steerlab.viz.model import status_line

ENV_MODEL = "STEERLAB_DASHBOARD_MODEL"  # set by `steerlab dashboard --model`
ENV_RUNS = "STEERLAB_RUNS"  # set by `steerlab dashboard --runs`
OTHER = "Other: local folder or hub id…"
DTYPES = ("auto", "float32", "bfloat16", "float16")

log = logging.getLogger("steerlab.dashboard")


# -- settings -------------------------------------------------------------------------------------
def runs_root() -> Path:
    """Where artifacts are listed and saved: ``$STEERLAB_RUNS``, else ``./runs``."""
    return Path(os.environ.get(ENV_RUNS) or "runs").expanduser().resolve()


def save_upload(name: str, data: bytes) -> Path:
    """Write an uploaded file under ``runs_root()/uploads`` crash-safely, as its base name only: the name comes
    from the browser, so a path in it (``../x``, ``C:\\x``, ``/etc/x``) cannot place the file elsewhere."""
    from steerlab.atomic import atomic_write_bytes

    base = Path(str(name).replace("\\", "/")).name
    if not base or base.startswith("."):
        base = "upload" + (base or "")
    return atomic_write_bytes(runs_root() / "uploads" / base, data)


def initial_model() -> str:
    """The model shown first: ``steerlab dashboard --model`` if given, else the embedded default."""
    from steerlab.models.load import default_model

    return os.environ.get(ENV_MODEL) or default_model()


# -- errors ---------------------------------------------------------------------------------------
@contextmanager
def guard(action: str = "That") -> Iterator[None]:
    """Show errors raised in the block as a message (``st.error``), never as a stack trace.

    Steerlab's own errors name the bad value and what was expected, so their message is shown as
    is; anything else is reported with its type and message, and its traceback goes to the log.
    Streamlit's control flow (``st.stop``, ``st.rerun``, ``st.switch_page``) passes through.
    """
    try:
        yield
    except SteerlabError as e:
        st.error(str(e), icon=":material/error:")
    except FileNotFoundError as e:
        st.error(str(e), icon=":material/error:")
    except Exception as e:  # noqa: BLE001  (the fallback: a message, never a traceback)
        log.exception("%s failed", action)
        st.error(f"{action} failed: {type(e).__name__}: {e}", icon=":material/error:")


# -- the model ------------------------------------------------------------------------------------
_MAX_MODELS = 2
# Summaries of the models loaded in this server process (all sessions share the resource cache),
# most recently used last: the status line reads them without loading anything.
_LOADED: OrderedDict[tuple[str, str, str], dict[str, Any]] = OrderedDict()
_LOADED_LOCK = threading.Lock()  # sessions run in their own threads


@st.cache_resource(show_spinner=False, max_entries=_MAX_MODELS)
def _load(spec: str, device: str, dtype: str) -> Any:
    """Load once per (spec, device, dtype) per server process; at most two models are kept."""
    import steerlab as sl

    return sl.load(spec, device=device, dtype=None if dtype == "auto" else dtype, cache=False)


def _devices() -> list[str]:
    import torch

    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) + (
        ["mps"] if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available() else [])


def init_state(key: str, value: Any) -> None:
    """Give a widget its first value through session state (so reopened runs can set it too), and
    keep its value when the user visits another page (see :func:`keep_widget_state`)."""
    st.session_state.setdefault(_PERSIST, set()).add(key)
    if key not in st.session_state:
        st.session_state[key] = value


_PERSIST = "_steerlab_persist"


def keep_widget_state() -> None:
    """Streamlit forgets the value of a widget that a run does not draw (e.g. on another page);
    re-saving the values of the widgets made with :func:`init_state` at the top of every run keeps them."""
    for key in st.session_state.get(_PERSIST, ()):
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]


def model_picker() -> tuple[str, str, str]:
    """Sidebar widgets choosing the model; returns ``(spec, device, dtype)`` (spec may be empty)."""
    from steerlab.models.load import list_models

    first = initial_model()
    options = list_models()
    if first not in options:
        options.insert(0, first)
    options.append(OTHER)
    init_state("model.choice", first)
    if st.session_state["model.choice"] not in options:  # e.g. a folder that disappeared
        st.session_state["model.choice"] = first
    sb = st.sidebar
    choice = sb.selectbox("Model", options, key="model.choice",
                          help="organism:NAME (this project's organisms), shared:NAME, a local folder or a hub id")
    spec = choice
    if choice == OTHER:
        init_state("model.other", "")
        spec = sb.text_input("Model folder or hub id", key="model.other", placeholder="/path/to/hf-model").strip()
    with sb.expander("Device and dtype"):
        devices = _devices()
        init_state("model.device", devices[-1] if len(devices) > 1 else "cpu")
        device = st.selectbox("Device", devices, key="model.device")
        init_state("model.dtype", "auto")
        dtype = st.selectbox("Dtype", DTYPES, key="model.dtype")
    return spec, device, dtype


def model_handle() -> Any:
    """The chosen model, loaded once and cached; shows a spinner while loading.

    Raises :class:`SteerlabError` when no model is chosen; loading errors propagate (wrap in
    :func:`guard`, or use :func:`require_model`).
    """
    spec, device, dtype = st.session_state.get("model.key", ("", "cpu", "auto"))
    if not spec:
        raise SteerlabError("no model chosen: pick one in the sidebar, or type a model folder or hub id")
    with st.spinner(f"Loading {spec} on {device}…"):
        handle = _load(spec, device, dtype)
    key = (spec, device, dtype)
    with _LOADED_LOCK:
        if key not in _LOADED:
            info = handle.info()
            info.pop("sites", None)
            _LOADED[key] = info
        _LOADED.move_to_end(key)
        while len(_LOADED) > _MAX_MODELS:  # mirror the resource cache's bound
            _LOADED.popitem(last=False)
    st.session_state.pop("model.failed", None)
    return handle


def require_model() -> Any:
    """:func:`model_handle`, or an error message and the end of this page run."""
    handle = None
    with guard(f"Loading model {st.session_state.get('model.key', ('',))[0]!r}"):
        handle = model_handle()
    if handle is None:
        st.session_state["model.failed"] = st.session_state.get("model.key")
        stop()
    return handle


def stop() -> None:
    """End this page run (like ``st.stop()``), after filling the status line: once a stop is
    requested, Streamlit draws nothing more, not even from ``app.py``'s ``finally``."""
    show_status()
    st.stop()


# -- results tied to the model that made them ------------------------------------------------------
def current_model() -> str:
    """The spec chosen in the sidebar (may be empty)."""
    return st.session_state.get("model.key", ("",))[0]


def forget_on_model_change(prefix: str, keys: list[str], *, model: str | None = None) -> None:
    """Forget the page state ``{prefix}.{key}`` made with another model than the chosen one (directions,
    probes, generations: they belong to the model that made them), with a caption naming what went. A page
    calls it once per run, after the model is loaded; ``model``: the owner of state just set (a reopened run's
    model, which the next run switches to)."""
    owner_key = f"{prefix}._model"
    if model is not None:
        st.session_state[owner_key] = model
        return
    owner, now = st.session_state.get(owner_key), current_model()
    if owner is not None and owner != now:
        gone = [k for k in keys if st.session_state.pop(f"{prefix}.{k}", None) is not None]
        if gone:
            st.caption(f"Cleared what was made with `{owner}` ({', '.join(gone)}): the model changed.")
    st.session_state[owner_key] = now


# -- status line ----------------------------------------------------------------------------------
def process_rss() -> int:
    """Resident memory of this process in bytes (current on Linux, peak elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource  # not on Windows; there, the line shows 0

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def switch_model(spec: str) -> None:
    """Make ``spec`` the chosen model and rerun (the picker is drawn before any page runs, so its
    value can only change at the top of the next run). No-op when it is already chosen."""
    current = current_model()
    if not spec or current == spec:
        return
    from steerlab.models.load import resolve_spec

    try:
        resolve_spec(spec)
    except (SteerlabError, OSError) as e:
        st.warning(f"This run was made with {spec!r}, which does not load here ({e}); keeping {current!r}.")
        return
    st.session_state["_pending_model"] = spec
    st.rerun()


def _apply_pending_model() -> None:
    from steerlab.models.load import list_models

    spec = st.session_state.pop("_pending_model", None)
    if spec is None:
        return
    if spec in list_models() or spec == initial_model():
        st.session_state["model.choice"] = spec
    else:
        st.session_state["model.choice"] = OTHER
        st.session_state["model.other"] = spec


def sidebar() -> None:
    """Draw the model picker and remember the choice for :func:`model_handle`; make the status slot."""
    keep_widget_state()
    _apply_pending_model()
    st.session_state["model.key"] = model_picker()
    st.session_state["_status_slot"] = st.sidebar.empty()


def show_status() -> None:
    """Fill the status line (call after the page ran, so a model it loaded is reported)."""
    slot = st.session_state.get("_status_slot")
    if slot is None:
        return
    key = st.session_state.get("model.key", ("", "cpu", "auto"))
    failed = st.session_state.get("model.failed") == key
    with _LOADED_LOCK:
        info = _LOADED.get(key)
    slot.caption(status_line(info, key[0], process_rss(), failed=failed),
                 help="model · architecture · parameters · device · dtype · resident memory of the dashboard process")
