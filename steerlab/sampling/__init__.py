"""Decoding rules: greedy, temperature, top-k, top-p, min-p (and top-H, see ``top_h``)."""

from steerlab.sampling import basic as _basic  # noqa: F401  (registers samplers)
from steerlab.sampling import top_h as _top_h  # noqa: F401  (registers top_h)
from steerlab.sampling.base import (
    Sampler,
    SamplerLogitsProcessor,
    available_samplers,
    make_sampler,
    register_sampler,
)

__all__ = ["Sampler", "SamplerLogitsProcessor", "available_samplers", "make_sampler", "register_sampler"]
