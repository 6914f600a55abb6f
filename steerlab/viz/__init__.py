"""View models and plotly figure builders, shared by the dashboard and the CLI's artifacts.

Nothing here imports Streamlit: every function takes library objects (generation results,
artifacts, diagnostics) and returns plain data, HTML strings or ``plotly`` figures, so it can be
unit-tested and reused by commands that write figures next to an artifact.

One module per dashboard page: :mod:`steerlab.viz.tokens` and :mod:`steerlab.viz.generation`
(Generate), :mod:`steerlab.viz.sampling` (Sampling), :mod:`steerlab.viz.runs` (Runs).
"""
