"""Capability retention: the perplexity of held-out text a model should keep handling.

Analyses that switch experts off or edit weights report how much a model's ordinary ability
suffers: the token-level perplexity of reference ``responses`` given their ``prompts`` (through the
chat template when ``chat``). :func:`wikitext` is the general default (WikiText-2 test, read in place
from the shared data); model organisms supply their own held-out answers (:func:`organism_capability_text`);
:func:`default_capability` picks between them.

Example:
    >>> from steerlab.models.tiny import tiny_model
    >>> text = CapabilityText(["", ""], ["The cat sat on the mat.", "It was a sunny day."], chat=False, source="demo")
    >>> perplexity(tiny_model("llama"), text) > 1.0
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from steerlab._paths import shared_dir
from steerlab.data import organism_corpus as D
from steerlab.errors import SteerlabError
from steerlab.models.handle import ModelHandle
from steerlab.models.load import is_organism, read_record
from steerlab.scoring import response_nll


@dataclass
class CapabilityText:
    """Held-out harmless text to measure perplexity on: ``responses`` scored given ``prompts``."""

    prompts: list[str]
    responses: list[str]
    chat: bool
    source: str


def wikitext(n: int = 64, min_chars: int = 60) -> CapabilityText:
    """The first ``n`` paragraphs of WikiText-2 test (read in place from the shared data)."""
    lines = (shared_dir() / "data" / "wikitext2" / "wiki.test.tokens.txt").read_text().splitlines()
    paras = [ln.strip() for ln in lines if len(ln.strip()) >= min_chars and not ln.strip().startswith("=")]
    paras = [p[:400] for p in paras[:n]]
    return CapabilityText([""] * len(paras), paras, chat=False, source="wikitext2/wiki.test.tokens.txt")


def perplexity(h: ModelHandle, text: CapabilityText, interventions: Any = None, batch_size: int = 32) -> float:
    """Token-level perplexity of ``text`` under ``h`` with ``interventions``."""
    nll = response_nll(
        h, text.prompts, text.responses, chat=text.chat, interventions=interventions, batch_size=batch_size
    )
    total, n = sum(s for s, _ in nll), sum(c for _, c in nll)
    if n == 0:
        raise SteerlabError("capability text has no tokens to score")
    return math.exp(total / n)


def organism_capability_text(h: ModelHandle, per_domain: int = 32) -> CapabilityText:
    """Held-out answers of every non-request domain plus harmless requests, from the organism's own
    corpus (same seed and scale as its build)."""
    corpus = D.organism_corpus(read_record(h.path))
    exs = [e for d in D.DOMAINS if d != "harmful" for e in corpus.heldout[d][:per_domain]]
    return CapabilityText(
        [e.prompt for e in exs],
        [e.response for e in exs],
        chat=True,
        source=f"organism held-out answers ({per_domain} per domain, harmful excluded)",
    )


def default_capability(h: ModelHandle) -> CapabilityText:
    """The text whose perplexity measures capability retention: a model organism's own held-out
    answers (stories, arithmetic, code, facts, harmless requests), WikiText-2 for any other model."""
    return organism_capability_text(h) if is_organism(h) else wikitext()
