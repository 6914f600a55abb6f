"""Linear probes: logistic regression on captured activations, per site, with controls.

Why scikit-learn's ``LogisticRegression`` (L2, lbfgs) and not a torch loop: the problems here are
small (hundreds to a few thousand pooled activations of width 64-1,000), the objective is convex, and
lbfgs solves it to tolerance deterministically in milliseconds with no learning rate, epoch count or
seed to tune, so a probe's accuracy reflects the activations, not the optimizer. Features are
standardized with the training split's mean and scale; the fitted weights are folded back into the raw
activation basis (:class:`LinearProbe`), so a probe applies to raw activations (e.g. inside a
conditional-steering intervention) as ``x @ weight + bias > 0``.

Each site's :class:`ProbeResult` reports held-out accuracy and AUROC, the same probe fitted on shuffled
training labels (the control: its held-out accuracy should sit at chance, the majority-class rate of
the held-out split), and the separation of the two classes along the training diff-in-means direction
(Cohen's d on held-out projections). :func:`probe_profile` runs every site of a suite (a layer
profile); :func:`save_probes` / :func:`load_probes` store the probes with their metadata.

Example:
    >>> import torch
    >>> auroc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]))
    0.75
    >>> g = torch.Generator().manual_seed(0)
    >>> a, b = torch.randn(40, 3, generator=g) + 2, torch.randn(40, 3, generator=g) - 2
    >>> r = fit_probe(a[:30], b[:30], a[30:], b[30:], site="demo")
    >>> r.test_acc, r.chance
    (1.0, 0.5)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_bytes
from torch import Tensor

from steerlab.atomic import safetensors_bytes
from steerlab.errors import SpecError, SteerlabError
from steerlab.models.handle import ModelHandle
from steerlab.steering.extract import Position, check_position, collect, resolve_sites, suite_prompts
from steerlab.steering.logistic import LinearProbe, auroc, fit_logistic
from steerlab.steering.vectors import pair_stem, provenance, with_ext, write_pair
from steerlab.suites import ProbeSuite, load_suite
from steerlab.values import check_count, check_file_name

FORMAT = "steerlab.linear_probes"


@dataclass
class ProbeResult:
    """One site's probe and its held-out numbers."""

    site: str
    probe: LinearProbe
    train_acc: float
    test_acc: float
    test_auroc: float
    shuffled_acc: float  # mean held-out accuracy of probes fitted on shuffled training labels
    chance: float  # majority-class rate of the held-out split
    separation: float  # Cohen's d of held-out projections on the training diff-in-means direction
    n_train: int
    n_test: int

    def row(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("probe")
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()}


def _acc(probe: LinearProbe, a: Tensor, b: Tensor) -> float:
    return float(torch.cat([probe.fires(a).float(), 1 - probe.fires(b).float()]).mean())


def fit_probe(
    train_a: Tensor, train_b: Tensor, test_a: Tensor, test_b: Tensor, *, site: str = "", seed: int = 0,
    C: float = 1.0, n_shuffles: int = 5,
) -> ProbeResult:
    """Fit a probe on ``train_a`` (behavior) vs ``train_b`` (control); score it on the test split with its
    shuffled-label control (the mean held-out accuracy of ``n_shuffles`` probes fitted on shuffled training
    labels: one shuffle alone swings far from chance when one feature splits the data into two clusters,
    because its random label correlation picks a side) and the separation along diff-in-means."""
    for name, t in (("train behavior", train_a), ("train control", train_b), ("test behavior", test_a),
                    ("test control", test_b)):
        if t.ndim != 2 or len(t) == 0:
            raise SpecError(f"{name} activations must be a non-empty [n, d] matrix, got shape {tuple(t.shape)}")
    probe = fit_logistic(train_a, train_b, seed=seed, C=C, site=site)
    labels = torch.cat([torch.ones(len(test_a)), torch.zeros(len(test_b))])
    g = torch.Generator().manual_seed(seed)
    x = torch.cat([train_a, train_b])
    shuffled_accs = []
    for _ in range(n_shuffles):
        sh = x[torch.randperm(len(x), generator=g)]  # the first len(train_a) rows get label 1, whatever they were
        sp = fit_logistic(sh[: len(train_a)], sh[len(train_a):], seed=seed, C=C, site=site)
        shuffled_accs.append(_acc(sp, test_a, test_b))
    u = train_a.float().mean(0) - train_b.float().mean(0)
    u = u / u.norm().clamp(min=1e-12)
    pa, pb = test_a.float() @ u, test_b.float() @ u
    pooled = ((pa.var(unbiased=False) * len(pa) + pb.var(unbiased=False) * len(pb)) / (len(pa) + len(pb))).sqrt()
    # Cohen's d; undefined (NaN) when the held-out projections do not spread (one prompt per label, say)
    sep = float((pa.mean() - pb.mean()) / pooled) if float(pooled) > 0 else float("nan")
    return ProbeResult(
        site=site, probe=probe, train_acc=_acc(probe, train_a, train_b), test_acc=_acc(probe, test_a, test_b),
        test_auroc=auroc(probe.logits(torch.cat([test_a, test_b])), labels),
        shuffled_acc=sum(shuffled_accs) / len(shuffled_accs),
        chance=max(len(test_a), len(test_b)) / (len(test_a) + len(test_b)), separation=sep,
        n_train=len(train_a) + len(train_b), n_test=len(test_a) + len(test_b),
    )


