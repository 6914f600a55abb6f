"""The steerlab Streamlit dashboard (``steerlab dashboard``). See docs/dashboard.md."""
