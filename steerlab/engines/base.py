"""The engine seam: what runs a compiled :class:`~steerlab.interventions.compile.Plan` on a model.

An engine takes an encoding and a plan and returns the model output and the recorded sites. The
nnsight engine runs every intervention (forward and KV-cached generation); the TransformerLens
bridge engine only records (a cross-check and a door for TL users). Engines are registered by name
and built once per handle (:func:`engine_for`); the library never names an architecture here.

Example:
    >>> import steerlab as sl
    >>> from steerlab.engines import engine_for
    >>> h = sl.load("shared:stories260K")
    >>> engine_for(h).name, engine_for(h) is engine_for(h)
    ('nnsight', True)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Protocol, runtime_checkable

from jaxtyping import Int
from torch import Tensor

from steerlab.errors import SteerlabError
from steerlab.interventions.compile import Plan
from steerlab.models.handle import ModelHandle

Records = dict[str, list[Tensor]]


@runtime_checkable
class Engine(Protocol):
    """Runs plans on one handle's model. ``forward`` is one pass; ``generate`` is HF ``generate``
    (KV cache, left padding, stopping) with the plan at every step. Both return ``(output, records)``."""

    name: ClassVar[str]

    def forward(self, enc: dict[str, Tensor], plan: Plan, **kwargs: Any) -> tuple[Any, Records]: ...

    def generate(self, enc: dict[str, Tensor], plan: Plan, **generate_kwargs: Any) -> tuple[Any, Records]: ...


_ENGINES: dict[str, Callable[[ModelHandle], Engine]] = {}


def register_engine(name: str) -> Callable[[type], type]:
    """Class decorator: make an engine available to :func:`engine_for` under ``name``."""

    def deco(cls: type) -> type:
        _ENGINES[name] = cls
        return cls

    return deco


def engine_for(h: ModelHandle, name: str = "nnsight") -> Engine:
    """The engine ``name`` of handle ``h``, built on first use and kept on the handle."""
    if name not in _ENGINES:
        raise SteerlabError(f"unknown engine {name!r}; expected one of {sorted(_ENGINES)}")
    cache = h.engine_cache
    if name not in cache:
        cache[name] = _ENGINES[name](h)
    return cache[name]


def position_ids(attention_mask: Int[Tensor, "batch pos"]) -> Int[Tensor, "batch pos"]:
    """Mask-derived positions, as Hugging Face ``generate`` computes them for left padding."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.masked_fill(attention_mask == 0, 1)
