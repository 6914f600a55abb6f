"""Random controls of the refusal study (steerlab.steering.apply.random_subspace, ablation.within_fifth) against
quantities computed from scratch: dot products and norms summed by hand, the rank from the singular values,
and a projection built without the code under test."""

from __future__ import annotations

import math

import pytest
import torch

from steerlab.errors import SpecError
from steerlab.steering.ablation import within_fifth
from steerlab.steering.apply import random_subspace


def _dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return math.fsum(float(x) * float(y) for x, y in zip(a.tolist(), b.tolist(), strict=True))


@pytest.mark.parametrize("k", [1, 3, 4])
def test_random_subspace_is_orthogonal_rank_k_and_norm_matched(k):
    d = 48
    g = torch.Generator().manual_seed(7)
    chosen = [torch.randn(d, generator=g) * (i + 1.5) for i in range(k)]  # norms ~ 10, 17, 24, 31
    r = random_subspace(chosen, seed=11)
    assert r.shape == (k, d) and r.dtype == torch.float32
    for i in range(k):
        assert math.sqrt(_dot(r[i], r[i])) == pytest.approx(math.sqrt(_dot(chosen[i], chosen[i])), rel=1e-5)
        for j in range(i + 1, k):
            assert abs(_dot(r[i], r[j])) < 1e-4 * math.sqrt(_dot(r[i], r[i]) * _dot(r[j], r[j]))
    unit = r.double() / r.double().norm(dim=1, keepdim=True)
    sv = torch.linalg.svdvals(unit)
    assert sv.shape == (k,) and torch.allclose(sv, torch.ones(k, dtype=torch.float64), atol=1e-5)  # orthonormal rows


def test_random_subspace_is_seeded_and_not_the_chosen_span():
    d, k = 64, 3
    chosen = torch.eye(d)[:k] * torch.tensor([[2.0], [3.0], [4.0]])  # the span of e0, e1, e2
    a, b, c = random_subspace(chosen, 5), random_subspace(chosen, 5), random_subspace(chosen, 6)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    # the part of each random row inside span(e0, e1, e2) is its first three coordinates: a random row keeps
    # most of its mass outside (expected fraction 3/64 inside); the chosen rows are all inside
    inside = [math.fsum(float(x) ** 2 for x in row[:k].tolist()) / _dot(row, row) for row in a]
    assert max(inside) < 0.5


def test_random_subspace_ablation_removes_exactly_its_span():
    """Projecting out the orthonormalized rows (the ablation) leaves x minus its least-squares fit on the rows,
    computed here by the normal equations."""
    d = 16
    r = random_subspace([torch.ones(d), torch.arange(d, dtype=torch.float32) + 1.0], seed=3).double()
    x = torch.randn(5, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    coef = torch.linalg.solve(r @ r.T, r @ x.T)  # normal equations
    expected = x - (r.T @ coef).T
    out = x.clone()
    for u in r / r.norm(dim=1, keepdim=True):  # rows are orthogonal, so successive projections are exact
        out = out - (out @ u)[:, None] * u
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)  # float32 rows


def test_random_subspace_bad_input():
    with pytest.raises(SpecError, match="zero norm"):
        random_subspace([torch.ones(4), torch.zeros(4)], 0)
    with pytest.raises(SpecError, match="5 directions in width 4; expected at most 4"):
        random_subspace(torch.ones(5, 4), 0)


def test_within_fifth_by_hand():
    assert within_fifth([0.8, 0.7], [[0.16, 0.0], [0.14, -0.3]])  # 0.8 / 5 = 0.16, 0.7 / 5 = 0.14
    assert not within_fifth([0.8, 0.7], [[0.16, 0.0], [0.15]])  # 0.15 > 0.14
    assert not within_fifth([0.5], [[0.0, 0.11]])  # the worst control counts
    assert within_fifth([0.5], [[-0.4]])  # a control moving the other way passes
    assert not within_fifth([0.0], [[0.01]]) and within_fifth([-0.2], [[0.0]])  # no effect: no room
