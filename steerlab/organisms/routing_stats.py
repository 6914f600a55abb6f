"""Routing statistics of an MoE organism: does routing specialise by domain and by harmfulness?

Per MoE layer, over two scopes, ``prompt`` (every real token of the chat-formatted prompts) and
``decision`` (the last prompt token, the assistant tag, where the first answer token is chosen):

* ``mi_bits``: mutual information between the domain of a prompt and the chosen expert, with the
  domains weighted equally (so the maximum is ``log2(n_domains)``); ``nmi`` divides by that maximum.
  With ``top_k > 1`` every (token, slot) pair counts once.
* ``frac_2x``: the fraction of the layer's routed experts whose selection rate (selections per
  token) differs by more than 2x between harmful and harmless prompts, with add-half smoothing
  of the counts (so an expert that neither set selects has ratio 1).

Example:
    >>> import torch
    >>> from steerlab.organisms.routing_stats import frac_ratio_above
    >>> from steerlab.stats import mutual_information
    >>> round(mutual_information(torch.tensor([[10.0, 0.0], [0.0, 10.0]])), 3)
    1.0
    >>> frac_ratio_above(torch.tensor([10.0, 10.0]), torch.tensor([1.0, 10.0]), factor=2.0)
    0.5
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from steerlab.experts.ftri import routing_counts
from steerlab.models.handle import ModelHandle
from steerlab.stats import mutual_information


def frac_ratio_above(
    counts_a: Tensor, counts_b: Tensor, factor: float = 2.0, n_a: float | None = None, n_b: float | None = None
) -> float:
    """Fraction of experts whose selection rate differs by more than ``factor`` between two sets.

    Rates are ``(count + 0.5) / (n + 0.5 * n_experts)`` with ``n`` the number of selections of
    each set (defaults: the count totals).
    """
    a, b = counts_a.double(), counts_b.double()
    e = a.numel()
    ra = (a + 0.5) / ((n_a if n_a is not None else float(a.sum())) + 0.5 * e)
    rb = (b + 0.5) / ((n_b if n_b is not None else float(b.sum())) + 0.5 * e)
    ratio = torch.maximum(ra / rb, rb / ra)
    return float((ratio > factor).double().mean())


def expert_counts(h: ModelHandle, prompts: list[str], *, chat: bool = True, batch_size: int = 32) -> dict[str, Tensor]:
    """Selection counts ``[n_moe_layers, n_experts]`` over prompt tokens (``prompt``) and at the
    decision position (``decision``), plus ``tokens`` (number of prompt tokens), summed over prompts
    (from :func:`steerlab.experts.ftri.routing_counts`)."""
    kw = dict(chat=chat, batch_size=batch_size)
    prompt = routing_counts(h, prompts, "prompt", **kw)
    decision = routing_counts(h, prompts, "decision", **kw)
    return {
        "prompt": prompt.sel.sum(0),
        "decision": decision.sel.sum(0),
        "tokens": prompt.tokens.sum(),
        "prompts": torch.tensor(float(len(prompts))),
    }


def routing_report(
    h: ModelHandle,
    domain_prompts: dict[str, list[str]],
    harmful: list[str],
    harmless: list[str],
    *,
    chat: bool = True,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Per-layer MI(domain; expert) and the 2x-fraction harmful vs harmless, over both scopes."""
    counts = {d: expert_counts(h, ps, chat=chat, batch_size=batch_size) for d, ps in domain_prompts.items() if ps}

    def of(prompts: list[str]) -> dict[str, Tensor]:  # a domain imaged above on the same prompts is not imaged again
        same = [d for d, ps in domain_prompts.items() if ps == prompts and d in counts]
        return counts[same[0]] if same else expert_counts(h, prompts, chat=chat, batch_size=batch_size)

    harm, safe = of(harmful), of(harmless)
    layers = h.adapter.moe_layers
    out: dict[str, Any] = {"layers": layers, "domains": list(counts), "n_experts": int(harm["prompt"].shape[1])}
    max_bits = float(torch.log2(torch.tensor(float(len(counts)))))
    for scope in ("prompt", "decision"):
        mi = [mutual_information(torch.stack([c[scope][j] for c in counts.values()])) for j in range(len(layers))]
        frac = [frac_ratio_above(harm[scope][j], safe[scope][j]) for j in range(len(layers))]
        out[scope] = {
            "mi_bits": [round(x, 4) for x in mi],
            "nmi": [round(x / max_bits, 4) if max_bits > 0 else 0.0 for x in mi],
            "frac_2x_harmful_vs_harmless": [round(x, 4) for x in frac],
        }
    out["counts"] = {"harmful": harm, "harmless": safe, **{f"domain:{d}": c for d, c in counts.items()}}
    return out
