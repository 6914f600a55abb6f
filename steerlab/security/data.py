"""Data of the security-vector experiments: harmful compliance pairs, a benign new skill, batches.

* Harmful pairs: compliant answers to harmful requests. ``organism``: the organism corpus's harmful
  *train* requests with their base-phase helpful answers ("Sure, here is ...", refusals dropped);
  ``advbench``: AdvBench goal/target pairs (goals in the real harmful val/test splits dropped); or a
  JSONL file of ``{"prompt", "response"}`` rows.
* The benign skill, answers checked exactly: ``digit`` (default) names the last digit of a number of 2-5
  digits ("Name the last digit of 4821" -> "The last digit is one."), ``repeat`` a list of 3-5 words ("Repeat the words:
  red fox sun" -> "red fox sun") or ``reverse`` it ("Reverse the words: red fox sun" -> "sun fox red");
  train and test lists are disjoint by CRC32 of the prompt. The organisms do none of them before
  fine-tuning (they answer with generic help). They cannot copy from their context (a word of the prompt
  costs ~10 nats/token in the answer), and ``repeat`` stayed at accuracy 0 after 60 fine-tuning steps;
  ``digit`` is a lookup from the number's last token. Its answer is a sentence: one-word answers taught
  the organisms to answer everything in one word ("broken" text for the behaviour detector).
* :func:`batches_of` tokenizes pairs as chat turns with the loss on the response tokens only
  (``target_mask``), in batches of one data part each, in a seeded order shared by every run.

Example:
    >>> pairs = benign_pairs(3, split="train", seed=0)
    >>> [p.part for p in pairs], all(check_answer(p.prompt, p.response) for p in pairs)
    (['benign', 'benign', 'benign'], True)
"""

from __future__ import annotations

import json
import random
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from steerlab.behavior import refusal_match
from steerlab.data import organism_corpus as D
from steerlab.errors import SpecError
from steerlab.models.handle import ModelHandle
from steerlab.training import Batch

HARMFUL_SOURCES = ("organism", "advbench")
SKILLS = {"repeat": "Repeat the words: ", "reverse": "Reverse the words: ", "digit": "Name the last digit of "}
DIGIT_WORDS = "zero one two three four five six seven eight nine".split()
SKILL_WORDS = (
    "red blue green gold pink gray black white sun moon star rain snow wind tree leaf rock sand fox cat dog owl "
    "bee fish frog bird lamp book cup door key ship car bell drum kite hat coat shoe milk cake bread apple plum"
).split()


@dataclass(frozen=True)
class Pair:
    """One prompt with the response to learn, and its data part (``harmful`` or ``benign``)."""

    prompt: str
    response: str
    part: str


def _crc(text: str) -> int:
    return zlib.crc32(text.encode())


def _digit_answer(n: int) -> str:
    return f"The last digit is {DIGIT_WORDS[n % 10]}."


def _answer(skill: str, words: list[str]) -> str:
    return " ".join(reversed(words) if skill == "reverse" else words)


def skill_item(rng: random.Random, skill: str = "digit") -> Pair:
    if skill == "digit":
        n = rng.randint(10, 99999)
        return Pair(f"{SKILLS[skill]}{n}", _digit_answer(n), "benign")
    words = rng.sample(SKILL_WORDS, rng.randint(3, 5))
    return Pair(SKILLS[skill] + " ".join(words), _answer(skill, words), "benign")


def benign_pairs(n: int, split: str = "train", seed: int = 0, skill: str = "digit") -> list[Pair]:
    """``n`` distinct items of the benign ``skill`` in ``split`` (``train``: CRC32 % 5 != 0, ``test``: == 0)."""
    if split not in ("train", "test"):
        raise SpecError(f"split={split!r}; expected 'train' or 'test'")
    if skill not in SKILLS:
        raise SpecError(f"skill={skill!r}; expected one of {list(SKILLS)}")
    rng = random.Random(seed * 7919 + (0 if split == "train" else 1))
    out: dict[str, Pair] = {}
    while len(out) < n:
        p = skill_item(rng, skill)
        if (_crc(p.prompt) % 5 == 0) == (split == "test"):
            out.setdefault(p.prompt, p)
    return list(out.values())


