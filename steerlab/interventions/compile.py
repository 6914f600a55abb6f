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

from torch import Tensor

from steerlab.errors import SpecError, UnknownSiteError
from steerlab.interventions.base import ActOp, SiteIntervention
from steerlab.interventions.positions import StepState, check_positions
from steerlab.interventions.spec import as_set
from steerlab.models.handle import ModelHandle
from steerlab.models.sites import MOE_SITES, SiteRef
from steerlab.values import as_names

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
    editors: list[Any]  # reversible weight edits (apply/restore): ParamEditor, routing bias edits
    records: list[str]
    n_interventions: int
    selectors: list[Any] = field(default_factory=list)  # every position selector, checked per batch
    interventions: Any = None  # the validated InterventionSet it was compiled from (the remote path recompiles it)
    full_logits: bool = False  # an op at the logits site reads earlier positions: generate keeps every position's
    # ops that replace a whole activation: (the intervention as errors name it, its site, the input's (batch, pos))
    input_shapes: list[tuple[str, str, tuple[int, int]]] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# activation ops
# ---------------------------------------------------------------------------------------------
def _site_width(h: ModelHandle, ref: SiteRef) -> int:
    return h.vocab_size if ref.component == "logits" else h.d_model


def _compile_act(h: ModelHandle, iv: SiteIntervention) -> tuple[SiteRef, ActOp]:
    ref = h.site(iv.site)
    if ref.is_router:
        raise SpecError(
            f"site {iv.site!r} is a router output; use ExpertMask to change routing, not {type(iv).__name__}"
        )
    return ref, iv.compile_op(h, ref, _site_width(h, ref))


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
# ---------------------------------------------------------------------------------------------
# the plan
# ---------------------------------------------------------------------------------------------
def _as_btd(x: Tensor, state: StepState) -> Tensor:
    """Router outputs are flat ``[batch*seq, ...]``; give them the ``[batch, seq, ...]`` shape."""
    if x.ndim == 2 and x.shape[0] == state.batch * state.seq:
        return x.reshape(state.batch, state.seq, -1)
    return x


def compile_plan(h: ModelHandle, interventions: Any = None, record: list[str] | str | None = None) -> Plan:
    """Validate ``interventions`` and ``record`` against ``h`` and order the work per module.

    Raises :class:`SpecError`/:class:`UnknownSiteError` naming the intervention at fault; the
    model is not touched.
    """
    h.sync()
    ivs = as_set(interventions)
    record = list(dict.fromkeys(as_names(record or [], "record")))
    act_ops: dict[str, tuple[SiteRef, list[ActOp]]] = {}
    mid_ops: dict[int, list[ActOp]] = defaultdict(list)
    groups: dict[tuple[type, Any], list[tuple[int, Any]]] = defaultdict(list)  # routing edits per router
    editors: list[Any] = []
    input_shapes: list[tuple[str, str, tuple[int, int]]] = []
    for i, iv in enumerate(ivs):
        label = f"intervention {i}" + (f" ({iv.name})" if getattr(iv, "name", None) else "")
        try:
            if iv.kind == "routing":
                iv.validate(h)
                groups[(type(iv), iv.group_key())].append((i, iv))
            elif iv.kind == "weights":
                editors.append(iv.editor(h))
            else:
                ref, op = _compile_act(h, iv)
                if op.input_shape is not None:
                    input_shapes.append((label, ref.name, op.input_shape))
                if ref.component == "resid_mid":
                    mid_ops[ref.layer].append(op)  # type: ignore[index]
                else:
                    act_ops.setdefault(ref.name, (ref, []))[1].append(op)
        except (SpecError, UnknownSiteError) as e:
            raise type(e)(f"{label}: {e}") from None
    router_edits = [cls.compile_group(h, numbered) for (cls, _), numbered in groups.items()]
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
    for edit in router_edits:
        editors.extend(edit.editors)
        if edit.fn is not None:
            v = visit_for(h.site(edit.site))
            router_fns[(v.path, v.kind)].append(edit.fn)

    for ref in record_refs:
        visit_for(ref).records.append(ref.name)

    for k, v in visits.items():
        if k in router_fns:
            v.apply = _chain(router_fns[k])
        elif k in tensor_fns:
            v.apply = _chain(tensor_fns[k])
    ordered = sorted(visits.values(), key=lambda v: (v.key, v.kind != "input"))
    selectors = [iv.positions for iv in ivs if getattr(iv, "positions", "all") != "all"]
    full_logits = any(op.reads_prefix for ref, ops_list in act_ops.values() if ref.component == "logits"
                      for op in ops_list)
    return Plan(visits=ordered, editors=editors, records=record, n_interventions=len(ivs), selectors=selectors,
                interventions=ivs, full_logits=full_logits, input_shapes=input_shapes)


def check_inputs(plan: Plan, attention_mask: Tensor, *, generating: bool = False) -> None:
    """Raise :class:`SpecError`, before anything runs, where ``plan`` cannot run on this batch: a position
    selector past a row's prompt (:func:`~steerlab.interventions.positions.check_positions`), or an op that
    replaces a whole activation (a ``[batch, pos, d]`` patch) on an input of another shape, or in generation,
    whose steps after the first see one new position each.

    Example:
        >>> import torch, steerlab as sl
        >>> from steerlab.interventions import Patch
        >>> h = sl.load("shared:stories260K")
        >>> plan = compile_plan(h, [Patch(site="blocks.1.resid_post", value=torch.zeros(1, 3, 64))])
        >>> check_inputs(plan, torch.ones(1, 3))
        >>> check_inputs(plan, torch.ones(2, 3))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        steerlab.errors.SpecError: intervention 0: the patch value at 'blocks.1.resid_post' is for inputs of ...
    """
    check_positions(plan.selectors, attention_mask)
    for label, site, shape in plan.input_shapes:
        if generating:
            raise SpecError(f"{label}: a [batch, pos, d] patch value at {site!r} replaces the whole activation of "
                            "one plain forward; in generation use a [d] value, or [P, d] with P positions")
        if tuple(attention_mask.shape) != shape:
            raise SpecError(f"{label}: the patch value at {site!r} is for inputs of [batch, pos] {list(shape)}, "
                            f"got {list(attention_mask.shape)}")


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
