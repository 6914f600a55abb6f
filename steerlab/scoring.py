"""Scoring: log-likelihood of responses, perplexity, and gradients on request.

One home for "how likely is this text under this model": :func:`token_nll` scores token ids
(right-padded batches, so positions start at 0 as in generation); :func:`response_nll` and
:func:`judge_nll` are its text front ends; :func:`nll_from_scores` reads a generation's own
logits. :func:`gradients` opens a block in which chosen parameters carry gradients (for importance
scores and training) while every inference path stays under ``no_grad``.

Example:
    >>> from steerlab.models.tiny import tiny_model
    >>> h = tiny_model("llama")
    >>> (s, n), = response_nll(h, ["a b"], ["c d"], chat=False)
    >>> n > 0 and s > 0
    True
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from steerlab.engines import position_ids
from steerlab.errors import SpecError, SteerlabError
from steerlab.generation import GenerationResult, forward
from steerlab.models.handle import ModelHandle


def _prompt_ids(h: ModelHandle, prompts: Sequence[str], chat: bool) -> list[list[int]]:
    """Token ids of each prompt exactly as :func:`steerlab.generate` feeds it (chat template or not)."""
    uniq = list(dict.fromkeys(prompts))
    if not uniq:
        return []
    enc = h.encode(uniq, chat=chat)
    ids, mask = enc["input_ids"].cpu(), enc["attention_mask"].cpu().bool()
    rows = {p: ids[i][mask[i]].tolist() for i, p in enumerate(uniq)}
    return [rows[p] for p in prompts]


def token_nll(
    h: ModelHandle,
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[int]],
    *,
    interventions: Any = None,
    batch_size: int = 32,
) -> list[tuple[float, int]]:
    """``(summed NLL in nats, number of tokens)`` of each response's tokens given its prompt's tokens.

    Sequences are right-padded in batches (positions start at 0, as in generation); empty responses
    give ``(0.0, 0)``; ``interventions`` apply during the forward passes.
    """
    if len(prompt_ids) != len(response_ids):
        raise SteerlabError(f"got {len(prompt_ids)} prompts but {len(response_ids)} responses; expected one each")
    pad = h.tokenizer.pad_token_id if h.tokenizer.pad_token_id is not None else 0
    out: list[tuple[float, int]] = [(0.0, 0)] * len(prompt_ids)
    todo = [i for i, r in enumerate(response_ids) if len(r) > 0]
    for start in range(0, len(todo), batch_size):
        idx = todo[start : start + batch_size]
        seqs = [list(prompt_ids[i]) + list(response_ids[i]) for i in idx]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        target = torch.zeros_like(ids, dtype=torch.bool)
        for row, (i, s) in enumerate(zip(idx, seqs, strict=True)):
            ids[row, : len(s)] = torch.tensor(s)
            mask[row, : len(s)] = 1
            target[row, len(prompt_ids[i]) : len(s)] = True
        dev = h.device
        logits = forward(h, ids.to(dev), attention_mask=mask.to(dev), interventions=interventions).float()
        logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None].to(dev))[..., 0]
        tm = target[:, 1:].to(dev)
        nll = -(logp * tm).sum(1)
        for row, i in enumerate(idx):
            out[i] = (float(nll[row]), int(tm[row].sum()))
    return out


def response_nll(
    h: ModelHandle,
    prompts: Sequence[str],
    responses: Sequence[str],
    *,
    chat: bool = True,
    batch_size: int = 32,
    interventions: Any = None,
) -> list[tuple[float, int]]:
    """``(summed NLL in nats, number of tokens)`` of each response (text) given its prompt.

    The prompt is encoded as :func:`steerlab.generate` encodes it (chat template when ``chat``); the
    response is tokenized on its own and appended (no end-of-turn token: generation may have been cut
    at ``max_new_tokens``). Whitespace-only responses give ``(0.0, 0)``.
    """
    if len(prompts) != len(responses):
        raise SteerlabError(f"got {len(prompts)} prompts but {len(responses)} responses; expected one each")
    tok = h.tokenizer
    r_ids = [tok(r, add_special_tokens=False)["input_ids"] if r.strip() else [] for r in responses]
    return token_nll(h, _prompt_ids(h, prompts, chat), r_ids, interventions=interventions, batch_size=batch_size)


def response_perplexity(
    h: ModelHandle, prompts: Sequence[str], responses: Sequence[str], *, chat: bool = True, batch_size: int = 32
) -> list[float]:
    """Perplexity of each response's tokens given its prompt; ``inf`` for empty responses."""
    return [
        math.exp(s / n) if n else math.inf
        for s, n in response_nll(h, prompts, responses, chat=chat, batch_size=batch_size)
    ]


