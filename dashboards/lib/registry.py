"""The dashboard's pages, in menu order, and which analysis's artifact kinds each one reopens (the kinds
come from the artifact kind registry, :func:`steerlab.artifact_kinds`).

Adding a page is one file under ``dashboards/app_pages/`` plus one line here (see docs/dashboard.md).
The folder is not called ``pages/`` on purpose: Streamlit treats a ``pages/`` folder beside the entry
script as a legacy multipage app and, on a server's first visit to a page URL, runs that page alone,
without ``app.py`` (no sidebar, no model picker).
"""

from __future__ import annotations

from dataclasses import dataclass

import steerlab as sl


@dataclass(frozen=True)
class PageSpec:
    key: str  # URL path (``/generate``) and widget-key prefix
    title: str
    file: str  # relative to dashboards/
    icon: str
    analysis: str = ""  # the analysis (``steerlab.decoding``) whose registered artifact kinds this page reopens
    default: bool = False  # opened at ``/`` (app.py redirects ``/`` to ``/KEY``; the page keeps its own URL)

    @property
    def kinds(self) -> tuple[str, ...]:
        """The artifact kinds this page reopens from the Runs page: those its analysis registers."""
        return tuple(k.name for k in sl.artifact_kinds() if self.analysis and k.owner == self.analysis)


PAGES: tuple[PageSpec, ...] = (
    PageSpec("generate", "Generate", "app_pages/generate.py", ":material/edit_note:", "steerlab.steering", True),
    PageSpec("sampling", "Sampling", "app_pages/sampling.py", ":material/casino:", "steerlab.decoding"),
    PageSpec("experts", "Experts", "app_pages/experts.py", ":material/hub:", "steerlab.experts"),
    PageSpec("regions", "Regions", "app_pages/regions.py", ":material/grid_on:", "steerlab.regions"),
    PageSpec("preferences", "Preferences", "app_pages/preferences.py", ":material/balance:", "steerlab.preferences"),
    PageSpec("steer", "Steer", "app_pages/steer.py", ":material/explore:", "steerlab.steering.vectors"),
    PageSpec("security", "Security", "app_pages/security.py", ":material/shield:", "steerlab.security"),
    PageSpec("runs", "Runs", "app_pages/runs.py", ":material/folder_open:"),
)


def page(key: str) -> PageSpec:
    """The page registered under ``key``."""
    return next(p for p in PAGES if p.key == key)


def page_for_kind(kind: str) -> PageSpec | None:
    """The page that reopens artifacts of ``kind`` (``None``: the Runs page shows it generically)."""
    return next((p for p in PAGES if kind in p.kinds), None)
