"""steerlab dashboard: ``steerlab dashboard`` (or ``streamlit run dashboards/app.py``).

The shell: page navigation from :mod:`dashboards.lib.registry`, the model picker and the status
line in the sidebar. Each page is one script under ``app_pages/``; see docs/dashboard.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `streamlit run` puts dashboards/ on the path, not the repo root
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from dashboards.lib import registry, shell  # noqa: E402

st.set_page_config(page_title="steerlab", page_icon=":material/explore:", layout="wide")
PAGES = [st.Page(p.file, title=p.title, icon=p.icon, url_path=p.key) for p in registry.PAGES]
HOME = next(page for page, spec in zip(PAGES, registry.PAGES, strict=True) if spec.default)


def _home() -> None:
    """``/``: open the default page at its own URL (``/generate``), keeping the query (``?run=``)."""
    st.switch_page(HOME, query_params=st.query_params.to_dict())


# Streamlit serves its default page only at ``/`` (its url_path becomes ""), so ``/generate`` would be
# "Page not found"; every registry page is therefore an ordinary page at ``/KEY`` and the default is
# this hidden redirect.
nav = st.navigation([st.Page(_home, title="steerlab", url_path="home", default=True, visibility="hidden"), *PAGES])
shell.sidebar()
try:
    nav.run()
finally:  # also after st.stop(): the status line says what is (not) loaded
    shell.show_status()
