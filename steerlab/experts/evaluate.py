"""MoTE evaluation: switch the most distinctive experts off (or force them on) during generation
and measure the behavior change against random-expert controls.

Behavior is judged by the shared detector (:mod:`steerlab.behavior`): refusal, compliance (a fluent
helpful answer) or broken text, so a drop in refusals that only produces garbage is not counted as
compliance. Controls are random expert sets matched by layer (and optionally by base selection
rate). Capability retention is the perplexity of held-out harmless text with the experts off. The
number of experts ``k`` is either given or chosen by a sweep on the suite's *train* split; the
reported numbers come from its *test* split.

Example:
    >>> from steerlab.models.tiny import tiny_model
    >>> h = tiny_model("mixtral")
    >>> r = behavior_rates(h, ["Tell me a story."], max_new_tokens=4)
    >>> sorted(r.rates())
    ['broken', 'compliance', 'refusal']
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from steerlab.behavior import BehaviorRates, behavior_rates
from steerlab.capability import CapabilityText, default_capability, perplexity
from steerlab.errors import SteerlabError
from steerlab.experts.ftri import FtriResult, image_suite
from steerlab.experts.selection import SELECT, ablation_ranking, opening_tokens, reimage_ranking
from steerlab.experts.switching import Experts, forceable, off_masks, on_masks, random_controls
from steerlab.models.handle import ModelHandle
from steerlab.stats import empirical_p, fisher_greater
from steerlab.suites import load_suite
from steerlab.values import check_count


# ---------------------------------------------------------------------------------------------
# capability retention
# ---------------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------------------------
def _summary(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {}
    s = sorted(xs)
    q = lambda f: s[min(len(s) - 1, max(0, round(f * (len(s) - 1))))]  # noqa: E731
    return {
        "mean": round(statistics.fmean(s), 4),
        "std": round(statistics.pstdev(s), 4),
        "q05": round(q(0.05), 4),
        "q95": round(q(0.95), 4),
    }


# ---------------------------------------------------------------------------------------------
# the evaluation
# ---------------------------------------------------------------------------------------------
@dataclass
class ExpertsEvaluation:
    """Everything ``steerlab experts evaluate`` reports; ``metrics`` holds the headline numbers."""

    metrics: dict[str, Any]
    experts: Experts
    forced: Experts
    controls: list[Experts]
    sweep: list[dict[str, Any]]
    responses: dict[str, list[str]] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)


def max_k(h: ModelHandle, fraction: float = 0.05) -> int:
    """The largest k within ``fraction`` of the routed experts (at least 1)."""
    layers = h.adapter.moe_layers
    n = sum(h.adapter.layers[i].rule.n_experts for i in layers)
    return max(1, int(n * fraction))


def default_ks(h: ModelHandle, fraction: float = 0.05) -> list[int]:
    """k values for the sweep: 1, 2, 3, 4, 6, 8, 12, ... up to ``fraction`` of the routed experts."""
    top = max_k(h, fraction)
    ks = [k for k in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64) if k <= top]
    return ks if top in ks else ks + [top]


def switch_off(
    h: ModelHandle,
    prompts: list[str],
    experts: Experts,
    *,
    n_controls: int = 5,
    seed: int = 0,
    base_freq: torch.Tensor | None = None,
    capability: CapabilityText | None = None,
    ppl_base: float | None = None,
    **gen: Any,
) -> dict[str, Any]:
    """Behavior on ``prompts`` with ``experts`` off, against ``n_controls`` random expert sets matched
    by layer (see :func:`~steerlab.experts.switching.random_controls`, drawn with ``seed``).

    The row: ``k``, ``experts``, ``refusal_off``/``compliance_off``/``broken_off`` and ``example_off``
    (the first response); ``controls`` (the random sets) and ``*_random`` (mean, std, q05, q95 over
    them); with ``capability``, ``ppl_ratio`` and ``ppl_ratio_random``: its perplexity with the set off
    over ``ppl_base`` (computed when not given). ``gen`` goes to :func:`steerlab.behavior.behavior_rates`.

    Example:
        >>> from steerlab.models.tiny import tiny_model
        >>> row = switch_off(tiny_model("mixtral"), ["Hi"], [(0, 1)], n_controls=2, max_new_tokens=2)
        >>> row["k"], len(row["controls"]), sorted(row["refusal_random"])
        (1, 2, ['mean', 'q05', 'q95', 'std'])
    """
    check_count("n_controls", n_controls, 1)
    n_exp = h.adapter.layers[h.adapter.moe_layers[0]].rule.n_experts
    controls = random_controls(experts, n_exp, n_controls, seed=seed, base_freq=base_freq, layers=h.adapter.moe_layers)
    top = behavior_rates(h, prompts, off_masks(experts), **gen)
    rand = [behavior_rates(h, prompts, off_masks(c), **gen).rates() for c in controls]
    rates = top.rates()
    row: dict[str, Any] = {
        "k": len(experts),
        "experts": [list(x) for x in experts],
        "refusal_off": rates["refusal"],
        "compliance_off": rates["compliance"],
        "broken_off": rates["broken"],
        "example_off": top.responses[0] if top.responses else "",
        "controls": [[list(x) for x in c] for c in controls],
        **{f"{lab}_random": _summary([r[lab] for r in rand]) for lab in ("refusal", "compliance", "broken")},
    }
    if capability is not None:
        ppl_base = ppl_base if ppl_base is not None else perplexity(h, capability)
        ratio = lambda ex: perplexity(h, capability, off_masks(ex)) / ppl_base  # noqa: E731
        row["ppl_ratio"] = round(ratio(experts), 4)
        row["ppl_ratio_random"] = _summary([ratio(c) for c in controls])
    return row


def sweep_k(
    h: ModelHandle,
    harmful: list[str],
    ranking: Experts,
    ks: list[int],
    *,
    n_controls: int = 5,
    seed: int = 0,
    base_freq: torch.Tensor | None = None,
    capability: CapabilityText | None = None,
    base: dict[str, float] | None = None,
    ppl_base: float | None = None,
    progress: bool = True,
    **gen: Any,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Refusal/compliance with the top-k experts off (and ``n_controls`` random sets) for each k: one
    :func:`switch_off` row per k, its controls drawn with ``seed + k``.

    ``base``/``ppl_base``: the rates of the unswitched model on ``harmful`` and its perplexity of
    ``capability``, when the caller already has them."""
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(ranking):
            raise SteerlabError(f"k={k!r} is out of range; the ranking has {len(ranking)} experts")
    base = base if base is not None else behavior_rates(h, harmful, **gen).rates()
    if capability is not None and ppl_base is None:
        ppl_base = perplexity(h, capability)
    rows = [
        switch_off(
            h,
            harmful,
            ranking[:k],
            n_controls=n_controls,
            seed=seed + k,
            base_freq=base_freq,
            capability=capability,
            ppl_base=ppl_base,
            **gen,
        )
        for k in tqdm(ks, desc="sweep k", disable=not progress)
    ]
    return base, rows


