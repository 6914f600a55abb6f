"""Directions turned into interventions of the registry: add with a scale, ablate at every layer, or add
only where a probe fires. Each helper validates up front (width against the model, finite scales, known
sites) with a one-line :class:`~steerlab.errors.SpecError`, and returns plain registered types
(:class:`~steerlab.interventions.AddVector`, :class:`~steerlab.interventions.ProjectOut`,
:class:`~steerlab.interventions.ConditionalAdd`) that compose with every other type, with and without the
KV cache.

Example:
    >>> import torch
    >>> from steerlab.models.tiny import tiny_model
    >>> h = tiny_model("llama")
    >>> v = torch.ones(h.d_model)
    >>> add(h, v, "blocks.1.resid_post", 4.0, positions="generated").describe()
    'scale 4'
    >>> len(ablate_everywhere(h, v)) == 3 * h.adapter.n_layers
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from steerlab.errors import SpecError
from steerlab.interventions import AddVector, ConditionalAdd, ProjectOut
from steerlab.models.handle import ModelHandle
from steerlab.steering.logistic import LinearProbe
from steerlab.values import as_names

COMPONENTS = ("resid_pre", "resid_mid", "resid_post")


def check_scales(scales: Sequence[Any] | Any, what: str = "scale") -> list[float]:
    """The scales as floats; a non-number (a string, a bool) or a NaN/infinite one is a :class:`SpecError`
    naming it (``what``: the argument's name in the message)."""
    values = list(scales) if isinstance(scales, (list, tuple)) else [scales]
    out = []
    for s in values:
        if isinstance(s, (str, bytes, bool)):
            raise SpecError(f"{what} {s!r} is not a number; expected finite numbers")
        try:
            f = float(s)
        except (TypeError, ValueError) as e:
            raise SpecError(f"{what} {s!r} is not a number; expected finite numbers") from e
        if not math.isfinite(f):
            raise SpecError(f"{what} {s!r} is not finite; expected finite numbers")
        out.append(f)
    if not out:
        raise SpecError(f"no {what}s given; expected at least one finite number")
    return out


def _check_flag(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise SpecError(f"{what} must be True or False, got {value!r}")
    return value


def _check_vec(h: ModelHandle, v: Tensor, what: str) -> Tensor:
    v = torch.as_tensor(v).detach().float().cpu()
    if v.ndim != 1 or v.shape[0] != h.d_model:
        raise SpecError(f"{what} has shape {tuple(v.shape)}; {h.spec} expects a vector of width d_model={h.d_model}")
    if not torch.isfinite(v).all():
        raise SpecError(f"{what} has NaN or infinite values; expected finite numbers")
    return v


def unit(v: Tensor) -> Tensor:
    """``v / |v|`` (a zero vector is a :class:`SpecError`)."""
    n = float(v.norm())
    if n == 0.0:
        raise SpecError("the direction has zero norm; expected a non-zero vector")
    return v / n


def add(
    h: ModelHandle, vector: Tensor, site: str, scale: float, *, positions: Any = "all", normalize: bool = True,
    name: str | None = None,
) -> AddVector:
    """Add ``scale * vector`` (``vector`` made unit-norm first unless ``normalize=False``) at ``site``."""
    (scale,) = check_scales(scale)
    h.site(site)
    v = _check_vec(h, vector, f"vector for {site!r}")
    v = unit(v) if _check_flag(normalize, "normalize") else v
    return AddVector(site=site, vector=v, scale=scale, positions=positions, name=name)


def orthonormal(vectors: Sequence[Tensor] | Tensor) -> Float[Tensor, "k d"]:
    """An orthonormal basis ``[k, d]`` of the span of ``vectors`` (QR; rank-deficient inputs are an error)."""
    m = torch.stack(list(vectors)) if not isinstance(vectors, Tensor) else vectors
    m = m.reshape(-1, m.shape[-1]).double()
    q, r = torch.linalg.qr(m.T)
    if bool((r.diagonal().abs() <= 1e-8 * max(float(r.diagonal().abs().max()), 1e-30)).any()):
        raise SpecError(f"the {m.shape[0]} directions are linearly dependent; expected independent directions")
    return q.T.float()


def ablate_everywhere(
    h: ModelHandle, vectors: Tensor | Sequence[Tensor], *, components: Sequence[str] | str = COMPONENTS,
    layers: Sequence[int] | int | None = None, name: str | None = None,
) -> list[ProjectOut]:
    """Project a direction (``[d]``) or a subspace (``[k, d]`` or a list) out of the residual stream at every
    layer (``components`` of each, where the model has them): the directional ablation of refusal-direction
    work. A subspace is orthonormalized first, so successive projections remove exactly its span."""
    vs = [vectors] if isinstance(vectors, Tensor) and vectors.ndim == 1 else list(vectors)
    basis = orthonormal([_check_vec(h, v, "ablated direction") for v in vs])
    components = as_names(components, "components")
    bad = [c for c in components if c not in COMPONENTS]
    if bad:
        raise SpecError(f"unknown residual components {bad}; expected some of {list(COMPONENTS)}")
    n = h.adapter.n_layers
    layer_list = list(range(n)) if layers is None else [layers] if isinstance(layers, int) else list(layers)
    wrong = [i for i in layer_list if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n]
    if wrong:
        raise SpecError(f"layers {wrong} are not layers of {h.spec}; expected integers in 0..{n - 1}")
    out = []
    for i in layer_list:
        for c in components:
            site = f"blocks.{i}.{c}"
            if site in h.sites:
                out += [ProjectOut(site=site, direction=u, name=name) for u in basis]
    if not out:
        raise SpecError(f"no residual site to ablate at for layers {layers} and components {list(components)}")
    return out


def conditional(
    h: ModelHandle, vector: Tensor, probe: LinearProbe, scale: float, *, mode: Literal["row", "from_step"] = "row",
    positions: Any = "all", threshold: float = 0.0, normalize: bool = True, name: str | None = None,
) -> ConditionalAdd:
    """Add ``scale * vector`` at the probe's site only where the probe fires (see
    :class:`~steerlab.interventions.ConditionalAdd`)."""
    (scale,) = check_scales(scale)
    (threshold,) = check_scales(threshold, "threshold")
    h.site(probe.site)
    v = _check_vec(h, vector, "steering vector")
    w = _check_vec(h, probe.weight, f"probe weight at {probe.site!r}")
    v = unit(v) if _check_flag(normalize, "normalize") else v
    return ConditionalAdd(site=probe.site, vector=v, scale=scale, probe_weight=w,
                          probe_bias=probe.bias, threshold=threshold, mode=mode, positions=positions, name=name)


def random_like(v: Tensor, seed: int) -> Tensor:
    """A seeded random direction with the norm of ``v`` (the control of a steering or ablation effect)."""
    g = torch.Generator().manual_seed(int(seed))
    r = torch.randn(v.shape[-1], generator=g)
    return r / r.norm() * v.float().norm()


def random_subspace(vectors: Sequence[Tensor] | Tensor, seed: int) -> Float[Tensor, "k d"]:
    """The control of a subspace ablation: ``k`` seeded random, mutually orthogonal directions (``[k, d]``),
    row ``i`` with the norm of ``vectors[i]``, so the span has the rank of ``vectors`` and
    :func:`ablate_everywhere` treats it exactly as the chosen subspace (same rank, one row per chosen
    site/position). A zero-norm row is a :class:`SpecError`.

    Example:
        >>> import torch
        >>> r = random_subspace([torch.ones(8), 2 * torch.eye(8)[0]], seed=0)
        >>> r.shape, [round(float(n), 4) for n in r.norm(dim=1)], abs(float(r[0] @ r[1])) < 1e-5
        (torch.Size([2, 8]), [2.8284, 2.0], True)
    """
    m = torch.stack(list(vectors)) if not isinstance(vectors, Tensor) else vectors
    m = m.reshape(-1, m.shape[-1]).double()
    norms = m.norm(dim=1)
    if bool((norms == 0).any()):
        raise SpecError("a direction of the subspace has zero norm; expected non-zero vectors")
    if m.shape[0] > m.shape[1]:
        raise SpecError(f"{m.shape[0]} directions in width {m.shape[1]}; expected at most {m.shape[1]}")
    g = torch.Generator().manual_seed(int(seed))
    q, _ = torch.linalg.qr(torch.randn(m.shape[1], m.shape[0], generator=g, dtype=torch.float64))
    return (q.T * norms[:, None]).float()

