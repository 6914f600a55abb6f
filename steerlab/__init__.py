"""steerlab: steering and analysis of dense and Mixture-of-Experts transformer LMs.

Example:
    >>> import steerlab as sl
    >>> h = sl.load("shared:stories260K")
    >>> out = sl.generate(h, ["Once upon a time"], max_new_tokens=8)
    >>> isinstance(out.texts[0], str)
    True
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from steerlab._version import __version__

_LAZY = {
    "load": ("steerlab.models.load", "load"),
    "list_models": ("steerlab.models.load", "list_models"),
    "ModelHandle": ("steerlab.models.handle", "ModelHandle"),
    "generate": ("steerlab.generation", "generate"),
    "GenerationResult": ("steerlab.generation", "GenerationResult"),
    "forward": ("steerlab.generation", "forward"),
    "capture": ("steerlab.activations", "capture"),
    "Capture": ("steerlab.activations", "Capture"),
    "intervene": ("steerlab.intervention_context", "intervene"),
    "engine_for": ("steerlab.engines", "engine_for"),
    "make_sampler": ("steerlab.sampling", "make_sampler"),
}

if TYPE_CHECKING:  # pragma: no cover
    from steerlab.activations import Capture, capture  # noqa: F401
    from steerlab.artifacts import ArtifactKind
    from steerlab.engines import engine_for  # noqa: F401
    from steerlab.generation import GenerationResult, forward, generate  # noqa: F401
    from steerlab.intervention_context import intervene  # noqa: F401
    from steerlab.models.handle import ModelHandle  # noqa: F401
    from steerlab.models.load import list_models, load  # noqa: F401
    from steerlab.sampling import make_sampler  # noqa: F401


# each registers its kinds in .artifact
ANALYSES = ("steerlab.experts", "steerlab.decoding", "steerlab.steering", "steerlab.regions",
            "steerlab.preferences", "steerlab.security")


def artifact_kinds() -> tuple[ArtifactKind, ...]:
    """Every registered artifact kind, the built-in analyses' included (their ``artifact`` modules are
    imported first); the CLI and the dashboard discover kinds here.

    Example:
        >>> import steerlab as sl
        >>> "generation_compare" in [k.name for k in sl.artifact_kinds()]
        True
    """
    import importlib

    for analysis in ANALYSES:
        importlib.import_module(f"{analysis}.artifact")
    from steerlab.artifacts import artifact_kinds as registered

    return registered()


def __getattr__(name: str) -> Any:  # lazy: `import steerlab` stays fast for the CLI and dashboard
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'steerlab' has no attribute {name!r}")


__all__ = sorted(_LAZY) + ["__version__", "artifact_kinds"]
