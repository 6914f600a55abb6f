"""Forward passes and batched generation with interventions, the KV cache and pluggable samplers.

Generation is Hugging Face ``generate`` (its KV cache, left padding and stopping logic) with
steerlab's sampler as the only logits processor, run by the nnsight engine so the interventions
apply at every step. Without interventions the bare model runs: an unsteered call costs nothing
extra.

Position ids follow the attention mask (``cumsum - 1``, as ``generate`` does), so a left-padded
row computes what it computes alone, up to float rounding (the batch's shapes change the kernels' summation
order: about 1e-5 on stories260K's logits; ``tests/integration/test_parity.py`` checks 1e-4), not bit for bit.

Example:
    >>> import steerlab as sl
    >>> h = sl.load("shared:stories260K")
    >>> sl.generate(h, ["Once upon a time"], max_new_tokens=8).texts[0]
    ', there was a little girl'
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from steerlab.engines import engine_for, position_ids
from steerlab.errors import SpecError
from steerlab.interventions.compile import Plan, check_inputs, compile_plan
from steerlab.interventions.spec import as_set
from steerlab.models.handle import ModelHandle
from steerlab.sampling import Sampler, make_sampler
from steerlab.sampling.base import check_logits
from steerlab.values import check_count


@dataclass
class GenerationResult:
    """Completions (without the prompt) and everything needed to reproduce them."""

    prompts: list[str]
    texts: list[str]
    token_ids: list[list[int]]
    prompt_ids: Int[Tensor, "batch prompt"]
    sequences: Int[Tensor, "batch total"]
    settings: dict[str, Any]
    scores: list[Float[Tensor, "batch vocab"]] | None = None  # raw next-token logits per step
    records: dict[str, list[Tensor]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "completions": [
                {"prompt": p, "text": t, "token_ids": ids}
                for p, t, ids in zip(self.prompts, self.texts, self.token_ids, strict=True)
            ],
            "settings": self.settings,
        }


def coerce_sampler(sampler: Sampler | str | dict | None) -> Sampler:
    """A sampler from an instance, a name, or ``{"name": ..., "params": {...}}``; default greedy."""
    if sampler is None:
        return make_sampler("greedy")
    if isinstance(sampler, Sampler):
        return sampler
    if isinstance(sampler, str):
        return make_sampler(sampler)
    if isinstance(sampler, dict) and "name" in sampler:
        return make_sampler(sampler["name"], **sampler.get("params", {}))
    raise SpecError(f"sampler must be a Sampler, a name or a {{'name', 'params'}} dict, got {sampler!r}")


def check_prompts(prompts: Any) -> list[str]:
    """A non-empty list of strings (a single string becomes a list of one), each encodable as UTF-8.

    >>> check_prompts("Once upon a time")
    ['Once upon a time']
    >>> check_prompts(["ok", "\\ud800"])
    Traceback (most recent call last):
    steerlab.errors.SpecError: prompt 1 is not valid Unicode text (surrogates not allowed at character 0)
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    if isinstance(prompts, (bytes, dict)) or not hasattr(prompts, "__iter__"):
        raise SpecError(f"prompts must be a string or a list of strings, got {type(prompts).__name__}")
    prompts = list(prompts)
    if not prompts:
        raise SpecError("prompts is empty; expected at least one prompt")
    bad = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
    if bad:
        raise SpecError(f"prompts at indices {bad} are not strings")
    for i, p in enumerate(prompts):
        try:
            p.encode("utf-8")
        except UnicodeEncodeError as e:
            raise SpecError(f"prompt {i} is not valid Unicode text ({e.reason} at character {e.start})") from None
    return prompts


def check_seed(seed: Any) -> int:
    """A seed ``torch.manual_seed`` takes: an integer in [-2**63, 2**64).

    >>> check_seed(1.5)
    Traceback (most recent call last):
    steerlab.errors.SpecError: seed must be an integer in [-2**63, 2**64), got 1.5
    """
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not -(2**63) <= seed < 2**64:
        raise SpecError(f"seed must be an integer in [-2**63, 2**64), got {seed!r}")
    return int(seed)


@contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """torch's global generators seeded with ``seed`` for the block and restored after it, also on error.

    The CPU generator, each CUDA device's once CUDA is initialized, and Apple's MPS generator where MPS is
    available. An uninitialized CUDA is left alone: ``torch.manual_seed`` would queue a seed that lands on CUDA's
    generators whenever it starts later.
    """
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    mps = torch.backends.mps.is_available()
    with torch.random.fork_rng(devices=cuda):
        mps_state = torch.mps.get_rng_state() if mps else None
        try:
            torch.default_generator.manual_seed(seed)
            for d in cuda:
                torch.cuda.default_generators[d].manual_seed(seed)
            if mps:
                torch.mps.manual_seed(seed)
            yield
        finally:
            if mps_state is not None:
                torch.mps.set_rng_state(mps_state)


def _plan(h: ModelHandle, interventions: Any, record: list[str] | None, plan: Plan | None) -> Plan:
    return plan if plan is not None else compile_plan(h, interventions, record)


