"""Logistic-regression probes as pure functions of activation matrices (the core of
:mod:`steerlab.steering.linear_probes`, also used for probe-weight directions).

Why scikit-learn's ``LogisticRegression`` (L2, lbfgs) and not a torch loop: the problems here are small
(hundreds to a few thousand pooled activations of width 64-1,000), the objective is convex, and lbfgs
solves it to tolerance deterministically in milliseconds with no learning rate, epoch count or seed to
tune, so a probe's accuracy reflects the activations, not the optimizer. Features are standardized with
the training data's mean and scale; the fitted weights are folded back into the raw activation basis, so
a probe applies to raw activations as ``x @ weight + bias > 0``.

Example:
    >>> import torch
    >>> auroc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]))
    0.75
    >>> p = fit_logistic(torch.tensor([[2.0], [3.0]]), torch.tensor([[-2.0], [-3.0]]))
    >>> p.fires(torch.tensor([[1.0], [-1.0]])).tolist()
    [True, False]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from steerlab.errors import SpecError


@dataclass
class LinearProbe:
    """``x @ weight + bias``: the behavior's log-odds for a raw activation ``x``; fires above 0."""

    site: str
    weight: Float[Tensor, " d"]
    bias: float

    def logits(self, x: Float[Tensor, "... d"]) -> Tensor:
        return x.float() @ self.weight.to(x.device) + self.bias

    def fires(self, x: Float[Tensor, "... d"]) -> Tensor:
        return self.logits(x) > 0


def fit_logistic(behavior: Tensor, control: Tensor, seed: int = 0, C: float = 1.0, site: str = "") -> LinearProbe:
    """Logistic regression of behavior (1) vs control (0) on standardized features; weights in the raw basis."""
    from sklearn.linear_model import LogisticRegression

    x = torch.cat([behavior, control]).double()
    y = torch.cat([torch.ones(len(behavior)), torch.zeros(len(control))])
    mean, scale = x.mean(0), x.std(0, unbiased=False)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    clf = LogisticRegression(C=C, max_iter=2000, random_state=seed)
    clf.fit(((x - mean) / scale).numpy(), y.numpy())
    w = torch.from_numpy(clf.coef_[0]) / scale
    b = float(clf.intercept_[0]) - float(w @ mean)
    return LinearProbe(site, w.float(), float(torch.tensor(b, dtype=torch.float32)))  # float32 as saved


def auroc(scores: Tensor, labels: Tensor) -> float:
    """Area under the ROC curve: the probability that a random positive outscores a random negative (ties
    count half), by pair counting (Mann-Whitney U)."""
    s, y = scores.double().flatten(), labels.bool().flatten()
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        raise SpecError("AUROC needs both labels among the scores")
    diff = pos.unsqueeze(1) - neg.unsqueeze(0)
    return float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())
