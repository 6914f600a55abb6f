"""Steering directions from contrasting prompt sets, at any site and token position.

A direction separates the activations of a suite's ``behavior`` prompts from its ``control`` prompts at
one site. Three methods, each a pure function of two activation matrices ``[n, d]``:

* :func:`diff_in_means`: ``mean(behavior) - mean(control)`` (CAA; the refusal direction of Arditi et al.);
* :func:`pca_paired`: the first principal axis of the paired differences ``behavior_i - control_i``
  (RepE / repeng's ``pca_diff``), *uncentered* so the shared shift is kept, signed so the behavior side
  projects higher, scaled to the mean projected difference;
* ``"probe"``: the weight vector of a logistic-regression probe (:mod:`steerlab.steering.linear_probes`),
  scaled like ``pca_paired``.

Positions (:func:`pool`, each row in its own coordinates, left padding excluded): ``"last"`` (the last
prompt token, the decision position), ``"mean"`` (mean over the prompt), ``"answer"`` (mean over the
tokens of a given answer appended to each prompt) or a list of indices (negative from the end; the
activations at those positions are averaged).

:func:`extract_directions` captures every asked site in one pass (batched, with a progress bar) and
returns :class:`~steerlab.steering.vectors.Directions` (one vector per site: a per-layer sweep is a list
of sites). :func:`expert_path_directions` builds one direction per routed expert on MoE models.

Example:
    >>> import torch
    >>> diff_in_means(torch.tensor([[2.0, 0.0], [4.0, 2.0]]), torch.tensor([[0.0, 1.0]])).tolist()
    [3.0, 0.0]
    >>> pool(torch.arange(6.0).view(1, 3, 2), torch.tensor([[0, 1, 1]]), "mean").tolist()
    [[3.0, 4.0]]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from steerlab.activations import capture
from steerlab.errors import SpecError
from steerlab.models.handle import ModelHandle
from steerlab.steering.logistic import fit_logistic
from steerlab.steering.vectors import Directions, provenance
from steerlab.suites import ProbeSuite, load_suite
from steerlab.values import as_names

Method = Literal["diff_in_means", "pca", "probe"]
METHODS: tuple[str, ...] = ("diff_in_means", "pca", "probe")
Position = Literal["last", "mean", "answer"] | list[int]


def check_position(position: Any) -> Position:
    """Validate a position choice (raises :class:`SpecError` naming it)."""
    if position in ("last", "mean", "answer"):
        return position
    if isinstance(position, (list, tuple)) and position and all(isinstance(i, int) for i in position):
        return list(position)
    raise SpecError(f"position {position!r} is not one of 'last', 'mean', 'answer' or a non-empty list of ints")


def pool(
    acts: Float[Tensor, "n pos d"],
    attention_mask: Int[Tensor, "n pos"],
    position: Position,
    answer_lengths: Sequence[int] | None = None,
) -> Float[Tensor, "n d"]:
    """One vector per row from left-padded activations: see the module docstring for ``position``.
    ``answer_lengths`` (``"answer"`` only): how many tokens at the end of each row are the answer."""
    position = check_position(position)
    mask = attention_mask.bool()
    n, t = mask.shape
    if position == "last":
        return acts[:, -1]
    if position == "mean":
        sel = mask
    elif position == "answer":
        if answer_lengths is None or len(answer_lengths) != n:
            raise SpecError("position 'answer' needs one answer length per prompt (pass answers=...)")
        cols = torch.arange(t).unsqueeze(0)
        sel = cols >= (t - torch.tensor(list(answer_lengths)).unsqueeze(1))
        if bool((torch.tensor(list(answer_lengths)) < 1).any()):
            raise SpecError("position 'answer': an answer has no tokens; expected non-empty answers")
    else:
        lengths = mask.sum(-1)
        sel = torch.zeros_like(mask)
        for i in position:
            col = torch.where(torch.tensor(i) < 0, t + i, t - lengths + i)  # row's own coordinates
            bad = (col < t - lengths) | (col >= t)
            if bool(bad.any()):
                row = int(bad.nonzero()[0])
                raise SpecError(f"position {i} is outside prompt row {row}, which has {int(lengths[row])} tokens")
            sel[torch.arange(n), col] = True
    sel = sel & mask
    w = sel.to(acts.dtype).unsqueeze(-1)
    return (acts * w).sum(1) / w.sum(1).clamp(min=1)


def diff_in_means(behavior: Float[Tensor, "n d"], control: Float[Tensor, "m d"]) -> Float[Tensor, " d"]:
    """``mean(behavior) - mean(control)`` (the CAA / refusal-direction estimator)."""
    _check_pair(behavior, control)
    return behavior.float().mean(0) - control.float().mean(0)


def pca_paired(behavior: Float[Tensor, "n d"], control: Float[Tensor, "m d"]) -> Float[Tensor, " d"]:
    """First principal axis of the paired differences ``behavior[i] - control[i]`` (the first
    ``min(n, m)`` of each), uncentered; signed so the mean difference projects positively and scaled to
    that mean projection (so its norm is comparable with :func:`diff_in_means`)."""
    _check_pair(behavior, control)
    k = min(len(behavior), len(control))
    diffs = behavior[:k].float() - control[:k].float()
    _, _, vh = torch.linalg.svd(diffs, full_matrices=False)
    u = vh[0]
    proj = float((diffs @ u).mean())
    if proj < 0:
        u, proj = -u, -proj
    return u * proj


def _check_pair(behavior: Tensor, control: Tensor) -> None:
    if behavior.ndim != 2 or control.ndim != 2 or behavior.shape[1] != control.shape[1]:
        raise SpecError(
            f"behavior and control activations must be [n, d] of one width, got {tuple(behavior.shape)} and "
            f"{tuple(control.shape)}"
        )
    if len(behavior) == 0 or len(control) == 0:
        raise SpecError(f"need activations of both labels, got {len(behavior)} behavior and {len(control)} control")


def direction_from(method: Method, behavior: Tensor, control: Tensor, seed: int = 0) -> Float[Tensor, " d"]:
    """The direction of ``method`` (one of :data:`METHODS`) from two activation matrices."""
    if method == "diff_in_means":
        return diff_in_means(behavior, control)
    if method == "pca":
        return pca_paired(behavior, control)
    if method == "probe":
        _check_pair(behavior, control)
        w = fit_logistic(behavior, control, seed=seed).weight
        u = w / w.norm()
        return u * float(diff_in_means(behavior, control) @ u)
    raise SpecError(f"unknown direction method {method!r}; expected one of {list(METHODS)}")


def collect(
    h: ModelHandle,
    prompts: list[str],
    sites: list[str],
    position: Position = "last",
    *,
    answers: list[str] | None = None,
    chat: bool = False,
    system: str | None = None,
    batch_size: int = 32,
    progress: bool = False,
    desc: str = "collect",
) -> dict[str, Float[Tensor, "n d"]]:
    """Pooled activations ``{site: [n, d]}`` of ``prompts`` (with ``answers`` appended for ``"answer"``),
    captured batch by batch so memory stays at one batch."""
    position = check_position(position)
    if not prompts:
        raise SpecError("no prompts to collect activations from")
    if (position == "answer") != (answers is not None):
        raise SpecError("position 'answer' and answers=... go together: pass both or neither")
    if answers is not None and len(answers) != len(prompts):
        raise SpecError(f"got {len(answers)} answers for {len(prompts)} prompts; expected one each")
    out: dict[str, list[Tensor]] = {s: [] for s in sites}
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress, unit="batch"):
        chunk = prompts[start : start + batch_size]
        lengths = None
        if answers is not None:
            heads = [h.format_chat(p, system=system) if chat else p for p in chunk]
            full = [p + a for p, a in zip(heads, answers[start : start + batch_size], strict=True)]
            n_head = h.encode(heads)["attention_mask"].sum(-1)
            cap = capture(h, full, sites, batch_size=len(chunk))
            lengths = (cap.attention_mask.sum(-1) - n_head.cpu()).tolist()
        else:
            cap = capture(h, chunk, sites, chat=chat, system=system, batch_size=len(chunk))
        for s in sites:
            out[s].append(pool(cap[s], cap.attention_mask, position, lengths))
    return {s: torch.cat(v) for s, v in out.items()}


def resolve_sites(h: ModelHandle, sites: Sequence[str] | str | None) -> list[str]:
    """Site names: ``None`` = every ``blocks.*.resid_post``; a component (``"resid_pre"`` etc.) = that component
    at every layer; a site name = that site; a list = each of its items so resolved, in order, each once (an
    unknown one is an error naming it)."""
    items = as_names("resid_post" if sites is None else sites, "sites")
    if not items:
        raise SpecError("sites is empty; expected site names or components (see `steerlab info MODEL`)")
    out: list[str] = []
    for item in items:
        if item in h.sites or "." in item:
            h.site(item)  # an unknown full site name raises UnknownSiteError naming it
            found = [item]
        else:
            found = [s for s in h.sites if s.startswith("blocks.") and s.split(".", 2)[2] == item]
            if not found:
                raise SpecError(f"unknown site or component {item!r}; expected a site of `steerlab info MODEL` or a "
                                "component such as 'resid_post'")
        out += [s for s in found if s not in out]
    return out


def suite_prompts(suite: ProbeSuite | str, split: str | None, limit: int | None) -> tuple[list[str], list[str]]:
    """``(behavior, control)`` user texts of a suite's split; both must be non-empty."""
    s = load_suite(suite) if isinstance(suite, str) else suite
    pos, neg = s.contrast(split, limit)
    if not pos or not neg:
        raise SpecError(
            f"suite {s.name!r} split {split!r} has {len(pos)} {s.behavior!r} and {len(neg)} {s.control!r} prompts; "
            "a direction needs both labels"
        )
    return pos, neg


