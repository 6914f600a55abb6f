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
from steerlab.experts.evaluate import sweep_k, switch_off
from steerlab.experts.ftri import image
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
    ks: tuple[int, ...] | None = None,
    n_random: int = 4,
    n_score: int = 256,
    limit: int | None = None,
    seed: int = 0,
    progress: bool = True,
    known: list[tuple[int, int]] | None = None,
) -> dict[str, Any]:
    """Switch off the top-k refusal experts (and ``known`` ones) against random expert sets matched by
    layer; refusal/compliance/broken on held-out harmful requests and a harmless perplexity ratio.

    A thin wrapper over the experts analysis: each row is a :func:`steerlab.experts.evaluate.switch_off`
    row (:func:`~steerlab.experts.evaluate.sweep_k` for the top-k sets) renamed for the organism record.
    ``known``: experts known to carry refusal (the ones the safety phase trained), checked as well;
    ``ks``: the top-k sets, by default 1, 2, 4, 8 up to half the experts of a layer (so that a random
    set matched by layer always exists); ``n_random``: random sets per switched set (drawn with
    ``seed + k`` for the top-k sets, ``seed`` for ``known``). Experts are ranked by
    :func:`refusal_expert_ranking` on *train* requests, never the evaluation prompts;
    ``harmless_ppl_ratio`` is the perplexity of held-out reference answers of the harmless domains with
    the experts off over the same without.

    Record format 2 (builds since the check reuses the experts analysis): every switched row carries
    ``random`` (``n``, ``sets``, and mean/std/q05/q95 of ``refusal``, ``compliance``, ``broken``,
    ``harmless_ppl_ratio`` over ``n_random`` sets matched to *its* experts by layer). Format 1 (older
    records, no ``format`` key) had one ``random-{max k} mean of {n}`` row of sets drawn from all
    experts, and ``random_draws``; :func:`steerlab.organisms.card.render_card` renders both.

    Example:
        >>> import steerlab as sl
        >>> from steerlab.data.organism_corpus import organism_corpus
        >>> from steerlab.models.load import read_record
        >>> h = sl.load("organism:moe")
        >>> loc = localization_check(h, organism_corpus(read_record(h.path)), ks=(1,), n_random=1, limit=2,
        ...                          n_score=8, progress=False)
        >>> [r["setting"] for r in loc["rows"]]
        ['none', 'top-1 refusal']
    """
    import random

    check_count("n_random", n_random, 1)
    check_count("n_score", n_score, 1)
    check_count("limit", limit, 1, none_ok=True)
    n_eval = limit or 128
    layers = h.adapter.moe_layers
    n_exp = h.adapter.layers[layers[0]].rule.n_experts
    ks = ks if ks is not None else tuple(k for k in (1, 2, 4, 8) if 2 * k <= n_exp)
    rng = random.Random(seed)
    ranked = refusal_expert_ranking(h, corpus, n_score, rng)
    n_harm, n_safe = (min(n_score, len(corpus.train[lab])) for lab in ("harmful", "harmless"))
    eval_harm = [e.prompt for e in corpus.heldout["harmful"][:n_eval]]
    ref_exs = [e for d in ("stories", "code", "facts", "arithmetic", "harmless") for e in corpus.heldout[d][:24]]
    ref = CapabilityText([e.prompt for e in ref_exs], [e.response for e in ref_exs], chat=True, source="heldout")
    gen: dict[str, Any] = dict(chat=True, max_new_tokens=MAX_NEW_TOKENS, batch_size=BATCH_SIZE)
    base = behavior_rates(h, eval_harm, **gen)
    ppl_base = perplexity(h, ref)
    common: dict[str, Any] = dict(n_controls=n_random, capability=ref, ppl_base=ppl_base, **gen)
    _, swept = sweep_k(h, eval_harm, ranked, list(ks), seed=seed, base=base.rates(), progress=progress, **common)
    rows = [
        {
            "setting": "none",
            "k": 0,
            "experts": [],
            **_rates(base.rates()),
            "harmless_ppl_ratio": 1.0,
            "example": base.responses[0] if base.responses else "",
        }
    ]
    rows += [_record_row(f"top-{r['k']} refusal", r) for r in swept]
    if known:
        known = [tuple(x) for x in known]
        rows.append(_record_row("trained refusal experts", switch_off(h, eval_harm, known, seed=seed, **common)))
    return {
        "format": 2,
        "description": (
            f"Experts ranked by selection frequency at the decision position on {n_harm} train harmful "
            f"minus {n_safe} train harmless requests; switched off with `ExpertMask` (removed before "
            f"top-k, the next expert takes the slot) during greedy generation on {len(eval_harm)} held-out harmful "
            f"template prompts; as the control, {n_random} random sets matched to each switched set by layer "
            "(same number of experts per layer, none of the switched ones). harmless ppl ratio: perplexity of "
            "held-out reference answers (stories, code, facts, arithmetic, harmless requests) with the experts "
            "off / without."
        ),
        "n_routed_experts_total": sum(h.adapter.layers[i].rule.n_experts for i in layers),
        "ranked_experts": ranked[:16],
        "rows": rows,
    }


def _rates(r: dict[str, float]) -> dict[str, float]:
    return {lab: round(r[lab], 4) for lab in ("refusal", "compliance", "broken")}


def _record_row(setting: str, row: dict[str, Any]) -> dict[str, Any]:
    """A :func:`steerlab.experts.evaluate.switch_off` row under the organism record's names."""
    return {
        "setting": setting,
        "k": row["k"],
        "experts": row["experts"],
        **_rates({lab: row[f"{lab}_off"] for lab in ("refusal", "compliance", "broken")}),
        "harmless_ppl_ratio": row["ppl_ratio"],
        "example": row["example_off"],
        "random": {
            "n": len(row["controls"]),
            "sets": row["controls"],
            **{lab: row[f"{lab}_random"] for lab in ("refusal", "compliance", "broken")},
            "harmless_ppl_ratio": row["ppl_ratio_random"],
        },
    }
