"""Expert masks: switch routed experts of an MoE layer off, force them on, rescale their gates.

Masks on one layer compose (:class:`MergedMask`) and are validated together; routing is redone
from the router's logits with the family's own rule (:func:`steerlab.models.adapters.routing.route`).

Example:
    >>> ExpertMask(layer=1, off=[0, 3], renormalize=True).describe()
    'off [0, 3], renormalized'
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator
from torch import Tensor

from steerlab.errors import SpecError
from steerlab.interventions.base import Intervention, Kind, Positions, register_intervention
from steerlab.interventions.positions import StepState
from steerlab.models.adapters.routing import mask_problem, route, route_by_groups
from steerlab.models.handle import ModelHandle

RouterOut = tuple  # (router_logits, topk_weights, topk_indices, ...)
RouterFn = Callable[[RouterOut, StepState], RouterOut]


@dataclass
class RoutingEdit:
    """What a group of routing interventions compiles to: an edit ``fn`` of the router output at
    ``site`` (per step), and/or reversible weight ``editors`` applied for the call."""

    site: str | None
    fn: RouterFn | None
    editors: list[Any]


@register_intervention
class ExpertMask(Intervention):
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

    kind: ClassVar[Kind] = "routing"

    @field_validator("scale", mode="before")
    @classmethod
    def _expert_keys(cls, v: Any) -> Any:
        """JSON object keys are strings: ``{"2": 0.5}`` is expert 2 (only decimal integer strings)."""
        if isinstance(v, dict):
            return {int(k) if isinstance(k, str) and k.isdecimal() else k: x for k, x in v.items()}
        return v

    def where(self) -> str:
        return f"layer {self.layer}"

    def describe(self) -> str:
        parts = [f"off {self.off}"] if self.off else []
        parts += [f"on {self.on}"] if self.on else []
        parts += [f"gate x {self.scale}"] if self.scale else []
        return ", ".join(parts + (["renormalized"] if self.renormalize else []))

    # -- compilation: masks on one router are compiled together ---------------------------------
    def group_key(self) -> int:
        """Masks with the same key act on one router and compose (:meth:`compile_group`)."""
        return self.layer

    def validate(self, h: ModelHandle) -> None:
        """Check this mask alone against ``h`` (raises :class:`SpecError`)."""
        _validate_mask(h, self)

    @staticmethod
    def compile_group(h: ModelHandle, numbered: list[tuple[int, ExpertMask]]) -> RoutingEdit:
        """One router edit for all the masks of a layer (numbered by their place in the list), which
        taken together must be satisfiable; or, where it computes the same, a reversible weight edit."""
        layer = numbered[0][1].layer
        problem = mask_problem(
            h.adapter.layers[layer].rule,
            {e for _, m in numbered for e in m.off},
            {e for _, m in numbered for e in m.on},
        )
        if problem and len(numbered) > 1:
            which = ", ".join(str(i) for i, _ in numbered)
            raise SpecError(f"interventions {which} (expert masks on layer {layer}) combined: {problem}")
        masks = [m for _, m in numbered]
        bias_off = _bias_editor(h, layer, masks)
        if bias_off is not None:  # off-only at every position on a selection-bias router: a weight edit
            return RoutingEdit(None, None, [bias_off])
        return RoutingEdit(f"blocks.{layer}.moe.router_logits", _compile_layer_masks(h, layer, masks), [])


def _validate_mask(h: ModelHandle, iv: ExpertMask) -> None:
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


def _merged_router(h: ModelHandle, layer: int, merged: MergedMask) -> Callable[[RouterOut], RouterOut]:
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


def _compile_layer_masks(h: ModelHandle, layer: int, masks: list[ExpertMask]) -> RouterFn:
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
        masks = [state.mask(p, out[0].device) for p in selectors]
        return route_by_groups(out, masks, lambda bits: router(bits)(out))

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


def _bias_editor(h: ModelHandle, layer: int, masks: list[ExpertMask]) -> SelectionBiasOff | None:
    """The bias edit that does ``masks`` when they switch experts off at every position and nothing
    else, on a router with a selection-only bias; ``None`` otherwise (routing is redone per step)."""
    merged = MergedMask.of(masks)
    if any(m.positions != "all" for m in masks) or merged.on or merged.scale or merged.renormalize:
        return None
    bias = h.adapter.router_bias(h.adapter.layers[layer].router)
    return None if bias is None or not merged.off else SelectionBiasOff(bias, sorted(merged.off))
