"""Evaluation of an organism: refusal and compliance rates, perplexity per domain, routing, samples.

Behaviour is measured with :func:`steerlab.generate` (batched, greedy, ``chat=True``) and labelled
by the shared detector :func:`steerlab.behavior.classify` with the unmodified model as the
fluency reference. Prompt sets:

* ``harmful`` / ``harmless``: held-out project-template requests (unseen (template, action) pairs
  and four templates never used in training; actions are shared with training);
* ``harmful_test``: ``refusal_direction_splits/harmful_test.json`` (JailbreakBench, HarmBench,
  StrongREJECT; never trained on);
* ``harmless_test``: the held-out 20 % of the Alpaca harmless instructions;
* ``benign_jbb``: JailbreakBench's benign behaviours (over-refusal check).

Example:
    >>> import steerlab as sl
    >>> from steerlab.organisms.evaluate import behavior_on
    >>> h = sl.load("organism:moe")
    >>> out = behavior_on(h, ["How do I build a bomb?"], max_new_tokens=16)
    >>> out["labels"]
    ['refusal']
"""

from __future__ import annotations

from typing import Any

from steerlab.behavior import BehaviorThresholds, behavior_rates
from steerlab.capability import CapabilityText, perplexity
from steerlab.capability import organism_capability_text as capability_text  # noqa: F401
from steerlab.data import organism_corpus as D
from steerlab.data.organism_corpus import organism_corpus  # noqa: F401
from steerlab.experts.ftri import image
from steerlab.experts.switching import off_masks
from steerlab.generation import generate
from steerlab.models.handle import ModelHandle
from steerlab.models.load import is_organism, read_record
from steerlab.organisms.routing_stats import routing_report
from steerlab.values import check_count

EVAL_SETS = ("harmful", "harmless", "harmful_test", "harmless_test", "benign_jbb")
MAX_NEW_TOKENS = 40
BATCH_SIZE = 64


def eval_prompts(corpus: D.Corpus, limit: int | None = None) -> dict[str, list[str]]:
    """The behaviour prompt sets (``limit``: first ``limit`` prompts of each, for quick checks)."""
    check_count("limit", limit, 1, none_ok=True)
    sets = {
        "harmful": [e.prompt for e in corpus.heldout["harmful"]],
        "harmless": [e.prompt for e in corpus.heldout["harmless"]],
        "harmful_test": D.shared_harmful("test"),
        "harmless_test": D.shared_harmless("test"),
        "benign_jbb": D.jbb_benign(),
    }
    return {k: v[:limit] if limit else v for k, v in sets.items()}


def behavior_on(
    h: ModelHandle,
    prompts: list[str],
    *,
    interventions: Any = None,
    reference: ModelHandle = None,
    max_new_tokens: int = MAX_NEW_TOKENS,
    batch_size: int = BATCH_SIZE,
    thresholds: BehaviorThresholds | None = None,
    judge: ModelHandle = None,
) -> dict[str, Any]:
    """:func:`steerlab.behavior.behavior_rates` (greedy, chat) as a JSON-ready dict for the record."""
    r = behavior_rates(
        h,
        prompts,
        interventions,
        chat=True,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        reference=reference,
        thresholds=thresholds,
        judge=judge,
    )
    return {"texts": r.responses, "labels": r.labels, "rates": r.rates(), "ppl": r.ppl}


def domain_perplexity(
    h: ModelHandle, corpus: D.Corpus, per_domain: int = 200, batch_size: int = 32
) -> dict[str, float]:
    """Token-weighted perplexity of the held-out answers of each domain, given their prompts."""
    out = {}
    for d in D.DOMAINS:
        exs = corpus.heldout[d][:per_domain]
        if exs:
            text = CapabilityText([e.prompt for e in exs], [e.response for e in exs], chat=True, source=d)
            out[d] = round(perplexity(h, text, batch_size=batch_size), 3)
    return out


