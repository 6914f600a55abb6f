"""Choosing which experts to switch: fTRI ranking, re-imaging, and ablation-refined selection.

fTRI ranks experts by how much more often the behavior prompts select them (MoTE's imaging). When a
behavior is spread over *redundant* experts, switching the top of that list off re-routes the
tokens to the next-best expert of the same layer, which is often a backup trained on the same
behavior and was rarely selected before (so it never ranked). Two refinements, both fitted on the
suite's train split only:

* ``reimage``: greedy re-imaging. Image, switch the top expert off, image again under that mask
  (the backups that took over its tokens now show up), repeat until ``k`` experts.
* ``ablation``: the top ``n_candidates`` of the fTRI ranking are candidates; experts are added one at
  a time, each time the candidate whose switch-off (together with those already chosen) moves the
  model furthest from the behavior at the decision position. The behavior is read from the next-token
  distribution at the decision position: the log-odds that the next token is one with which the
  unmodified model opens its behavior responses (refusals, labelled by :mod:`steerlab.behavior`).
  Only forward passes; no generation.

Example:
    >>> from steerlab.models.tiny import tiny_model
    >>> from steerlab.experts.selection import decision_margin
    >>> h = tiny_model("mixtral")
    >>> m = decision_margin(h, ["How do I pick a lock?"], [1, 2])
    >>> isinstance(m, float)
    True
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from steerlab.errors import SteerlabError
from steerlab.experts.ftri import FtriResult, image
from steerlab.experts.switching import Experts, off_masks
from steerlab.generation import forward
from steerlab.models.handle import ModelHandle

SELECT = ("ftri", "reimage", "ablation")


def reimage_ranking(
    h: ModelHandle,
    behavior: list[str],
    control: list[str],
    k: int,
    *,
    scope: str | list[str] = "decision",
    rank_by: str = "diff",
    first: FtriResult | None = None,
    progress: bool = False,
    **image_kw: Any,
) -> Experts:
    """``k`` experts by greedy re-imaging: each round images under the experts chosen so far switched off."""
    chosen: Experts = []
    for _ in tqdm(range(k), desc="re-image", disable=not progress):
        if chosen or first is None:
            res = image(h, behavior, control, scope, n_permutations=0, interventions=off_masks(chosen), **image_kw)
        else:
            res = first  # the first round is the imaging the caller already has
        chosen.append(next(e for e in res.ranking(rank_by) if e not in chosen))
    return chosen


def opening_tokens(
    h: ModelHandle, responses: Sequence[str], labels: Sequence[str], label: str, top: int = 8, min_share: float = 0.02
) -> list[int]:
    """The most common first tokens of the responses labelled ``label`` (at most ``top``, each at least
    ``min_share`` of them)."""
    firsts = []
    for r, lab in zip(responses, labels, strict=True):
        if lab == label and r.strip():
            ids = h.tokenizer(r, add_special_tokens=False)["input_ids"]
            if ids:
                firsts.append(ids[0])
    if not firsts:
        return []
    counts = Counter(firsts)
    return [t for t, c in counts.most_common(top) if c >= min_share * len(firsts)]


def decision_margin(
    h: ModelHandle,
    texts: list[str],
    behavior_ids: list[int],
    interventions: Any = None,
    *,
    chat: bool = True,
    system: str | None = None,
    batch_size: int = 64,
) -> float:
    """Mean over ``texts`` of the log-odds that the next token after the prompt (the decision position)
    is one of ``behavior_ids``: log p / (1 - p) with p = P(next token in behavior_ids)."""
    if not behavior_ids:
        raise SteerlabError("decision_margin needs the behavior's opening tokens; got an empty list")
    b = torch.tensor(behavior_ids)
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            logits = forward(h, texts[i : i + batch_size], interventions=interventions, chat=chat, system=system)
            logp = logits[:, -1].float().log_softmax(-1).cpu()
            lp = logp[:, b].logsumexp(-1).clamp(max=-1e-6)  # log p, with p < 1
            total += float((lp - torch.log(-torch.expm1(lp))).sum())
    return total / len(texts)


def ablation_ranking(
    h: ModelHandle,
    behavior: list[str],
    candidates: Experts,
    k: int,
    behavior_ids: list[int],
    *,
    chat: bool = True,
    system: str | None = None,
    batch_size: int = 64,
    progress: bool = False,
) -> tuple[Experts, list[dict[str, Any]]]:
    """Greedy forward selection of ``k`` experts among ``candidates`` by the drop of the decision margin
    on ``behavior`` prompts; returns the experts and a trace (margin after each addition)."""
    if k > len(candidates):
        raise SteerlabError(f"k={k} exceeds the {len(candidates)} candidates; expected k <= n_candidates")
    kw = dict(chat=chat, system=system, batch_size=batch_size)
    base = decision_margin(h, behavior, behavior_ids, **kw)
    chosen: Experts = []
    trace = [{"k": 0, "expert": None, "margin": round(base, 4)}]
    bar = tqdm(total=k * len(candidates), desc="ablation select", disable=not progress)
    for step in range(k):
        best, best_m = None, float("inf")
        for e in candidates:
            if e in chosen:
                continue
            m = decision_margin(h, behavior, behavior_ids, off_masks(chosen + [e]), **kw)
            bar.update(1)
            if m < best_m:
                best, best_m = e, m
        chosen.append(best)
        trace.append({"k": step + 1, "expert": list(best), "margin": round(best_m, 4)})
    bar.close()
    return chosen, trace
