"""Listing and describing saved artifacts (any analysis's ``artifact.json`` + tensors + figures).

Figures travel inside an artifact as ``NAME.plotly.json`` files (``fig.to_json()``; written by
:func:`figure_files`) or as plotly JSON dicts in ``data["figures"][NAME]`` (as the sampling
comparison harness writes them); both are re-rendered interactively by the dashboard. Standalone
``NAME.html`` files are for a browser outside the dashboard.

Example:
    >>> import tempfile, torch
    >>> from steerlab.artifacts import write_artifact, list_runs
    >>> from steerlab.viz.runs import run_rows
    >>> root = tempfile.mkdtemp()
    >>> _ = write_artifact(root + "/a", kind="demo", config={"model": "shared:stories260K"}, metrics={"m": 0.5})
    >>> run_rows(list_runs(root), root)[0]["kind"]
    'demo'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from steerlab.artifacts import TENSOR_FILE, Artifact, UnreadableRun

FIGURE_SUFFIX = ".plotly.json"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return f"[{len(v)} items]" if len(v) > 4 else str(list(v))
    if isinstance(v, dict):
        return f"{{{len(v)} keys}}"
    return str(v)


def model_of(config: dict[str, Any]) -> str:
    """The model spec an artifact was produced with (``config['model']`` or ``['model_spec']``)."""
    m = config.get("model", config.get("model_spec", ""))
    return m if isinstance(m, str) else str(m)


def summarize(d: dict[str, Any], limit: int = 3) -> str:
    """``"a=1, b=0.25, ..."`` for the first ``limit`` scalar entries of a dict."""
    items = [(k, v) for k, v in d.items() if isinstance(v, (int, float, str, bool)) or v is None]
    text = ", ".join(f"{k}={_fmt(v)}" for k, v in items[:limit])
    return text + (", ..." if len(items) > limit else "")


def run_label(art: Artifact | UnreadableRun, root: str | Path) -> str:
    """The artifact's folder relative to the runs root (its name in lists and URLs)."""
    try:
        return str(Path(art.path).resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return str(art.path)


def run_rows(arts: list[Artifact], root: str | Path) -> list[dict[str, Any]]:
    """One row per artifact: when, what kind, where, which model, headline metrics."""
    return [
        {"created": a.created.replace("T", " ").split("+")[0], "kind": a.kind, "run": run_label(a, root),
         "model": model_of(a.config), "metrics": summarize(a.metrics), "files": len(a.files)}
        for a in arts
    ]


def unreadable_rows(bad: list[UnreadableRun], root: str | Path) -> list[dict[str, str]]:
    """One row per folder holding an ``artifact.json`` that could not be read (from
    :func:`~steerlab.artifacts.scan_runs`): where, relative to the runs root, and why.

    Example:
        >>> unreadable_rows([UnreadableRun(Path("/r/x"), "bad JSON")], "/r")
        [{'run': 'x', 'error': 'bad JSON'}]
    """
    return [{"run": run_label(b, root), "error": b.error} for b in bad]


def tensor_summary(art: Artifact) -> list[dict[str, Any]]:
    """Name, shape and dtype of each tensor, read from the safetensors header (no tensor is loaded)."""
    f = Path(art.path) / TENSOR_FILE
    if not f.exists():
        return []
    from safetensors import safe_open

    rows = []
    with safe_open(str(f), framework="pt") as st:
        for k in st.keys():
            sl = st.get_slice(k)
            rows.append({"tensor": k, "shape": str(list(sl.get_shape())), "dtype": sl.get_dtype()})
    return rows


PLOTLY_JS = "plotly.min.js"


def figure_files(figures: dict[str, Any], html: bool = True) -> dict[str, str]:
    """``extra_files`` for :func:`~steerlab.artifacts.write_artifact`: each plotly figure as
    ``NAME.plotly.json`` and, when ``html``, a standalone ``NAME.html`` that loads plotly.js from a
    copy in the same folder (so the figures open offline)."""
    out: dict[str, str] = {}
    for name, fig in figures.items():
        out[name + FIGURE_SUFFIX] = fig.to_json()
        if html:
            out[name + ".html"] = fig.to_html(include_plotlyjs=PLOTLY_JS, full_html=True)
    if html and figures:
        from plotly.offline import get_plotlyjs

        out[PLOTLY_JS] = get_plotlyjs()
    return out


def artifact_figures(art: Artifact) -> dict[str, Any]:
    """The plotly figures saved in an artifact (``*.plotly.json`` files, then ``data["figures"]``), by name."""
    import plotly.graph_objects as go
    import plotly.io as pio

    out = {}
    for p in sorted(Path(art.path).glob("*" + FIGURE_SUFFIX)):
        out[p.name.removesuffix(FIGURE_SUFFIX)] = pio.from_json(p.read_text())
    figures = art.data.get("figures") if isinstance(art.data, dict) else None
    for name, spec in (figures or {}).items():
        if name not in out and isinstance(spec, dict) and "data" in spec:
            out[name] = go.Figure(spec)
    return out


def html_figures(art: Artifact) -> list[Path]:
    """Standalone HTML files in an artifact whose figure is not also saved as plotly JSON."""
    twins = {p.name.removesuffix(FIGURE_SUFFIX) for p in Path(art.path).glob("*" + FIGURE_SUFFIX)}
    figures = art.data.get("figures") if isinstance(art.data, dict) else None
    twins |= set(figures or {})
    return [p for p in sorted(Path(art.path).glob("*.html")) if p.stem not in twins]
