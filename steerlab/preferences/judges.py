"""Judges: who prefers A or B. Labels come from the data, from a local model's likelihood, or from a DPO reward.

* labels already in the data (``pair.labels[name]``: humans, an LLM-as-judge run elsewhere, an endpoint);
* :class:`LoglikJudge` -- a local language model prefers the response with the higher length-normalized
  log-likelihood (mean log-probability per token) given the prompt (:func:`steerlab.scoring.token_nll`);
* :class:`DPOJudge` -- the implicit reward of a fine-tuned model against its reference,
  ``beta * (log pi(y|x) - log pi_ref(y|x))`` summed over the response tokens (Rafailov et al. 2023); the two
  models must share a tokenizer (an organism before and after a fine-tune is a natural pair).

A judge returns one :class:`Verdict` per pair: both scores, and ``label`` ``"A"``/``"B"``, or ``None`` on an exact
tie or an empty response (those pairs get no label from this judge, and :func:`judge_pairs` counts them).

The prompt is formatted with ``template`` (default ``"{prompt}\\n\\nAssistant:"``, the HH-RLHF dialogue
format) or the model's chat template (``chat=True``); the prompt keeps its last tokens (the BOS token stays)
and the response its first ``max_response_tokens`` so both fit the model's context.

Example:
    >>> import steerlab as sl
    >>> from steerlab.preferences.data import Pair, PairSet
    >>> j = LoglikJudge(sl.load("shared:stories260K"), "stories")
    >>> ps = PairSet([Pair("1", "Once upon a time", "there was a little girl.", "qz xv jj kk")])
    >>> judge_pairs(ps, j)[0].pairs[0].labels
    {'stories': 'A'}
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

from steerlab.errors import SteerlabError
from steerlab.models.handle import ModelHandle
from steerlab.preferences.data import Pair, PairSet
from steerlab.scoring import token_nll

Progress = Callable[[str, float], None]
DEFAULT_TEMPLATE = "{prompt}\n\nAssistant:"


@dataclass
class Verdict:
    """One judge's verdict on one pair: the score of each response and the label (``None``: no preference)."""

    pair_id: str
    score_a: float
    score_b: float
    label: str | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Judge(Protocol):
    name: str

    def judge(self, pairs: Sequence[Pair], progress: Progress | None = None) -> list[Verdict]: ...


def _label(a: float, b: float) -> str | None:
    if a != a or b != b or a == b:  # NaN (empty response) or an exact tie
        return None
    return "A" if a > b else "B"


@dataclass
class _Encoder:
    handle: ModelHandle
    chat: bool = False
    template: str = DEFAULT_TEMPLATE
    max_response_tokens: int = 128
    max_prompt_tokens: int | None = None

    def prompt_ids(self, prompt: str) -> list[int]:
        tok = self.handle.tokenizer
        templated = self.chat and bool(getattr(tok, "chat_template", None))
        text = self.handle.format_chat(prompt) if self.chat else self.template.format(prompt=prompt)
        ids = tok(text, add_special_tokens=not templated)["input_ids"]
        limit = self.max_prompt_tokens
        if limit is None:
            ctx = getattr(self.handle.config, "max_position_embeddings", None) or 2048
            limit = max(ctx - self.max_response_tokens, 1)
        if len(ids) > limit:
            bos = tok.bos_token_id
            ids = ids[:1] + ids[len(ids) - limit + 1:] if bos is not None and ids[0] == bos else ids[-limit:]
        return ids

    def response_ids(self, response: str) -> list[int]:
        ids = self.handle.tokenizer(response, add_special_tokens=False)["input_ids"] if response.strip() else []
        return ids[: self.max_response_tokens]

    def loglik(self, pairs: Sequence[Pair], batch_size: int,
               progress: Progress | None, stage: str) -> tuple[list[tuple[float, int]], list[tuple[float, int]]]:
        """``(summed log-likelihood, tokens)`` of each pair's A and B responses."""
        pids = [self.prompt_ids(p.prompt) for p in pairs]
        out: list[list[tuple[float, int]]] = [[], []]
        chunk = max(batch_size * 4, 1)
        for side, attr in enumerate(("response_a", "response_b")):
            rids = [self.response_ids(getattr(p, attr)) for p in pairs]
            for i in range(0, len(pairs), chunk):
                nll = token_nll(self.handle, pids[i: i + chunk], rids[i: i + chunk], batch_size=batch_size)
                out[side].extend((-s, n) for s, n in nll)
                if progress is not None:
                    progress(stage, (side * len(pairs) + min(i + chunk, len(pairs))) / (2 * len(pairs)))
        return out[0], out[1]


