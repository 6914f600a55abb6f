"""Region edits: one reversible edit of a sparse region spread over many parameters.

A region (``steerlab.regions``: the core linguistic region, a language's region, a random control, a
single weight) is a list of flat indices per parameter. :class:`RegionEdit` zeroes, scales, sets or
adds seeded Gaussian noise to exactly those entries through :class:`~steerlab.interventions.weights.ParamEditor`
(one per parameter, so the restore is the same bit-for-bit one as :class:`ParamEdit`'s) and refuses a
region made for another model (``signature``: :func:`model_signature`).

Example:
    >>> import torch, steerlab as sl
    >>> h = sl.load("shared:stories260K")
    >>> w = h.model.model.norm.weight
    >>> before = w.detach().clone()
    >>> iv = RegionEdit(params=["model.norm.weight"], counts=[2], indices=torch.tensor([0, 5]), op="set", value=7.0)
    >>> with sl.intervene(h, [iv]):
    ...     w[[0, 5]].tolist()
    [7.0, 7.0]
    >>> torch.equal(w, before)
    True
"""

from __future__ import annotations

import difflib
import hashlib
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator, model_validator

from steerlab.errors import SpecError
from steerlab.interventions.base import Intervention, Kind, register_intervention
from steerlab.interventions.weights import ParamEdit, ParamEditor
from steerlab.models.handle import ModelHandle


def model_signature(h: ModelHandle) -> str:
    """A short hash of the model's parameter names and shapes: a region made for one model refuses another."""
    text = ";".join(f"{n}:{tuple(p.shape)}" for n, p in h.model.named_parameters())
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@register_intervention
class RegionEdit(Intervention):
    """Edit the entries ``indices`` (flat, concatenated per parameter: ``counts[j]`` of them for
    ``params[j]``) in place, reversibly. ``op``: ``zero``, ``scale`` (by ``value``), ``noise`` (add
    N(0, value^2), seeded with ``seed + j`` for ``params[j]``), ``set`` (to ``value``). ``signature``:
    the model the region was made for (checked when given)."""

    type: Literal["region_edit"] = "region_edit"
    params: list[str]
    counts: list[int]
    indices: torch.Tensor
    op: Literal["zero", "scale", "noise", "set"] = "zero"
    value: float = 0.0
    seed: int = Field(default=0, ge=-(2**63), lt=2**64)  # the range torch.Generator.manual_seed takes
    signature: str | None = None

    kind: ClassVar[Kind] = "weights"

    @field_validator("indices", mode="before")
    @classmethod
    def _indices(cls, v: Any) -> torch.Tensor:
        try:
            # no dtype: a float list stays float and is refused below, not truncated to integers
            if isinstance(v, torch.Tensor):
                t = v.detach().cpu()
            else:
                t = torch.tensor(v) if len(v) else torch.zeros(0, dtype=torch.long)
        except (TypeError, ValueError, RuntimeError) as e:
            raise ValueError(f"indices must be a 1-D integer tensor or list, got {type(v).__name__}: {e}") from e
        if t.dtype.is_floating_point or t.dtype == torch.bool or t.dim() != 1:
            raise ValueError(f"indices must be a 1-D integer tensor, got dtype {t.dtype} and shape {tuple(t.shape)}")
        if t.numel() and int(t.min()) < 0:
            raise ValueError(f"indices must be >= 0, got {int(t.min())}")
        return t.to(torch.long).clone()

    @model_validator(mode="after")
    def _shape(self) -> RegionEdit:
        if len(self.params) != len(self.counts):
            raise ValueError(f"{len(self.params)} params but {len(self.counts)} counts; expected one count per param")
        if any(c < 0 for c in self.counts) or sum(self.counts) != self.indices.numel():
            raise ValueError(f"counts {self.counts[:5]}... sum to {sum(self.counts)}; expected {self.indices.numel()}")
        if self.seed + len(self.params) > 2**64:  # params[j] is seeded with seed + j
            raise ValueError(f"seed {self.seed} + {len(self.params) - 1} (one more per param) is over 2**64 - 1, "
                             "the largest seed torch takes; expected a smaller seed")
        return self

    def where(self) -> str:
        return self.params[0] if len(self.params) == 1 else f"{len(self.params)} parameters"

    def describe(self) -> str:
        what = f"{self.op} {self.indices.numel()} entries of {self.where()}"
        how = {"scale": f" by {self.value:g}", "noise": f" by {self.value:g}", "set": f" to {self.value:g}"}
        return what + how.get(self.op, "")

    def editor(self, h: ModelHandle) -> RegionEditor:
        """Validate against ``h`` and return the editor that applies and restores this edit."""
        return RegionEditor(h, self)


class RegionEditor:
    """Applies a :class:`RegionEdit` (one :class:`ParamEditor` per parameter) and restores it in reverse."""

    def __init__(self, h: ModelHandle, iv: RegionEdit) -> None:
        if iv.signature is not None and iv.signature != (sig := model_signature(h)):
            raise SpecError(
                f"region made for another model (signature {iv.signature}); {h.spec!r} has signature {sig}: "
                "expected a region found on this model"
            )
        known = dict(h.model.named_parameters())
        missing = [p for p in iv.params if p not in known]
        if missing:
            close = difflib.get_close_matches(missing[0], list(known), n=3)
            raise SpecError(
                f"unknown parameters {missing[:3]} in the region" + (f"; did you mean {close}?" if close else "")
            )
        self.editors: list[ParamEditor] = []
        start = 0
        for j, (name, c) in enumerate(zip(iv.params, iv.counts, strict=True)):
            edit = ParamEdit(param=name, op=iv.op, value=iv.value, seed=iv.seed + j)
            self.editors.append(ParamEditor(h, edit, index=iv.indices[start : start + c]))
            start += c

    def apply(self) -> None:
        done: list[ParamEditor] = []
        try:
            for ed in self.editors:
                ed.apply()
                done.append(ed)
        except BaseException:
            for ed in reversed(done):
                ed.restore()
            raise

    def restore(self) -> None:
        for ed in reversed(self.editors):
            ed.restore()