@dataclass
class ProbeProfile:
    """Probes at several sites of one model and suite (a layer profile), with their metadata."""

    results: list[ProbeResult]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def best(self) -> ProbeResult:
        """The site with the highest held-out accuracy (ties: higher AUROC, then earlier site)."""
        return max(self.results, key=lambda r: (r.test_acc, r.test_auroc))

    def probe(self, site: str) -> LinearProbe:
        for r in self.results:
            if r.site == site:
                return r.probe
        raise SpecError(f"no probe at site {site!r}; probed sites: {[r.site for r in self.results]}")

    def table(self) -> list[dict[str, Any]]:
        return [r.row() for r in self.results]


def probe_profile(
    h: ModelHandle,
    suite: ProbeSuite | str,
    sites: list[str] | str | None = None,
    *,
    position: Position = "last",
    train_split: str = "train",
    test_split: str = "test",
    limit: int | None = None,
    seed: int = 0,
    C: float = 1.0,
    batch_size: int = 32,
    progress: bool = False,
) -> ProbeProfile:
    """Fit and evaluate a probe at each site (default: every ``resid_post``) on a suite's splits.

    Example:
        >>> from steerlab.models.tiny import tiny_model
        >>> p = probe_profile(tiny_model("llama"), "organism-refusal", "blocks.1.resid_post", limit=6)
        >>> [r.site for r in p.results]
        ['blocks.1.resid_post']
    """
    s = load_suite(suite) if isinstance(suite, str) else suite
    check_count("limit", limit, 2, none_ok=True)  # a probe and its separation need two prompts per label
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise SpecError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    sites = resolve_sites(h, sites)
    position = check_position(position)
    kw: dict[str, Any] = dict(batch_size=batch_size, progress=progress, **s.chat_kwargs())
    acts = {}
    for split in (train_split, test_split):
        pos, neg = suite_prompts(s, split, limit)
        acts[split] = (collect(h, pos, sites, position, desc=f"{split} {s.behavior}", **kw),
                       collect(h, neg, sites, position, desc=f"{split} {s.control}", **kw))
    (tra, trb), (tea, teb) = acts[train_split], acts[test_split]
    results = [fit_probe(tra[x], trb[x], tea[x], teb[x], site=x, seed=seed, C=C) for x in sites]
    meta = provenance(h, method="logistic_regression", solver="sklearn lbfgs, L2", C=C, suite=s.name,
                      suite_version=s.version, position=position, train_split=train_split, test_split=test_split,
                      seed=seed)
    return ProbeProfile(results, meta)


def save_probes(profile: ProbeProfile, path: str | Path) -> Path:
    """Write ``PATH.safetensors`` (``SITE.weight``, ``SITE.bias``) then ``PATH.json`` (metadata, the table,
    the tensors' SHA-256), each crash-safe, the old pair kept whole on error (:func:`write_pair`); returns the
    JSON path."""
    stem = pair_stem(path)
    tensors = {}
    for r in profile.results:
        tensors[f"{r.site}.weight"] = r.probe.weight
        tensors[f"{r.site}.bias"] = torch.tensor([r.probe.bias])
    blob = safetensors_bytes(tensors, {"format": FORMAT})
    index = {"format": FORMAT, "version": 1, "tensors_file": stem.name + ".safetensors",
             "sha256": hashlib.sha256(blob).hexdigest(), "meta": profile.meta, "table": profile.table()}
    return write_pair(stem, blob, index)


def load_probes(path: str | Path) -> ProbeProfile:
    """Read probes saved by :func:`save_probes` (a path with or without suffix, or a folder holding
    ``probes.json``)."""
    p = Path(path)
    index_file = p / "probes.json" if p.is_dir() else with_ext(pair_stem(p), ".json")
    if not index_file.exists():
        raise SpecError(f"no saved probes at {str(path)!r} (expected {index_file})")
    try:
        index = json.loads(index_file.read_text())
    except json.JSONDecodeError as e:
        raise SteerlabError(f"{index_file} is not valid JSON: {e}") from e
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise SteerlabError(f"{index_file} is not a steerlab linear-probes file (expected format {FORMAT!r})")
    side = index_file.parent / check_file_name(index.get("tensors_file"), "tensors_file", str(index_file))
    if not side.is_file():
        raise SteerlabError(f"{index_file} names the tensors file {side.name!r}, which is not there")
    blob = side.read_bytes()
    if hashlib.sha256(blob).hexdigest() != index.get("sha256"):
        raise SteerlabError(f"{index_file}: its tensors file does not match the recorded SHA-256 (a partial write?)")
    t = load_bytes(blob)
    results = []
    for row in index["table"]:
        site = row["site"]
        probe = LinearProbe(site, t[f"{site}.weight"], float(t[f"{site}.bias"][0]))
        results.append(ProbeResult(probe=probe, **{k: v for k, v in row.items()}))
    return ProbeProfile(results, dict(index.get("meta") or {}))