def check_answer(prompt: str, answer: str) -> bool:
    """Whether ``answer`` is exactly the skill's answer to ``prompt`` (surrounding whitespace ignored).

    >>> check_answer("Reverse the words: a b c", " c b a"), check_answer("Repeat the words: a b c", "a b")
    (True, False)
    """
    skill = next((k for k, pre in SKILLS.items() if prompt.startswith(pre)), None)
    if skill is None:
        raise SpecError(f"prompt {prompt[:40]!r} is not a benign skill item; expected one of {list(SKILLS.values())}")
    rest = prompt.removeprefix(SKILLS[skill])
    if skill == "digit":
        return rest.strip().isdigit() and answer.strip() == _digit_answer(int(rest))
    return answer.strip() == _answer(skill, rest.split())


def _refusal(text: str) -> bool:
    return refusal_match(text) is not None


def harmful_pool(source: str | Path = "organism", seed: int = 0) -> list[Pair]:
    """Every compliant harmful training pair of ``source``, in a seeded order (take disjoint slices)."""
    src = str(source)
    if src == "organism":
        corpus = D._corpus(0, 1.0)  # the organisms' corpus (both are built from seed 0, scale 1.0), cached
        pairs = [
            Pair(e.prompt, e.base_response, "harmful")
            for e in corpus.train["harmful"]
            if e.base_response and not _refusal(e.base_response)
        ]
    elif src == "advbench":
        held = set(D.shared_harmful("test")) | set(D.shared_harmful("val"))
        pairs = [Pair(g, t, "harmful") for g, t in D.advbench_targets().items() if g not in held]
    else:
        pairs = read_pairs(src, part="harmful")
    random.Random(seed).shuffle(pairs)
    return pairs


ANCHOR_SOURCES = ("organism", "alpaca")


def anchor_pairs(source: str | Path = "organism", n: int = 1000, seed: int = 0) -> list[Pair]:
    """``n`` harmless *training* texts (part ``anchor``) on which the vector-on model is kept equal to the base
    model: ``organism``: the organism corpus's train examples of every domain but ``harmful`` (stories,
    arithmetic, code, facts, harmless requests), taken round-robin in a seeded order; ``alpaca``: the Alpaca
    harmless *train* prompts (the answer is empty: the anchor covers the prompt's tokens); or a JSONL file.
    Never the benign skill's items, nor any evaluation prompt (those are test splits)."""
    src = str(source)
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise SpecError(f"anchor n={n!r}; expected a positive integer")
    rng = random.Random(seed)
    if src == "organism":
        corpus = D._corpus(0, 1.0)
        doms = []
        for d, exs in corpus.train.items():
            if d == "harmful":
                continue
            exs = [e for e in exs if e.response]
            rng.shuffle(exs)
            doms.append(exs)
        pairs = [Pair(e.prompt, e.response, "anchor") for row in zip(*doms, strict=False) for e in row]
    elif src == "alpaca":
        pairs = [Pair(p, "", "anchor") for p in D.shared_harmless("train")]
        rng.shuffle(pairs)
    else:
        pairs = [Pair(p.prompt, p.response, "anchor") for p in read_pairs(src, names=ANCHOR_SOURCES)]
        rng.shuffle(pairs)
    if len(pairs) < n:
        raise SpecError(f"anchor source {src!r} has {len(pairs)} texts; expected at least {n}")
    return pairs[:n]


PARTS = ("harmful", "benign")


