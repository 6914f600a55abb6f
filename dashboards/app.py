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
nav = st.navigation(
    [st.Page(p.file, title=p.title, icon=p.icon, url_path=p.key, default=p.default) for p in registry.PAGES]
)
shell.sidebar()
try:
    nav.run()
finally:  # also after st.stop(): the status line says what is (not) loaded
    shell.show_status()
