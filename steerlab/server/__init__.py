"""The OpenAI-compatible HTTP server with per-request interventions (a shell over the library)."""
