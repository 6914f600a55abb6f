"""Generic renderers shared by the dashboard and the CLI's artifacts (no Streamlit, no analysis):
:mod:`steerlab.viz.tokens` (per-token HTML and tooltips), :mod:`steerlab.viz.runs` (run labels, tables,
figure files of an artifact), :mod:`steerlab.viz.model` (the status line).

Each analysis keeps its own figures and artifact schema beside it (``steerlab/<analysis>/figures.py`` and
``artifact.py``).
"""
