"""Exceptions raised by steerlab. Every message names the bad value and what was expected."""

from __future__ import annotations


class SteerlabError(ValueError):
    """Base class for bad input to steerlab (subclasses ``ValueError``)."""


class UnknownSiteError(SteerlabError, KeyError):
    """A site name that does not exist on this model."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class SpecError(SteerlabError):
    """An intervention, sampler or probe specification that is malformed."""


class ModelSpecError(SteerlabError, FileNotFoundError):
    """A model spec that does not resolve to a loadable model."""
