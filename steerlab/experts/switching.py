"""Switching experts at inference (MoTE): sets of ``(layer, expert)`` pairs turned into expert masks,
and the random control sets they are measured against.

``off``: the experts are removed before top-k, so the next expert takes each slot; ``on``: forced
into the top-k (at most ``top_k`` per layer, the best-ranked first); ``scale``: their gate weights
multiplied. ``renormalize`` rescales the chosen weights to sum to one. Shared experts are never
touched; sigmoid routers with a selection bias and group-limited routing are handled by each
family's routing rule (:mod:`steerlab.models.adapters.routing`).

Example:
    >>> [m.model_dump(include={"layer", "off"}) for m in off_masks([(1, 4), (0, 2), (1, 0)])]
    [{'layer': 0, 'off': [2]}, {'layer': 1, 'off': [0, 4]}]
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

from torch import Tensor

from steerlab.errors import SteerlabError
from steerlab.interventions import ExpertMask
from steerlab.values import check_count

Experts = list[tuple[int, int]]


def _by_layer(experts: Experts) -> dict[int, list[int]]:
    out: dict[int, list[int]] = defaultdict(list)
    for layer, e in experts:
        if e not in out[layer]:
            out[layer].append(e)
    return dict(sorted(out.items()))


def off_masks(experts: Experts, renormalize: bool = False, positions: Any = "all") -> list[ExpertMask]:
    """Switch ``experts`` off (one mask per layer)."""
    return [
        ExpertMask(layer=layer, off=sorted(es), renormalize=renormalize, positions=positions)
        for layer, es in _by_layer(experts).items()
    ]


def on_masks(experts: Experts, top_k: int, renormalize: bool = False, positions: Any = "all") -> list[ExpertMask]:
    """Force ``experts`` on, keeping at most ``top_k`` per layer in the order given (best-ranked first)."""
    check_count("top_k", top_k, 1)
    return [
        ExpertMask(layer=layer, on=sorted(es[:top_k]), renormalize=renormalize, positions=positions)
        for layer, es in _by_layer(experts).items()
    ]


def forceable(experts: Experts, top_k: int) -> Experts:
    """The subset :func:`on_masks` can actually force (at most ``top_k`` per layer)."""
    check_count("top_k", top_k, 1)
    return [(layer, e) for layer, es in _by_layer(experts).items() for e in es[:top_k]]


def scale_masks(experts: Experts, factor: float, renormalize: bool = False) -> list[ExpertMask]:
    """Multiply the gate weights of ``experts`` by ``factor``."""
    return [
        ExpertMask(layer=layer, scale={e: factor for e in es}, renormalize=renormalize)
        for layer, es in _by_layer(experts).items()
    ]


def random_controls(
    chosen: Experts,
    n_experts: int,
    n: int,
    *,
    seed: int = 0,
    base_freq: Tensor | None = None,
    layers: list[int] | None = None,
    window: int = 4,
) -> list[Experts]:
    """``n`` random expert sets matched to ``chosen`` by layer (same count per layer, never a chosen
    expert). With ``base_freq`` (``[n_moe_layers, n_experts]``, rows in ``layers`` order) each random
    expert is also matched by base selection rate: drawn among the ``window`` experts of its layer
    whose rate is closest to the chosen one's."""
    if not chosen:
        raise SteerlabError("no experts chosen; expected at least one (layer, expert) pair")
    check_count("n_experts", n_experts, 2)
    check_count("n", n, 0)
    check_count("window", window, 1)
    check_count("seed", seed, 0)
    out_of_range = [(la, e) for la, e in chosen if not 0 <= e < n_experts]
    if out_of_range:
        raise SteerlabError(f"experts {out_of_range} are out of range; expected expert ids in 0..{n_experts - 1}")
    rng = random.Random(seed)
    per_layer = _by_layer(chosen)
    if base_freq is not None:
        order = layers or sorted(per_layer)
        missing = [la for la in per_layer if la not in order]
        if missing or base_freq.shape != (len(order), n_experts):
            raise SteerlabError(f"base_freq of shape {tuple(base_freq.shape)} for layers {order}; expected "
                                f"[{len(order)}, {n_experts}] rows covering the chosen layers {sorted(per_layer)}")
    for layer, es in per_layer.items():
        if 2 * len(es) > n_experts:
            raise SteerlabError(
                f"layer {layer}: {len(es)} experts chosen of {n_experts}; no random control is possible "
                f"(it needs {len(es)} others, the layer has {n_experts - len(es)})"
            )
    sets = []
    for _ in range(n):
        picked: Experts = []
        for layer, es in per_layer.items():
            pool = [e for e in range(n_experts) if e not in es]
            if base_freq is None:
                picked += [(layer, e) for e in rng.sample(pool, len(es))]
                continue
            row = base_freq[(layers or sorted(per_layer)).index(layer)]
            taken: list[int] = []
            for e in es:
                cands = sorted((x for x in pool if x not in taken), key=lambda x: abs(float(row[x]) - float(row[e])))
                pick = rng.choice(cands[: max(1, window)])
                taken.append(pick)
            picked += [(layer, e) for e in taken]
        sets.append(picked)
    return sets
