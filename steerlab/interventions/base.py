"""The intervention registry: one class per intervention type, discovered by its ``type`` name.

Every type is a frozen pydantic model that validates its own fields, compiles itself against a
model and describes itself in one line. It belongs to one of three mechanisms (``kind``), which
is all the compiler and the engines know about:

* ``"activation"`` (:class:`SiteIntervention`): a pure function of the activation at a site and
  the selected positions (:meth:`SiteIntervention.compile_op` returns an :class:`ActOp`);
* ``"routing"``: edits of an MoE router's output, compiled per group of interventions that share
  a router (``group_key``/``compile_group``; see :class:`~steerlab.interventions.routing.ExpertMask`);
* ``"weights"``: reversible in-place weight edits (``editor(h)``; see
  :class:`~steerlab.interventions.weights.ParamEdit`).

A new type is one class decorated with :func:`register_intervention`; the serializable union
(:func:`parse_intervention`), ``InterventionSet`` save/load, the CLI and the dashboard's stack pick
it up from the registry.

Example:
    >>> import torch
    >>> from steerlab.interventions import ops
    >>> @register_intervention
    ... class Negate(SiteIntervention):
    ...     '''Negate the activation at the selected positions.'''
    ...     type: Literal["negate_demo"] = "negate_demo"
    ...     def compile_op(self, h, ref, width):
    ...         return ActOp(lambda x, m, s: ops.patch(x, -x, m), self.positions)
    ...     def describe(self):
    ...         return "negate"
    >>> parse_intervention({"type": "negate_demo", "site": "blocks.0.resid_post"}).describe()
    'negate'
"""

from __future__ import annotations

import numbers
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from torch import Tensor

from steerlab.errors import SpecError
from steerlab.models.handle import ModelHandle
from steerlab.models.sites import SiteRef

Kind = Literal["activation", "routing", "weights"]


class LastK(BaseModel):
    """``{"last": k}``: the last ``k`` prompt tokens of each row (``k=1`` is the decision position)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    last: int = Field(ge=1)


def _plain(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, numbers.Integral) and not isinstance(v, bool) and type(v) is not int:
        return int(v)
    return v


# an explicit list names at least one position (``[]`` would steer nothing, silently)
_PositionList = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]
POSITIONS_HELP = "'all', 'prompt', 'generated', {'last': k} with k >= 1, or a non-empty list of prompt positions >= 0"


def check_positions_value(v: Any) -> Any:
    """``v`` if it is a positions selector (:data:`Positions`), else one ``ValueError`` naming every form."""
    ok = (
        v in ("all", "prompt", "generated") if isinstance(v, str)
        else isinstance(v, LastK) or (isinstance(v, dict) and set(v) == {"last"} and _is_int(v["last"], 1))
        or (isinstance(v, list) and len(v) > 0 and all(_is_int(p, 0) for p in v))
    )
    if not ok:
        raise ValueError(f"positions must be {POSITIONS_HELP}")
    return v


def _is_int(x: Any, minimum: int) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= minimum


# one message naming every form (checked before pydantic's union, which would report each branch)
Positions = Annotated[Literal["all", "prompt", "generated"] | LastK | _PositionList,
                      BeforeValidator(check_positions_value)]


ActFn = Callable[[Tensor, Any, Any], Tensor]  # (activation [b, t, d], position mask, StepState) -> activation


@dataclass
class ActOp:
    """One compiled activation edit: ``fn`` applied at the positions selected by ``positions``.
    ``additive`` ops (``x + f(positions)``) may be applied to a summand of a site instead of the sum.
    ``reads_prefix`` ops read the site at earlier positions too (a verdict carried forward), so at the
    logits site generation computes the logits of every prompt position, not only the last. ``input_shape``
    ``(batch, pos)``: the op replaces the whole activation of an input of that shape, so it runs only in one
    plain forward of such an input (checked before anything runs: ``compile.check_inputs``)."""

    fn: ActFn
    positions: Any
    additive: bool = False
    reads_prefix: bool = False
    input_shape: tuple[int, int] | None = None


def to_tensor(value: Any, field_name: str) -> torch.Tensor:
    """A float32 CPU copy the spec owns; lists accepted; NaN/inf rejected (``ValueError`` naming them)."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().float().clone()
    else:
        try:
            t = torch.tensor(value, dtype=torch.float32)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{field_name} must be a tensor or a list of numbers, got {type(value).__name__}") from e
    if not torch.isfinite(t).all():
        bad = (~torch.isfinite(t)).nonzero()[:5].tolist()
        raise ValueError(f"{field_name} contains NaN or infinite values at indices {bad}; expected finite numbers")
    return t


FLOAT32_MAX = float(torch.finfo(torch.float32).max)  # the largest number a float32 model weight or activation holds