def judge_nll(
    judge: ModelHandle,
    prompts: list[str],
    completions: list[str],
    completion_ids: list[list[int]] | None = None,
    *,
    chat: bool,
    batch_size: int = 16,
) -> list[float]:
    """Mean NLL (nats/token) of each completion given its prompt under an unmodified ``judge``.

    ``completion_ids`` (the generator's own tokens) are scored as they are when the judge is the
    generating model; otherwise the text is re-tokenized with the judge's tokenizer. Empty completions
    give NaN.
    """
    if len(prompts) != len(completions):
        raise SpecError(f"{len(prompts)} prompts but {len(completions)} completions")
    if completion_ids is None:
        completion_ids = [judge.tokenizer(t, add_special_tokens=False)["input_ids"] for t in completions]
    nll = token_nll(judge, _prompt_ids(judge, prompts, chat), completion_ids, batch_size=batch_size)
    return [s / n if n else float("nan") for s, n in nll]


def nll_from_scores(result: GenerationResult) -> list[float]:
    """Mean NLL (nats/token) of each completion of a ``generate(..., output_scores=True)`` result.

    The raw per-step logits are the generating model's own next-token logits for exactly the sampled
    context, so this equals a separate forward pass of the same model (KV-cached logits match a full
    recompute to float tolerance) at no extra cost. Empty completions give NaN.
    """
    if result.scores is None:
        raise SpecError("nll_from_scores needs generate(..., output_scores=True)")
    start = result.sequences.shape[1] - len(result.scores)
    lengths = torch.tensor([len(t) for t in result.token_ids])
    total = torch.zeros(len(result.token_ids), dtype=torch.float64)
    for t, logits in enumerate(result.scores):  # one vectorized step over the batch per generated position
        tok = result.sequences[:, start + t].unsqueeze(-1)
        step = torch.logsumexp(logits.float(), -1) - logits.float().gather(1, tok).squeeze(-1)
        total += torch.where(lengths > t, step.double(), 0.0)
    mean = total / lengths.clamp(min=1)
    return [float(m) if n > 0 else float("nan") for m, n in zip(mean.tolist(), lengths.tolist(), strict=True)]


# -- gradients on request -----------------------------------------------------------------------------
@contextmanager
def gradients(h: ModelHandle, params: Iterable[str] | None = None) -> Iterator[dict[str, nn.Parameter]]:
    """A block in which the named parameters (all by default) require gradients and grad mode is on.

    The block starts with no gradient on any parameter (a ``.grad`` there before is set aside, so the block's
    gradients are its own); on exit every parameter's ``requires_grad`` and ``.grad`` are back to what they were
    and the gradients the block accumulated are dropped, also on error. Inference (``sl.generate``,
    ``sl.forward``, captures, engines) runs under ``no_grad`` inside the block too, so gradients never leak
    into it; compute differentiable losses with :func:`sequence_nll`.

    Example:
        >>> from steerlab.models.tiny import tiny_model
        >>> h = tiny_model("llama")
        >>> with gradients(h, ["model.norm.weight"]) as ps:
        ...     sequence_nll(h, h.tokenize(["a b c"])).backward()
        ...     ps["model.norm.weight"].grad.shape
        torch.Size([64])
        >>> h.model.model.norm.weight.requires_grad, h.model.model.norm.weight.grad is None
        (False, True)
    """
    named = dict(h.model.named_parameters())
    names = list(named) if params is None else list(params)
    missing = [n for n in names if n not in named]
    if missing:
        raise SpecError(f"unknown parameters {missing[:5]}; expected names from model.named_parameters()")
    before = {n: (p.requires_grad, p.grad) for n, p in named.items()}
    chosen = {n: named[n] for n in names}
    try:
        for p in named.values():
            p.grad = None
        for p in chosen.values():
            p.requires_grad_(True)
        with torch.enable_grad():
            yield chosen
    finally:
        for n, p in named.items():
            p.requires_grad_(before[n][0])
            p.grad = before[n][1]


def sequence_nll(h: ModelHandle, enc: dict[str, Tensor], target_mask: Tensor | None = None) -> Tensor:
    """Differentiable summed NLL (nats) of the tokens of ``enc`` that ``target_mask`` selects (by
    default every real token after the first), from the bare model: the loss for :func:`gradients`."""
    ids, mask = enc["input_ids"], enc["attention_mask"]
    logits = h.model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits.float()
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]
    sel = (mask[:, 1:].bool() & mask[:, :-1].bool()) if target_mask is None else target_mask[:, 1:].bool()
    return -(logp * sel).sum()
