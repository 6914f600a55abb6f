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
from typing import Any

import torch

from steerlab.atomic import atomic_write_bytes, atomic_write_text, safetensors_bytes
from steerlab.errors import SpecError
from steerlab.interventions.activation import AddVector, Patch, ProjectOut, ScaleUnits
from steerlab.interventions.base import Intervention, LastK, Positions, parse_intervention
from steerlab.interventions.routing import ExpertMask
from steerlab.interventions.weights import ParamEdit
from steerlab.values import check_file_name, read_json

__all__ = [
    "AddVector",
    "ExpertMask",
    "Intervention",
    "InterventionSet",
    "LastK",
    "ParamEdit",
    "Patch",
    "Positions",
    "ProjectOut",
    "ScaleUnits",
    "as_set",
    "parse_intervention",
]


SPEC_FORMAT, SPEC_VERSION = "steerlab.interventions", 1  # what to_json writes and from_json reads

class InterventionSet:
    """An ordered, composable list of interventions; saved as JSON + safetensors."""

    def __init__(self, interventions: list[Any] | None = None) -> None:
        items = list(interventions or [])
        for i, iv in enumerate(items):
            if isinstance(iv, dict):
                items[i] = parse_intervention(iv)
            elif not isinstance(iv, Intervention):
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
            for f in type(iv).tensor_fields:
                if isinstance(d.get(f), torch.Tensor):
                    d[f] = {"$tensor": f"{i}.{f}"}
            for f, v in d.items():  # JSON object keys are strings (expert indices come back as ints)
                if isinstance(v, dict):
                    d[f] = {str(k): x for k, x in v.items()}
            out.append(d)
        return {"format": SPEC_FORMAT, "version": SPEC_VERSION, "interventions": out}

    def digest(self) -> str:
        """A canonical SHA-256 of the set: equal for equal lists (whatever the field or dict key order
        they were built with, tensors compared bit for bit), different when any value, tensor or the
        order of the interventions differs. Groups requests that share interventions.

        Example:
            >>> a = InterventionSet([{"type": "scale_units", "site": "blocks.0.mlp_out", "units": [1], "scale": 0.5}])
            >>> b = InterventionSet([{"scale": 0.5, "units": [1], "site": "blocks.0.mlp_out", "type": "scale_units"}])
            >>> a.digest() == b.digest()
            True
        """
        import hashlib

        hsh = hashlib.sha256(json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode())
        for key, t in sorted(self.tensors().items()):
            t = t.detach().cpu().contiguous()
            hsh.update(f"|{key}|{t.dtype}|{tuple(t.shape)}|".encode())
            hsh.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        return hsh.hexdigest()

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for i, iv in enumerate(self.items):
            for f in type(iv).tensor_fields:
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
        prev = None  # the side file the spec being replaced named (an older format's may be unhashed)
        try:
            prev = json.loads(path.read_text()).get("tensors_file") if path.is_file() else None
        except (OSError, ValueError, AttributeError):
            prev = None
        tensors = self.tensors()
        meta = self.to_json()
        keep = None
        if tensors:
            data = safetensors_bytes(tensors)
            keep = f"{path.stem}.{hashlib.sha256(data).hexdigest()[:16]}.safetensors"
            meta["tensors_file"] = keep
            atomic_write_bytes(path.with_name(keep), data)
        atomic_write_text(path, json.dumps(meta, indent=2))
        # only side files of this spec: hashed ones of its stem, and the one the replaced spec named; never
        # another file (a model's NAME.safetensors beside a NAME.json spec stays)
        stale = re.compile(rf"{re.escape(path.stem)}\.[0-9a-f]{{16}}\.safetensors")
        for f in path.parent.iterdir():
            if f.name != keep and (stale.fullmatch(f.name) or (isinstance(prev, str) and f.name == prev)):
                f.unlink(missing_ok=True)
        return path

    @classmethod
    def load(cls, path: str | Path) -> InterventionSet:
        """Read a spec written by :meth:`save` (or hand-written JSON with inline lists); its tensors
        come from the side file that the JSON names (``tensors_file``). Raises :class:`SpecError`."""
        path = Path(path)
        if not path.exists():
            raise SpecError(f"intervention spec file {str(path)!r} does not exist")
        return cls.from_json(read_json(path, f"intervention spec {str(path)!r}"), base_dir=path.parent)

    @classmethod
    def from_json(cls, meta: Any, base_dir: Path | None = None) -> InterventionSet:
        """Build a set from :meth:`to_json` output (``tensors_file``, a bare file name, resolved against ``base_dir``)
        or a bare list of intervention dicts. Raises :class:`SpecError` naming what is wrong."""
        if isinstance(meta, list):
            meta = {"interventions": meta}
        if not isinstance(meta, dict) or not isinstance(meta.get("interventions"), list):
            raise SpecError("intervention spec must be a JSON object with an 'interventions' list (or a bare list)")
        fmt, version = meta.get("format", SPEC_FORMAT), meta.get("version", SPEC_VERSION)
        if fmt != SPEC_FORMAT or version != SPEC_VERSION:
            raise SpecError(f"intervention spec has format {fmt!r} version {version!r}; expected {SPEC_FORMAT!r} "
                            f"version {SPEC_VERSION} (or neither key, for hand-written JSON)")
        tensors: dict[str, torch.Tensor] = {}
        if meta.get("tensors_file"):
            from safetensors import SafetensorError
            from safetensors.torch import load_file

            name = check_file_name(meta["tensors_file"], "tensors_file", "the spec, as InterventionSet.save writes it")
            side = (base_dir or Path(".")) / name
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
            for f, ref in list(d.items()):
                if isinstance(ref, dict) and "$tensor" in ref:
                    if ref["$tensor"] not in tensors:
                        raise SpecError(f"intervention {i}: tensor {ref['$tensor']!r} missing from the tensors file")
                    d[f] = tensors[ref["$tensor"]]
            try:
                items.append(parse_intervention(d))
            except SpecError as e:
                raise SpecError(f"intervention {i}: {e}") from None
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
