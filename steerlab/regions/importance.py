"""Per-parameter importance over per-language corpora, under a memory bound.

The paper's rule (Zhang et al. 2024): run the model on a language's text, call ``backward()`` without
ever stepping, and score each parameter by ``|theta * G|`` with ``G`` the accumulated gradient (here of
the mean token NLL, so languages weigh equally). ``method="fisher"`` scores by the empirical Fisher
diagonal instead: the squared mini-batch gradient, summed over batches, per token.

Memory: at most one parameter-sized buffer besides the weights. Taylor accumulates in the parameters'
own ``.grad`` (so no full gradient ever exists beside it), which is folded in place into the language's
importance, written to a scratch file and freed before the next language; the input embedding and the LM
head add their gradients straight into ``.grad`` (:func:`direct_vocab_grads`: no vocabulary-sized
gradient temporaries, three of which autograd holds at once for a tied embedding), and freed heap is
handed back after every batch (:func:`release_free_memory`). Fisher folds each batch's gradient into one
accumulator from a post-accumulate hook, so a gradient lives for one matrix at a time. The summed importance is never
held whole: the final pass reads one matrix of every language back at a time. What is kept is sparse:
per matrix, the indices of the top and bottom ``keep`` fraction (ordered by rank, so any smaller
fraction is a prefix) of the summed importance, each language's own top indices, and per-language
summaries (sum, max, share held by the top fraction, per matrix).

Example:
    >>> import steerlab as sl
    >>> h = sl.load("shared:stories260K")
    >>> imp = score_importance(h, ["eng"], token_budget=64, batch_size=2, max_len=32, progress=False)
    >>> imp.top["model.layers.0.mlp.down_proj.weight"].numel() == keep_count(64 * 172, imp.keep)
    True
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import numbers
import os
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from steerlab.engines import position_ids
from steerlab.errors import SpecError
from steerlab.interventions.regions import model_signature
from steerlab.models.handle import ModelHandle
from steerlab.regions.corpus import corpus_texts, token_batches
from steerlab.scoring import gradients, sequence_nll

Method = Literal["taylor", "fisher"]


def check_fraction(fraction: float, what: str = "fraction") -> float:
    """``fraction`` if it lies in (0, 0.5], else :class:`SpecError` naming it."""
    if isinstance(fraction, bool) or not (isinstance(fraction, numbers.Real) and 0 < fraction <= 0.5):
        raise SpecError(f"{what} must be in (0, 0.5], got {fraction!r}")
    return float(fraction)


def keep_count(numel: int, fraction: float) -> int:
    """Entries a region of ``fraction`` holds in a matrix of ``numel`` entries: ``round(fraction * numel)``,
    at least 1 (the paper's per-matrix rule).

    >>> keep_count(1000, 0.01), keep_count(64, 0.01)
    (10, 1)
    """
    return max(1, min(numel, round(fraction * numel)))


def peak_rss_bytes() -> int:
    """This process's peak resident set size (``VmHWM``; 0 where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux ``clear_refs``); False where not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


@functools.cache
def _libc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        lib = ctypes.CDLL(name) if name else None
        return lib if lib is not None and hasattr(lib, "malloc_trim") else None
    except OSError:
        return None


def release_free_memory() -> None:
    """Hand freed heap memory back to the OS (``gc.collect`` then glibc ``malloc_trim(0)``; a no-op without
    glibc). A backward pass frees thousands of activation-sized blocks that glibc keeps; without this the
    resident size crept up by ~100 MB per batch on SmolLM2 (and with it the peak)."""
    gc.collect()
    lib = _libc()
    if lib is not None:
        lib.malloc_trim(0)


@dataclass
class Importance:
    """Sparse importance of one model over some languages (see the module docstring)."""

    model: str
    signature: str
    method: str
    keep: float
    languages: list[str]
    shapes: dict[str, list[int]]
    top: dict[str, Tensor]  # matrix -> flat indices, most important first (keep fraction of the summed score)
    bottom: dict[str, Tensor]  # matrix -> flat indices, least important first
    lang_top: dict[str, dict[str, Tensor]]  # language -> matrix -> its own top indices, most important first
    summary: dict[str, dict[str, dict[str, float]]]  # language (and "all") -> matrix -> sum, max, top_share
    tokens: dict[str, int]  # language -> tokens scored
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


def _select(a: np.ndarray, k: int, largest: bool) -> np.ndarray:
    """Positions of the ``k`` largest (smallest) entries of ``a``, unordered (``np.argpartition``, O(n))."""
    if k >= a.size:
        return np.arange(a.size)
    if largest:
        return np.argpartition(a, a.size - k)[a.size - k :]
    return np.argpartition(a, k - 1)[:k]


def chunked_topk(x: Tensor, k: int, largest: bool = True, chunk: int = 1 << 22) -> tuple[Tensor, Tensor]:
    """``x.topk(k, largest=largest)`` of a flat CPU tensor (values and indices, sorted), in O(k + chunk) extra
    memory and linear time: each chunk of 4M entries is partitioned (``np.argpartition``) and its candidates
    merged into a running best ``k``; only the final ``k`` are sorted. ``torch.topk`` allocates ~16 bytes per
    entry (440 MB on a 28M-entry embedding) and was ~15x slower on real importance scores. Ties may be
    broken differently from ``torch.topk``; the values are the same.

    >>> x = torch.tensor([3.0, 9.0, 1.0, 7.0, 5.0])
    >>> chunked_topk(x, 2, chunk=2)[1].tolist(), chunked_topk(x, 2, largest=False, chunk=2)[1].tolist()
    ([1, 3], [2, 0])
    """
    a = x.detach().reshape(-1).cpu().numpy()
    k = min(k, a.size)
    best_v, best_i = a[:0], np.empty(0, dtype=np.int64)
    for start in range(0, a.size, chunk):
        part = a[start : start + chunk]
        sel = _select(part, min(k, part.size), largest)
        best_v, best_i = np.concatenate([best_v, part[sel]]), np.concatenate([best_i, sel + start])
        if best_v.size > k:
            keep = _select(best_v, k, largest)
            best_v, best_i = best_v[keep], best_i[keep]
    order = np.argsort(-best_v if largest else best_v, kind="stable")
    return torch.from_numpy(best_v[order].copy()), torch.from_numpy(best_i[order].copy())


def _grad_of(p: Tensor) -> Tensor:
    if p.grad is None:
        p.grad = torch.zeros_like(p)
    return p.grad


class _EmbeddingIntoGrad(torch.autograd.Function):
    """``F.embedding(ids, weight)`` whose backward adds the rows' gradients straight into ``weight.grad``
    (``index_add_``) instead of building a dense vocabulary-sized gradient for autograd to add."""

    @staticmethod
    def forward(ctx: Any, ids: Tensor, weight: Tensor, padding_idx: int | None) -> Tensor:
        ctx.save_for_backward(ids)
        ctx.weight, ctx.padding_idx = weight, padding_idx
        return F.embedding(ids, weight, padding_idx)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[None, None, None]:
        (ids,) = ctx.saved_tensors
        ids, g = ids.reshape(-1), g.reshape(-1, g.shape[-1])
        if ctx.padding_idx is not None:  # as nn.Embedding: the padding row gets no gradient
            keep = ids != ctx.padding_idx
            ids, g = ids[keep], g[keep]
        _grad_of(ctx.weight).index_add_(0, ids, g.to(ctx.weight.dtype))
        return None, None, None


class _LinearIntoGrad(torch.autograd.Function):
    """``F.linear(x, weight)`` whose backward adds ``g^T x`` straight into ``weight.grad`` (``addmm_``): no
    separate weight gradient (a vocabulary x hidden matrix for an LM head) is held until autograd adds it."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        ctx.weight = weight
        return F.linear(x, weight)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, None]:
        (x,) = ctx.saved_tensors
        w = ctx.weight
        g2 = g.reshape(-1, g.shape[-1])
        _grad_of(w).addmm_(g2.t().to(w.dtype), x.reshape(-1, x.shape[-1]).to(w.dtype))
        return (g @ w.detach().to(g.dtype) if ctx.needs_input_grad[0] else None), None


@contextmanager
def direct_vocab_grads(h: ModelHandle, params: Mapping[str, Tensor]) -> Iterator[list[str]]:
    """Within the block, a plain ``nn.Embedding`` input embedding and a bias-free ``nn.Linear`` LM head whose
    weights are in ``params`` add their weight gradients straight into ``.grad`` (the same sums autograd
    forms; tied weights included). Their forwards are swapped on the module instances and restored on exit,
    also on error; a module whose instance already has its own ``forward`` (e.g. an accelerate hook's) is left
    alone (plain autograd). Yields the names of the modules swapped. For gradients that are summed over batches
    (|theta * G|), not for per-batch squares (Fisher: the batch gradient of a tied matrix must be whole)."""
    model = h.model
    chosen = {id(p) for p in params.values()}
    get_in = getattr(model, "get_input_embeddings", None)
    get_out = getattr(model, "get_output_embeddings", None)
    emb = get_in() if callable(get_in) else None
    head = get_out() if callable(get_out) else None
    swapped: list[nn.Module] = []
    names = {m: n for n, m in model.named_modules()}
    try:
        if (
            type(emb) is nn.Embedding
            and "forward" not in emb.__dict__  # a forward already set on the instance (a hook's) is kept and run
            and id(emb.weight) in chosen
            and emb.max_norm is None
            and not emb.scale_grad_by_freq
            and not emb.sparse
        ):
            e = emb
            e.forward = lambda ids: _EmbeddingIntoGrad.apply(ids, e.weight, e.padding_idx)  # type: ignore[method-assign]
            swapped.append(e)
        if (
            type(head) is nn.Linear
            and head.bias is None
            and "forward" not in head.__dict__
            and id(head.weight) in chosen
        ):
            lm = head
            lm.forward = lambda x: _LinearIntoGrad.apply(x, lm.weight)  # type: ignore[method-assign]
            swapped.append(lm)
        yield [names.get(m, "?") for m in swapped]
    finally:
        for m in swapped:
            m.__dict__.pop("forward", None)


HEAD_CHUNK_ELEMENTS = 1 << 22  # logits per chunk of the fused head (16 MB in float32)
_LOGIT_CHANGERS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_logits_scale")


def plain_head(h: ModelHandle, params: Mapping[str, Tensor]) -> tuple[nn.Module, nn.Linear] | None:
    """``(base model, LM head)`` when the logits are exactly ``head(base(...).last_hidden_state)`` with a
    bias-free ``nn.Linear`` head whose weight is in ``params`` (no soft-capping or logit scaling in the
    config); else None."""
    model = h.model
    get_out = getattr(model, "get_output_embeddings", None)
    head = get_out() if callable(get_out) else None
    base = getattr(model, "base_model", None)
    if type(head) is not nn.Linear or head.bias is not None or not isinstance(base, nn.Module) or base is model:
        return None
    if "forward" in head.__dict__:  # the instance computes its own way (e.g. an accelerate hook): not F.linear
        return None
    if id(head.weight) not in {id(p) for p in params.values()}:
        return None
    cfg = getattr(model, "config", None)
    if any(getattr(cfg, a, None) not in (None, 1, 1.0) for a in _LOGIT_CHANGERS):
        return None
    return base, head


def nll_backward(h: ModelHandle, enc: dict[str, Tensor], head: tuple[nn.Module, nn.Linear] | None = None) -> float:
    """``sequence_nll(h, enc).backward()``; returns the summed NLL. With ``head`` (:func:`plain_head`) the LM
    head is fused and chunked: the base model gives the hidden states, and per chunk of predicted positions
    (~16 MB of logits) the logits, their log-sum-exp and ``softmax - onehot`` are formed without autograd, the
    head's weight gradient is added straight into ``.grad`` (``addmm_``) and the hidden states' gradient
    collected, which then flows back through the base model. Same loss and gradients, but no batch x positions
    x vocabulary logits, log-probabilities and their gradients (four such tensors with plain autograd)."""
    if head is None:
        loss = sequence_nll(h, enc)
        loss.backward()
        return float(loss.detach())
    base, lm = head
    ids, mask = enc["input_ids"], enc["attention_mask"]
    hid = base(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).last_hidden_state
    sel = mask[:, 1:].bool() & mask[:, :-1].bool()
    w = lm.weight
    total = 0.0
    with torch.no_grad():
        x, tgt = hid.detach()[:, :-1][sel], ids[:, 1:][sel]
        gx = torch.empty_like(x)
        step = max(1, HEAD_CHUNK_ELEMENTS // w.shape[0])
        for s in range(0, x.shape[0], step):
            xc, tc = x[s : s + step], tgt[s : s + step]
            logits = F.linear(xc, w).float()
            lse = torch.logsumexp(logits, -1)
            total += float((lse - logits.gather(1, tc[:, None])[:, 0]).sum())
            prob = logits.sub_(lse[:, None]).exp_()
            prob[torch.arange(tc.numel()), tc] -= 1.0
            g = prob.to(w.dtype)
            gx[s : s + step] = g @ w
            _grad_of(w).addmm_(g.t(), xc)
            del logits, prob, g
        grad_h = torch.zeros_like(hid)
        grad_h[:, :-1][sel] = gx
    hid.backward(grad_h)
    return total


def _fold_stats(imp: Tensor, k: int) -> tuple[Tensor, dict[str, float]]:
    vals, idx = chunked_topk(imp, k)
    total = float(imp.sum())
    share = float(vals.sum(dtype=torch.float64)) / total if total > 0 else 0.0
    return idx.to(torch.int32), {"sum": total, "max": float(vals[0]), "top_share": share}


def score_importance(
    h: ModelHandle,
    languages: Sequence[str],
    *,
    method: Method = "taylor",
    token_budget: int = 2048,
    batch_size: int = 4,
    max_len: int = 64,
    keep: float = 0.02,
    files: Mapping[str, str | Path] | None = None,
    params: Sequence[str] | None = None,
    progress: bool = True,
    scratch: str | Path | None = None,
) -> Importance:
    """Score every parameter (or those in ``params``) on each language's ``score`` corpus, ``token_budget``
    tokens per language in batches of ``batch_size`` passages of at most ``max_len`` tokens; keep the top and
    bottom ``keep`` fraction per matrix. Scratch files (one float32 copy of the parameters per language)
    go to a temporary folder under ``scratch`` and are deleted, also on error. The weights are never
    changed and no gradient is left behind."""
    if method not in ("taylor", "fisher"):
        raise SpecError(f"importance method {method!r} is not one of ['taylor', 'fisher']")
    keep = check_fraction(keep, "keep")
    langs = list(dict.fromkeys(languages))
    if not langs:
        raise SpecError("no languages given; expected at least one language code")
    texts = {lang: corpus_texts(lang, "score", files=files) for lang in langs}  # validates every code first
    named = dict(h.model.named_parameters())
    names = list(named) if params is None else list(params)
    shapes = {n: list(named[n].shape) for n in names} if all(n in named for n in names) else {}
    t0 = time.perf_counter()
    lang_top: dict[str, dict[str, Tensor]] = {}
    summary: dict[str, dict[str, dict[str, float]]] = {}
    tokens: dict[str, int] = {}
    with gradients(h, names) as ps, tempfile.TemporaryDirectory(prefix="steerlab-regions-", dir=scratch) as td:
        for li, lang in enumerate(langs):
            acc: dict[str, Tensor] = {}
            hooks = []
            if method == "fisher":
                for n, p in ps.items():
                    acc[n] = torch.zeros_like(p, dtype=torch.float32)

                    def fold(p: Tensor, a: Tensor = acc[n]) -> None:
                        a.addcmul_(p.grad, p.grad)
                        p.grad = None

                    hooks.append(p.register_post_accumulate_grad_hook(fold))
            n_tok = 0
            try:
                batches = token_batches(
                    h, texts[lang], token_budget=token_budget, batch_size=batch_size, max_len=max_len
                )
                bar = tqdm(batches, desc=f"importance {lang}", unit="batch", disable=not progress, leave=False)
                direct = ps if method == "taylor" else {}
                head = plain_head(h, direct)
                with direct_vocab_grads(h, direct):
                    for enc in bar:
                        m = enc["attention_mask"]
                        n_tok += int((m[:, 1:].bool() & m[:, :-1].bool()).sum())
                        nll_backward(h, enc, head)
                        release_free_memory()
            finally:
                for hk in hooks:
                    hk.remove()
            tokens[lang] = n_tok
            lang_top[lang], summary[lang] = {}, {}
            with open(Path(td) / f"{li}.f32", "wb") as f:
                for n, p in ps.items():
                    if method == "fisher":
                        imp = acc.pop(n).div_(n_tok)
                    elif p.grad is None:
                        imp = torch.zeros_like(p, dtype=torch.float32)
                    else:
                        imp = p.grad.float().mul_(p.detach()).abs_().div_(n_tok)  # in place in .grad (fp32)
                        p.grad = None
                    flat = imp.view(-1)
                    lang_top[lang][n], summary[lang][n] = _fold_stats(flat, keep_count(flat.numel(), keep))
                    flat.numpy().tofile(f)
                    del imp, flat
            release_free_memory()  # the freed gradients
        top, bottom, summary["all"] = {}, {}, {}
        offset = 0
        for n, p in tqdm(ps.items(), desc="summing languages", unit="matrix", disable=not progress, leave=False):
            numel = p.numel()
            tot = torch.zeros(numel, dtype=torch.float32)
            for li in range(len(langs)):
                arr = np.fromfile(Path(td) / f"{li}.f32", dtype=np.float32, count=numel, offset=offset)
                tot += torch.from_numpy(arr)
            offset += numel * 4
            k = keep_count(numel, keep)
            top[n], summary["all"][n] = _fold_stats(tot, k)
            bottom[n] = chunked_topk(tot, k, largest=False)[1].to(torch.int32)
    seconds = time.perf_counter() - t0
    n_all = sum(tokens.values())
    config = {
        "model": h.spec,
        "signature": model_signature(h),
        "method": method,
        "languages": langs,
        "token_budget": token_budget,
        "batch_size": batch_size,
        "max_len": max_len,
        "keep": keep,
        "files": {k: str(v) for k, v in (files or {}).items()},
    }
    metrics = {
        "tokens": n_all,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(n_all / seconds, 3) if seconds > 0 else None,
        "peak_rss_bytes": peak_rss_bytes(),
        "param_bytes_fp32": 4 * sum(named[n].numel() for n in names),
        "pid": os.getpid(),
    }
    return Importance(
        model=h.spec,
        signature=config["signature"],
        method=method,
        keep=keep,
        languages=langs,
        shapes=shapes,
        top=top,
        bottom=bottom,
        lang_top=lang_top,
        summary=summary,
        tokens=tokens,
        config=config,
        metrics=metrics,
    )
