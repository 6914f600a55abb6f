"""The dashboard's pages, in menu order, and which artifact kinds each one reopens.

Adding a page is one file under ``dashboards/app_pages/`` plus one line here (see docs/dashboard.md).
The folder is not called ``pages/`` on purpose: Streamlit treats a ``pages/`` folder beside the entry
script as a legacy multipage app and, on a server's first visit to a page URL, runs that page alone,
without ``app.py`` (no sidebar, no model picker).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PageSpec:
    key: str  # URL path (``/generate``) and widget-key prefix
    title: str
    file: str  # relative to dashboards/
    icon: str
    kinds: tuple[str, ...] = ()  # artifact kinds this page reopens from the Runs page
    default: bool = False  # opened at ``/`` (app.py redirects ``/`` to ``/KEY``; the page keeps its own URL)


PAGES: tuple[PageSpec, ...] = (
    PageSpec("generate", "Generate", "app_pages/generate.py", ":material/edit_note:", ("generation_compare",), True),
    PageSpec("sampling", "Sampling", "app_pages/sampling.py", ":material/casino:",
             ("sampling_diagnostics", "sampling_compare")),
    PageSpec("experts", "Experts", "app_pages/experts.py", ":material/hub:", ("experts_image", "experts_evaluate")),
    PageSpec("runs", "Runs", "app_pages/runs.py", ":material/folder_open:"),
)


def page_for_kind(kind: str) -> PageSpec | None:
    """The page that reopens artifacts of ``kind`` (``None``: the Runs page shows it generically)."""
    return next((p for p in PAGES if kind in p.kinds), None)