def extract_directions(
    h: ModelHandle,
    suite: ProbeSuite | str,
    sites: Sequence[str] | str | None = None,
    *,
    method: Method = "diff_in_means",
    position: Position = "last",
    split: str | None = "train",
    limit: int | None = None,
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = False,
) -> Directions:
    """One direction per site from a suite's ``behavior`` vs ``control`` prompts of ``split``.

    Example:
        >>> from steerlab.models.tiny import tiny_model
        >>> h = tiny_model("llama")
        >>> d = extract_directions(h, "organism-refusal", ["blocks.1.resid_post"], limit=4)
        >>> d.sites, d["blocks.1.resid_post"].shape == (h.d_model,)
        (['blocks.1.resid_post'], True)
    """
    if method not in METHODS:
        raise SpecError(f"unknown direction method {method!r}; expected one of {list(METHODS)}")
    s = load_suite(suite) if isinstance(suite, str) else suite
    sites = resolve_sites(h, sites)
    position = check_position(position)
    pos, neg = suite_prompts(s, split, limit)
    kw: dict[str, Any] = dict(batch_size=batch_size, progress=progress, **s.chat_kwargs())
    a = collect(h, pos, sites, position, desc=s.behavior, **kw)
    b = collect(h, neg, sites, position, desc=s.control, **kw)
    vectors = {site: direction_from(method, a[site], b[site], seed=seed) for site in sites}
    meta = provenance(h, method=method, suite=s.name, suite_version=s.version, split=split, position=position,
                      n_behavior=len(pos), n_control=len(neg))
    return Directions(vectors, meta)