class Intervention(BaseModel):
    """Base of every intervention type. ``allow_inf_nan=False``: every float field must be finite."""

    # strict: no quiet coercion (True is not 1.0, "2" is not 2); floats still take ints
    model_config = ConfigDict(
        arbitrary_types_allowed=True, extra="forbid", frozen=True, allow_inf_nan=False, strict=True
    )
    kind: ClassVar[Kind]
    tensor_fields: ClassVar[tuple[str, ...]] = ()  # filled by register_intervention
    name: str | None = None  # optional label, shown in artifacts and the dashboard

    def __init__(self, **data: Any) -> None:
        """Built directly (``AddVector(site=..., vector=...)``), a bad value is the same one-line
        :class:`SpecError` as from a spec file or a request, not pydantic's multi-line report."""
        try:
            super().__init__(**data)
        except ValidationError as e:
            kind = type(self).model_fields.get("type")
            raise SpecError(_format_validation(e, kind.default if kind is not None else type(self).__name__)) from None

    @model_validator(mode="before")
    @classmethod
    def _plain_values(cls, data: Any) -> Any:
        """Strict fields, Python's spellings: a tuple is a list, a NumPy/torch integer scalar an int."""
        if not isinstance(data, dict):
            return data
        return {k: v if k in cls.tensor_fields else _plain(v) for k, v in data.items()}

    @model_validator(mode="after")
    def _floats_fit_float32(self) -> Intervention:
        """Every number field (and every number of a dict or list field, e.g. ExpertMask's scales) must fit
        float32, the models' dtype (1e39 would become inf mid-run, or fail in torch when applied)."""
        for field in type(self).model_fields:
            v = getattr(self, field)
            numbers = v.values() if isinstance(v, dict) else v if isinstance(v, list) else [v]
            if any(isinstance(x, float) and abs(x) > FLOAT32_MAX for x in numbers):
                raise ValueError(f"{field}={v!r} does not fit float32; expected |{field}| <= {FLOAT32_MAX:.3g}")
        return self

    def describe(self) -> str:
        """One line for tables and the dashboard's stack (the type's own details)."""
        return ""

    def where(self) -> str:
        """Where it acts: a site, a layer, a parameter."""
        return ""


class SiteIntervention(Intervention):
    """An activation edit at one ``site`` and the ``positions`` it selects."""

    kind: ClassVar[Kind] = "activation"
    site: str
    positions: Positions = "all"

    def compile_op(self, h: ModelHandle, ref: SiteRef, width: int) -> ActOp:
        """Validate against the model (``width`` of the site's last dimension) and build the op."""
        raise NotImplementedError

    def where(self) -> str:
        return self.site


_REGISTRY: dict[str, type[Intervention]] = {}


def _mentions_tensor(annotation: Any) -> bool:
    return annotation is torch.Tensor or any(_mentions_tensor(a) for a in typing.get_args(annotation))


def register_intervention(cls: type[Intervention]) -> type[Intervention]:
    """Class decorator: make ``cls`` parseable by its ``type`` name and serializable (its tensor
    fields go to the side safetensors file). Registering a second class under one name is an error."""
    field = cls.model_fields.get("type")
    name = field.default if field is not None else None
    if not isinstance(name, str):
        raise TypeError(f"{cls.__name__} needs a field `type: Literal[NAME] = NAME` to be registered")
    if name in _REGISTRY and _REGISTRY[name].__qualname__ != cls.__qualname__:
        raise TypeError(f"intervention type {name!r} is already registered by {_REGISTRY[name].__name__}")
    cls.tensor_fields = tuple(f for f, info in cls.model_fields.items() if _mentions_tensor(info.annotation))
    _REGISTRY[name] = cls
    return cls


def intervention_types() -> dict[str, type[Intervention]]:
    """Every registered type by name (built-ins and any registered by user code)."""
    return dict(_REGISTRY)


def parse_intervention(data: dict[str, Any]) -> Intervention:
    """Validate one intervention dict (tensors may be lists); raises :class:`SpecError`."""
    if not isinstance(data, dict):
        raise SpecError(f"an intervention must be a JSON object, got {type(data).__name__}")
    kind = data.get("type")
    if kind not in _REGISTRY:
        raise SpecError(f"unknown intervention type {kind!r}; expected one of {sorted(_REGISTRY)}")
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise SpecError(f"intervention field names must be strings, got {bad[0]!r}")
    return _REGISTRY[kind](**data)  # the constructor raises the one-line SpecError


def _format_validation(e: ValidationError, kind: str) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in (kind, *err["loc"]))
        inp = err.get("input")
        shown = repr(inp) if not isinstance(inp, (list, dict)) or len(repr(inp)) < 80 else type(inp).__name__
        # a check of the whole intervention (no field in its location) names its own value in the message
        parts.append(f"{loc}: {err['msg'].removeprefix('Value error, ')}" + (f" (got {shown})" if err["loc"] else ""))
    return f"invalid intervention of type {kind!r}: " + "; ".join(parts)
