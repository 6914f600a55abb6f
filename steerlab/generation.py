"""Forward passes and batched generation with interventions, the KV cache and pluggable samplers.

Generation drives Hugging Face ``generate`` (its KV cache, left padding and stopping logic) with
steerlab's sampler as the only logits processor and steerlab's hooks installed for the whole call;
so a steered run costs what the hooks cost and nothing more.

Example:
    >>> import steerlab as sl
    >>> h = sl.load("shared:stories260K")
    >>> sl.generate(h, ["Once upon a time"], max_new_tokens=6).texts[0]
    ', there was a little girl'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from steerlab.errors import SpecError
from steerlab.interventions.apply import intervene
from steerlab.sampling import Sampler, make_sampler


@dataclass
class GenerationResult:
    """Completions (without the prompt) and everything needed to reproduce them."""

    prompts: list[str]
    texts: list[str]
    token_ids: list[list[int]]
    prompt_ids: Tensor
    sequences: Tensor
    settings: dict[str, Any]
    scores: list[Tensor] | None = None  # raw next-token logits per step, [batch, vocab]
    records: dict[str, list[Tensor]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "completions": [
                {"prompt": p, "text": t, "token_ids": ids}
                for p, t, ids in zip(self.prompts, self.texts, self.token_ids, strict=True)
            ],
            "settings": self.settings,
        }


def _coerce_sampler(sampler: Sampler | str | dict | None) -> Sampler:
    if sampler is None:
        return make_sampler("greedy")
    if isinstance(sampler, Sampler):
        return sampler
    if isinstance(sampler, str):
        return make_sampler(sampler)
    if isinstance(sampler, dict):
        return make_sampler(sampler["name"], **sampler.get("params", {}))
    raise SpecError(f"sampler must be a Sampler, a name or a {{'name', 'params'}} dict, got {type(sampler).__name__}")


def _check_prompts(prompts: Any) -> list[str]:
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise SpecError("prompts is empty; expected at least one prompt")
    bad = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
    if bad:
        raise SpecError(f"prompts at indices {bad} are not strings")
    return prompts


def encode(h: Any, prompts: list[str], chat: bool = False) -> dict[str, Tensor]:
    """Tokenize (optionally through the chat template), left-padded, on the model's device."""
    if chat:
        texts = [h.format_chat(p) for p in prompts]
        templated = bool(getattr(h.tokenizer, "chat_template", None))
        return h.tokenize(texts, add_special_tokens=False if templated else None)
    return h.tokenize(prompts)


@torch.no_grad()
def generate(
    h: Any,
    prompts: list[str] | str,
    interventions: Any = None,
    sampler: Sampler | str | dict | None = None,
    max_new_tokens: int = 32,
    seed: int = 0,
    *,
    chat: bool = False,
    output_scores: bool = False,
    stop_at_eos: bool = True,
    use_cache: bool = True,
    record: list[str] | None = None,
) -> GenerationResult:
    """Generate a completion for each prompt, batched, with interventions active at every step.

    Deterministic for a ``seed`` (the global RNG is left untouched). ``use_cache=False`` recomputes
    the whole sequence at every step (the reference that KV-cached steering must match).
    """
    prompts = _check_prompts(prompts)
    if int(max_new_tokens) != max_new_tokens or max_new_tokens < 1:
        raise SpecError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    smp = _coerce_sampler(sampler)
    from transformers import GenerationConfig

    enc = encode(h, prompts, chat=chat)
    prompt_len = enc["input_ids"].shape[1]
    eos = h.tokenizer.eos_token_id if stop_at_eos else None
    gc = GenerationConfig(
        max_new_tokens=int(max_new_tokens),
        do_sample=not smp.greedy,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        pad_token_id=h.tokenizer.pad_token_id,
        eos_token_id=eos,
        bos_token_id=h.tokenizer.bos_token_id,
        use_cache=use_cache,
        output_logits=output_scores,
        return_dict_in_generate=True,
    )
    processors = [] if smp.greedy else [smp.as_logits_processor()]
    from transformers import LogitsProcessorList

    with intervene(h, interventions, record=record) as ctx, torch.random.fork_rng(devices=[]):
        ctx.set_prompt(enc["attention_mask"], prompt_len)
        torch.manual_seed(seed)
        out = h.model.generate(
            **enc, generation_config=gc, logits_processor=LogitsProcessorList(processors)
        )
    seqs = out.sequences
    new = seqs[:, prompt_len:]
    token_ids: list[list[int]] = []
    for row in new.tolist():
        if eos is not None and eos in row:
            row = row[: row.index(eos)]
        token_ids.append(row)
    texts = h.tokenizer.batch_decode(token_ids, skip_special_tokens=True)
    settings = {
        "model": h.spec,
        "sampler": smp.config(),
        "max_new_tokens": int(max_new_tokens),
        "seed": seed,
        "chat": chat,
        "use_cache": use_cache,
        "interventions": _describe(interventions),
    }
    scores = [s.float() for s in out.logits] if output_scores else None
    return GenerationResult(
        prompts=prompts, texts=texts, token_ids=token_ids, prompt_ids=enc["input_ids"], sequences=seqs,
        settings=settings, scores=scores, records=dict(ctx.records),
    )


def _describe(interventions: Any) -> list[dict[str, Any]]:
    from steerlab.interventions.spec import as_set

    js = as_set(interventions).to_json()["interventions"]
    return js


@torch.no_grad()
def forward(
    h: Any,
    input_ids: Tensor | list[str],
    attention_mask: Tensor | None = None,
    interventions: Any = None,
) -> Tensor:
    """Logits ``[batch, pos, vocab]`` of one forward pass (prompts may be strings), with interventions."""
    if isinstance(input_ids, (list, str)):
        enc = h.tokenize(_check_prompts(input_ids))
        input_ids, attention_mask = enc["input_ids"], enc["attention_mask"]
    with intervene(h, interventions) as ctx:
        ctx.set_prompt(attention_mask, input_ids.shape[1])
        return h.model(input_ids=input_ids, attention_mask=attention_mask).logits