def expert_path_directions(
    h: ModelHandle,
    behavior: list[str],
    control: list[str],
    site: str,
    layer: int,
    *,
    position: Position = "last",
    min_count: int = 2,
    chat: bool = False,
    system: str | None = None,
    batch_size: int = 32,
) -> Directions:
    """On an MoE model, one diff-in-means direction at ``site`` per routed expert of MoE ``layer``:
    rows are grouped by the expert their top-1 choice at ``position`` (``"last"`` or one index) picks,
    and each expert with at least ``min_count`` rows on both sides gets its own direction (keys
    ``"{site}@expert{e}"``; counts in ``meta["expert_counts"]``)."""
    if not h.adapter.is_moe or layer not in h.adapter.moe_layers:
        raise SpecError(f"layer {layer} is not an MoE layer of {h.spec}; MoE layers: {h.adapter.moe_layers}")
    if not (position == "last" or (isinstance(position, list) and len(position) == 1)):
        raise SpecError(f"expert paths need one position ('last' or [i]), got {position!r}")
    router = f"blocks.{layer}.moe.topk_indices"
    kw: dict[str, Any] = dict(chat=chat, system=system, batch_size=batch_size)
    # expert ids pooled over one position are the ids themselves (a mean over one index)
    a = collect(h, behavior, [site, router], position, **kw)
    b = collect(h, control, [site, router], position, **kw)
    ea, eb = a[router][:, 0].round().long(), b[router][:, 0].round().long()
    vectors, counts = {}, {}
    for e in sorted(set(ea.tolist()) | set(eb.tolist())):
        na, nb = int((ea == e).sum()), int((eb == e).sum())
        counts[e] = [na, nb]
        if na >= min_count and nb >= min_count:
            vectors[f"{site}@expert{e}"] = diff_in_means(a[site][ea == e], b[site][eb == e])
    if not vectors:
        raise SpecError(f"no expert of layer {layer} has {min_count} rows of both labels; lower min_count")
    meta = provenance(h, method="diff_in_means", position=position, expert_layer=layer,
                      expert_counts={str(k): v for k, v in counts.items()}, n_behavior=len(behavior),
                      n_control=len(control))
    return Directions(vectors, meta)
