"""Compile an intervention list (plus sites to record) into a :class:`Plan` for one model.

Compilation validates everything against the model (sites, widths, expert indices, parameter
names and shapes) before anything touches it, and orders the work in forward order: an engine
then visits each module once per forward, reads the value there, applies the compiled ops and
records what was asked. Nothing here knows how the model is run (see :mod:`steerlab.engines`).

Example:
    >>> import torch, steerlab as sl
    >>> from steerlab.interventions import AddVector
    >>> h = sl.load("shared:stories260K")
    >>> plan = compile_plan(h, [AddVector(site="blocks.2.resid_post", vector=torch.ones(64))])
    >>> [(v.path, v.kind) for v in plan.visits]
    [('model.layers.2', 'output')]
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from steerlab.errors import SpecError, UnknownSiteError
from steerlab.interventions import ops
from steerlab.interventions.positions import StepState
from steerlab.interventions.spec import (
    AddVector,
    ExpertMask,
    ParamEdit,
    Patch,
    ProjectOut,
    ScaleUnits,
    as_set,
)
from steerlab.interventions.weights import ParamEditor
from steerlab.models.adapters.routing import mask_problem, route
from steerlab.models.sites import MOE_SITES, SiteRef

ActFn = Callable[[Tensor, Any, StepState], Tensor]  # (activation [b, t, d], mask, state) -> activation
_COMPONENT_ORDER = {
    "embed": 0,
    "resid_pre": 0,
    "attn_out": 1,
    "resid_mid": 2,
    "router": 3,
    "mlp_out": 4,
    "resid_post": 5,
    "final_norm": 0,
    "logits": 1,
}


@dataclass
class ActOp:
    """One activation edit: ``fn`` applied at the positions selected by ``positions``."""

    fn: ActFn
    positions: Any
    additive: bool = False


@dataclass
class Visit:
    """One module read per forward, in forward order.

    ``kind`` is ``"input"`` (the module's first positional argument) or ``"output"``; ``element``
    picks a tuple element of the output (``None``: the tensor itself, or element 0 of a tuple).
    ``apply(value, state)`` returns the replacement value, or ``None`` to leave it unchanged.
    """

    key: tuple[int, int]
    path: str
    kind: str
    element: int | None
    apply: Callable[[Any, StepState], Any]
    records: list[str] = field(default_factory=list)
    is_router: bool = False
    scale: float = 1.0  # site value = scale x module value (see SiteRef.scale)


@dataclass
class Plan:
    """Everything an engine needs to run one intervention list on one model."""

    visits: list[Visit]
    editors: list[ParamEditor | SelectionBiasOff]
    records: list[str]
    n_interventions: int
    selectors: list[Any] = field(default_factory=list)  # every position selector, checked per batch


# ---------------------------------------------------------------------------------------------
# activation ops
# ---------------------------------------------------------------------------------------------
def _site_width(h: Any, ref: SiteRef) -> int:
    return h.vocab_size if ref.component == "logits" else h.d_model


def _check_width(ref: SiteRef, t: Tensor, width: int, field_name: str) -> None:
    if t.shape[-1] != width:
        raise SpecError(f"{field_name} width {t.shape[-1]} does not match site {ref.name!r}, whose width is {width}")


def _compile_act(h: Any, iv: Any) -> tuple[SiteRef, ActOp]:
    ref = h.site(iv.site)
    if ref.is_router:
        raise SpecError(
            f"site {iv.site!r} is a router output; use ExpertMask to change routing, not {type(iv).__name__}"
        )
    width = _site_width(h, ref)
    device, dtype = h.device, h.dtype
    if isinstance(iv, AddVector):
        _check_width(ref, iv.vector, width, "vector")
        vec, scale = iv.vector.to(device=device, dtype=dtype), iv.scale
        return ref, ActOp(lambda x, m, s: ops.add_vector(x, vec, scale, m), iv.positions, additive=True)
    if isinstance(iv, ProjectOut):
        _check_width(ref, iv.direction, width, "direction")
        d = iv.direction.to(device=device, dtype=dtype)
        return ref, ActOp(lambda x, m, s: ops.project_out(x, d, m), iv.positions)
    if isinstance(iv, ScaleUnits):
        bad = [u for u in iv.units if u >= width]
        if bad:
            raise SpecError(f"units {bad} out of range for site {ref.name!r} of width {width}; expected 0..{width - 1}")
        units = torch.tensor(iv.units, dtype=torch.long, device=device)
        factor = iv.scale
        return ref, ActOp(lambda x, m, s: ops.scale_units(x, units, factor, m), iv.positions)
    if isinstance(iv, Patch):
        _check_width(ref, iv.value, width, "value")
        val = iv.value.to(device=device, dtype=dtype)
        if val.ndim == 2:
            if not isinstance(iv.positions, list) or len(iv.positions) != val.shape[0]:
                raise SpecError(
                    f"patch value of shape {tuple(val.shape)} needs an explicit positions list of length "
                    f"{val.shape[0]}, got positions={iv.positions!r}"
                )
            return ref, ActOp(_rowwise_patch(val, list(iv.positions)), "all")

        def full(x: Tensor, m: Any, s: StepState) -> Tensor:
            if val.ndim == 3 and val.shape != x.shape:
                raise SpecError(
                    f"patch value shape {tuple(val.shape)} does not match activation shape {tuple(x.shape)}"
                )
            return ops.patch(x, val, m)

        return ref, ActOp(full, iv.positions)
    raise AssertionError(type(iv))  # pragma: no cover


def _rowwise_patch(val: Tensor, positions: list[int]) -> ActFn:
    def fn(x: Tensor, m: Any, state: StepState) -> Tensor:
        out = x
        for row, p in enumerate(positions):
            mask = state.mask([p], x.device)
            if mask is not False:
                out = ops.patch(out, val[row], mask)
        return out

    return fn


def run_ops(ops_list: list[ActOp], x: Tensor, state: StepState) -> Tensor:
    """Apply compiled ops in order at their positions (pure: ``x`` is not modified)."""
    for op in ops_list:
        m = state.mask(op.positions, x.device)
        if m is not False:
            x = op.fn(x, m, state)
    return x


# ---------------------------------------------------------------------------------------------
# expert masks
# ---------------------------------------------------------------------------------------------
def _validate_mask(h: Any, iv: ExpertMask) -> None:
    """Check one mask on its own: an MoE layer, expert indices in range, satisfiable by itself."""
    adapter = h.adapter
    if not adapter.is_moe:
        raise SpecError(f"ExpertMask needs an MoE model; {h.spec!r} ({adapter.family}) has no routed experts")
    if iv.layer >= adapter.n_layers:
        raise SpecError(f"expert mask layer {iv.layer} out of range; the model has {adapter.n_layers} layers")
    rule = adapter.layers[iv.layer].rule
    if rule is None:
        raise SpecError(f"layer {iv.layer} is not an MoE layer; MoE layers: {adapter.moe_layers}")
    n = rule.n_experts
    for what, idx in (("off", iv.off), ("on", iv.on), ("scale", list(iv.scale))):
        bad = [e for e in idx if not 0 <= e < n]
        if bad:
            raise SpecError(f"expert index {bad} in {what!r} out of range for layer {iv.layer}; expected 0..{n - 1}")
    problem = mask_problem(rule, set(iv.off), set(iv.on))
    if problem:
        raise SpecError(f"{problem} in layer {iv.layer}")


@dataclass(frozen=True)
class MergedMask:
    """The masks of one layer that apply at a position, merged: union of ``off`` and of ``on``,
    product of gate ``scale`` per expert, ``renormalize`` if any asks for it.

    >>> m = MergedMask.of([ExpertMask(layer=0, off=[1], scale={2: 0.5}), ExpertMask(layer=0, off=[3], scale={2: 0.5})])
    >>> sorted(m.off), m.scale
    ([1, 3], {2: 0.25})
    """

    off: frozenset[int]
    on: frozenset[int]
    scale: dict[int, float]
    renormalize: bool

    @classmethod
    def of(cls, masks: list[ExpertMask]) -> MergedMask:
        scale: dict[int, float] = {}
        for m in masks:
            for e, s in m.scale.items():
                scale[e] = scale.get(e, 1.0) * s
        return cls(
            off=frozenset(e for m in masks for e in m.off),
            on=frozenset(e for m in masks for e in m.on),
            scale=scale,
            renormalize=any(m.renormalize for m in masks),
        )


RouterOut = tuple  # (router_logits, topk_weights, topk_indices, ...)


def _merged_router(h: Any, layer: int, merged: MergedMask) -> Callable[[RouterOut], RouterOut]:
    """The router output redone under one merged mask; its tensors are built once.

    An off-only mask on a rule whose routing is local to the chosen experts
    (:attr:`RoutingRule.off_is_local`) returns the router's own output unchanged when no token chose
    an off expert, and otherwise redoes the routing.
    """
    parts = h.adapter.layers[layer]
    rule, device = parts.rule, h.device
    n = rule.n_experts

    def flags(idx: frozenset[int]) -> Tensor | None:
        if not idx:
            return None
        t = torch.zeros(n, dtype=torch.bool, device=device)
        t[sorted(idx)] = True
        return t

    off, on = flags(merged.off), flags(merged.on)
    gate_scale = None
    if merged.scale:
        gate_scale = torch.ones(n, dtype=torch.float32, device=device)
        for e, s in merged.scale.items():
            gate_scale[e] = s
    bias = h.adapter.router_bias(parts.router)
    only_off = off is not None and on is None and gate_scale is None and not merged.renormalize and rule.off_is_local

    def fn(out: RouterOut) -> RouterOut:
        logits, weights, indices = out[0], out[1], out[2]
        if only_off and not bool(off[indices].any()):  # type: ignore[index]
            return out
        w, idx = route(
            rule, logits, off=off, on=on, bias=bias, gate_scale=gate_scale, renormalize=merged.renormalize
        )
        return (logits, w.to(weights.dtype), idx, *out[3:])

    return fn


def _compile_layer_masks(h: Any, layer: int, masks: list[ExpertMask]) -> Callable[[RouterOut, StepState], RouterOut]:
    """One router edit for all ``masks`` of ``layer``: at each position the masks whose ``positions``
    select it are merged (:class:`MergedMask`) and routing is redone once from the router's logits."""
    groups: dict[str, list[ExpertMask]] = {}
    for m in masks:
        groups.setdefault(repr(m.positions), []).append(m)
    selectors = [g[0].positions for g in groups.values()]
    members = list(groups.values())
    routers: dict[int, Callable[[RouterOut], RouterOut]] = {}

    def router(bits: int) -> Callable[[RouterOut], RouterOut]:
        if bits not in routers:
            chosen = [m for g, ms in enumerate(members) if bits >> g & 1 for m in ms]
            routers[bits] = _merged_router(h, layer, MergedMask.of(chosen))
        return routers[bits]

    if len(selectors) == 1 and selectors[0] == "all":
        only = router(1)
        return lambda out, state: only(out)

    def fn(out: RouterOut, state: StepState) -> RouterOut:
        logits, weights, indices = out[0], out[1], out[2]
        sel = [state.mask(p, logits.device) for p in selectors]
        if all(m is None or m is False for m in sel):
            bits = sum(1 << g for g, m in enumerate(sel) if m is None)
            return router(bits)(out) if bits else out
        code = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        for g, m in enumerate(sel):
            if m is None:
                code += 1 << g
            elif m is not False:
                code += m.reshape(-1).long() << g
        w, idx = weights, indices
        for bits in code.unique().tolist():
            if bits:
                new = router(bits)(out)
                here = (code == bits).unsqueeze(1)
                w, idx = torch.where(here, new[1], w), torch.where(here, new[2], idx)
        return (logits, w, idx, *out[3:])

    return fn


class SelectionBiasOff:
    """Switches experts off through a router's selection-only bias (DeepSeek-V3's
    ``e_score_correction_bias``): ``-inf`` there keeps them out of every choice, weights untouched,
    exactly what :func:`route` does with ``off``, at no per-step cost. Restores the exact values.

    >>> import torch
    >>> bias = torch.zeros(4)
    >>> ed = SelectionBiasOff(bias, [1, 2]); ed.apply(); bias.tolist()
    [0.0, -inf, -inf, 0.0]
    >>> ed.restore(); bias.tolist()
    [0.0, 0.0, 0.0, 0.0]
    """

    def __init__(self, bias: Tensor, off: list[int]) -> None:
        self.bias, self.idx = bias, torch.tensor(sorted(off), dtype=torch.long, device=bias.device)
        self.saved: Tensor | None = None

    @torch.no_grad()
    def apply(self) -> None:
        self.saved = self.bias[self.idx].clone()
        self.bias[self.idx] = float("-inf")

    @torch.no_grad()
    def restore(self) -> None:
        if self.saved is not None:
            self.bias[self.idx] = self.saved
            self.saved = None


def _bias_editor(h: Any, layer: int, masks: list[ExpertMask]) -> SelectionBiasOff | None:
    """The bias edit that does ``masks`` when they switch experts off at every position and nothing
    else, on a router with a selection-only bias; ``None`` otherwise (routing is redone per step)."""
    merged = MergedMask.of(masks)
    if any(m.positions != "all" for m in masks) or merged.on or merged.scale or merged.renormalize:
        return None
    bias = h.adapter.router_bias(h.adapter.layers[layer].router)
    return None if bias is None or not merged.off else SelectionBiasOff(bias, sorted(merged.off))


# ---------------------------------------------------------------------------------------------
# the plan
# ---------------------------------------------------------------------------------------------
def _as_btd(x: Tensor, state: StepState) -> Tensor:
    """Router outputs are flat ``[batch*seq, ...]``; give them the ``[batch, seq, ...]`` shape."""
    if x.ndim == 2 and x.shape[0] == state.batch * state.seq:
        return x.reshape(state.batch, state.seq, -1)
    return x


def compile_plan(h: Any, interventions: Any = None, record: list[str] | None = None) -> Plan:
    """Validate ``interventions`` and ``record`` against ``h`` and order the work per module.

    Raises :class:`SpecError`/:class:`UnknownSiteError` naming the intervention at fault; the
    model is not touched.
    """
    ivs = as_set(interventions)
    record = list(dict.fromkeys(record or []))
    act_ops: dict[str, tuple[SiteRef, list[ActOp]]] = {}
    mid_ops: dict[int, list[ActOp]] = defaultdict(list)
    masks: dict[int, list[tuple[int, ExpertMask]]] = defaultdict(list)
    editors: list[ParamEditor | SelectionBiasOff] = []
    for i, iv in enumerate(ivs):
        try:
            if isinstance(iv, ExpertMask):
                _validate_mask(h, iv)
                masks[iv.layer].append((i, iv))
            elif isinstance(iv, ParamEdit):
                editors.append(ParamEditor(h, iv))
            else:
                ref, op = _compile_act(h, iv)
                if ref.component == "resid_mid":
                    mid_ops[ref.layer].append(op)  # type: ignore[index]
                else:
                    act_ops.setdefault(ref.name, (ref, []))[1].append(op)
        except (SpecError, UnknownSiteError) as e:
            label = f" ({iv.name})" if getattr(iv, "name", None) else ""
            raise type(e)(f"intervention {i}{label}: {e}") from None
    for layer, numbered in masks.items():
        # masks on one layer compose (see ExpertMask); all of them together must be satisfiable
        problem = mask_problem(
            h.adapter.layers[layer].rule,
            {e for _, m in numbered for e in m.off},
            {e for _, m in numbered for e in m.on},
        )
        if problem and len(numbered) > 1:
            which = ", ".join(str(i) for i, _ in numbered)
            raise SpecError(f"interventions {which} (expert masks on layer {layer}) combined: {problem}")
    record_refs = [h.site(s) for s in record]

    paths = {id(m): name for name, m in h.model.named_modules()}
    visits: dict[tuple[str, str], Visit] = {}
    n_layers = h.adapter.n_layers

    def key_of(ref: SiteRef) -> tuple[int, int]:
        if ref.layer is None:
            return (-1 if ref.component == "embed" else n_layers, _COMPONENT_ORDER[ref.component])
        comp = "router" if ref.is_router else ref.component
        return (ref.layer, _COMPONENT_ORDER[comp])

    def visit_for(ref: SiteRef) -> Visit:
        kind = ref.kind
        k = (paths[id(ref.module)], kind)
        if k not in visits:
            element = None if ref.is_router else ref.element
            visits[k] = Visit(
                key_of(ref), k[0], kind, element, apply=_identity, is_router=ref.is_router, scale=ref.scale
            )
        return visits[k]

    # plain activation sites: ops then records
    tensor_fns: dict[tuple[str, str], list[Callable[[Tensor, StepState], Tensor]]] = defaultdict(list)
    for _, (ref, ops_list) in act_ops.items():
        v = visit_for(ref)
        tensor_fns[(v.path, v.kind)].append(lambda x, s, ops_list=ops_list: run_ops(ops_list, x, s))

    # resid_mid edits act on the attention output: mid = pre + attn, so attn' = ops(pre + attn) - pre
    pre_store: dict[int, Tensor] = {}
    for layer, ops_list in mid_ops.items():
        attn_v = visit_for(h.site(f"blocks.{layer}.attn_out"))
        if all(op.additive for op in ops_list):
            tensor_fns[(attn_v.path, attn_v.kind)].append(lambda x, s, ops_list=ops_list: run_ops(ops_list, x, s))
            continue
        pre_v = visit_for(h.site(f"blocks.{layer}.resid_pre"))

        def keep(x: Tensor, s: StepState, layer: int = layer) -> Tensor:
            pre_store[layer] = x
            return x

        def mid(x: Tensor, s: StepState, layer: int = layer, ops_list: list[ActOp] = ops_list) -> Tensor:
            pre = pre_store.pop(layer)
            return run_ops(ops_list, pre + x, s) - pre

        tensor_fns[(pre_v.path, pre_v.kind)].insert(0, keep)
        tensor_fns[(attn_v.path, attn_v.kind)].append(mid)

    router_fns: dict[tuple[str, str], list[Callable]] = defaultdict(list)
    for layer, numbered in masks.items():
        layer_masks = [m for _, m in numbered]
        bias_off = _bias_editor(h, layer, layer_masks)
        if bias_off is not None:
            editors.append(bias_off)
            continue
        v = visit_for(h.site(f"blocks.{layer}.moe.router_logits"))
        router_fns[(v.path, v.kind)].append(_compile_layer_masks(h, layer, layer_masks))

    for ref in record_refs:
        visit_for(ref).records.append(ref.name)

    for k, v in visits.items():
        if k in router_fns:
            v.apply = _chain(router_fns[k])
        elif k in tensor_fns:
            v.apply = _chain(tensor_fns[k])
    ordered = sorted(visits.values(), key=lambda v: (v.key, v.kind != "input"))
    selectors = [iv.positions for iv in ivs if getattr(iv, "positions", "all") != "all"]
    return Plan(visits=ordered, editors=editors, records=record, n_interventions=len(ivs), selectors=selectors)


def _identity(value: Any, state: StepState) -> None:
    return None


def _chain(fns: list[Callable[[Any, StepState], Any]]) -> Callable[[Any, StepState], Any]:
    """Run ``fns`` in order; ``None`` when none of them replaced the value."""

    def apply(value: Any, state: StepState) -> Any:
        new = value
        for fn in fns:
            new = fn(new, state)
        return None if new is value else new

    return apply


def record_value(visit: Visit, value: Any, state: StepState, sink: dict[str, list[Tensor]]) -> None:
    """Append the recorded sites of ``visit`` (after its edits) to ``sink``, shaped ``[batch, seq, ...]``."""
    for name in visit.records:
        if name.endswith(MOE_SITES):
            t = value[MOE_SITES.index(name.rsplit(".", 1)[1])]
        else:
            t = value
        sink[name].append(_as_btd(t.detach(), state))