@torch.no_grad()
def generate(
    h: ModelHandle,
    prompts: list[str] | str,
    interventions: Any = None,
    sampler: Sampler | str | dict | None = None,
    max_new_tokens: int = 32,
    seed: int = 0,
    *,
    chat: bool = False,
    system: str | None = None,
    output_scores: bool = False,
    stop_at_eos: bool = True,
    use_cache: bool = True,
    record: list[str] | None = None,
    plan: Plan | None = None,
    streamer: Any = None,
    remote: bool | str = False,
) -> GenerationResult:
    """Generate a completion for each prompt, batched, with interventions active at every step.

    ``interventions``: an ``InterventionSet``, a list of intervention models or dicts, or a spec
    path. ``sampler``: a :class:`~steerlab.sampling.Sampler`, a name, or ``{"name", "params"}``.
    ``chat``: wrap prompts in the model's chat template (with an optional ``system`` message).
    Deterministic for a ``seed`` (the global RNG is left untouched). ``use_cache=False``
    recomputes the whole sequence at every step (the reference KV-cached steering must match).
    ``record``: sites whose activations are kept per step in ``result.records``. ``streamer``: a
    transformers streamer (``put``/``end``, e.g. ``TextIteratorStreamer``) that receives the prompt and
    then each new token as it is chosen, steered or not.

    ``remote``: run through nnsight's remote path (:meth:`~steerlab.engines.nnsight_engine.NNsightEngine.run_remote`;
    ``docs/scale.md``): ``True`` on NDIF (a model it hosts; the key from ``NDIF_API_KEY`` or nnsight's
    config), ``"local"`` nnsight's in-process simulation of it (serialize -> deserialize -> execute). Greedy
    only, with the KV cache, no ``record`` or ``streamer``; the result equals the local run's (texts, token
    ids, sequences; ``scores`` too, up to each row's EOS, past which the local run feeds padding).

    Example:
        >>> import steerlab as sl
        >>> h = sl.load("shared:stories260K")
        >>> sl.generate(h, ["Once upon a time"], max_new_tokens=8, remote="local").texts[0]
        ', there was a little girl'
    """
    prompts = check_prompts(prompts)
    check_count("max_new_tokens", max_new_tokens, 1)
    seed = check_seed(seed)
    smp = coerce_sampler(sampler)
    compiled = _plan(h, interventions, record, plan)
    if remote is not False:
        _check_remote(remote, smp, compiled, streamer, use_cache)
    from transformers import GenerationConfig, LogitsProcessorList

    enc = h.encode(prompts, chat=chat, system=system)
    check_inputs(compiled, enc["attention_mask"], generating=True)
    prompt_len = enc["input_ids"].shape[1]
    eos = h.tokenizer.eos_token_id if stop_at_eos else None
    gc = GenerationConfig(
        max_new_tokens=int(max_new_tokens),
        do_sample=not smp.greedy,
        # transformers fills unset top_k/top_p/temperature with defaults (top_k=50) that would follow
        # every steerlab sampler; the sampler alone decides what is kept.
        **({} if smp.greedy else {"temperature": 1.0, "top_k": 0, "top_p": 1.0}),
        pad_token_id=h.tokenizer.pad_token_id,
        # transformers fills an unset (None) eos_token_id from the model's generation config, so "no
        # EOS" must be said with an empty list: generation then runs max_new_tokens for every row.
        eos_token_id=eos if eos is not None else [],
        bos_token_id=h.tokenizer.bos_token_id,
        use_cache=use_cache,
        output_logits=output_scores,
        return_dict_in_generate=True,
    )
    # greedy decoding has no sampler to see the logits: a NaN (an edit that overflowed) would be argmax'ed into a
    # token; the check makes it the same one-line error a sampler raises
    processors = LogitsProcessorList([_NaNCheck()] if smp.greedy else [smp.as_logits_processor()])
    if remote is not False:
        out = _generate_remote(h, enc, compiled, remote, int(max_new_tokens), eos, output_scores)
        records: dict[str, list[Tensor]] = {}
    else:
        # greedy decoding draws nothing: only a sampler's run forks and seeds the global generator
        with nullcontext() if smp.greedy else seeded_rng(seed):
            out, records = engine_for(h).generate(
                enc, compiled, generation_config=gc, logits_processor=processors, streamer=streamer
            )
    seqs = out.sequences
    token_ids: list[list[int]] = []
    for row in seqs[:, prompt_len:].tolist():
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
        "system": system,
        "use_cache": use_cache,
        "interventions": describe_interventions(interventions),
        **({"remote": remote} if remote is not False else {}),
    }
    scores = [s.float() for s in out.logits] if output_scores else None
    return GenerationResult(
        prompts=prompts,
        texts=texts,
        token_ids=token_ids,
        prompt_ids=enc["input_ids"],
        sequences=seqs,
        settings=settings,
        scores=scores,
        records=dict(records),
    )


class _NaNCheck:
    """A logits processor that refuses NaN logits (:func:`steerlab.sampling.base.check_logits`), unchanged else."""

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        check_logits(scores)
        return scores


