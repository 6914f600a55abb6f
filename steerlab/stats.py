"""Statistics every analysis shares: permutation tests, FDR, Fisher's exact test, empirical p-values,
bootstrap intervals and mutual information. Pure functions on tensors and lists, no model.

Example:
    >>> round(fisher_greater(9, 10, 1, 10), 5)  # (C(10,9)C(10,1) + 1) / C(20,10) = 101 / 184756
    0.00055
    >>> benjamini_hochberg(torch.tensor([0.01, 0.04, 0.03])).tolist()
    [0.029999999329447746, 0.03999999910593033, 0.03999999910593033]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from steerlab.values import check_count


def sigmoid(x: float) -> float:
    """The logistic function for any finite or infinite ``x``, without overflow (``1 / (1 + exp(-x))``
    overflows below x = -709).

    >>> sigmoid(0.0), sigmoid(-1e5), sigmoid(1e5), round(sigmoid(2.0), 4)
    (0.5, 0.0, 1.0, 0.8808)
    """
    return 0.5 * (1.0 + math.tanh(0.5 * x))


def ratio_permutation_pvalues(
    num: Float[Tensor, "units stats"],
    den: Float[Tensor, " units"],
    n_a: int,
    n_permutations: int = 2000,
    seed: int = 0,
    chunk: int = 256,
) -> Float[Tensor, " stats"]:
    """Two-sided permutation p-values of ``sum(num_a)/sum(den_a) - sum(num_b)/sum(den_b)`` per column.

    Units (rows; e.g. prompts, with their token counts as ``den``) are shuffled between group a (the
    first ``n_a`` rows) and group b; the p-value is ``(1 + #{|perm diff| >= |observed|}) / (1 +
    n_permutations)`` (all 1 with none).
    """
    check_count("n_permutations", n_permutations, 0)
    sel, tok = num.double(), den.double()

    def diff(labels: Tensor) -> Tensor:  # labels [P, N] bool, True = group a
        la = labels.double()
        lb = 1 - la
        fa = (la @ sel) / (la @ tok).clamp_min(1).unsqueeze(-1)
        fb = (lb @ sel) / (lb @ tok).clamp_min(1).unsqueeze(-1)
        return fa - fb

    obs = diff(torch.arange(sel.shape[0]).lt(n_a).unsqueeze(0))[0].abs()
    g = torch.Generator().manual_seed(seed)
    exceed = torch.zeros_like(obs)
    done = 0
    while done < n_permutations:
        p = min(chunk, n_permutations - done)
        order = torch.rand(p, sel.shape[0], generator=g).argsort(-1)
        exceed += (diff(order < n_a).abs() >= obs - 1e-12).double().sum(0)
        done += p
    return ((1 + exceed) / (1 + n_permutations)).float()


def benjamini_hochberg(p: Tensor) -> Tensor:
    """BH-adjusted q-values (same shape as ``p``), monotone and capped at 1."""
    flat = p.flatten().double()
    m = flat.numel()
    order = flat.argsort()
    ranked = flat[order] * m / torch.arange(1, m + 1, dtype=torch.float64)
    q = torch.flip(torch.cummin(torch.flip(ranked, [0]), 0).values, [0]).clamp(max=1.0)
    out = torch.empty_like(flat)
    out[order] = q
    return out.view(p.shape).to(p.dtype)


def fisher_greater(a_hits: int, a_n: int, b_hits: int, b_n: int) -> float:
    """One-sided Fisher exact test: P(a's hit rate is at least this much above b's) under no difference."""
    total_hits, total = a_hits + b_hits, a_n + b_n

    def log_hyper(x: int) -> float:
        return (
            math.lgamma(total_hits + 1)
            - math.lgamma(x + 1)
            - math.lgamma(total_hits - x + 1)
            + math.lgamma(total - total_hits + 1)
            - math.lgamma(a_n - x + 1)
            - math.lgamma(total - total_hits - a_n + x + 1)
            - (math.lgamma(total + 1) - math.lgamma(a_n + 1) - math.lgamma(total - a_n + 1))
        )

    hi = min(a_n, total_hits)
    return min(1.0, sum(math.exp(log_hyper(x)) for x in range(a_hits, hi + 1)))


def empirical_p(value: float, null: list[float], greater: bool = True) -> float:
    """``(1 + #{null at least as extreme}) / (1 + len(null))``."""
    hits = sum((v >= value) if greater else (v <= value) for v in null)
    return (1 + hits) / (1 + len(null))


def mutual_information(counts: Tensor) -> float:
    """MI in bits between rows (groups, weighted equally) and columns (experts) of a count table."""
    counts = counts.double()
    rows = counts.sum(1, keepdim=True)
    keep = rows[:, 0] > 0
    p_e_given_d = counts[keep] / rows[keep]
    n = int(keep.sum())
    if n == 0:
        return 0.0
    p_e = p_e_given_d.mean(0)
    ratio = torch.where(p_e_given_d > 0, p_e_given_d / p_e.clamp_min(1e-300), torch.ones_like(p_e_given_d))
    return float((p_e_given_d * torch.log2(ratio)).sum() / n)


def mean_ci(values: Sequence[float], level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Mean of the finite ``values`` with a percentile-bootstrap CI: ``{"mean", "lo", "hi", "n"}``."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return {"mean": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": 0}
    mean = float(v.mean())
    if v.size == 1:
        return {"mean": mean, "lo": mean, "hi": mean, "n": 1}
    rng = np.random.default_rng(seed)
    boots = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    a = (1 - level) / 2
    lo, hi = np.quantile(boots, [a, 1 - a])
    return {"mean": mean, "lo": float(lo), "hi": float(hi), "n": int(v.size)}