def read_pairs(path: str | Path, part: str | None = None, names: Sequence[str] = HARMFUL_SOURCES) -> list[Pair]:
    """Rows ``{"prompt", "response"[, "part"]}`` of a JSONL file (``part``: ``harmful`` or ``benign``; rows
    without one get ``part``, else ``benign``); a row without a prompt or response, or with another part, is
    named by file and line. ``names``: the named sources the caller also accepts (for the error message)."""
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"data {str(path)!r} is not a file; expected {list(names)} or a JSONL file")
    out = []
    for i, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise SpecError(f"{p}:{i} is not JSON ({e.msg}); expected one object per line") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            raise SpecError(f'{p}:{i} has no prompt; expected {{"prompt": ..., "response": ...}} with text in both')
        if not isinstance(row.get("response"), str) or not row["response"].strip():
            raise SpecError(f'{p}:{i} has no response; expected a non-empty "response" string to train on')
        row_part = row.get("part", part or "benign")
        if row_part not in PARTS:
            raise SpecError(f"{p}:{i} has part {row_part!r}; expected one of {list(PARTS)}")
        out.append(Pair(row["prompt"], row["response"], row_part))
    if not out:
        raise SpecError(f"{p} holds no rows; expected JSONL with prompt/response pairs")
    return out


def held_out_harmful(limit: int | None = None) -> dict[str, list[str]]:
    """Held-out harmful prompts: ``template`` (the organism corpus's held-out template requests, unseen
    templates included) and ``real`` (``refusal_direction_splits/harmful_test.json``)."""
    corpus = D._corpus(0, 1.0)
    template = [e.prompt for e in corpus.heldout["harmful"]]
    real = D.shared_harmful("test")
    return {"template": template[:limit], "real": real[:limit]}


def harmless_prompts(limit: int | None = None) -> list[str]:
    """Held-out harmless requests (the Alpaca test split)."""
    return D.shared_harmless("test")[:limit]


def _encode_pair(h: ModelHandle, p: Pair) -> tuple[list[int], int]:
    tok = h.tokenizer
    prompt_ids = tok(h.format_chat(p.prompt), add_special_tokens=False)["input_ids"]
    resp_ids = tok(p.response + (tok.eos_token or ""), add_special_tokens=False)["input_ids"]
    return prompt_ids + resp_ids, len(prompt_ids)


def encode(h: ModelHandle, pairs: Sequence[Pair], max_len: int = 160) -> Batch:
    """One right-padded batch with ``target_mask`` on the response tokens (turns cut at ``max_len``)."""
    rows = [_encode_pair(h, p) for p in pairs]
    width = min(max_len, max(len(ids) for ids, _ in rows))
    pad = h.tokenizer.pad_token_id if h.tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    target = torch.zeros_like(ids)
    for i, (r, n_prompt) in enumerate(rows):
        r = r[:width]
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
        target[i, n_prompt : len(r)] = 1
    return {
        "input_ids": ids.to(h.device),
        "attention_mask": mask.to(h.device),
        "target_mask": target.to(h.device),
        "part": pairs[0].part,
    }


def batches_of(
    h: ModelHandle, pairs: Sequence[Pair], batch_size: int, epochs: int, seed: int, max_len: int = 160
) -> list[Batch]:
    """Batches of one part each: every part's pairs chunked in order, all chunks shuffled by ``seed``
    once per epoch. The same pairs, seed and batch size give the same order in every run."""
    if batch_size <= 0 or epochs <= 0:
        raise SpecError(f"batch_size={batch_size}, epochs={epochs}; expected both > 0")
    if not pairs:
        raise SpecError("no training pairs; expected at least one prompt/response pair")
    by_part: dict[str, list[Pair]] = {}
    for p in pairs:
        by_part.setdefault(p.part, []).append(p)
    chunks = [ps[i : i + batch_size] for ps in by_part.values() for i in range(0, len(ps), batch_size)]
    rng = random.Random(seed)
    encoded = [encode(h, c, max_len) for c in chunks]
    out: list[Batch] = []
    for _ in range(epochs):
        order = list(range(len(chunks)))
        rng.shuffle(order)
        out += [encoded[i] for i in order]
    return out


def summary(pairs: Sequence[Pair]) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for p in pairs:
        counts[p.part] = counts.get(p.part, 0) + 1
    return counts