def _check_remote(remote: Any, smp: Sampler, plan: Plan, streamer: Any, use_cache: bool) -> None:
    """What the remote path cannot do is a one-line :class:`SpecError` before anything runs."""
    if remote is not True and remote != "local":
        raise SpecError(f"remote must be False, True (NDIF) or 'local' (nnsight's simulation), got {remote!r}")
    what = ("a sampled generation" if not smp.greedy else "record=" if plan.records else "a streamer"
            if streamer is not None else "use_cache=False" if not use_cache else None)
    if what is not None:
        raise SpecError(f"remote={remote!r} generates greedily with the KV cache, without records or a streamer; "
                        f"got {what}")


def _generate_remote(
    h: ModelHandle, enc: dict[str, Tensor], plan: Plan, remote: bool | str, n: int, eos: int | None, scores: bool
) -> Any:
    """``generate``'s output through the remote path, cut as the local run cuts it: the remote run makes
    ``n`` tokens per row; a row's tokens after its EOS become padding, and the run ends at the step where
    the last row reached EOS."""
    out = engine_for(h).run_remote(enc, plan, remote=remote, max_new_tokens=n, output_logits=scores)
    seqs, logits = out.sequences, out.logits if scores else None
    if eos is None:
        return out
    prompt_len = enc["input_ids"].shape[1]
    new = seqs[:, prompt_len:].clone()
    is_eos = new == eos
    done_after = is_eos.int().cumsum(1) - is_eos.int() > 0  # strictly after the row's first EOS
    new[done_after] = h.tokenizer.pad_token_id
    ends = [row.index(True) + 1 if True in row else n for row in is_eos.tolist()]
    length = max(ends)
    out.sequences = torch.cat([seqs[:, :prompt_len], new[:, :length]], dim=1)
    if logits is not None:
        out.logits = tuple(logits[:length])
    return out


def describe_interventions(interventions: Any) -> list[dict[str, Any]]:
    """The JSON description of an intervention list (``[]`` for none), as settings record it."""
    return as_set(interventions).to_json()["interventions"]


@torch.no_grad()
def forward(
    h: ModelHandle,
    inputs: Tensor | list[str] | str | dict[str, Tensor],
    attention_mask: Tensor | None = None,
    interventions: Any = None,
    *,
    chat: bool = False,
    system: str | None = None,
    record: list[str] | None = None,
    plan: Plan | None = None,
    return_records: bool = False,
) -> Any:
    """Logits ``[batch, pos, vocab]`` of one forward pass, with interventions.

    ``inputs``: prompts (strings), an encoding dict, or ``input_ids`` (with ``attention_mask``).
    With ``return_records=True`` returns ``(logits, records)``.
    """
    enc = as_encoding(h, inputs, attention_mask, chat=chat, system=system)
    compiled = _plan(h, interventions, record, plan)
    check_inputs(compiled, enc["attention_mask"])
    out, records = engine_for(h).forward(enc, compiled, position_ids=position_ids(enc["attention_mask"]))
    return (out.logits, dict(records)) if return_records else out.logits


def as_encoding(
    h: ModelHandle, inputs: Any, attention_mask: Tensor | None = None, chat: bool = False, system: str | None = None
) -> dict[str, Tensor]:
    """Normalize prompts / an encoding / token ids into ``{"input_ids", "attention_mask"}``."""
    if isinstance(inputs, (str, list)) and (isinstance(inputs, str) or not inputs or isinstance(inputs[0], str)):
        return h.encode(check_prompts(inputs), chat=chat, system=system)
    if isinstance(inputs, dict):
        ids, mask = inputs["input_ids"], inputs.get("attention_mask")
    elif isinstance(inputs, Tensor):
        ids, mask = inputs, attention_mask
    else:
        raise SpecError(f"inputs must be prompts, an encoding dict or a token id tensor, got {type(inputs).__name__}")
    if not isinstance(ids, Tensor) or ids.ndim != 2 or ids.is_floating_point() or ids.is_complex() or ids.numel() == 0:
        what = f"shape {tuple(ids.shape)}, dtype {ids.dtype}" if isinstance(ids, Tensor) else type(ids).__name__
        raise SpecError(f"input_ids must be a non-empty integer tensor of shape [batch, pos], got {what}")
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= h.vocab_size:
        raise SpecError(f"input_ids hold token ids {lo}..{hi}; expected ids in 0..{h.vocab_size - 1} ({h.spec})")
    if mask is None:
        mask = torch.ones_like(ids)
    if not isinstance(mask, Tensor) or tuple(mask.shape) != tuple(ids.shape):
        what = f"shape {tuple(mask.shape)}" if isinstance(mask, Tensor) else type(mask).__name__
        raise SpecError(f"attention_mask must be a tensor of the input_ids' shape {tuple(ids.shape)}, got {what}")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise SpecError(f"attention_mask must hold only 0 and 1, got values {sorted(set(mask.unique().tolist()))[:6]}")
    return {"input_ids": ids.to(h.device), "attention_mask": mask.to(h.device)}