@dataclass
class LoglikJudge:
    """Prefers the response with the higher mean log-probability per token under ``handle``."""

    handle: ModelHandle
    name: str
    chat: bool = False
    template: str = DEFAULT_TEMPLATE
    max_response_tokens: int = 128
    max_prompt_tokens: int | None = None
    batch_size: int = 8

    def judge(self, pairs: Sequence[Pair], progress: Progress | None = None) -> list[Verdict]:
        enc = _Encoder(self.handle, self.chat, self.template, self.max_response_tokens, self.max_prompt_tokens)
        a, b = enc.loglik(pairs, self.batch_size, progress, f"judge {self.name}")
        mean = lambda s, n: s / n if n else float("nan")  # noqa: E731
        return [Verdict(p.id, mean(*sa), mean(*sb), _label(mean(*sa), mean(*sb)))
                for p, sa, sb in zip(pairs, a, b, strict=True)]


@dataclass
class DPOJudge:
    """Prefers the response with the higher implicit reward ``beta * (log pi - log pi_ref)`` (summed over the
    response tokens) of ``policy`` against ``reference``."""

    policy: ModelHandle
    reference: ModelHandle
    name: str
    beta: float = 0.1
    chat: bool = False
    template: str = DEFAULT_TEMPLATE
    max_response_tokens: int = 128
    max_prompt_tokens: int | None = None
    batch_size: int = 8

    def __post_init__(self) -> None:
        if not self.beta > 0:
            raise SteerlabError(f"DPO beta={self.beta}; expected a positive number")
        if self.policy.tokenizer.get_vocab() != self.reference.tokenizer.get_vocab():
            raise SteerlabError(f"DPO judge {self.name!r}: the policy and reference tokenizers differ; expected "
                                "a fine-tuned model and its own reference (one tokenizer)")

    def judge(self, pairs: Sequence[Pair], progress: Progress | None = None) -> list[Verdict]:
        rows = []
        for which, h in (("policy", self.policy), ("reference", self.reference)):
            enc = _Encoder(h, self.chat, self.template, self.max_response_tokens, self.max_prompt_tokens)
            stage = f"judge {self.name} ({which})"
            rows.append(enc.loglik(pairs, self.batch_size, None if progress is None else
                                   (lambda s, f, w=which: progress(s, (f + (w == "reference")) / 2)), stage))
        (pa, pb), (ra, rb) = rows

        def reward(pol: tuple[float, int], ref: tuple[float, int]) -> float:
            return self.beta * (pol[0] - ref[0]) if pol[1] else float("nan")

        out = []
        for p, a1, b1, a0, b0 in zip(pairs, pa, pb, ra, rb, strict=True):
            sa, sb = reward(a1, a0), reward(b1, b0)
            out.append(Verdict(p.id, sa, sb, _label(sa, sb)))
        return out


def judge_pairs(pairs: PairSet, judge: Judge, *, progress: Progress | None = None
                ) -> tuple[PairSet, list[Verdict]]:
    """A copy of ``pairs`` with ``judge``'s labels added under ``judge.name`` (pairs without a preference get no
    label) and the verdicts (scores included)."""
    if not judge.name:
        raise SteerlabError("a judge needs a non-empty name")
    verdicts = judge.judge(pairs.pairs, progress)
    new = []
    for p, v in zip(pairs.pairs, verdicts, strict=True):
        labels = {k: x for k, x in p.labels.items() if k != judge.name}
        if v.label is not None:
            labels[judge.name] = v.label
        new.append(replace(p, labels=labels))
    return PairSet(new), verdicts


def agreement(pairs: PairSet, judge_a: str, judge_b: str) -> dict[str, float]:
    """Share of the pairs labelled by both judges on which they agree, and how many such pairs there are."""
    both = [p for p in pairs.pairs if judge_a in p.labels and judge_b in p.labels]
    agree = sum(p.labels[judge_a] == p.labels[judge_b] for p in both)
    return {"pairs": len(both), "agreement": agree / len(both) if both else float("nan")}
