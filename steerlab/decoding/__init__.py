"""The decoding analysis: per-step diagnostics of a generation (entropy, kept-set sizes of top-H,
top-p, min-p) and the comparison harness (diversity against coherence over temperatures)."""
