"""Reversible weight edits: apply a :class:`ParamEdit` in place and restore the exact original values.

Compilation (:mod:`steerlab.interventions.compile`) validates an edit against the model and
builds a :class:`ParamEditor`; engines and :func:`steerlab.intervene` apply the plan's editors with
:func:`param_edits`, which restores them in reverse order, also on error, so several edits of one
parameter give back the original bit for bit.

Example:
    >>> import torch, steerlab as sl
    >>> from steerlab.interventions import ParamEdit
    >>> h = sl.load("shared:stories260K")
    >>> ed = ParamEditor(h, ParamEdit(param="model.norm.weight", op="zero"))
    >>> w = h.model.model.norm.weight
    >>> before = w.detach().clone()
    >>> ed.apply(); bool(w.abs().sum() == 0)
    True
    >>> ed.restore(); torch.equal(w, before)
    True
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator
from torch import Tensor

from steerlab.errors import SpecError
from steerlab.interventions.base import Intervention, Kind, register_intervention, to_tensor
from steerlab.models.handle import ModelHandle


@register_intervention
class ParamEdit(Intervention):
    """Edit a parameter in place, reversibly (restored exactly on exit).

    ``op``: ``zero``, ``scale`` (by ``value``), ``noise`` (add N(0, value^2), seeded), ``set`` (to
    ``value``), ``add`` (``delta`` tensor of the parameter's shape). ``indices`` (flat) or ``mask`` (bool, the
    parameter's shape) restrict the edit to a region; by default the whole parameter.
    """

    type: Literal["param_edit"] = "param_edit"
    param: str
    op: Literal["zero", "scale", "noise", "set", "add"]
    value: float = 0.0
    seed: int = Field(default=0, ge=-(2**63), lt=2**64)  # the range torch.Generator.manual_seed takes
    indices: list[Annotated[int, Field(ge=0)]] | None = None
    mask: torch.Tensor | None = None
    delta: torch.Tensor | None = None

    @field_validator("mask", mode="before")
    @classmethod
    def _mask(cls, v: Any) -> torch.Tensor | None:
        if v is None:
            return None
        if not isinstance(v, (torch.Tensor, list)):
            raise ValueError(f"mask must be a bool tensor or a nested list of booleans/0/1, got {type(v).__name__}")
        try:
            t = v.detach().cpu() if isinstance(v, torch.Tensor) else torch.tensor(v)
        except (TypeError, ValueError, RuntimeError) as e:
            raise ValueError(f"mask must be a rectangular nested list of booleans/0/1: {e}") from e
        if t.dtype != torch.bool and not bool(((t == 0) | (t == 1)).all()):
            raise ValueError("mask values must be booleans or 0/1")
        return t.bool()

    @field_validator("delta", mode="before")
    @classmethod
    def _delta(cls, v: Any) -> torch.Tensor | None:
        return None if v is None else to_tensor(v, "delta")

    kind: ClassVar[Kind] = "weights"

    def where(self) -> str:
        return self.param

    def describe(self) -> str:
        region = " (indices)" if self.indices is not None else " (mask)" if self.mask is not None else ""
        how = {"scale": f" by {self.value:g}", "noise": f" by {self.value:g}", "set": f" to {self.value:g}"}
        return f"{self.op} {self.param}{region}" + how.get(self.op, "")

    def editor(self, h: ModelHandle) -> ParamEditor:
        """Validate against ``h`` and return the editor that applies and restores this edit."""
        return ParamEditor(h, self)


class ParamEditor:
    """Applies a :class:`ParamEdit` in place and restores the exact original values. ``index`` (flat int64
    indices) selects the region instead of the edit's ``indices``/``mask`` (sparse regions of millions of
    entries, :class:`~steerlab.interventions.regions.RegionEdit`)."""

    def __init__(self, h: ModelHandle, iv: ParamEdit, index: Tensor | None = None) -> None:
        params = dict(h.model.named_parameters())
        if iv.param not in params:
            close = difflib.get_close_matches(iv.param, list(params), n=3)
            raise SpecError(f"unknown parameter {iv.param!r}" + (f"; did you mean {close}?" if close else ""))
        p = params[iv.param]
        self.param, self.iv = p, iv
        if iv.mask is not None and tuple(iv.mask.shape) != tuple(p.shape):
            raise SpecError(
                f"mask shape {tuple(iv.mask.shape)} does not match parameter {iv.param!r} shape {tuple(p.shape)}"
            )
        if iv.indices is not None:
            bad = [i for i in iv.indices if i >= p.numel()]
            if bad:
                raise SpecError(
                    f"flat indices {bad[:5]} out of range for parameter {iv.param!r} with {p.numel()} elements"
                )
        if index is not None and index.numel() and (int(index.min()) < 0 or int(index.max()) >= p.numel()):
            raise SpecError(
                f"flat indices {int(index.min())}..{int(index.max())} out of range for parameter {iv.param!r} "
                f"with {p.numel()} elements"
            )
        self.index = None if index is None else index.to(torch.long)
        if iv.op == "add" and (iv.delta is None or tuple(iv.delta.shape) != tuple(p.shape)):
            got = None if iv.delta is None else tuple(iv.delta.shape)
            raise SpecError(f"op 'add' needs a delta of shape {tuple(p.shape)} for {iv.param!r}, got {got}")
        self.saved: Tensor | None = None
        self.idx: Tensor | None = None

    def _select(self) -> Tensor:
        p, iv = self.param, self.iv
        if self.index is not None:
            return self.index.to(p.device)
        if iv.mask is not None:
            return iv.mask.to(p.device).reshape(-1).nonzero().flatten()
        if iv.indices is not None:
            return torch.tensor(iv.indices, dtype=torch.long, device=p.device)
        return torch.arange(p.numel(), device=p.device)

    @torch.no_grad()
    def apply(self) -> None:
        p, iv = self.param, self.iv
        flat = p.data.view(-1)
        idx = self._select()
        cur = flat[idx]
        self.idx, self.saved = idx, cur.clone()
        if iv.op == "zero":
            new = torch.zeros_like(cur)
        elif iv.op == "scale":
            new = cur * iv.value
        elif iv.op == "set":
            new = torch.full_like(cur, iv.value)
        elif iv.op == "noise":
            g = torch.Generator(device="cpu").manual_seed(iv.seed)
            new = cur + (torch.randn(cur.shape, generator=g) * iv.value).to(cur)
        else:
            new = cur + iv.delta.reshape(-1).to(p.device, p.dtype)[idx]
        flat[idx] = new

    @torch.no_grad()
    def restore(self) -> None:
        if self.saved is not None:
            self.param.data.view(-1)[self.idx] = self.saved
            self.saved = None




@contextmanager
def param_edits(editors: Sequence[ParamEditor]) -> Iterator[None]:
    """Apply ``editors`` (a plan's ``editors``) for the block; restore them exactly, in reverse order,
    also on error."""
    applied = []
    try:
        for ed in editors:
            ed.apply()
            applied.append(ed)
        yield
    finally:
        for ed in reversed(applied):
            ed.restore()
