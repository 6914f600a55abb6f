"""Regions: importance-scored parameter regions (linguistic core, language regions, single
weights), after Zhang et al. 2024."""
