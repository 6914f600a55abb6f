"""Conditional steering: add a vector only where a linear probe fires.

:class:`ConditionalAdd` reads the activation at its ``site`` (before its own edit), scores it with a linear
probe ``x @ probe_weight + probe_bias`` and adds ``scale * vector`` where the score exceeds ``threshold``:

* ``mode="row"``: a row is steered (at every selected position, prompt and generated) when the probe fires
  on its last prompt token; rows where it does not fire are left exactly as they are;
* ``mode="from_step"``: each row is steered from the first position where the probe fires onwards (that
  position included; prompt or generated), and not before.

Position selectors (``positions``) narrow this further as for :class:`~steerlab.interventions.AddVector`.
The verdicts are kept per run, so KV-cached generation (one new token per forward) and full recompute
steer the same rows at the same positions: the activation a probe reads at a site does not depend on
edits made at that site (a position sees earlier positions' edits only through later layers).

Example:
    >>> import torch
    >>> iv = ConditionalAdd(site="blocks.1.resid_post", vector=torch.ones(4), scale=2.0,
    ...                     probe_weight=torch.tensor([1.0, 0, 0, 0]), probe_bias=-0.5)
    >>> iv.describe()
    'scale 2 where probe > 0 (row)'
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import field_validator
from torch import Tensor

from steerlab.errors import SpecError
from steerlab.interventions.base import ActOp, SiteIntervention, register_intervention, to_tensor
from steerlab.interventions.positions import StepState
from steerlab.models.handle import ModelHandle
from steerlab.models.sites import SiteRef


def _vec(v: Any, field_name: str) -> Tensor:
    t = to_tensor(v, field_name)
    if t.ndim != 1:
        raise ValueError(f"{field_name} must be 1-D [d_model], got shape {tuple(t.shape)}")
    return t


@register_intervention
class ConditionalAdd(SiteIntervention):
    """Add ``scale * vector`` at ``site`` only in rows (``mode="row"``) or from the position
    (``mode="from_step"``) where the linear probe ``x @ probe_weight + probe_bias > threshold`` fires."""

    type: Literal["conditional_add"] = "conditional_add"
    vector: torch.Tensor
    scale: float = 1.0
    probe_weight: torch.Tensor
    probe_bias: float = 0.0
    threshold: float = 0.0
    mode: Literal["row", "from_step"] = "row"

    @field_validator("vector", mode="before")
    @classmethod
    def _v(cls, v: Any) -> Tensor:
        return _vec(v, "vector")

    @field_validator("probe_weight", mode="before")
    @classmethod
    def _w(cls, v: Any) -> Tensor:
        return _vec(v, "probe_weight")

    def compile_op(self, h: ModelHandle, ref: SiteRef, width: int) -> ActOp:
        for name, t in (("vector", self.vector), ("probe_weight", self.probe_weight)):
            if t.shape[-1] != width:
                raise SpecError(f"{name} width {t.shape[-1]} does not match site {ref.name!r}, whose width is {width}")
        vec = (self.scale * self.vector).to(device=h.device, dtype=h.dtype)
        w = self.probe_weight.to(device=h.device, dtype=torch.float32)
        bias, thr, mode, positions = self.probe_bias, self.threshold, self.mode, self.positions
        key = object()  # this compiled op's slot in the run's verdicts

        def fn(x: Tensor, _m: Any, state: StepState) -> Tensor:
            verdicts: dict[Any, Tensor] = state.memo  # per-run verdicts, under this op's key
            fires = (x.float() @ w + bias) > thr  # [batch, seq]
            if mode == "row":
                col = state.prompt_len - 1 - state.offset  # the last prompt token (left padding: same column)
                if 0 <= col < x.shape[1]:
                    verdicts[key] = fires[:, col]
                if key not in verdicts:
                    raise SpecError("conditional steering (row) saw no forward covering the prompt's last token")
                active = verdicts[key].unsqueeze(1).expand_as(fires)
            else:
                cols = state.offset + torch.arange(x.shape[1], device=x.device)
                real = cols.unsqueeze(0) >= state.pad_lens.to(x.device).unsqueeze(1)
                carry = verdicts.get(key) if state.offset > 0 else None  # offset 0: this forward starts the row
                hit = (fires & real).int().cumsum(1) > 0
                active = hit if carry is None else hit | carry.unsqueeze(1)
                verdicts[key] = active[:, -1]
            sel = state.mask(positions, x.device)
            if sel is False:
                return x
            if sel is not None:
                active = active & sel
            return x + active.unsqueeze(-1).to(x.dtype) * vec

        return ActOp(fn, "all", reads_prefix=mode == "from_step")

    def describe(self) -> str:
        return f"scale {self.scale:g} where probe > {self.threshold:g} ({self.mode})"
