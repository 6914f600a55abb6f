"""Preference fits against independent computations: a one-property posterior solved by hand (mode, curvature)
and by numerical integration on a grid; correlations and clustering of judges by hand; a pair's breakdown."""

from __future__ import annotations

import math

import pytest
import torch

from steerlab.errors import SteerlabError
from steerlab.preferences.data import Pair, PairSet
from steerlab.preferences.fit import (
    FitResult,
    cluster_order,
    correlation_matrix,
    fit,
    fit_groups,
    judge_similarity,
    pair_breakdown,
)

torch.set_num_threads(1)
N, K, B = 100, 80, 0.1  # 100 pairs, A better on the one property in all, A wins 80
X = torch.ones(N, 1)
Y = torch.cat([torch.ones(K), torch.zeros(N - K)])


def _grid_posterior():
    """Posterior of w on a fine grid: k log s(w) + (n-k) log(1-s(w)) - |w|/b, normalized numerically."""
    w = torch.linspace(-1, 3, 40001, dtype=torch.float64)
    logp = K * torch.nn.functional.logsigmoid(w) + (N - K) * torch.nn.functional.logsigmoid(-w) - w.abs() / B
    p = torch.exp(logp - logp.max())
    p = p / p.sum()
    cdf = p.cumsum(0)
    return float((w * p).sum()), float(w[(cdf >= 0.05).nonzero()[0]]), float(w[(cdf >= 0.95).nonzero()[0]])


def test_laplace_matches_the_mode_and_curvature_by_hand():
    r = fit(X, Y, ["p"], method="laplace")
    # d/dw: K - N s(w) - 1/B = 0  ->  s(w) = (80 - 10) / 100 = 0.7
    mode = math.log(0.7 / 0.3)
    sd = 1 / math.sqrt(N * 0.7 * 0.3)
    assert r.mean.item() == pytest.approx(mode, abs=1e-5)
    assert r.lo.item() == pytest.approx(mode - 1.6449 * sd, abs=0.02)
    assert r.hi.item() == pytest.approx(mode + 1.6449 * sd, abs=0.02)
    assert r.preferred()["mean"].item() == pytest.approx(70.0, abs=1e-3)  # 100 * sigmoid(w) = 70%


@pytest.mark.parametrize("method", ["nuts", "svi"])
def test_sampling_methods_match_the_grid_posterior(method):
    mean, lo, hi = _grid_posterior()
    r = fit(X, Y, ["p"], method=method, chains=2, warmup=100, samples=300, svi_steps=300, seed=0)
    assert r.mean.item() == pytest.approx(mean, abs=0.04)
    assert r.lo.item() == pytest.approx(lo, abs=0.06) and r.hi.item() == pytest.approx(hi, abs=0.06)
    if method == "nuts":
        assert r.rhat is not None and r.rhat.item() < 1.05 and r.ess.item() > 100
        assert r.samples.shape == (600, 1)
    back = FitResult.from_json(r.to_json())
    assert torch.equal(back.mean, r.mean) and back.method == method


def test_fit_refuses_bad_input():
    with pytest.raises(SteerlabError, match="fit method 'mcmc' is unknown"):
        fit(X, Y, ["p"], method="mcmc")
    with pytest.raises(SteerlabError, match=r"expected \[pairs, 2\]"):
        fit(X, Y, ["p", "q"])
    with pytest.raises(SteerlabError, match="labels must be 0"):
        fit(X, Y * 2, ["p"])
    with pytest.raises(SteerlabError, match="prior_scale=0"):
        fit(X, Y, ["p"], prior_scale=0)


def test_fit_groups_fits_each_group_on_its_pairs():
    pairs = [Pair(str(i), labels={"j": "A" if i % 5 else "B"}, scenario="S" if i < 50 else "T",
                  annotations={"p": (1, 0)}) for i in range(100)]
    fits = fit_groups(PairSet(pairs), "j", ["p"], ["all", "S"], method="laplace")
    assert fits["all"].n_pairs == 100 and fits["S"].n_pairs == 50
    # 'all': 80 of 100 won -> mode at s = 0.7 (as above); 'S': 40 of 50 -> s = (40 - 10) / 50 = 0.6
    assert fits["S"].mean.item() == pytest.approx(math.log(0.6 / 0.4), abs=1e-5)
    with pytest.raises(SteerlabError, match="group 'U' has 0 pairs"):
        fit_groups(PairSet(pairs), "j", ["p"], ["U"], method="laplace")


def test_judge_similarity_by_hand():
    g1 = torch.tensor([[1.0, 2, 3], [2, 4, 6], [3, 2, 1]])
    g2 = torch.tensor([[1.0, 2, 3], [1, 3, 2], [3, 2, 1]])
    expected = torch.tensor([[1.0, 1, -1], [1, 1, -1], [-1, -1, 1]], dtype=torch.float64)
    assert torch.allclose(correlation_matrix(g1), expected)
    # corr([1,2,3],[1,3,2]) = 0.5 by hand; averaged with 1 from g1 -> 0.75
    s = judge_similarity(torch.stack([g1, g2]))
    assert s[0, 1].item() == pytest.approx(0.75) and s[1, 2].item() == pytest.approx((-1 - 0.5) / 2)
    assert correlation_matrix(torch.tensor([[1.0, 10, 100], [1, 2, 3]]), "spearman")[0, 1].item() == pytest.approx(1)


def test_cluster_order_puts_similar_judges_together():
    s = torch.tensor([[1, 0.1, 0.9, 0.0], [0.1, 1, 0.0, 0.8], [0.9, 0.0, 1, 0.1], [0.0, 0.8, 0.1, 1]])
    order = cluster_order(s)
    pos = {j: order.index(j) for j in range(4)}
    assert abs(pos[0] - pos[2]) == 1 and abs(pos[1] - pos[3]) == 1


def test_pair_breakdown_by_hand():
    b = pair_breakdown(torch.tensor([1.0, 0, -1]), torch.tensor([0.5, 2.0, 0.2]), ["x", "y", "z"])
    assert [r["property"] for r in b["contributions"]] == ["x", "z"]
    assert b["contributions"][1]["contribution"] == pytest.approx(-0.2)
    assert b["logit"] == pytest.approx(0.3) and b["p_a"] == pytest.approx(1 / (1 + math.exp(-0.3)))
    assert b["verdict"] == "A"


def test_laplace_interval_of_a_property_the_pairs_say_nothing_about_is_the_priors():
    """A property that never differs (an all-zero column) has no likelihood curvature: its posterior is the
    Laplace(0, b) prior, whose 90% interval is +-b ln 10 = +-0.230 (by hand). Collinear columns: the
    unconstrained direction keeps the prior's spread too (was about +-5e4 for both)."""
    x = torch.cat([X, torch.zeros(N, 1)], 1)
    r = fit(x, Y, ["p", "never"], method="laplace")
    assert r.mean[1].item() == 0.0
    assert r.lo[1].item() == pytest.approx(-B * math.log(10), abs=0.02)
    assert r.hi[1].item() == pytest.approx(B * math.log(10), abs=0.02)
    mode = math.log(0.7 / 0.3)  # the varying property is as before (test above)
    assert r.mean[0].item() == pytest.approx(mode, abs=1e-5)
    assert r.hi[0].item() - r.lo[0].item() == pytest.approx(2 * 1.6449 / math.sqrt(N * 0.21), abs=0.04)
    twin = fit(torch.cat([X, X], 1), Y, ["p", "same p"], method="laplace")
    assert (twin.hi - twin.lo).max().item() < 2.0
