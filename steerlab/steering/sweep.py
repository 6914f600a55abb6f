"""Scale sweeps: what adding a direction at each scale does to behavior, fluency and the next-token
distribution.

Per scale, :func:`scale_sweep` reports the behavior rates of the shared detector
(:func:`steerlab.behavior.behavior_rates`: refusal / fluent compliance / broken) on a suite's held-out
behavior and control prompts, the perplexity of harmless text (:func:`steerlab.capability.perplexity` on
:func:`~steerlab.capability.default_capability`) and the mean KL divergence ``KL(p_unsteered || p_steered)``
of the next-token distribution at the last prompt token of the control prompts (:func:`next_token_kl`).

Example:
    >>> import torch
    >>> from steerlab.models.tiny import tiny_model
    >>> h = tiny_model("llama")
    >>> kl = next_token_kl(h, ["Once upon a time"], [])
    >>> abs(kl) < 1e-6
    True
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from steerlab.behavior import behavior_rates
from steerlab.capability import CapabilityText, default_capability, perplexity
from steerlab.generation import forward
from steerlab.models.handle import ModelHandle
from steerlab.steering.apply import add, check_scales
from steerlab.steering.extract import suite_prompts
from steerlab.suites import ProbeSuite, load_suite


def kl_divergence(p_logits: Tensor, q_logits: Tensor) -> Tensor:
    """``KL(softmax(p) || softmax(q))`` per row, in nats."""
    lp, lq = torch.log_softmax(p_logits.double(), -1), torch.log_softmax(q_logits.double(), -1)
    return (lp.exp() * (lp - lq)).sum(-1)


def next_token_kl(h: ModelHandle, prompts: list[str], interventions: Any, *, chat: bool = False,
                  system: str | None = None, batch_size: int = 32) -> float:
    """Mean KL from the unsteered to the steered next-token distribution at each prompt's last token."""
    total = 0.0
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        base = forward(h, chunk, chat=chat, system=system)[:, -1]
        steered = forward(h, chunk, interventions=interventions, chat=chat, system=system)[:, -1]
        total += float(kl_divergence(base, steered).sum())
    return total / max(len(prompts), 1)


def scale_sweep(
    h: ModelHandle,
    vector: Tensor,
    site: str,
    scales: list[float],
    suite: ProbeSuite | str,
    *,
    split: str = "test",
    n: int | None = 64,
    positions: Any = "all",
    normalize: bool = True,
    max_new_tokens: int = 32,
    capability: CapabilityText | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """One row per scale (see the module docstring); scale 0 is the unsteered baseline."""
    scales = check_scales(scales)
    s = load_suite(suite) if isinstance(suite, str) else suite
    pos, neg = suite_prompts(s, split, n)
    kw = s.chat_kwargs()
    cap = capability or default_capability(h)
    rows = []
    for scale in tqdm(scales, desc="scales", disable=not progress):
        ivs = [add(h, vector, site, scale, positions=positions, normalize=normalize)] if scale != 0 else None
        rb = behavior_rates(h, pos, ivs, max_new_tokens=max_new_tokens, **kw)
        rc = behavior_rates(h, neg, ivs, max_new_tokens=max_new_tokens, **kw)
        rows.append({
            "scale": scale,
            **{f"{s.behavior}_{k}": v for k, v in rb.rates().items()},
            **{f"{s.control}_{k}": v for k, v in rc.rates().items()},
            "ppl": round(perplexity(h, cap, ivs), 4),
            "kl": round(next_token_kl(h, neg, ivs, **kw), 5) if ivs else 0.0,
            "example": rc.responses[0] if rc.responses else "",
        })
    return rows