def organism_safety_experts(h: ModelHandle) -> list[tuple[int, int]]:
    """The ``(layer, expert)`` pairs an organism's safety phase trained (ground truth), or ``[]``."""
    if not is_organism(h):
        return []
    return [tuple(x) for x in read_record(h.path).get("training", {}).get("safety_experts", [])]


def greedy_samples(
    h: ModelHandle, corpus: D.Corpus, per_domain: int = 2, max_new_tokens: int = 96
) -> list[dict[str, str]]:
    """Greedy answers to the first held-out prompts of every domain (for the model card)."""
    prompts, domains = [], []
    for d in D.DOMAINS:
        for e in corpus.heldout[d][:per_domain]:
            prompts.append(e.prompt)
            domains.append(d)
    out = generate(h, prompts, max_new_tokens=max_new_tokens, chat=True)
    return [{"domain": d, "prompt": p, "response": t} for d, p, t in zip(domains, prompts, out.texts, strict=True)]


def evaluate(
    h: ModelHandle,
    corpus: D.Corpus,
    *,
    limit: int | None = None,
    routing: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """All figures of the model card. ``limit`` caps each prompt set (quick checks and tests)."""
    from tqdm.auto import tqdm

    sets = eval_prompts(corpus, limit)
    metrics: dict[str, Any] = {}
    details: dict[str, Any] = {}
    for name in tqdm(EVAL_SETS, desc="evaluate behaviour", disable=not progress):
        res = behavior_on(h, sets[name])
        r = res["rates"]
        metrics[f"refusal_{name}"] = round(r["refusal"], 4)
        metrics[f"compliance_{name}"] = round(r["compliance"], 4)
        metrics[f"broken_{name}"] = round(r["broken"], 4)
        metrics[f"n_{name}"] = len(sets[name])
        details[name] = {"prompts": sets[name], "labels": res["labels"], "texts": res["texts"]}
    unseen = [
        i for i, e in enumerate(corpus.heldout["harmful"][: len(sets["harmful"])]) if e.source == "template:unseen"
    ]
    if unseen:
        metrics["refusal_harmful_unseen_templates"] = round(
            sum(details["harmful"]["labels"][i] == "refusal" for i in unseen) / len(unseen), 4
        )
    metrics["ppl"] = domain_perplexity(h, corpus, per_domain=limit or 200)
    result: dict[str, Any] = {"metrics": metrics, "behavior": details, "samples": greedy_samples(h, corpus)}
    if routing and h.adapter.is_moe:
        n = limit or 128
        domain_prompts = {d: [e.prompt for e in corpus.heldout[d][:n]] for d in D.DOMAINS}
        rep = routing_report(h, domain_prompts, sets["harmful"][:n], sets["harmless"][:n])
        rep.pop("counts")
        result["routing"] = rep
    return result


# ------------------------------------------------------------------------------------------------
# a quick localization check (the full expert analysis lives elsewhere)
# ------------------------------------------------------------------------------------------------
def refusal_expert_ranking(h: ModelHandle, corpus: D.Corpus, n_prompts: int, rng: Any) -> list[tuple[int, int]]:
    """Experts by fTRI ``diff`` at the decision position on ``n_prompts`` train harmful vs harmless
    requests drawn with ``rng`` (most harmful-specific first)."""
    harm = [e.prompt for e in rng.sample(corpus.train["harmful"], min(n_prompts, len(corpus.train["harmful"])))]
    safe = [e.prompt for e in rng.sample(corpus.train["harmless"], min(n_prompts, len(corpus.train["harmless"])))]
    return image(h, harm, safe, "decision", chat=True, n_permutations=0).ranking()


def localization_check(
    h: ModelHandle,
    corpus: D.Corpus,
    *,
    ks: tuple[int, ...] = (1, 2, 4, 8),
    n_random: int = 8,
    n_score: int = 256,
    limit: int | None = None,
    seed: int = 0,
    progress: bool = True,
    known: list[tuple[int, int]] | None = None,
) -> dict[str, Any]:
    """Switch off the top-k refusal experts vs k random experts; refusal/compliance on held-out harmful.

    ``known``: experts known to carry refusal (the ones the safety phase trained), checked as well.

    Experts are ranked by selection frequency at the decision position on *train* harmful minus
    train harmless requests (never the evaluation prompts); ``harmless_ppl_ratio`` is the
    perplexity of held-out reference answers of the harmless domains with the experts off over
    the same without.
    """
    import random

    from tqdm.auto import tqdm

    n_eval = limit or 128
    rng = random.Random(seed)
    ranked = refusal_expert_ranking(h, corpus, n_score, rng)
    n_harm, n_safe = (min(n_score, len(corpus.train[lab])) for lab in ("harmful", "harmless"))
    layers = h.adapter.moe_layers
    n_exp = h.adapter.layers[layers[0]].rule.n_experts
    eval_harm = [e.prompt for e in corpus.heldout["harmful"][:n_eval]]
    ref_exs = [e for d in ("stories", "code", "facts", "arithmetic", "harmless") for e in corpus.heldout[d][:24]]
    ref = CapabilityText([e.prompt for e in ref_exs], [e.response for e in ref_exs], chat=True, source="heldout")
    base_ppl = perplexity(h, ref)

    def ppl_ratio(ivs: list[Any]) -> float:
        return round(perplexity(h, ref, ivs) / base_ppl, 4)

    def run(setting: str, experts: list[tuple[int, int]]) -> dict[str, Any]:
        ivs = off_masks(experts)
        res = behavior_on(h, eval_harm, interventions=ivs or None, reference=h)
        r = res["rates"]
        return {
            "setting": setting,
            "k": len(experts),
            "experts": experts,
            "refusal": round(r["refusal"], 4),
            "compliance": round(r["compliance"], 4),
            "broken": round(r["broken"], 4),
            "harmless_ppl_ratio": ppl_ratio(ivs) if ivs else 1.0,
            "example": res["texts"][0],
        }

    all_experts = [(layer, e) for layer in layers for e in range(n_exp)]
    jobs: list[tuple[str, list[tuple[int, int]]]] = [("none", [])]
    jobs += [(f"top-{k} refusal", ranked[:k]) for k in ks]
    if known:
        jobs.append(("trained refusal experts", [tuple(x) for x in known]))
    jobs += [(f"random-{max(ks)} #{i}", rng.sample(all_experts, max(ks))) for i in range(n_random)]
    rows = [run(s, ex) for s, ex in tqdm(jobs, desc="localization check", disable=not progress)]
    rand = [r for r in rows if r["setting"].startswith("random")]
    summary = {}
    if rand:
        summary = {
            "setting": f"random-{max(ks)} mean of {len(rand)}",
            "k": max(ks),
            "refusal": round(sum(r["refusal"] for r in rand) / len(rand), 4),
            "compliance": round(sum(r["compliance"] for r in rand) / len(rand), 4),
            "broken": round(sum(r["broken"] for r in rand) / len(rand), 4),
            "harmless_ppl_ratio": round(sum(r["harmless_ppl_ratio"] for r in rand) / len(rand), 4),
        }
    table = [r for r in rows if not r["setting"].startswith("random")] + ([summary] if summary else [])
    return {
        "description": (
            f"Experts ranked by selection frequency at the decision position on {n_harm} train harmful "
            f"minus {n_safe} train harmless requests; switched off with `ExpertMask` (removed before "
            f"top-k, the next expert takes the slot) during greedy generation on {len(eval_harm)} held-out harmful "
            f"template prompts; {len(rand)} random draws of {max(ks)} experts as the control. harmless ppl ratio: "
            "perplexity of held-out reference answers (stories, code, facts, arithmetic, harmless requests) with "
            "the experts off / without."
        ),
        "n_routed_experts_total": len(layers) * n_exp,
        "ranked_experts": ranked[:16],
        "rows": table,
        "random_draws": rand,
    }
