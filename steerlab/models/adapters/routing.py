"""Router selection rules of the supported MoE families, as pure tensor functions.

Every transformers-5 router returns ``(router_logits, topk_weights, topk_indices)``. To switch
experts off or force them on *before* top-k, steerlab re-runs the family's selection rule on the
router's own logits with a mask applied. With an empty mask the result equals the router's output
exactly (tested per family), so the rule below is the single place a routing quirk is described.
"""

from __future__ import annotations

from dataclasses import dataclass

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
