"""Preference dissection: which response properties drive a judge's pairwise preferences, after Li et al. 2024."""
