"""Data every analysis shares: the model organisms' corpus (domains, templates, the shared sets'
train/test splits) defined once, read in place from ``../shared/data``."""
