"""Generations of the same prompts with and without interventions, token by token.

A :class:`Comparison` holds, for each prompt, the per-token view (:class:`~steerlab.viz.tokens.TokenStep`)
of each run ("baseline", "steered"). It is built from :class:`~steerlab.generation.GenerationResult`
objects; :mod:`steerlab.steering.artifact` saves it as a ``generation_compare`` artifact and reads it back.

Example:
    >>> import steerlab as sl
    >>> from steerlab.steering.compare import Comparison
    >>> h = sl.load("shared:stories260K")
    >>> base = sl.generate(h, ["Once upon a time"], max_new_tokens=4, output_scores=True)
    >>> cmp = Comparison.from_results(h.tokenizer, {"baseline": base})
    >>> cmp.texts("baseline") == base.texts
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from steerlab.errors import SteerlabError
from steerlab.generation import generate
from steerlab.interventions import InterventionSet
from steerlab.models.handle import ModelHandle
from steerlab.sampling.base import Sampler
from steerlab.viz.tokens import TokenStep, token_steps


@dataclass
class Comparison:
    """Generations of the same prompts under several settings, token by token."""

    prompts: list[str]
    settings: dict[str, dict[str, Any]]  # label -> GenerationResult.settings
    steps: dict[str, list[list[TokenStep]]]  # label -> per prompt -> per token
    interventions: InterventionSet | None = None  # the set of the steered run, if any
    labels: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.labels:
            self.labels = list(self.steps)

    @classmethod
    def from_results(
        cls, tokenizer: Any, results: dict[str, Any], samplers: dict[str, Any] | None = None,
        interventions: InterventionSet | None = None, top_k: int = 5,
    ) -> Comparison:
        """Build from ``{label: GenerationResult}`` (all generated with ``output_scores=True``)."""
        if not results:
            raise SteerlabError("no generation results to compare")
        prompts = next(iter(results.values())).prompts
        steps: dict[str, list[list[TokenStep]]] = {}
        for label, res in results.items():
            if res.prompts != prompts:
                raise SteerlabError(f"run {label!r} has different prompts; a comparison needs the same prompts")
            smp = (samplers or {}).get(label)
            steps[label] = [
                token_steps(tokenizer, res.scores, ids, row=i, sampler=smp, top_k=top_k)
                for i, ids in enumerate(res.token_ids)
            ]
        return cls(prompts=list(prompts), settings={k: r.settings for k, r in results.items()}, steps=steps,
                   interventions=interventions)

    def texts(self, label: str) -> list[str]:
        return ["".join(s.piece for s in row) for row in self.steps[label]]

    def metrics(self) -> dict[str, Any]:
        """Headline numbers: how often the steered text differs and where it first diverges."""
        out: dict[str, Any] = {"n_prompts": len(self.prompts)}
        if "baseline" in self.steps and "steered" in self.steps:
            diverge = [first_divergence(a, b) for a, b in zip(self.steps["baseline"], self.steps["steered"],
                                                                 strict=True)]
            changed = [d is not None for d in diverge]
            out["changed_fraction"] = sum(changed) / len(changed)
            firsts = [d for d in diverge if d is not None]
            out["mean_first_divergence"] = sum(firsts) / len(firsts) if firsts else None
        for label, rows in self.steps.items():
            probs = [s.prob for row in rows for s in row]
            out[f"{label}_mean_token_prob"] = sum(probs) / len(probs) if probs else None
        return out


def first_divergence(a: list[TokenStep], b: list[TokenStep]) -> int | None:
    """Index of the first token where two completions differ (``None`` if identical)."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x.token_id != y.token_id:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def compare_generations(
    h: ModelHandle,
    prompts: list[str],
    interventions: InterventionSet | None = None,
    *,
    baseline: bool = True,
    sampler: Sampler | None = None,
    **kwargs: Any,
) -> Comparison:
    """Generate ``prompts`` without (``"baseline"``, unless ``baseline=False``) and with (``"steered"``, when
    ``interventions`` is not empty) the interventions, with the same sampler, seed and settings (``kwargs``
    go to :func:`steerlab.generation.generate`), and compare them token by token.

    Example:
        >>> import steerlab as sl
        >>> h = sl.load("shared:stories260K")
        >>> compare_generations(h, ["Once upon a time"], max_new_tokens=3).labels
        ['baseline']
    """
    steered = interventions is not None and len(interventions) > 0
    if not (baseline or steered):
        raise SteerlabError("nothing to generate: no baseline and no interventions; give interventions or baseline")
    kw = dict(sampler=sampler, output_scores=True, **kwargs)
    results = {"baseline": generate(h, prompts, **kw)} if baseline else {}
    if steered:
        results["steered"] = generate(h, prompts, interventions=interventions, **kw)
    return Comparison.from_results(h.tokenizer, results, samplers={k: sampler for k in results},
                                   interventions=interventions if steered else None)
