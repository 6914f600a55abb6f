"""Streamlit glue shared by the dashboard pages (model picker, errors, samplers, interventions, runs)."""
