"""Steering vectors in and out of other tools' formats.

**llama.cpp control vectors (GGUF)**, the format repeng's ``export_gguf`` writes: ``general.architecture =
"controlvector"``, ``controlvector.model_hint`` (string), ``controlvector.layer_count`` (uint32) and one F32
tensor ``direction.N`` of width ``d_model`` per layer. ``direction.N`` is added to the *output of decoder
block N* at every position, i.e. steerlab's ``blocks.N.resid_post`` (equally ``blocks.{N+1}.resid_pre``,
the same point of the residual stream). llama.cpp rejects ``direction.0``, so a direction at
``blocks.0.resid_post`` / ``blocks.1.resid_pre`` is refused with an error instead of writing a file
llama.cpp cannot load. Vectors are written raw (llama.cpp multiplies them by ``--control-vector-scaled``).

**steering-vectors** (``SteeringVector.layer_activations``, ``layer_type="decoder_block"``): ``{layer: [d]}``
added to the output of decoder layer ``layer``: also ``blocks.{layer}.resid_post``
(:func:`from_layer_vectors`).

Example:
    >>> import tempfile, torch
    >>> from steerlab.steering.vectors import Directions
    >>> d = Directions({"blocks.2.resid_post": torch.arange(4.0)}, {"model_type": "llama"})
    >>> path = export_gguf(d, tempfile.mkdtemp() + "/cv.gguf")
    >>> import_gguf(path)["blocks.2.resid_post"].tolist()
    [0.0, 1.0, 2.0, 3.0]
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from steerlab.atomic import atomic_write_bytes
from steerlab.errors import SpecError, SteerlabError
from steerlab.interventions import AddVector
from steerlab.steering.vectors import Directions

_POST = re.compile(r"^blocks\.(\d+)\.resid_post$")
_PRE = re.compile(r"^blocks\.(\d+)\.resid_pre$")


def gguf_layer(site: str) -> int:
    """The llama.cpp control-vector layer ``N`` (``direction.N``) of a steerlab site; raises for sites a
    control vector cannot express and for layer 0, which llama.cpp rejects."""
    m, p = _POST.match(site), _PRE.match(site)
    if m:
        n = int(m.group(1))
    elif p:
        n = int(p.group(1)) - 1
        if n < 0:
            raise SpecError(f"site {site!r} is the embedding output; llama.cpp control vectors act on block outputs")
    else:
        raise SpecError(
            f"site {site!r} cannot be a llama.cpp control vector: direction.N is added to the output of block N "
            "(blocks.N.resid_post)"
        )
    if n == 0:
        raise SpecError(
            f"site {site!r} maps to direction.0, which llama.cpp rejects (layer 0 is invalid in a control vector); "
            "export directions at blocks.1.resid_post or later"
        )
    return n


def export_gguf(directions: Directions, path: str | Path, *, model_hint: str | None = None) -> Path:
    """Write ``directions`` as a llama.cpp control-vector GGUF file (crash-safe: written in full elsewhere,
    then renamed into place). ``model_hint`` defaults to the directions' ``model_type`` metadata."""
    import gguf

    layers: dict[int, Tensor] = {}
    for site, v in directions.vectors.items():
        n = gguf_layer(site)
        if n in layers:
            raise SpecError(f"two directions map to direction.{n} (blocks.{n}.resid_post and blocks.{n + 1}.resid_pre)")
        layers[n] = v
    hint = model_hint or directions.meta.get("model_type") or "llama"
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "cv.gguf"
        w = gguf.GGUFWriter(str(f), "controlvector")
        w.add_string("controlvector.model_hint", str(hint))
        w.add_uint32("controlvector.layer_count", len(layers))
        for n in sorted(layers):
            w.add_tensor(f"direction.{n}", layers[n].float().numpy().astype(np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        return atomic_write_bytes(path, f.read_bytes())


def import_gguf(path: str | Path) -> Directions:
    """Read a llama.cpp control-vector GGUF file (as written by repeng or :func:`export_gguf`) into
    :class:`Directions` at ``blocks.N.resid_post``."""
    import gguf

    if not Path(path).exists():
        raise SpecError(f"control-vector file {str(path)!r} does not exist")
    try:
        r = gguf.GGUFReader(str(path))
    except (ValueError, OSError) as e:
        raise SteerlabError(f"{path} is not a readable GGUF file: {e}") from e

    def field(name: str) -> Any:
        f = r.fields.get(name)
        return None if f is None else f.contents()

    arch = field("general.architecture")
    if arch != "controlvector":
        raise SteerlabError(f"{path} is a GGUF file of architecture {arch!r}; expected 'controlvector'")
    vectors = {}
    for t in r.tensors:
        m = re.match(r"^direction\.(\d+)$", t.name)
        if m is None:
            raise SteerlabError(f"{path}: unexpected tensor {t.name!r}; a control vector holds direction.N tensors")
        if int(m.group(1)) == 0:
            raise SteerlabError(f"{path}: holds direction.0, which llama.cpp rejects; not a valid control vector")
        vectors[f"blocks.{int(m.group(1))}.resid_post"] = torch.from_numpy(np.array(t.data, dtype=np.float32)).flatten()
    count = field("controlvector.layer_count")
    if count is not None and int(count) != len(vectors):
        raise SteerlabError(f"{path}: layer_count says {count} but the file holds {len(vectors)} directions")
    meta = {"model_type": field("controlvector.model_hint"), "source": f"gguf:{os.path.basename(path)}"}
    return Directions(dict(sorted(vectors.items(), key=lambda kv: int(kv[0].split(".")[1]))), meta)


def from_layer_vectors(layer_vectors: dict[int, Tensor], meta: dict[str, Any] | None = None) -> Directions:
    """Directions from ``{layer: vector}`` added to decoder-layer outputs (steering-vectors'
    ``layer_activations`` with ``layer_type="decoder_block"``, repeng's ``ControlVector.directions``)."""
    if not layer_vectors:
        raise SpecError("no layer vectors to import")
    vecs = {f"blocks.{int(k)}.resid_post": torch.as_tensor(v).detach().float().flatten()
            for k, v in sorted(layer_vectors.items())}
    return Directions(vecs, dict(meta or {}))


def as_interventions(directions: Directions, scale: float = 1.0) -> list[AddVector]:
    """The directions added raw (times ``scale``) at their sites at every position: what llama.cpp,
    repeng and steering-vectors do with them."""
    return [AddVector(site=s, vector=v, scale=scale, name=f"{s} x {scale:g}") for s, v in directions.vectors.items()]
