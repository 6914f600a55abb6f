"""Bayesian logistic regression of a judge's labels on per-property comparisons, with pyro on torch.

The model of Li et al. 2024: ``P(A wins) = sigmoid(x . w)`` with ``x`` the comparisons ``sign(A - B)`` in
{-1, 0, 1}, no intercept, and ``w_i ~ Laplace(0, prior_scale)`` (0.1 in the paper). Three inference methods,
one potential (the negative log joint, built from ``pyro.distributions``):

* ``"nuts"`` -- ``pyro.infer.NUTS``: ``chains`` chains run one after the other from dispersed starts,
  split R-hat and effective sample size per property (:func:`pyro.ops.stats.split_gelman_rubin`,
  :func:`pyro.ops.stats.effective_sample_size`);
* ``"laplace"`` -- the posterior mode (L-BFGS) and a Gaussian with the inverse Hessian of the potential
  there (fast; the mode of a Laplace prior shrinks small weights harder than the posterior mean does);
* ``"svi"`` -- ``pyro.infer.SVI`` with a full-rank Gaussian guide (``AutoMultivariateNormal``).

Each returns a :class:`FitResult`: posterior means and equal-tailed credible intervals (``level``, 0.9 by
default) of each weight, read as ``100 * sigmoid(w)`` by :meth:`FitResult.preferred`. :func:`judge_similarity`
correlates judges' weight vectors (per group, then averaged over groups, as the paper does) and
:func:`cluster_order` orders them for a heatmap; :func:`pair_breakdown` explains one decision (each
property's contribution ``w_i x_i`` to the logit).

Example:
    >>> w = torch.tensor([1.0, -0.5, 0.0])
    >>> x, y = simulate_pairs(w, 2000, seed=0)
    >>> r = fit(x, y, ["a", "b", "c"], method="laplace")
    >>> [round(v) for v in r.mean.tolist()], r.lo[0] < 1.0 < r.hi[0]
    ([1, 0, 0], tensor(True))
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import MCMC, NUTS, SVI, Trace_ELBO
from pyro.infer.autoguide import AutoMultivariateNormal, init_to_value
from pyro.ops.stats import effective_sample_size, split_gelman_rubin
from torch import Tensor

from steerlab.errors import SteerlabError
from steerlab.generation import seeded_rng
from steerlab.preferences.data import PairSet
from steerlab.stats import sigmoid

Method = Literal["nuts", "laplace", "svi"]
METHODS: tuple[str, ...] = ("nuts", "laplace", "svi")
Progress = Callable[[str, float], None]  # (stage, fraction done in [0, 1])


@dataclass
class FitResult:
    """A fitted judge: per property the posterior mean weight and its ``level`` credible interval."""

    properties: list[str]
    mean: Tensor
    lo: Tensor
    hi: Tensor
    level: float
    method: str
    n_pairs: int
    prior_scale: float
    seconds: float = 0.0
    rhat: Tensor | None = None
    ess: Tensor | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    samples: Tensor | None = None  # [draws, properties] (NUTS and SVI/Laplace draws), not serialized to JSON

    def preferred(self) -> dict[str, Tensor]:
        """``100 * sigmoid`` of the mean and the interval ends: the chance (%) A wins on this property alone."""
        return {k: 100 * torch.sigmoid(getattr(self, k)) for k in ("mean", "lo", "hi")}

    def table(self) -> list[dict[str, Any]]:
        """One row per property: weight, interval, preferred-% and (NUTS) R-hat and ESS."""
        pref = self.preferred()
        rows = []
        for i, p in enumerate(self.properties):
            row = {"property": p, "weight": float(self.mean[i]), "lo": float(self.lo[i]), "hi": float(self.hi[i]),
                   "preferred": float(pref["mean"][i]), "preferred_lo": float(pref["lo"][i]),
                   "preferred_hi": float(pref["hi"][i])}
            if self.rhat is not None and self.ess is not None:
                row.update(rhat=float(self.rhat[i]), ess=float(self.ess[i]))
            rows.append(row)
        return rows

    def to_json(self) -> dict[str, Any]:
        out = {"properties": self.properties, "mean": self.mean.tolist(), "lo": self.lo.tolist(),
               "hi": self.hi.tolist(), "level": self.level, "method": self.method, "n_pairs": self.n_pairs,
               "prior_scale": self.prior_scale, "seconds": round(self.seconds, 3), "settings": self.settings}
        if self.rhat is not None and self.ess is not None:
            out.update(rhat=self.rhat.tolist(), ess=self.ess.tolist(), max_rhat=float(self.rhat.max()),
                       min_ess=float(self.ess.min()))
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> FitResult:
        t = lambda k: torch.tensor(d[k], dtype=torch.float64) if k in d else None  # noqa: E731
        return cls(properties=list(d["properties"]), mean=t("mean"), lo=t("lo"), hi=t("hi"), level=d["level"],
                   method=d["method"], n_pairs=d["n_pairs"], prior_scale=d["prior_scale"], seconds=d["seconds"],
                   rhat=t("rhat"), ess=t("ess"), settings=d.get("settings", {}))


def simulate_pairs(weights: Tensor, n_pairs: int, *, seed: int = 0, p_zero: float = 0.4) -> tuple[Tensor, Tensor]:
    """Synthetic comparisons: ``x`` in {-1, 0, 1} (0 with probability ``p_zero``, else +-1 equally) and labels
    ``y ~ Bernoulli(sigmoid(x . weights))``."""
    g = torch.Generator().manual_seed(seed)
    p = weights.shape[0]
    nonzero = torch.rand(n_pairs, p, generator=g) >= p_zero
    sign = torch.where(torch.rand(n_pairs, p, generator=g) < 0.5, -1.0, 1.0)
    x = sign * nonzero
    y = torch.bernoulli(torch.sigmoid(x @ weights.float()), generator=g)
    return x, y


def _check(x: Tensor, y: Tensor, properties: Sequence[str], method: str, prior_scale: float, level: float) -> None:
    if method not in METHODS:
        raise SteerlabError(f"fit method {method!r} is unknown; expected one of {list(METHODS)}")
    if x.ndim != 2 or x.shape[1] != len(properties):
        raise SteerlabError(f"features have shape {tuple(x.shape)}; expected [pairs, {len(properties)}] (properties)")
    if y.shape != (x.shape[0],):
        raise SteerlabError(f"labels have shape {tuple(y.shape)}; expected [{x.shape[0]}] (one per pair)")
    if x.shape[0] == 0:
        raise SteerlabError("no pairs to fit; expected at least one labelled pair")
    if not bool(((y == 0) | (y == 1)).all()):
        raise SteerlabError("labels must be 0 (B preferred) or 1 (A preferred)")
    if not (prior_scale > 0 and math.isfinite(prior_scale)):
        raise SteerlabError(f"prior_scale={prior_scale}; expected a positive number")
    if not 0 < level < 1:
        raise SteerlabError(f"level={level}; expected a credible level in (0, 1)")


def _potential(x: Tensor, y: Tensor, prior_scale: float) -> Callable[[Tensor], Tensor]:
    prior = dist.Laplace(torch.zeros((), dtype=x.dtype), torch.tensor(prior_scale, dtype=x.dtype))

    def u(w: Tensor) -> Tensor:
        return -(dist.Bernoulli(logits=x @ w).log_prob(y).sum() + prior.log_prob(w).sum())

    return u


def _model(x: Tensor, y: Tensor, prior_scale: float) -> None:
    w = pyro.sample("w", dist.Laplace(torch.zeros(x.shape[1], dtype=x.dtype), prior_scale).to_event(1))
    logits = torch.einsum("...p,np->...n", w, x)  # w may carry a leading particle dimension
    pyro.sample("y", dist.Bernoulli(logits=logits).to_event(1), obs=y)


def _intervals(draws: Tensor, level: float) -> tuple[Tensor, Tensor]:
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=draws.dtype)
    lo, hi = torch.quantile(draws, q, dim=0)
    return lo, hi


def fit(x: Tensor, y: Tensor, properties: Sequence[str], *, method: Method = "nuts", prior_scale: float = 0.1,
        level: float = 0.9, chains: int = 2, warmup: int = 300, samples: int = 500, svi_steps: int = 1000,
        seed: int = 0, progress: Progress | None = None, progress_bar: bool = False) -> FitResult:
    """Fit ``P(A wins) = sigmoid(x . w)`` with ``w ~ Laplace(0, prior_scale)``; see the module docstring.

    ``x``: ``[pairs, properties]`` comparisons; ``y``: 1 where A is preferred. ``progress(stage, fraction)`` is
    called as the fit advances (the dashboard's bar); ``progress_bar`` shows pyro's tqdm bar (the CLI). The
    caller's global generators (torch's, Python's, NumPy's) are as they were after the fit, also on error.
    """
    _check(x, y, properties, method, prior_scale, level)
    with seeded_rng(seed), _own_python_rngs():
        return _fit(x, y, properties, method, prior_scale, level, chains, warmup, samples, svi_steps, seed, progress,
                    progress_bar)


@contextmanager
def _own_python_rngs() -> Iterator[None]:
    """Python's and NumPy's global generators (which :func:`_seed` seeds, as ``pyro.set_rng_seed`` does) restored
    after the block."""
    py, npy = random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)


def _seed(seed: int) -> None:
    """``pyro.set_rng_seed`` on torch's CPU generator only (inside :func:`fit`'s block, which restores them all)."""
    torch.default_generator.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def _fit(x: Tensor, y: Tensor, properties: Sequence[str], method: Method, prior_scale: float, level: float,
         chains: int, warmup: int, samples: int, svi_steps: int, seed: int, progress: Progress | None,
         progress_bar: bool) -> FitResult:
    x, y = x.double(), y.double()
    p = x.shape[1]
    u = _potential(x, y, prior_scale)
    t0 = time.perf_counter()
    rhat = ess = None
    settings: dict[str, Any] = {"seed": seed}
    _seed(seed)
    if method == "nuts":
        if chains < 1 or warmup < 1 or samples < 2:
            raise SteerlabError(f"chains={chains}, warmup={warmup}, samples={samples}; expected >= 1, >= 1, >= 2")
        settings.update(chains=chains, warmup=warmup, samples=samples)
        per_chain = []
        for c in range(chains):
            _seed(seed + c)
            init = 0.3 * torch.randn(p, dtype=x.dtype)  # dispersed starts, so R-hat can see disagreement
            total = warmup + samples

            def hook(kernel: Any, params: Any, stage: str, i: int, c: int = c, total: int = total) -> None:
                if progress is not None and (i % 25 == 0 or i == total - 1):
                    progress(f"NUTS chain {c + 1}/{chains} ({stage})", (c + (i + 1) / total) / chains)

            kernel = NUTS(potential_fn=lambda params: u(params["w"]), adapt_step_size=True)
            mcmc = MCMC(kernel, num_samples=samples, warmup_steps=warmup, initial_params={"w": init},
                        disable_progbar=not progress_bar, hook_fn=hook)
            mcmc.run()
            per_chain.append(mcmc.get_samples()["w"])
        stacked = torch.stack(per_chain)  # [chains, samples, p]
        draws = stacked.reshape(-1, p)
        ess = effective_sample_size(stacked, chain_dim=0, sample_dim=1)
        rhat = split_gelman_rubin(stacked, chain_dim=0, sample_dim=1) if samples >= 4 else None
        mean = draws.mean(0)
    elif method == "laplace":
        mode = _mode(u, p, x.dtype)
        q = torch.sigmoid(x @ mode)
        hess = x.T @ (x * (q * (1 - q))[:, None])  # of the likelihood; the Laplace prior is flat off 0
        # ...and has a kink at 0. A weight whose mode sits at the kink (a property that never differs between
        # A and B, say), and any direction the pairs do not constrain at all (collinear properties), gets the
        # prior as the Gaussian of its variance 2 b^2: the prior's spread, not an unbounded interval
        prior_precision = 1.0 / (2.0 * prior_scale**2)
        hess = hess + torch.diag((mode.abs() < 1e-8).to(x.dtype) * prior_precision)
        evals, evecs = torch.linalg.eigh((hess + hess.T) / 2)
        evals = torch.where(evals < 1e-6 * prior_precision, torch.full_like(evals, prior_precision), evals)
        cov = evecs @ torch.diag(1.0 / evals) @ evecs.T
        cov = (cov + cov.T) / 2
        g = torch.Generator().manual_seed(seed)
        chol = torch.linalg.cholesky(cov)
        draws = mode + torch.randn(4000, p, generator=g, dtype=x.dtype) @ chol.T
        mean = mode
        settings.update(draws=4000)
        if progress is not None:
            progress("Laplace approximation", 1.0)
    else:
        pyro.clear_param_store()
        start = _mode(u, p, x.dtype)  # from the posterior mode, so a few hundred steps suffice
        guide = AutoMultivariateNormal(_model, init_loc_fn=init_to_value(values={"w": start}), init_scale=0.05)
        # the step size decays 20-fold over the run; 8 particles per step, vectorized
        svi = SVI(_model, guide, pyro.optim.ClippedAdam({"lr": 0.02, "lrd": 0.05 ** (1 / svi_steps)}),
                  Trace_ELBO(num_particles=8, vectorize_particles=True, max_plate_nesting=0))
        for i in range(svi_steps):
            svi.step(x, y, prior_scale)
            if progress is not None and (i % 100 == 0 or i == svi_steps - 1):
                progress("SVI", (i + 1) / svi_steps)
        with torch.no_grad():
            post = guide.get_posterior()
            draws = post.sample(torch.Size([2000])).double()
            mean = post.mean.double()
        settings.update(svi_steps=svi_steps, draws=2000)
    lo, hi = _intervals(draws, level)
    return FitResult(list(properties), mean.detach().double(), lo.detach(), hi.detach(), level, method, x.shape[0],
                     prior_scale, time.perf_counter() - t0, rhat, ess, settings, draws.detach())


def _mode(u: Callable[[Tensor], Tensor], p: int, dtype: torch.dtype) -> Tensor:
    """The posterior mode by L-BFGS from zero."""
    w = torch.zeros(p, dtype=dtype, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=200, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = u(w)
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach()


def fit_groups(pairs: PairSet, judge: str, properties: Sequence[str], groups: Sequence[str] = ("all",),
               *, min_pairs: int = 1, **kw: Any) -> dict[str, FitResult]:
    """One :func:`fit` per group of ``pairs`` labelled by ``judge`` (groups with fewer than ``min_pairs``
    labelled pairs are refused with an error naming them)."""
    out: dict[str, FitResult] = {}
    for g in groups:
        sub = pairs.subset(g, judge=judge)
        if len(sub) < min_pairs:
            raise SteerlabError(f"group {g!r} has {len(sub)} pairs labelled by {judge!r}; expected >= {min_pairs}")
        out[g] = fit(sub.features(properties), sub.labels(judge), properties, **kw)
    return out


# -- comparing judges and explaining a pair -----------------------------------------------------------------
def correlation_matrix(vectors: Tensor, method: Literal["pearson", "spearman"] = "pearson") -> Tensor:
    """``[J, J]`` correlation of the rows of ``vectors`` (``[J, P]``); Spearman ranks first (average ranks)."""
    v = vectors.double()
    if method == "spearman":
        v = torch.stack([_ranks(r) for r in v])
    elif method != "pearson":
        raise SteerlabError(f"similarity method {method!r}; expected 'pearson' or 'spearman'")
    v = v - v.mean(1, keepdim=True)
    norm = v.norm(dim=1, keepdim=True)
    return (v @ v.T) / (norm @ norm.T)


def _ranks(r: Tensor) -> Tensor:
    order = r.argsort()
    ranks = torch.empty_like(r)
    ranks[order] = torch.arange(len(r), dtype=r.dtype)
    for val in r.unique():  # ties share their average rank
        m = r == val
        ranks[m] = ranks[m].mean()
    return ranks


def check_varied(weights: Tensor, judges: Sequence[str], groups: Sequence[str]) -> None:
    """Refuse a judge whose weights (``[groups, judges, properties]``) are one value for every property in a
    group (all zero: no property moved its verdicts): its correlation with any judge is undefined."""
    flat = [(judges[j], groups[g]) for g in range(weights.shape[0]) for j in range(weights.shape[1])
            if float(weights[g, j].max() - weights[g, j].min()) == 0.0]
    if flat:
        judge, group = flat[0]
        raise SteerlabError(f"judge {judge!r} has one weight for every property in group {group!r} (no property "
                            "moved its verdicts), so its similarity to other judges is undefined; leave it out "
                            "(--judges: the judges to keep)")


def judge_similarity(weights: Tensor, method: Literal["pearson", "spearman"] = "pearson") -> Tensor:
    """Judge similarity as in the paper: the correlation of judges' weight vectors within each group, averaged
    over groups. ``weights``: ``[groups, judges, properties]`` (or ``[judges, properties]``: one group)."""
    if weights.ndim == 2:
        weights = weights[None]
    if weights.ndim != 3:
        raise SteerlabError(f"weights have shape {tuple(weights.shape)}; expected [groups, judges, properties]")
    return torch.stack([correlation_matrix(w, method) for w in weights]).mean(0)


def cluster_order(similarity: Tensor) -> list[int]:
    """Leaf order of an average-linkage clustering on ``1 - similarity`` (similar judges end up adjacent)."""
    n = similarity.shape[0]
    if n < 3:
        return list(range(n))
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    d = (1 - similarity.double()).clamp(min=0).numpy().copy()
    d = (d + d.T) / 2
    for i in range(n):
        d[i, i] = 0.0
    return [int(i) for i in leaves_list(linkage(squareform(d, checks=False), method="average"))]


def pair_breakdown(x: Tensor, weights: Tensor, properties: Sequence[str]) -> dict[str, Any]:
    """Which properties pushed one decision: per property ``contribution = w_i * x_i`` to the logit (non-zero
    comparisons only, largest magnitude first), the logit and ``P(A wins)``."""
    contrib = weights.double() * x.double()
    logit = float(contrib.sum())
    rows = [{"property": p, "comparison": int(x[i]), "weight": float(weights[i]), "contribution": float(contrib[i])}
            for i, p in enumerate(properties) if x[i] != 0]
    rows.sort(key=lambda r: -abs(r["contribution"]))
    return {"logit": logit, "p_a": sigmoid(logit), "verdict": "A" if logit > 0 else "B" if logit < 0
            else "tie", "contributions": rows}