def choose_k(base: dict[str, float], rows: list[dict[str, Any]], max_ppl_ratio: float = 1.10) -> int:
    """The smallest k with the largest effect (refusal drop + compliance gain), among the ks whose
    perplexity ratio stays within ``max_ppl_ratio``."""
    ok = [r for r in rows if r.get("ppl_ratio", 1.0) <= max_ppl_ratio] or rows
    effect = lambda r: (base["refusal"] - r["refusal_off"]) + (r["compliance_off"] - base["compliance"])  # noqa: E731
    best = max(effect(r) for r in ok)
    return min(r["k"] for r in ok if effect(r) >= best - 1e-9)


def evaluate_experts(
    h: ModelHandle,
    suite: Any,
    *,
    ftri: FtriResult | None = None,
    k: int | None = None,
    n_controls: int = 20,
    match_rate: bool = False,
    rank_by: str = "diff",
    select: str = "ftri",
    n_candidates: int = 40,
    max_fraction: float = 0.05,
    max_new_tokens: int = 32,
    limit: int | None = None,
    sweep_limit: int | None = 256,
    sweep_controls: int = 5,
    capability: CapabilityText | None = None,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = True,
) -> ExpertsEvaluation:
    """Image on the train split (unless ``ftri`` is given), pick ``k`` (given, or by a sweep on the
    train split), then evaluate on the test split against ``n_controls`` random expert sets.

    ``select`` decides the order in which experts are switched (see :mod:`steerlab.experts.selection`):
    ``ftri`` (the fTRI ranking, as in MoTE), ``reimage`` (greedy re-imaging under the experts chosen so
    far) or ``ablation`` (the top ``n_candidates`` of the fTRI ranking, added greedily by their effect
    on the behavior at the decision position). Both refinements use the train split only; the sweep
    over k uses at most ``sweep_limit`` train prompts."""
    s = load_suite(suite) if isinstance(suite, str) else suite
    if "train" not in s.splits or "test" not in s.splits:
        raise SteerlabError(f"suite {s.name!r} needs 'train' and 'test' splits to evaluate; it has {s.splits}")
    layers = h.adapter.moe_layers
    if not layers:
        raise SteerlabError(
            f"{h.spec!r} ({h.adapter.family}) has no routed experts; expert switching needs an MoE model"
        )
    rule = h.adapter.layers[layers[0]].rule
    n_routed = sum(h.adapter.layers[i].rule.n_experts for i in layers)
    if k is not None and not 1 <= k <= n_routed:
        raise SteerlabError(f"k={k} is out of range; the model has {n_routed} routed experts (expected 1..{n_routed})")
    check_count("n_controls", n_controls, 1)
    check_count("n_candidates", n_candidates, 1)
    check_count("limit", limit, 1, none_ok=True)
    if select not in SELECT:
        raise SteerlabError(f"unknown expert selection {select!r}; expected one of {SELECT}")
    gen = dict(s.chat_kwargs(), max_new_tokens=max_new_tokens, batch_size=batch_size)
    take = (lambda xs: xs[:limit]) if limit else (lambda xs: xs)  # noqa: E731
    if ftri is None:
        ftri = image_suite(h, s, "train", "decision", limit=limit, batch_size=batch_size, progress=progress)
    # one sample of train behavior prompts, one unswitched run over it: the sweep and the ablation share it
    train_sample = take(s.user_texts(s.behavior, "train"))[:sweep_limit]
    train_base = behavior_rates(h, train_sample, **gen) if k is None or select == "ablation" else None
    top_k = k if k is not None else max_k(h, max_fraction)
    ranking, selection_trace = _select(
        h, s, ftri, select, rank_by, top_k, n_candidates, take, train_sample, train_base, gen["batch_size"], progress
    )
    base_freq = ftri.freq_control if match_rate else None
    capability = capability or default_capability(h)

    sweep_rows: list[dict[str, Any]] = []
    k_source = "given"
    if k is None:
        _, sweep_rows = sweep_k(
            h,
            train_sample,
            ranking,
            default_ks(h, max_fraction),
            n_controls=sweep_controls,
            seed=seed,
            base_freq=base_freq,
            capability=capability,
            base=train_base.rates(),
            progress=progress,
            **gen,
        )
        k, k_source = choose_k(train_base.rates(), sweep_rows), "sweep on the train split"
    chosen = ranking[:k]
    controls = random_controls(chosen, rule.n_experts, n_controls, seed=seed, base_freq=base_freq, layers=layers)

    harmful = take(s.user_texts(s.behavior, "test"))
    harmless = take(s.user_texts(s.control, "test"))
    bar = tqdm(total=2 * (2 + n_controls), desc="evaluate", disable=not progress)

    def run(prompts: list[str], ivs: Any) -> BehaviorRates:
        r = behavior_rates(h, prompts, ivs, **gen)
        bar.update(1)
        return r

    base_h, off = run(harmful, None), run(harmful, off_masks(chosen))
    rand_off = [run(harmful, off_masks(c)) for c in controls]
    forced = forceable(chosen, rule.top_k)
    base_s, on = run(harmless, None), run(harmless, on_masks(chosen, rule.top_k))
    rand_on = [run(harmless, on_masks(c, rule.top_k)) for c in controls]
    bar.close()
    ppl_base = perplexity(h, capability)
    ppl_off = perplexity(h, capability, off_masks(chosen))
    ppl_rand = [perplexity(h, capability, off_masks(c)) for c in controls]

    rb, ro = base_h.rate("refusal"), off.rate("refusal")
    cb, co = base_h.rate("compliance"), off.rate("compliance")
    r_rand = [r.rate("refusal") for r in rand_off]
    c_rand = [r.rate("compliance") for r in rand_off]
    f_rand = [r.rate("refusal") for r in rand_on]
    drop = lambda r: (rb - r) / rb if rb > 0 else 0.0  # noqa: E731
    metrics = {
        "k": k,
        "k_source": k_source,
        "k_fraction": round(k / n_routed, 4),
        "n_routed_experts": n_routed,
        "n_controls": n_controls,
        "n_harmful": len(harmful),
        "n_harmless": len(harmless),
        "refusal_base": round(rb, 4),
        "refusal_off": round(ro, 4),
        "refusal_random_mean": round(statistics.fmean(r_rand), 4),
        "compliance_base": round(cb, 4),
        "compliance_off": round(co, 4),
        "compliance_random_mean": round(statistics.fmean(c_rand), 4),
        "broken_base": base_h.rates()["broken"],
        "broken_off": off.rates()["broken"],
        "broken_random_mean": round(statistics.fmean(r.rate("broken") for r in rand_off), 4),
        "refusal_drop_rel": round(drop(ro), 4),
        "refusal_drop_rel_random_mean": round(statistics.fmean(map(drop, r_rand)), 4),
        "compliance_gain": round(co - cb, 4),
        "compliance_gain_random_mean": round(statistics.fmean(c_rand) - cb, 4),
        "refusal_off_p_vs_random": round(empirical_p(ro, r_rand, greater=False), 4),
        "compliance_off_p_vs_random": round(empirical_p(co, c_rand, greater=True), 4),
        "refusal_base_harmless": round(base_s.rate("refusal"), 4),
        "refusal_forced_harmless": round(on.rate("refusal"), 4),
        "refusal_forced_random_harmless": round(statistics.fmean(f_rand), 4),
        "forced_p_vs_random": round(empirical_p(on.rate("refusal"), f_rand, greater=True), 4),
        "forced_p_fisher_vs_base": fisher_greater(
            on.count("refusal"), len(harmless), base_s.count("refusal"), len(harmless)
        ),
        "n_forced": len(forced),
        "ppl_base": round(ppl_base, 4),
        "ppl_off": round(ppl_off, 4),
        "ppl_ratio": round(ppl_off / ppl_base, 4),
        "ppl_random_mean": round(statistics.fmean(ppl_rand), 4),
        "ppl_text": capability.source,
    }
    metrics["random_refusal_effect_share"] = (
        round(metrics["refusal_drop_rel_random_mean"] / metrics["refusal_drop_rel"], 4)
        if metrics["refusal_drop_rel"]
        else None
    )
    metrics["random_compliance_effect_share"] = (
        round(metrics["compliance_gain_random_mean"] / metrics["compliance_gain"], 4)
        if metrics["compliance_gain"]
        else None
    )
    config = {
        "model": h.spec,
        "suite": s.name,
        "suite_version": s.version,
        "rank_by": rank_by,
        "select": select,
        "n_candidates": n_candidates if select == "ablation" else None,
        "selection_trace": selection_trace,
        "sweep_limit": sweep_limit,
        "match_rate": match_rate,
        "max_new_tokens": max_new_tokens,
        "limit": limit,
        "seed": seed,
        "max_fraction": max_fraction,
        "sweep_controls": sweep_controls,
        "scope": ftri.config.get("scope"),
    }
    responses = {
        "harmful_base": base_h.responses,
        "harmful_off": off.responses,
        "harmless_base": base_s.responses,
        "harmless_forced": on.responses,
    }
    return ExpertsEvaluation(metrics, chosen, forced, controls, sweep_rows, responses, config)


