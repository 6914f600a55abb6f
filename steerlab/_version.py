"""steerlab's version, importable from any layer without importing the package facade."""

__version__ = "0.1.0"
