"""Security vectors: separable parameters that make harmful behaviour unlearnable during
fine-tuning, after Zhou et al. 2024."""