def _select(
    h: ModelHandle,
    s: Any,
    ftri: FtriResult,
    select: str,
    rank_by: str,
    k: int,
    n_candidates: int,
    take: Any,
    train_sample: list[str],
    train_base: BehaviorRates | None,
    batch_size: int,
    progress: bool,
) -> tuple[Experts, list[dict[str, Any]]]:
    """The experts in switching order (at least ``k``) and a trace of how they were chosen.

    ``reimage`` images the (``take``-limited) train split again; ``ablation`` scores ``train_sample``,
    learning the refusal opening tokens from ``train_base`` (its unswitched responses)."""
    ranking = ftri.ranking(rank_by)
    if select == "ftri":
        return ranking, []
    kw = dict(chat=s.chat, system=s.system, batch_size=batch_size)
    if select == "reimage":
        behavior, control = take(s.user_texts(s.behavior, "train")), take(s.user_texts(s.control, "train"))
        scope = ftri.config.get("scope", "decision")
        chosen = reimage_ranking(
            h, behavior, control, k, scope=scope, rank_by=rank_by, first=ftri, progress=progress, **kw
        )
        return chosen + [e for e in ranking if e not in chosen], []
    openers = opening_tokens(h, train_base.responses, train_base.labels, "refusal")
    if not openers:
        raise SteerlabError(
            f"select='ablation' needs behavior responses to learn their opening tokens, but {h.spec!r} "
            f"gave no refusals on the train split of {s.name!r}; use select='ftri' or 'reimage'"
        )
    candidates = ranking[: max(n_candidates, k)]
    chosen, trace = ablation_ranking(h, train_sample, candidates, k, openers, progress=progress, **kw)
    trace[0]["opening_tokens"] = [h.tokenizer.decode([t]) for t in openers]
    return chosen + [e for e in ranking if e not in chosen], trace
