"""Does a steering direction move a property of the generations? A sweep over scales scored by an
*independent* scorer (not the direction itself), with fluency beside it.

:func:`lexicon_sentiment` is that scorer for sentiment: a fixed, project-written word list (no model, no
activations), ``(positive - negative) / (positive + negative + 1)`` word counts per text, in (-1, 1).
:func:`property_sweep` adds a direction at each scale, generates greedily for neutral prompts, and reports the
mean score, the perplexity of the generated responses under the *unmodified* model (fluency) and the
capability perplexity of held-out text with the direction added; :func:`is_monotone` checks the trend over
every scale, :func:`monotone_run` finds its longest strictly monotone stretch of consecutive scales.

Example:
    >>> round(lexicon_sentiment("What a wonderful, happy day"), 3)
    0.667
    >>> lexicon_sentiment("a terrible, awful mess") < 0 < lexicon_sentiment("lovely")
    True
    >>> is_monotone([-0.2, 0.0, 0.1, 0.3])
    True
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from torch import Tensor
from tqdm.auto import tqdm

from steerlab.capability import CapabilityText, perplexity
from steerlab.generation import generate
from steerlab.models.handle import ModelHandle
from steerlab.scoring import response_perplexity
from steerlab.steering.apply import add, check_scales

POSITIVE = frozenset("""
good great excellent wonderful amazing fantastic lovely love loved loves happy happily joy joyful delighted
delightful beautiful brilliant awesome best perfect perfectly pleasant glad grateful thankful cheerful superb
enjoy enjoyed enjoying fun exciting excited thrilled charming kind warm nice fabulous marvelous magnificent
outstanding positive proud smile smiled smiling laugh laughed hope hopeful peaceful calm bright sunny sweet
favorite friendly generous glorious gorgeous incredible inspiring impressive relaxing satisfying success
successful terrific treasure uplifting win wonderfully adore adored like liked fine pleasure
""".split())
NEGATIVE = frozenset("""
bad terrible awful horrible hate hated hates sad sadly angry upset miserable disappointing disappointed
depressing depressed dreadful disgusting ugly worst poor boring annoying annoyed painful pain hurt cry cried
crying fear afraid scared anxious worried worry lonely gloomy dark dull nasty rude cruel tragic tragedy
unhappy unpleasant stressful frustrating frustrated disaster failure fail failed broken sick tired exhausted
bitter ashamed hopeless pathetic horrid grim dreary stale wrong worse mess lose lost loss sorrow grief
dislike despise hopelessly awfully
""".split())
_WORD = re.compile(r"[a-z']+")


def lexicon_sentiment(text: str) -> float:
    """``(positive - negative) / (positive + negative + 1)`` over the text's words (see the word lists)."""
    words = _WORD.findall(text.lower())
    p = sum(w in POSITIVE for w in words)
    n = sum(w in NEGATIVE for w in words)
    return (p - n) / (p + n + 1)


def is_monotone(values: list[float], increasing: bool = True) -> bool:
    """Strictly increasing (or decreasing) from each value to the next."""
    pairs = list(zip(values, values[1:], strict=False))
    return all((b > a) if increasing else (b < a) for a, b in pairs)


def monotone_run(values: list[float], increasing: bool = True) -> tuple[int, int]:
    """``(start, end)``, inclusive indices of the longest stretch of consecutive values that is strictly
    increasing (or decreasing); the first such stretch on a tie, ``(0, 0)`` for a single value.

    Example:
        >>> monotone_run([-0.04, -0.05, 0.06, 0.3, 0.38, 0.5, 0.6])
        (1, 6)
    """
    if not values:
        raise ValueError("monotone_run needs at least one value")
    best, start = (0, 0), 0
    for i in range(1, len(values)):
        if not ((values[i] > values[i - 1]) if increasing else (values[i] < values[i - 1])):
            start = i
        if i - start > best[1] - best[0]:
            best = (start, i)
    return best


def property_sweep(
    h: ModelHandle,
    vector: Tensor,
    site: str,
    scales: list[float],
    prompts: list[str],
    *,
    scorer: Callable[[str], float] = lexicon_sentiment,
    normalize: bool = False,
    chat: bool = True,
    system: str | None = None,
    max_new_tokens: int = 32,
    capability: CapabilityText | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """One row per scale: mean ``scorer`` of the greedy generations, the mean perplexity of those responses
    under the unmodified model, and (with ``capability``) the capability perplexity with the direction added.
    ``normalize=False``: scales multiply the raw vector (e.g. k x the mean difference)."""
    rows = []
    for scale in tqdm(check_scales(scales), desc="scales", disable=not progress):
        ivs = [add(h, vector, site, scale, normalize=normalize)] if scale != 0 else None
        texts = generate(h, prompts, ivs, max_new_tokens=max_new_tokens, chat=chat, system=system).texts
        ppl = response_perplexity(h, prompts, texts, chat=chat)
        finite = [p for p in ppl if p is not None and math.isfinite(p)]
        row = {"scale": scale, "score": round(sum(map(scorer, texts)) / len(texts), 4),
               "response_ppl": round(sum(finite) / len(finite), 3) if finite else None, "example": texts[0]}
        if capability is not None:
            row["capability_ppl"] = round(perplexity(h, capability, ivs), 3)
        rows.append(row)
    return rows
