"""Activation edits at a site: steering vectors, directional ablation, unit scaling, patching.

Each type validates its tensors on construction and its widths against the model when compiled
(:meth:`~steerlab.interventions.base.SiteIntervention.compile_op`); the ops are the pure functions
of :mod:`steerlab.interventions.ops`.

Example:
    >>> import torch
    >>> AddVector(site="blocks.1.resid_post", vector=torch.ones(64), scale=2.0).describe()
    'scale 2'
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import torch
from pydantic import Field, field_validator
from torch import Tensor

from steerlab.errors import SpecError
from steerlab.interventions import ops
from steerlab.interventions.base import ActFn, ActOp, SiteIntervention, register_intervention, to_tensor
from steerlab.interventions.positions import StepState
from steerlab.models.handle import ModelHandle
from steerlab.models.sites import SiteRef


def _check_width(ref: SiteRef, t: Tensor, width: int, field_name: str) -> None:
    if t.shape[-1] != width:
        raise SpecError(f"{field_name} width {t.shape[-1]} does not match site {ref.name!r}, whose width is {width}")


def _vector(v: Any, field_name: str) -> torch.Tensor:
    t = to_tensor(v, field_name)
    if t.ndim != 1:
        raise ValueError(f"{field_name} must be 1-D [d_model], got shape {tuple(t.shape)}")
    return t


@register_intervention
class AddVector(SiteIntervention):
    """Add ``scale * vector`` to the activation at ``site`` (a steering vector)."""

    type: Literal["add_vector"] = "add_vector"
    vector: torch.Tensor
    scale: float = 1.0

    @field_validator("vector", mode="before")
    @classmethod
    def _vec(cls, v: Any) -> torch.Tensor:
        return _vector(v, "vector")

    def compile_op(self, h: ModelHandle, ref: SiteRef, width: int) -> ActOp:
        _check_width(ref, self.vector, width, "vector")
        vec, scale = self.vector.to(device=h.device, dtype=h.dtype), self.scale
        return ActOp(lambda x, m, s: ops.add_vector(x, vec, scale, m), self.positions, additive=True)

    def describe(self) -> str:
        return f"scale {self.scale:g}"


@register_intervention
class ProjectOut(SiteIntervention):
    """Remove the component along ``direction`` (directional ablation): x - (x.u) u, u = d/|d|."""

    type: Literal["project_out"] = "project_out"
    direction: torch.Tensor

    @field_validator("direction", mode="before")
    @classmethod
    def _dir(cls, v: Any) -> torch.Tensor:
        t = _vector(v, "direction")
        if float(t.norm()) == 0.0:
            raise ValueError("direction has zero norm; expected a non-zero vector")
        return t

    def compile_op(self, h: ModelHandle, ref: SiteRef, width: int) -> ActOp:
        _check_width(ref, self.direction, width, "direction")
        d = self.direction.to(device=h.device, dtype=h.dtype)
        return ActOp(lambda x, m, s: ops.project_out(x, d, m), self.positions)


@register_intervention
class ScaleUnits(SiteIntervention):
    """Multiply chosen hidden units (feature dimensions) by ``scale`` (0 zeroes them)."""

    type: Literal["scale_units"] = "scale_units"
    units: list[Annotated[int, Field(ge=0)]]
    scale: float = 0.0

    def compile_op(self, h: ModelHandle, ref: SiteRef, width: int) -> ActOp:
        bad = [u for u in self.units if u >= width]
        if bad:
            raise SpecError(f"units {bad} out of range for site {ref.name!r} of width {width}; expected 0..{width - 1}")
        units = torch.tensor(self.units, dtype=torch.long, device=h.device)
        factor = self.scale
        return ActOp(lambda x, m, s: ops.scale_units(x, units, factor, m), self.positions)

    def describe(self) -> str:
        return f"units {self.units} x {self.scale:g}"


@register_intervention
class Patch(SiteIntervention):
    """Replace the activation at ``site`` with ``value``.

    ``value`` is ``[d]`` (same vector at every selected position), ``[P, d]`` (one row per explicit
    position in ``positions``) or ``[batch, pos, d]`` (a whole cached activation, plain forward only).
    """

    type: Literal["patch"] = "patch"
    value: torch.Tensor

    @field_validator("value", mode="before")
    @classmethod
    def _val(cls, v: Any) -> torch.Tensor:
        t = to_tensor(v, "value")
        if t.ndim not in (1, 2, 3):
            raise ValueError(f"value must be [d], [P, d] or [batch, pos, d], got shape {tuple(t.shape)}")
        return t

    def compile_op(self, h: ModelHandle, ref: SiteRef, width: int) -> ActOp:
        _check_width(ref, self.value, width, "value")
        val = self.value.to(device=h.device, dtype=h.dtype)
        if val.ndim == 2:
            if not isinstance(self.positions, list) or len(self.positions) != val.shape[0]:
                raise SpecError(
                    f"patch value of shape {tuple(val.shape)} needs an explicit positions list of length "
                    f"{val.shape[0]}, got positions={self.positions!r}"
                )
            return ActOp(_rowwise_patch(val, list(self.positions)), "all")

        def full(x: Tensor, m: Any, s: StepState) -> Tensor:
            return ops.patch(x, val, m)

        return ActOp(full, self.positions, input_shape=tuple(val.shape[:2]) if val.ndim == 3 else None)

    def describe(self) -> str:
        return f"value {tuple(self.value.shape)}"


def _rowwise_patch(val: Tensor, positions: list[int]) -> ActFn:
    def fn(x: Tensor, m: Any, state: StepState) -> Tensor:
        out = x
        for row, p in enumerate(positions):
            mask = state.mask([p], x.device)
            if mask is not False:
                out = ops.patch(out, val[row], mask)
        return out

    return fn
