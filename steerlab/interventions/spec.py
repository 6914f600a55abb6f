"""Serializable intervention specs (pydantic). Tensors travel in a side safetensors file.

Position selectors (``positions``), in each row's own token coordinates (0 = its first real
token, padding excluded):

* ``"all"``: every position; ``"prompt"``: prompt tokens only; ``"generated"``: tokens produced
  by generation (positions at or after the prompt length; the first generated token is *computed*
  at the last prompt position, so it is affected only by ``"all"``/``"prompt"``/``{"last": k}``);
* ``{"last": k}``: the last ``k`` prompt tokens (``k=1`` is the decision position);
* ``[i, j, ...]``: explicit prompt positions.

Example:
    >>> import torch
    >>> from steerlab.interventions import AddVector, InterventionSet
    >>> iv = AddVector(site="blocks.1.resid_post", vector=torch.ones(64), scale=2.0, positions={"last": 1})
    >>> InterventionSet([iv]).to_json()["interventions"][0]["type"]
    'add_vector'
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from steerlab.atomic import atomic_write_bytes, atomic_write_text, safetensors_bytes
from steerlab.errors import SpecError


class LastK(BaseModel):
    model_config = ConfigDict(extra="forbid")
    last: int = Field(ge=1)


Positions = Literal["all", "prompt", "generated"] | LastK | list[Annotated[int, Field(ge=0)]]


def _to_tensor(value: Any, field_name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().float().clone()  # the spec owns its tensors
    else:
        try:
            t = torch.tensor(value, dtype=torch.float32)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{field_name} must be a tensor or a list of numbers, got {type(value).__name__}") from e
    if not torch.isfinite(t).all():
        bad = (~torch.isfinite(t)).nonzero()[:5].tolist()
        raise ValueError(f"{field_name} contains NaN or infinite values at indices {bad}; expected finite numbers")
    return t


class _Base(BaseModel):
    # allow_inf_nan=False: every float field (scales, values, gate scales) must be finite
    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", frozen=True, allow_inf_nan=False)
    name: str | None = None  # optional label, shown in artifacts and the dashboard


class _SiteOp(_Base):
    site: str
    positions: Positions = "all"


class AddVector(_SiteOp):
    """Add ``scale * vector`` to the activation at ``site`` (a steering vector)."""

    type: Literal["add_vector"] = "add_vector"
    vector: torch.Tensor
    scale: float = 1.0

    @field_validator("vector", mode="before")
    @classmethod
    def _vec(cls, v: Any) -> torch.Tensor:
        t = _to_tensor(v, "vector")
        if t.ndim != 1:
            raise ValueError(f"vector must be 1-D [d_model], got shape {tuple(t.shape)}")
        return t


class ProjectOut(_SiteOp):
    """Remove the component along ``direction`` (directional ablation): x - (x.u) u, u = d/|d|."""

    type: Literal["project_out"] = "project_out"
    direction: torch.Tensor

    @field_validator("direction", mode="before")
    @classmethod
    def _dir(cls, v: Any) -> torch.Tensor:
        t = _to_tensor(v, "direction")
        if t.ndim != 1:
            raise ValueError(f"direction must be 1-D [d_model], got shape {tuple(t.shape)}")
        if float(t.norm()) == 0.0:
            raise ValueError("direction has zero norm; expected a non-zero vector")
        return t


class ScaleUnits(_SiteOp):
    """Multiply chosen hidden units (feature dimensions) by ``scale`` (0 zeroes them)."""

    type: Literal["scale_units"] = "scale_units"
    units: list[Annotated[int, Field(ge=0)]]
    scale: float = 0.0


class Patch(_SiteOp):
    """Replace the activation at ``site`` with ``value``.

    ``value`` is ``[d]`` (same vector at every selected position), ``[P, d]`` (one row per explicit
    position in ``positions``) or ``[batch, pos, d]`` (a whole cached activation, plain forward only).
    """

    type: Literal["patch"] = "patch"
    value: torch.Tensor

    @field_validator("value", mode="before")
    @classmethod
    def _val(cls, v: Any) -> torch.Tensor:
        t = _to_tensor(v, "value")
        if t.ndim not in (1, 2, 3):
            raise ValueError(f"value must be [d], [P, d] or [batch, pos, d], got shape {tuple(t.shape)}")
        return t


class ExpertMask(_Base):
    """Switch routed experts of one MoE layer off (removed before top-k), force them on, or
    rescale their gate weights; ``renormalize`` rescales the chosen weights to sum to 1.

    Several masks on one layer compose: at each position, the masks whose ``positions`` select it
    merge into one (union of ``off``, union of ``on``, product of the ``scale`` factors of an expert,
    ``renormalize`` if any of them asks for it), and routing is redone once from the router's logits.
    All masks of a layer taken together must be satisfiable (whatever their positions): no expert
    both off and on, at least ``top_k`` experts left routable (for grouped routers, within the
    chosen groups), at most ``top_k`` forced on; otherwise compilation raises ``SpecError``.

    Example:
        >>> two = [ExpertMask(layer=1, off=[0]), ExpertMask(layer=1, off=[3], scale={2: 0.5})]
        >>> # routes exactly like ExpertMask(layer=1, off=[0, 3], scale={2: 0.5})
    """

    type: Literal["expert_mask"] = "expert_mask"
    layer: int = Field(ge=0)
    off: list[Annotated[int, Field(ge=0)]] = Field(default_factory=list)
    on: list[Annotated[int, Field(ge=0)]] = Field(default_factory=list)
    scale: dict[int, float] = Field(default_factory=dict)
    renormalize: bool = False
    positions: Positions = "all"


class ParamEdit(_Base):
    """Edit a parameter in place, reversibly (restored exactly on exit).

    ``op``: ``zero``, ``scale`` (by ``value``), ``noise`` (add N(0, value^2), seeded), ``add``
    (``delta`` tensor of the parameter's shape). ``indices`` (flat) or ``mask`` (bool, the
    parameter's shape) restrict the edit to a region; by default the whole parameter.
    """

    type: Literal["param_edit"] = "param_edit"
    param: str
    op: Literal["zero", "scale", "noise", "add"]
    value: float = 0.0
    seed: int = 0
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
        return None if v is None else _to_tensor(v, "delta")


Intervention = Annotated[
    AddVector | ProjectOut | ScaleUnits | Patch | ExpertMask | ParamEdit, Field(discriminator="type")
]
_ADAPTER: TypeAdapter = TypeAdapter(Intervention)
_TENSOR_FIELDS = ("vector", "direction", "value", "mask", "delta")


def parse_intervention(data: dict[str, Any]) -> Any:
    """Validate one intervention dict (tensors may be lists); raises :class:`SpecError`."""
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as e:
        raise SpecError(_format_validation(e, data)) from e


def _format_validation(e: ValidationError, data: Any) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"])
        inp = err.get("input")
        shown = repr(inp) if not isinstance(inp, (list, dict)) or len(repr(inp)) < 80 else type(inp).__name__
        parts.append(f"{loc}: {err['msg']} (got {shown})")
    kind = data.get("type") if isinstance(data, dict) else None
    return f"invalid intervention{f' of type {kind!r}' if kind else ''}: " + "; ".join(parts)


class InterventionSet:
    """An ordered, composable list of interventions; saved as JSON + safetensors."""

    def __init__(self, interventions: list[Any] | None = None) -> None:
        items = list(interventions or [])
        for i, iv in enumerate(items):
            if isinstance(iv, dict):
                items[i] = parse_intervention(iv)
            elif not isinstance(iv, (AddVector, ProjectOut, ScaleUnits, Patch, ExpertMask, ParamEdit)):
                raise SpecError(f"intervention {i} is a {type(iv).__name__}; expected an intervention model or dict")
        self.items = items

    def __iter__(self):  # noqa: ANN204
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __add__(self, other: InterventionSet | list) -> InterventionSet:
        return InterventionSet(self.items + list(other))

    def __repr__(self) -> str:
        return f"InterventionSet({[type(i).__name__ for i in self.items]})"

    # -- serialization -------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """JSON-able dict; tensors replaced by ``{"$tensor": key}`` references (see :meth:`tensors`)."""
        out = []
        for i, iv in enumerate(self.items):
            d = iv.model_dump(mode="python")
            for f in _TENSOR_FIELDS:
                if isinstance(d.get(f), torch.Tensor):
                    d[f] = {"$tensor": f"{i}.{f}"}
            if "scale" in d and isinstance(d["scale"], dict):
                d["scale"] = {str(k): v for k, v in d["scale"].items()}
            out.append(d)
        return {"format": "steerlab.interventions", "version": 1, "interventions": out}

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for i, iv in enumerate(self.items):
            for f in _TENSOR_FIELDS:
                t = getattr(iv, f, None)
                if isinstance(t, torch.Tensor):
                    out[f"{i}.{f}"] = t.to(torch.uint8) if t.dtype == torch.bool else t
        return out

    def save(self, path: str | Path) -> Path:
        """Write the set to ``path`` (JSON) and its tensors, if any, to the content-named side file
        ``STEM.<sha256 of the tensors, 16 hex>.safetensors`` that the JSON names in ``tensors_file``.

        Crash-safe: the side file is written in full (fsynced, renamed into place) before the JSON,
        which then replaces the old JSON in one ``os.replace``, the single commit point (see
        :func:`~steerlab.artifacts.atomic_write_bytes`); side files of earlier saves are deleted only
        after it. So after a crash at any point, :meth:`load` returns the old set or the new set,
        tensors included; at worst an unused side file stays behind (the next save deletes it).
        Not guaranteed: two saves to one path at the same time (one may delete the other's side file).

        Example:
            >>> import tempfile, torch
            >>> from steerlab.interventions import AddVector
            >>> s = InterventionSet([AddVector(site="blocks.1.resid_post", vector=torch.ones(64))])
            >>> p = s.save(tempfile.mkdtemp() + "/steer.json")
            >>> InterventionSet.load(p).items[0].vector.sum().item()
            64.0
        """
        import hashlib
        import re

        path = Path(path)
        tensors = self.tensors()
        meta = self.to_json()
        keep = None
        if tensors:
            data = safetensors_bytes(tensors)
            keep = f"{path.stem}.{hashlib.sha256(data).hexdigest()[:16]}.safetensors"
            meta["tensors_file"] = keep
            atomic_write_bytes(path.with_name(keep), data)
        atomic_write_text(path, json.dumps(meta, indent=2))
        stale = re.compile(rf"{re.escape(path.stem)}(\.[0-9a-f]{{16}})?\.safetensors")  # also the unhashed name
        for f in path.parent.iterdir():
            if f.name != keep and stale.fullmatch(f.name):
                f.unlink(missing_ok=True)
        return path

    @classmethod
    def load(cls, path: str | Path) -> InterventionSet:
        """Read a spec written by :meth:`save` (or hand-written JSON with inline lists); its tensors
        come from the side file that the JSON names (``tensors_file``). Raises :class:`SpecError`."""
        path = Path(path)
        if not path.exists():
            raise SpecError(f"intervention spec file {str(path)!r} does not exist")
        try:
            meta = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise SpecError(f"intervention spec {str(path)!r} is not valid JSON: {e.msg} at line {e.lineno}") from e
        except (OSError, UnicodeDecodeError) as e:
            raise SpecError(f"intervention spec {str(path)!r} cannot be read: {e}") from e
        return cls.from_json(meta, base_dir=path.parent)

    @classmethod
    def from_json(cls, meta: Any, base_dir: Path | None = None) -> InterventionSet:
        """Build a set from :meth:`to_json` output (``tensors_file`` resolved against ``base_dir``)
        or a bare list of intervention dicts. Raises :class:`SpecError` naming what is wrong."""
        if isinstance(meta, list):
            meta = {"interventions": meta}
        if not isinstance(meta, dict) or not isinstance(meta.get("interventions"), list):
            raise SpecError("intervention spec must be a JSON object with an 'interventions' list (or a bare list)")
        tensors: dict[str, torch.Tensor] = {}
        if meta.get("tensors_file"):
            from safetensors import SafetensorError
            from safetensors.torch import load_file

            side = (base_dir or Path(".")) / meta["tensors_file"]
            if not side.exists():
                raise SpecError(f"tensors file {str(side)!r} named by the spec does not exist")
            try:
                tensors = load_file(str(side))
            except (OSError, SafetensorError) as e:
                raise SpecError(
                    f"tensors file {str(side)!r} named by the spec is not a readable safetensors file ({e}); "
                    "expected the tensors written by InterventionSet.save"
                ) from e
        items = []
        for i, d in enumerate(meta["interventions"]):
            if not isinstance(d, dict):
                raise SpecError(f"intervention {i} must be a JSON object, got {type(d).__name__}")
            d = dict(d)
            for f in _TENSOR_FIELDS:
                ref = d.get(f)
                if isinstance(ref, dict) and "$tensor" in ref:
                    if ref["$tensor"] not in tensors:
                        raise SpecError(f"intervention {i}: tensor {ref['$tensor']!r} missing from the tensors file")
                    d[f] = tensors[ref["$tensor"]]
            if isinstance(d.get("scale"), dict):
                scale = {}
                for k, v in d["scale"].items():
                    try:
                        scale[int(k)] = v
                    except (TypeError, ValueError):
                        raise SpecError(
                            f"intervention {i}: scale key {k!r} is not an integer; expected expert indices as keys, "
                            'e.g. {"3": 0.5}'
                        ) from None
                d["scale"] = scale
            items.append(parse_intervention(d))
        return cls(items)


def as_set(interventions: Any) -> InterventionSet:
    """Coerce ``None``, a single intervention, a list, a path or a set into an :class:`InterventionSet`."""
    if interventions is None:
        return InterventionSet([])
    if isinstance(interventions, InterventionSet):
        return interventions
    if isinstance(interventions, (str, Path)):
        return InterventionSet.load(interventions)
    if isinstance(interventions, (list, tuple)):
        return InterventionSet(list(interventions))
    return InterventionSet([interventions])
