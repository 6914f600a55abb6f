"""Pure tensor functions behind each intervention. ``mask`` is ``[batch, pos]`` bool or ``None``
(every position). Inputs are never modified in place."""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float
from torch import Tensor

Act = Float[Tensor, "batch pos d"]
PosMask = Bool[Tensor, "batch pos"] | None


def _where(mask: PosMask, new: Act, old: Act) -> Act:
    return new if mask is None else torch.where(mask.unsqueeze(-1), new, old)


def add_vector(x: Act, vector: Float[Tensor, " d"], scale: float, mask: PosMask = None) -> Act:
    """``x + scale * vector`` at the masked positions."""
    delta = (scale * vector).to(x.dtype)
    if mask is None:
        return x + delta
    return x + mask.unsqueeze(-1).to(x.dtype) * delta


def project_out(x: Act, direction: Float[Tensor, " d"], mask: PosMask = None) -> Act:
    """Remove the component of ``x`` along ``direction``: ``x - (x . u) u`` with ``u`` unit-norm."""
    u = (direction / direction.norm()).to(x.dtype)
    ablated = x - (x @ u).unsqueeze(-1) * u
    return _where(mask, ablated, x)


def scale_units(x: Act, units: Tensor, scale: float, mask: PosMask = None) -> Act:
    """Multiply feature dimensions ``units`` by ``scale``."""
    factor = torch.ones(x.shape[-1], dtype=x.dtype, device=x.device)
    factor[units] = scale
    return _where(mask, x * factor, x)


def patch(x: Act, value: Tensor, mask: PosMask = None) -> Act:
    """Replace ``x`` by ``value`` (broadcast to ``x``'s shape) at the masked positions."""
    return _where(mask, value.to(x.dtype).expand_as(x), x)
