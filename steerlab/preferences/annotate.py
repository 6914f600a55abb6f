"""Property annotators, pluggable through a small registry.

An annotator scores each response of a pair on one property; the fit reads only the comparison
``sign(score_A - score_B)``. Three families:

* rule-based, computed locally (:data:`RULES`, registered at import): ``lengthy``, ``well formatted``,
  ``code``, ``interactive`` (questions back to the user), ``refusal`` and ``admit limits`` (refusal phrases
  from :mod:`steerlab.behavior`), ``apology``, ``non-repetitive`` (:func:`steerlab.behavior.distinct_ngrams`),
  ``readable`` (Flesch reading ease), ``prompt overlap``, ``use informal expressions``,
  ``use supporting materials``, ``step-by-step``;
* :class:`ModelYesNo` -- a local model's log-odds ``log P(Yes) - log P(No)`` of the answer after a
  property question about the response (:func:`steerlab.scoring.token_nll`);
* :class:`EndpointYesNo` -- the same question to any OpenAI-compatible chat endpoint (the ``openai`` client;
  the top log-probabilities of the answer token when the server returns them, else the answer itself: 1 for
  yes, 0 for no).

``lengthy`` follows the paper's pairwise rule (the shorter response loses when it is clearly shorter: at most
70% of the longer and 10+ words fewer, 80% and 20+, or 90% and 40+); the paper's extra table for responses
of at most 11 words is not reproduced.

Register your own with :func:`register_annotator`; :func:`annotate` fills a :class:`PairSet`'s annotations.

Example:
    >>> from steerlab.preferences.data import Pair, PairSet
    >>> ps = PairSet([Pair("1", "Why?", "Sorry, I can't help.", "Because:\\n- one\\n- two")])
    >>> a = annotate(ps, ["apology", "well formatted"]).pairs[0].annotations
    >>> a["apology"], a["well formatted"]
    ((1.0, 0.0), (0.0, 2.0))
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import torch

from steerlab.behavior import distinct_ngrams, refusal_match
from steerlab.errors import SteerlabError
from steerlab.models.handle import ModelHandle
from steerlab.preferences.data import PairSet
from steerlab.scoring import token_nll

Progress = Callable[[str, float], None]


class Annotator(Protocol):
    """Scores responses on one ``property``: ``score(prompts, responses) -> [float per response]``; an
    annotator may also define ``pairwise(prompt, a, b) -> (score_a, score_b)`` to compare a pair at once."""

    property: str
    description: str

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]: ...


@dataclass(frozen=True)
class RuleAnnotator:
    """A rule computed from the text: ``fn(prompt, response) -> float`` (higher = more of the property)."""

    property: str
    description: str
    fn: Callable[[str, str], float]
    pair_fn: Callable[[str, str, str], tuple[float, float]] | None = None

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        return [float(self.fn(p, r)) for p, r in zip(prompts, responses, strict=True)]


_REGISTRY: dict[str, Annotator] = {}


def register_annotator(annotator: Annotator, *, replace_existing: bool = False) -> Annotator:
    """Register ``annotator`` under its ``property`` name (a second one for the same name is refused unless
    ``replace_existing``)."""
    name = annotator.property
    if not name or not isinstance(name, str):
        raise SteerlabError(f"annotator property name {name!r}; expected a non-empty string")
    if name in _REGISTRY and not replace_existing:
        raise SteerlabError(f"an annotator for {name!r} is already registered; pass replace_existing=True")
    _REGISTRY[name] = annotator
    return annotator


def annotators() -> dict[str, Annotator]:
    """The registered annotators by property name."""
    return dict(_REGISTRY)


def get_annotator(name: str) -> Annotator:
    if name not in _REGISTRY:
        raise SteerlabError(f"unknown annotator {name!r}; registered: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


# -- the rules ---------------------------------------------------------------------------------------------
_WORD = re.compile(r"[A-Za-z0-9']+")


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def length_rule(a_words: int, b_words: int) -> tuple[float, float]:
    """The paper's length comparison: ``(1, 0)`` when A is clearly longer, ``(0, 1)`` when B is, else ``(0, 0)``.

    >>> length_rule(100, 69), length_rule(100, 85), length_rule(100, 80), length_rule(160, 200)
    ((1.0, 0.0), (0.0, 0.0), (1.0, 0.0), (0.0, 1.0))
    """
    short, long_ = sorted((a_words, b_words))
    diff = long_ - short
    clear = long_ > 0 and ((short <= 0.7 * long_ and diff >= 10) or (short <= 0.8 * long_ and diff >= 20)
                           or (short <= 0.9 * long_ and diff >= 40))
    if not clear:
        return 0.0, 0.0
    return (1.0, 0.0) if a_words > b_words else (0.0, 1.0)


def _structure(_: str, r: str) -> float:
    lines = r.splitlines()
    pat = re.compile(r"^\s*([-*+\u2022]\s|\d+[.)]\s|#{1,6}\s|\|.*\|)")
    return float(sum(bool(pat.match(ln)) for ln in lines) + 2 * r.count("**") // 4)


def _code(_: str, r: str) -> float:
    fences = r.count("```") // 2
    codey = sum(bool(re.match(r"^\s*(def |class |import |from \S+ import|for .*:|if .*:|return |#include|"
                              r"public |function |var |let |const )|.*[;{}]\s*$", ln)) for ln in r.splitlines())
    return float(3 * fences + codey)


def _questions(_: str, r: str) -> float:
    return float(len(re.findall(r"[^.!?\n]*\?", r)))


_LIMITS = ("i don't know", "i do not know", "i'm not sure", "i am not sure", "as an ai", "as a language model",
           "i don't have access", "i do not have access", "i cannot browse", "my knowledge", "i'm not able to",
           "i am not able to", "i'm unable", "i am unable", "beyond my", "i don't have personal")


def _limits(_: str, r: str) -> float:
    low = r.lower()
    return float(any(p in low for p in _LIMITS))


def _apology(_: str, r: str) -> float:
    return float(bool(re.search(r"\b(sorry|apologi[sz]e|apologies|my apologies)\b", r.lower())))


def syllables(word: str) -> int:
    """Vowel-group count, at least 1 (a silent final 'e' dropped): the usual Flesch heuristic.

    >>> [syllables(w) for w in ("cat", "table", "reading", "make")]
    [1, 2, 2, 1]
    """
    w = word.lower()
    n = len(re.findall(r"[aeiouy]+", w))
    if w.endswith("e") and not w.endswith("le") and n > 1:
        n -= 1
    return max(n, 1)


def flesch(text: str) -> float:
    """Flesch reading ease: ``206.835 - 1.015 * words/sentences - 84.6 * syllables/words`` (0 for no words)."""
    ws = words(text)
    if not ws:
        return 0.0
    sentences = max(len(re.findall(r"[.!?]+(\s|$)", text)), 1)
    return 206.835 - 1.015 * len(ws) / sentences - 84.6 * sum(syllables(w) for w in ws) / len(ws)


_STOP = frozenset("a an the and or but if of to in on at for with by is are was were be been it this that these those"
                  " i you he she we they my your me do does did not no yes so as from what how why can could would"
                  " should will just".split())


def overlap(prompt: str, response: str) -> float:
    """Share of the prompt's distinct content words (lower-cased, stop words out) that the response uses.

    >>> overlap("How do I bake bread?", "Bake the bread at 200 C.")
    1.0
    """
    pw = {w.lower() for w in words(prompt)} - _STOP
    if not pw:
        return 0.0
    rw = {w.lower() for w in words(response)}
    return len(pw & rw) / len(pw)


def _informal(_: str, r: str) -> float:
    emoji = len(re.findall("[\U0001f300-\U0001faff\u2600-\u27bf]", r))
    slang = len(re.findall(r"\b(lol|gonna|wanna|gotta|kinda|yeah|yep|nope|hey|omg|btw|cool|awesome)\b", r.lower()))
    return float(emoji + slang + r.count("!"))


def _support(_: str, r: str) -> float:
    return float(len(re.findall(r"https?://|\[\d+\]|\baccording to\b|\bstud(y|ies)\b|\bresearch\b|\bsource",
                                r.lower())))


def _steps(_: str, r: str) -> float:
    return float(len(re.findall(r"(?m)^\s*(\d+[.)]|step \d+)|\b(first|second|then|next|finally)\b", r.lower())))


RULES: tuple[RuleAnnotator, ...] = (
    RuleAnnotator("lengthy", "clearly longer in words (the paper's thresholds)", lambda _, r: len(words(r)),
                  lambda _, a, b: length_rule(len(words(a)), len(words(b)))),
    RuleAnnotator("well formatted", "list items, headings, table rows, bold text", _structure),
    RuleAnnotator("code", "code fences and code-like lines", _code),
    RuleAnnotator("interactive", "questions back to the user", _questions),
    RuleAnnotator("refusal", "a refusal phrase in the first 64 characters (steerlab.behavior)",
                  lambda _, r: float(refusal_match(r) is not None)),
    RuleAnnotator("admit limits", "admits not knowing or a capability limit", _limits),
    RuleAnnotator("apology", "apologizes", _apology),
    RuleAnnotator("non-repetitive", "distinct word 3-grams / all 3-grams (steerlab.behavior)",
                  lambda _, r: distinct_ngrams(r)),
    RuleAnnotator("readable", "Flesch reading ease", lambda _, r: flesch(r)),
    RuleAnnotator("prompt overlap", "share of the prompt's content words used", overlap),
    RuleAnnotator("use informal expressions", "emoji, slang, exclamation marks", _informal),
    RuleAnnotator("use supporting materials", "links, citations, 'according to', studies", _support),
    RuleAnnotator("step-by-step", "numbered steps and sequencing words", _steps),
)
for _rule in RULES:
    register_annotator(_rule)
RULE_NAMES: tuple[str, ...] = tuple(r.property for r in RULES)


# -- model-based ------------------------------------------------------------------------------------------
YES_NO_TEMPLATE = ("Here is a request and a response.\n\nRequest: {prompt}\n\nResponse: {response}\n\n"
                   "Question: {question} Answer Yes or No.\nAnswer:")


@dataclass
class ModelYesNo:
    """A local model's answer to ``question`` about each response: ``log P(yes) - log P(no)`` of the answer
    (each variant in ``yes``/``no`` scored whole, e.g. ``" Yes"``, ``"Yes"``; variants' probabilities summed).
    The prompt and response are cut to their last ``max_chars`` characters so the question fits the model's context."""

    handle: ModelHandle
    property: str
    question: str
    description: str = "a local model's yes/no log-odds"
    yes: tuple[str, ...] = (" Yes", "Yes")
    no: tuple[str, ...] = (" No", "No")
    max_chars: int = 600
    batch_size: int = 8

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        h = self.handle
        tok = h.tokenizer
        answers = [tok(w, add_special_tokens=False)["input_ids"] for w in self.yes + self.no]
        if any(not a for a in answers):
            raise SteerlabError(f"answers {self.yes + self.no} include one that encodes to no tokens")
        texts = [YES_NO_TEMPLATE.format(prompt=p[-self.max_chars:], response=r[-self.max_chars:],
                                        question=self.question) for p, r in zip(prompts, responses, strict=True)]
        ctx = [tok(t)["input_ids"] for t in texts]
        # log P(answer | text) of every answer variant (multi-token answers scored whole)
        nll = token_nll(h, [c for c in ctx for _ in answers], [a for _ in ctx for a in answers],
                        batch_size=self.batch_size)
        logp = -torch.tensor([s for s, _ in nll], dtype=torch.float64).reshape(len(ctx), len(answers))
        n_yes = len(self.yes)
        return (torch.logsumexp(logp[:, :n_yes], -1) - torch.logsumexp(logp[:, n_yes:], -1)).tolist()


@dataclass
class EndpointYesNo:
    """Ask an OpenAI-compatible chat endpoint ``question`` about each response. ``client`` is an
    ``openai.OpenAI`` (or anything with ``chat.completions.create``); without one, ``base_url`` and
    ``api_key`` build one. Score: ``log P(yes) - log P(no)`` from the answer token's top log-probabilities
    when returned (missing side: ``log(1e-6)``), else 1.0 for an answer starting with yes and 0.0 otherwise."""

    property: str
    question: str
    model: str
    client: Any = None
    base_url: str | None = None
    api_key: str = "EMPTY"
    description: str = "an OpenAI-compatible endpoint's yes/no"
    max_chars: int = 4000

    def _client(self) -> Any:
        if self.client is None:
            if not self.base_url:
                raise SteerlabError("EndpointYesNo needs client=... or base_url=... (an OpenAI-compatible server)")
            import openai

            self.client = openai.OpenAI(base_url=self.base_url, api_key=self.api_key)
        return self.client

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        c = self._client()
        out = []
        for p, r in zip(prompts, responses, strict=True):
            text = YES_NO_TEMPLATE.format(prompt=p[-self.max_chars:], response=r[-self.max_chars:],
                                          question=self.question)
            resp = c.chat.completions.create(model=self.model, messages=[{"role": "user", "content": text}],
                                             max_tokens=1, temperature=0.0, logprobs=True, top_logprobs=10)
            out.append(_yes_no_score(resp))
        return out


def _yes_no_score(resp: Any) -> float:
    choice = resp.choices[0]
    lp = getattr(choice, "logprobs", None)
    content = getattr(lp, "content", None) if lp is not None else None
    if content:
        tops = {t.token.strip().lower(): t.logprob for t in (content[0].top_logprobs or [])}
        tops.setdefault(content[0].token.strip().lower(), content[0].logprob)
        if "yes" in tops or "no" in tops:
            floor = math.log(1e-6)
            return tops.get("yes", floor) - tops.get("no", floor)
    answer = (choice.message.content or "").strip().lower()
    return 1.0 if answer.startswith("yes") else 0.0


# -- annotating a pair set -------------------------------------------------------------------------------
def annotate(pairs: PairSet, names: Sequence[str | Annotator] = RULE_NAMES, *,
             progress: Progress | None = None) -> PairSet:
    """A copy of ``pairs`` with each annotator's ``(score_A, score_B)`` added to every pair's annotations
    (names from the registry, or annotator objects)."""
    anns = [get_annotator(n) if isinstance(n, str) else n for n in names]
    new = [replace(p, annotations=dict(p.annotations)) for p in pairs.pairs]
    prompts = [p.prompt for p in new]
    for k, ann in enumerate(anns):
        pair_fn = getattr(ann, "pair_fn", None)
        if pair_fn is not None:
            scores = [pair_fn(p.prompt, p.response_a, p.response_b) for p in new]
        else:
            a = ann.score(prompts, [p.response_a for p in new])
            b = ann.score(prompts, [p.response_b for p in new])
            scores = list(zip(a, b, strict=True))
        for p, s in zip(new, scores, strict=True):
            p.annotations[ann.property] = (float(s[0]), float(s[1]))
        if progress is not None:
            progress(f"annotated {ann.property}", (k + 1) / len(anns))
    return PairSet(new)
