"""Evaluation of fine-tuned models: harmful compliance, benign-skill accuracy, harmless perplexity.

* compliance: greedy answers to held-out harmful prompts labelled by :mod:`steerlab.behavior` with the
  *base* model as the fluency reference (broken text is not compliance); the ``template`` and ``real``
  test splits are reported separately (:func:`steerlab.security.data.held_out_harmful`);
* benign accuracy: exact answers on the benign skill's test split;
* perplexity: :mod:`steerlab.capability` text of the base model (organisms: their held-out answers);
* agreement: share of identical greedy answers to harmless prompts between two models (is the vector
  really off at inference?).

Example:
    >>> from steerlab.models.tiny import tiny_model
    >>> h = tiny_model("llama")
    >>> r = evaluate_model(h, h, {"template": ["Do a bad thing."]}, benign_n=2, harmless=["Hi"], max_new_tokens=4)
    >>> sorted(r["compliance"]), r["benign_accuracy"]
    (['template'], 0.0)
"""

from __future__ import annotations

from typing import Any

from steerlab.behavior import behavior_rates
from steerlab.capability import CapabilityText, default_capability, perplexity
from steerlab.generation import generate
from steerlab.models.handle import ModelHandle
from steerlab.security.data import benign_pairs, check_answer


def greedy(
    h: ModelHandle, prompts: list[str], max_new_tokens: int, batch_size: int = 64, interventions: Any = None
) -> list[str]:
    out: list[str] = []
    for i in range(0, len(prompts), batch_size):
        out += generate(h, prompts[i : i + batch_size], interventions, max_new_tokens=max_new_tokens, chat=True).texts
    return out


def benign_accuracy(
    h: ModelHandle, n: int = 200, seed: int = 0, interventions: Any = None, skill: str = "digit"
) -> tuple[float, list[str]]:
    """Exact-match accuracy on ``n`` test items of the benign skill, and the answers."""
    items = benign_pairs(n, "test", seed, skill)
    answers = greedy(h, [p.prompt for p in items], max_new_tokens=16, interventions=interventions)
    acc = sum(check_answer(p.prompt, a) for p, a in zip(items, answers, strict=True)) / max(len(items), 1)
    return acc, answers


def agreement(a: list[str], b: list[str]) -> float:
    """Share of identical answers (whitespace-stripped)."""
    return sum(x.strip() == y.strip() for x, y in zip(a, b, strict=True)) / max(len(a), 1)


def evaluate_model(
    h: ModelHandle,
    reference: ModelHandle,
    harmful: dict[str, list[str]],
    *,
    benign_n: int = 200,
    harmless: list[str] | None = None,
    capability: CapabilityText | None = None,
    max_new_tokens: int = 32,
    interventions: Any = None,
    keep: int = 8,
    skill: str = "digit",
) -> dict[str, Any]:
    """Compliance per harmful split, benign accuracy, harmless answers (for agreement) and perplexity;
    ``keep`` sample answers per set for side-by-side views."""
    out: dict[str, Any] = {"compliance": {}, "refusal": {}, "broken": {}, "samples": {}}
    for split, prompts in harmful.items():
        r = behavior_rates(h, prompts, interventions, max_new_tokens=max_new_tokens, reference=reference)
        out["compliance"][split] = round(r.rate("compliance"), 4)
        out["refusal"][split] = round(r.rate("refusal"), 4)
        out["broken"][split] = round(r.rate("broken"), 4)
        out["samples"][split] = [[p, a] for p, a in zip(prompts[:keep], r.responses[:keep], strict=False)]
    acc, answers = benign_accuracy(h, benign_n, interventions=interventions, skill=skill)
    out["benign_accuracy"] = round(acc, 4)
    out["samples"]["benign"] = [
        [p.prompt, a] for p, a in zip(benign_pairs(benign_n, "test", 0, skill)[:keep], answers[:keep], strict=False)
    ]
    if harmless:
        out["harmless_answers"] = greedy(h, harmless, max_new_tokens, interventions=interventions)
        out["samples"]["harmless"] = [
            [p, a] for p, a in zip(harmless[:keep], out["harmless_answers"][:keep], strict=False)
        ]
    text = capability if capability is not None else default_capability(reference)
    out["perplexity"] = round(perplexity(h, text, interventions=interventions), 4)
    return out
