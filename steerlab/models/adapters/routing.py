"""Router selection rules of the supported MoE families, as pure tensor functions.

Every transformers-5 router returns ``(router_logits, topk_weights, topk_indices)``. To switch
experts off or force them on *before* top-k, steerlab re-runs the family's selection rule on the
router's own logits with a mask applied. With an empty mask the result equals the router's output
exactly (tested per family), so the rule below is the single place a routing quirk is described.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor


@dataclass(frozen=True)
class RoutingRule:
    """How a router turns logits into (weights, indices).

    score: ``softmax`` (Mixtral, Qwen-MoE, OLMoE, DeepSeek-V2), ``sigmoid`` (DeepSeek-V3, with a
    selection-only bias), or ``topk_logits`` (Granite-MoE: top-k on logits, softmax over the k).
    group: ``None``, ``"top2sum"`` (DeepSeek-V3) or ``"max"`` (DeepSeek-V2 group-limited greedy).
    """

    n_experts: int
    top_k: int
    score: str = "softmax"
    norm_topk: bool = False
    scaling: float = 1.0
    group: str | None = None
    n_group: int = 1
    topk_group: int = 1
    sorted_topk: bool = True
    weights_dtype_follows_logits: bool = True

    @property
    def off_is_local(self) -> bool:
        """Whether switching experts off leaves a token's routing as it was when none of the experts
        it chose is off: true when a chosen weight does not depend on the other experts' scores (no
        softmax over all experts, or one renormalized over the k) and no expert groups are chosen.

        >>> [RoutingRule(n_experts=8, top_k=2, norm_topk=norm).off_is_local for norm in (False, True)]
        [False, True]
        """
        return (self.score != "softmax" or self.norm_topk) and (self.group is None or self.n_group == 1)


def mask_problem(rule: RoutingRule, off: set[int], on: set[int]) -> str | None:
    """Why switching ``off`` experts off and forcing ``on`` experts on cannot be honoured by ``rule``
    at every token (``None`` when it can). Grouped rules choose ``topk_group`` groups first, so the
    forced-on experts must fit in that many groups and, in the worst case, the chosen groups must
    still hold ``top_k`` routable experts (a ``top2sum`` group scores only with two of them).

    >>> r = RoutingRule(n_experts=4, top_k=2)
    >>> mask_problem(r, {0, 1, 2}, set())
    '3 of 4 experts switched off; at least top_k=2 must remain'
    """
    n, k = rule.n_experts, rule.top_k
    both = off & on
    if both:
        return f"experts {sorted(both)} are both switched off and forced on"
    if len(on) > k:
        return f"{len(on)} experts forced on ({sorted(on)}), but top_k is {k}"
    if n - len(off) < k:
        return f"{len(off)} of {n} experts switched off; at least top_k={k} must remain"
    if rule.group is None or rule.n_group <= 1:
        return None
    per = n // rule.n_group
    routable = [sum(e not in off for e in range(g * per, (g + 1) * per)) for g in range(rule.n_group)]
    on_groups = sorted({e // per for e in on})
    if len(on_groups) > rule.topk_group:
        return (
            f"forced-on experts {sorted(on)} lie in {len(on_groups)} expert groups, but only "
            f"topk_group={rule.topk_group} groups are chosen per token"
        )
    if rule.group == "top2sum" and any(routable[g] < 2 for g in on_groups):
        return f"a group holding a forced-on expert of {sorted(on)} needs a second routable expert to be scored"
    # a group scores only with its top one (max) or two (top2sum) experts routable; groups that do
    # not score are chosen only when too few others do, and then in any order
    need = 2 if rule.group == "top2sum" else 1
    scored = sorted(routable[g] for g in range(rule.n_group) if g not in on_groups and routable[g] >= need)
    unscored = sorted(routable[g] for g in range(rule.n_group) if g not in on_groups and routable[g] < need)
    free = rule.topk_group - len(on_groups)
    picked = scored[:free] if len(scored) >= free else scored + unscored[: free - len(scored)]
    worst = sum(routable[g] for g in on_groups) + sum(picked)
    if worst < k:
        return (
            f"switching off {sorted(off)} can leave {worst} routable experts in the topk_group={rule.topk_group} "
            f"chosen groups of {per}; at least top_k={k} must remain"
        )
    return None


def route(
    rule: RoutingRule,
    logits: Float[Tensor, "tokens experts"],
    *,
    off: Bool[Tensor, " experts"] | None = None,
    on: Bool[Tensor, " experts"] | None = None,
    bias: Float[Tensor, " experts"] | None = None,
    gate_scale: Float[Tensor, " experts"] | None = None,
    renormalize: bool = False,
) -> tuple[Float[Tensor, "tokens k"], Int[Tensor, "tokens k"]]:
    """Select experts for each token. ``off`` experts are never chosen (removed before top-k, so
    the next expert takes the slot; for softmax routers the probabilities renormalize over the
    remaining experts), ``on`` experts are always chosen (their weight is their natural score),
    ``gate_scale`` multiplies chosen experts' weights, ``renormalize`` rescales the chosen weights
    to sum to 1 (before any routed scaling factor).

    >>> import torch
    >>> r = RoutingRule(n_experts=4, top_k=1)
    >>> off = torch.tensor([True, False, False, False])
    >>> route(r, torch.tensor([[3.0, 1.0, 0.0, 0.0]]), off=off)[1].tolist()
    [[1]]
    """
    neg_inf = float("-inf")
    if rule.score == "softmax":
        masked = logits if off is None else logits.masked_fill(off, neg_inf)
        scores = torch.softmax(masked, dim=-1, dtype=torch.float32)
        choice = scores
    elif rule.score == "sigmoid":
        scores = logits.float().sigmoid()
        choice = scores if bias is None else scores + bias
        if off is not None:
            choice = choice.masked_fill(off, neg_inf)
    elif rule.score == "topk_logits":
        scores = logits.float()
        choice = scores if off is None else scores.masked_fill(off, neg_inf)
    else:  # pragma: no cover - rules are built by adapters
        raise ValueError(f"unknown routing score {rule.score!r}")

    if on is not None and bool(on.any()):
        choice = choice.masked_fill(on, float("inf"))

    if rule.group is not None:
        per_group = rule.n_experts // rule.n_group
        grouped = choice.view(-1, rule.n_group, per_group)
        if rule.group == "top2sum":
            group_scores = grouped.topk(2, dim=-1)[0].sum(dim=-1)
        else:
            group_scores = grouped.max(dim=-1).values
        group_idx = torch.topk(group_scores, k=rule.topk_group, dim=-1, sorted=False)[1]
        group_mask = torch.zeros_like(group_scores).scatter_(1, group_idx, 1)
        score_mask = group_mask.unsqueeze(-1).expand(-1, rule.n_group, per_group).reshape(-1, rule.n_experts)
        fill = neg_inf if rule.group == "top2sum" else 0.0
        if rule.group == "max" and (off is not None or on is not None):
            fill = neg_inf  # keep masked experts out even when few groups remain
        choice = choice.masked_fill(~score_mask.bool(), fill)

    indices = torch.topk(choice, rule.top_k, dim=-1, sorted=rule.sorted_topk)[1]
    if rule.score == "topk_logits":
        weights = torch.softmax(scores.gather(1, indices), dim=-1)
    else:
        weights = scores.gather(1, indices)
        if rule.group == "max" and off is None and on is None:
            weights = choice.gather(1, indices)
    if rule.norm_topk:
        denom = weights.sum(dim=-1, keepdim=True)
        weights = weights / (denom + 1e-20 if rule.score == "sigmoid" else denom)
    if gate_scale is not None:
        weights = weights * gate_scale[indices]
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True).clamp_min(1e-20)
    if rule.scaling != 1.0:
        weights = weights * rule.scaling
    if rule.weights_dtype_follows_logits:
        weights = weights.to(logits.dtype)
    return weights, indices


def route_by_groups(out: Any, masks: list, redo: Any) -> Any:
    """Router output ``out`` with each row re-routed by the mask groups that cover it (plain torch: also runs
    inside a remote trace). ``masks[g]`` is group ``g``'s rows (a bool tensor), ``None`` (every row) or
    ``False`` (no row); ``redo(bits)`` re-routes ``out`` with the groups whose bit is set. Rows are grouped by
    the set of groups covering them, and each distinct set is routed once."""
    if all(m is None or m is False for m in masks):
        bits = sum(1 << g for g, m in enumerate(masks) if m is None)
        return redo(bits) if bits else out
    logits = out[0]
    code = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    for g, m in enumerate(masks):
        if m is None:
            code += 1 << g
        elif m is not False:
            code += m.reshape(-1).long() << g
    w, idx = out[1], out[2]
    for bits in code.unique().tolist():
        if bits:
            new = redo(bits)
            here = (code == bits).unsqueeze(1)
            w, idx = torch.where(here, new[1], w), torch.where(here, new[2], idx)
    return (logits, w, idx, *out[3:])

