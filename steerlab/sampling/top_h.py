"""Top-H sampling: keep the most probability mass under an entropy bound (Potraghloo et al., NeurIPS 2025).

Paper: "Top-H Decoding: Adapting the Creativity and Coherence with Bounded Entropy in Text Generation",
https://arxiv.org/abs/2509.02510 (code: github.com/ErfanBaghaei/Top-H-Decoding).

Among truncations of ``p = softmax(logits / T)`` to a set ``S`` (renormalized: ``q = p|S / p(S)``), top-H
keeps the most mass subject to ``H(q) <= alpha * H(p)``. That problem is NP-hard; top-H is its greedy
solution: add tokens in descending probability and stop before the bound would be exceeded. The argmax
is always kept and zero-probability tokens never are. Entropies are in nats (the rule is base-free).

Three documented rule variants (``variant=``):

``paper`` (default)
    The rule as the paper states it: the *renormalized* entropy ``H(q_k)`` of the first ``k`` tokens
    against ``alpha * H(p)`` with ``H(p)`` the entropy of the *full* distribution, scanning as far as
    needed (no cap). ``H(q_k)`` is non-decreasing in ``k`` along the descending order (adding a token no
    more likely than any kept one raises the entropy: ``h(w) >= w log(k+1) > w H(q_k)``), so the greedy
    prefix is exactly ``{k : H(q_k) <= alpha H(p)}``; with ``alpha = 1`` every token with ``p > 0`` is
    kept (up to float32 rounding at the far tail). Vectorized as: one pass over the vocabulary in
    cache-sized chunks of rows for the 32-token block maxima, ``log Z`` and ``H(p)`` (``exp2`` of the
    max-shifted logits), then an exact sorted prefix (two-stage top-k through the block maxima, ranked on
    the raw logits) scanned with cumulative sums. The prefix width comes from the budgets: the kept count is at
    least ``floor(exp(alpha H(p)))`` (as ``H(q_k) <= log k``) and usually below twice that, so the first
    prefix is 1.5x ``exp(budget)`` of the 75th-percentile row (at least 16 tokens), and only rows whose
    bound is not reached inside it are scanned wider (x4 or more per round, one row at a time when few,
    up to the whole vocabulary). The kept count depends only on the sorted values, not on the prefix
    width, and equals a float64 evaluation of the rule except where the statistic lies within
    3e-5 (relative) of the bound (tested on peaked, tied, ``-inf``, flat and Zipf rows).
``hf``
    Identical to ``transformers.TopHLogitsWarper``: the top 100 tokens are renormalized among
    themselves, the budget is ``alpha`` times the entropy of that renormalized top-100 distribution, and
    tokens are kept while the *cumulative sum of the renormalized* ``-q log q`` terms stays ``<= budget``.
``reference``
    The authors' released ``TopH_LogitsProcessor``: the budget is ``alpha`` times the *unnormalized*
    partial entropy ``sum_{i<=100} -p_i log p_i`` of the full-softmax probabilities of the top 100, and
    tokens are kept while ``sum_{i<=k} -p_i log p_i <= budget`` (their renormalized-looking test reduces
    algebraically to this). At most 100 tokens.

Why ``paper`` is the default: it is the method the paper defines (bound tied to the model's own
uncertainty ``H(p)``, no arbitrary cap, so flat high-temperature distributions are not silently cut at
100 tokens) and it is exact; it is also fast (``benchmarks/sampling.py``, temperatures 0.7-3, synthetic
and SmolLM2 logits, record in ``docs/records/sampling_bench.json``: well under top-p's cost, and close to
transformers' capped top-H at batch 64).
``hf``/``reference`` exist to reproduce numbers produced with those implementations.

Order of operations (steerlab's :class:`~steerlab.sampling.base.Sampler` contract): temperature is applied
once, first (``logits / T``); the rule selects on ``softmax(logits / T)``; the kept tokens keep their
tempered logits and every other token is set to ``-inf``. The authors' processor selects on
``softmax(logits / T)`` too (with its own ``T``) and leaves the division to HF's temperature warper,
and transformers applies its temperature warper before ``TopHLogitsWarper``: all three give the same
final distribution ``softmax(logits / T)`` restricted to the kept set. Stack nothing after it: top-H
is the only truncation in this sampler (the authors' AlpacaEval script additionally applied top-p 0.9;
do that with a second pass of :class:`~steerlab.sampling.basic.TopP` on the output if you need it).

Example:
    >>> import torch
    >>> from steerlab.sampling import make_sampler
    >>> s = make_sampler("top_h", alpha=0.6, temperature=1.5)
    >>> logits = torch.tensor([[3.0, 2.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    >>> torch.isfinite(s.filter_logits(logits)).sum().item()
    3
    >>> s.sample(logits, generator=torch.Generator().manual_seed(0)).shape
    torch.Size([1])
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from steerlab.errors import SpecError
from steerlab.sampling.base import Sampler, SamplerLogitsProcessor, register_sampler

Variant = Literal["paper", "hf", "reference"]
VARIANTS: tuple[str, ...] = ("paper", "hf", "reference")
CAPPED_TOP_N = 100  # the candidate cap of transformers' TopHLogitsWarper and of the authors' code
_MIN_HEAD = 16  # narrowest sorted prefix scanned by the exact ``paper`` rule
_HEAD_FACTOR = 1.5  # first prefix: 1.5 x exp(budget) of the 75th-percentile row
_FEW_ROWS = 8  # widen with a plain topk when at most 1/8 of the rows need it
_WIDEN = 4
_BLOCK = 32  # tokens per block of the exact two-stage top-k used on large batches x vocabularies
_BLOCK_MIN_NUMEL = 1 << 15
_BLOCK_MIN_VOCAB = 1 << 14  # smaller vocabularies go straight to torch.topk
_STATS_CHUNK = 1 << 18  # elements per row chunk of the full-vocabulary pass (about 1 MiB of float32)
_NEG_INF = float("-inf")
_LN2 = math.log(2.0)


@dataclass(frozen=True)
class TopHSelection:
    """The kept set of each row: the first ``n_keep[b]`` entries of ``ids[b]`` (descending probability).

    ``ids`` is padded past ``n_keep`` with the row's argmax, so ``ids`` and ``values`` can be scattered
    directly. ``budget`` is the variant's entropy budget in nats (``alpha * H(p)`` for ``paper``).
    """

    ids: Int[Tensor, "batch width"]
    values: Float[Tensor, "batch width"]
    n_keep: Int[Tensor, " batch"]
    budget: Float[Tensor, " batch"]

    def filtered(self, tempered: Float[Tensor, "batch vocab"]) -> Float[Tensor, "batch vocab"]:
        """``tempered`` logits (those the selection was made on) with the rest at ``-inf``."""
        return torch.full_like(tempered, _NEG_INF, dtype=torch.float32).scatter_(1, self.ids, self.values)


def check_alpha(alpha: float) -> float:
    a = float(alpha)
    if not 0.0 < a <= 1.0:
        raise SpecError(f"top_h alpha must be in (0, 1], got {alpha!r}")
    return a


def check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise SpecError(f"top_h variant must be one of {list(VARIANTS)}, got {variant!r}")
    return variant


# -- helpers ---------------------------------------------------------------------------------------
def topk_desc(x: Float[Tensor, "batch vocab"], k: int) -> tuple[Tensor, Tensor]:
    """``torch.topk(x, k)`` (sorted, descending), exact in values, faster on large inputs.

    On large ``batch x vocab`` it first takes the maxima of contiguous blocks of 32 tokens, keeps the
    ``k`` best blocks (they contain a top-k set: a token outside them is beaten by ``k`` block maxima)
    and runs ``topk`` on those candidates only. Among tied values the token chosen may differ from
    ``torch.topk``'s; values are identical.

    >>> x = torch.randn(2, 70000, generator=torch.Generator().manual_seed(0))
    >>> torch.equal(topk_desc(x, 100)[0], torch.topk(x, 100).values)
    True
    """
    return _topk_rows(x, k, _block_maxima(x))


def _blocks_pay_off(x: Tensor) -> bool:
    """Whether the two-stage top-k through 32-token block maxima beats a plain ``torch.topk`` on ``x``."""
    return x.numel() >= _BLOCK_MIN_NUMEL and x.shape[1] >= _BLOCK_MIN_VOCAB


def _block_maxima(x: Float[Tensor, "batch vocab"]) -> Tensor | None:
    """Maxima of the contiguous 32-token blocks of each row (the tail past the last block excluded), or
    None when the input is too small for the two-stage top-k to pay off."""
    b, v = x.shape
    if not _blocks_pay_off(x):
        return None
    n_blocks = v // _BLOCK
    return x[:, : n_blocks * _BLOCK].reshape(b, n_blocks, _BLOCK).amax(-1)


def _topk_rows(x: Tensor, k: int, block_max: Tensor | None, rows: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Sorted top-``k`` (values, ids) of ``x[rows]`` (all rows when None) through ``block_max`` of ``x``.

    The best ``k`` blocks plus the tail past the last block hold a top-k set; rows are gathered by index,
    not copied. Falls back to ``torch.topk`` when ``k`` blocks would cover half of the vocabulary.
    """
    v = x.shape[1]
    k = min(k, v)
    if block_max is None or 2 * k > block_max.shape[1]:
        return torch.topk(x if rows is None else x[rows], k, dim=-1)
    bm = block_max if rows is None else block_max[rows]
    n, n_blocks = bm.shape
    best_max, best = torch.topk(bm, k, dim=-1, sorted=False)
    cand = (best.unsqueeze(-1) * _BLOCK + torch.arange(_BLOCK, device=x.device)).reshape(n, -1)
    main = n_blocks * _BLOCK
    if main < v:
        cand = torch.cat([cand, torch.arange(main, v, device=x.device).expand(n, -1)], dim=-1)
    cand_vals = x.gather(1, cand) if rows is None else x[rows.unsqueeze(-1), cand]
    # Only candidates >= tau (the k-th best block maximum, <= the row's k-th largest value) can be in a
    # top-k set, and there are at least k of them (the k block maxima): typically a small multiple of k
    # out of 32 k, so they are packed to the left (order kept) and ranked there.
    above = cand_vals >= best_max.amin(-1, keepdim=True)
    count = above.sum(-1)
    width = int(count.max())
    if int(count.min()) >= k and 2 * width <= cand.shape[1]:
        slot = torch.where(above, above.cumsum(-1) - 1, width)  # column width: a bin for the rest, cut off
        cand_vals = cand_vals.new_full((n, width + 1), _NEG_INF).scatter_(1, slot, cand_vals)[:, :width]
        cand = cand.new_zeros((n, width + 1)).scatter_(1, slot, cand)[:, :width]
    vals, j = torch.topk(cand_vals, k, dim=-1)
    return vals, cand.gather(1, j)


def _prefix_width(budget: Tensor, at_least: int, v: int, factor: float) -> int:
    """Sorted-prefix width to scan: ``factor * exp(budget)`` rounded up to a power of two (the kept count is
    at least ``floor(exp(budget))`` or all tokens with ``p > 0``, as ``H(q_k) <= log k``, usually below twice
    that), at least ``at_least`` and ``_MIN_HEAD``; the whole vocabulary once that would cover half of it."""
    want = max(at_least, _MIN_HEAD, 1 << max(0, math.ceil(math.log2(factor * math.exp(float(budget))))))
    return v if 2 * want > v else want


def _topk_few_rows(x: Tensor, k: int, block_max: Tensor | None, rows: Tensor) -> tuple[Tensor, Tensor]:
    """Sorted top-``k`` (values, ids) of the few ``rows`` of ``x``, one row at a time.

    The ``k``-th largest block maximum ``tau`` is at most the row's ``k``-th largest value (``k`` blocks each
    hold a value ``>= tau``), so every top-``k`` token is among the tokens ``>= tau`` (tail included): only
    those are ranked, typically a small multiple of ``k`` instead of the whole vocabulary.
    """
    vals, ids = [], []
    for r in rows.tolist():
        row = x[r]
        if block_max is None or 2 * k > block_max.shape[1]:
            v, i = torch.topk(row, k)
        else:
            tau = torch.topk(block_max[r], k, sorted=False).values.min()
            cand = (row >= tau).nonzero().squeeze(1)
            v, j = torch.topk(row[cand], k)
            i = cand[j]
        vals.append(v)
        ids.append(i)
    return torch.stack(vals), torch.stack(ids)


def _validate_rows(head_max: Tensor) -> None:
    """Raise on rows whose largest logit is NaN (topk puts NaN first), +inf or -inf (no finite logit)."""
    bad = ~torch.isfinite(head_max)
    if bad.any():
        rows = bad.nonzero().flatten().tolist()
        nan = torch.isnan(head_max[bad]).tolist()
        if any(nan):
            which = [r for r, n in zip(rows, nan, strict=True) if n]
            raise SpecError(f"NaN in logits at batch rows {which}; expected finite or -inf logits")
        pos = [r for r in rows if head_max[r] > 0]
        if pos:
            raise SpecError(
                f"+inf in logits / temperature at batch rows {pos}; expected finite or -inf logits "
                "(a tiny temperature can overflow float32)"
            )
        raise SpecError(f"every logit is -inf at batch rows {rows}; expected at least one finite logit")


def _full_stats(
    x: Float[Tensor, "batch vocab"], temperature: float, entropy: bool
) -> tuple[Tensor | None, Tensor, Tensor, Tensor | None]:
    """One pass over *raw* logits ``x``: the 32-token block maxima (None when the input is too small for
    them to pay off, as :func:`_block_maxima`), the row maxima ``m`` (``[batch, 1]``; NaN propagates), and
    ``log Z`` and (optionally) ``H(p)`` of ``p = softmax(x / T)``.

    With ``z = (x - m) / (T ln 2)`` (so ``max z = 0``), ``e = 2 ** z`` (``exp2``: cheaper than ``exp``
    on CPU) and ``s = sum(e)`` (``>= 1``, float32): ``log Z = m / T + log s`` and
    ``H(p) = log s - ln 2 (e . z) / s``; the largest term is exactly 1, so nothing under- or overflows.
    The pass runs over chunks of rows of about ``_STATS_CHUNK`` elements, in preallocated buffers, so ``z``
    and ``e`` stay in cache instead of making round trips through memory with full-size temporaries.
    Rows with ``-inf`` logits (where ``0 * -inf`` is NaN) are recomputed safely. Rows whose maximum is not
    finite get meaningless statistics: validate ``m`` first.
    """
    b, v = x.shape
    step = max(1, _STATS_CHUNK // v)
    n_blocks = v // _BLOCK
    main = n_blocks * _BLOCK
    block_max = x.new_empty(b, n_blocks) if _blocks_pay_off(x) else None
    x_max = x.new_empty(b, 1)
    sums = x.new_empty(2, b)  # per row: sum(e), e . z (written in place by the chunks: few ops per chunk)
    z_buf, e_buf = x.new_empty(min(step, b), v), x.new_empty(min(step, b), v)
    to_base2 = 1.0 / (_LN2 * temperature)  # exp(y) = 2 ** (y / ln 2)
    for i in range(0, b, step):
        c = x[i : i + step]
        n = c.shape[0]
        m = x_max[i : i + n]
        if block_max is not None:
            bm = torch.amax(c[:, :main].reshape(n, n_blocks, _BLOCK), dim=-1, out=block_max[i : i + n])
            torch.amax(bm, -1, keepdim=True, out=m)
            if main < v:
                torch.maximum(m, c[:, main:].amax(-1, keepdim=True), out=m)
        else:
            torch.amax(c, -1, keepdim=True, out=m)
        z = torch.sub(c, m, out=z_buf[:n]).mul_(to_base2)
        e = torch.exp2(z, out=e_buf[:n])
        torch.sum(e, -1, out=sums[0, i : i + n])
        if entropy:
            torch.sum(e.mul_(z), -1, out=sums[1, i : i + n])
    s, ez = sums
    log_s = s.log()
    log_z = x_max[:, 0] / temperature + log_s  # division by 1.0 is exact
    if not entropy:
        return block_max, x_max, log_z, None
    h = log_s - ez * (_LN2 / s)
    bad = (~torch.isfinite(h)).nonzero().flatten()
    if bad.numel():  # -inf logits: 0 * -inf is NaN; these rows again, with 0 for e * z where e = 0
        zb = (x[bad] - x_max[bad]) * to_base2
        eb = zb.exp2()
        h[bad] = log_s[bad] - torch.where(eb > 0, eb * zb, 0.0).sum(-1) * (_LN2 / s[bad])
    return block_max, x_max, log_z, h.clamp_(min=0.0)


def _first_violation(viol: Tensor) -> tuple[Tensor, Tensor]:
    """Index of the first True per row (the kept count) and whether any row entry was True."""
    viol[:, 0] = False  # the argmax is always kept
    found = viol.any(-1)
    n = torch.where(found, viol.to(torch.uint8).argmax(-1), viol.shape[-1])
    return n, found


def _scan_paper(vals: Tensor, log_z: Tensor, budget: Tensor) -> tuple[Tensor, Tensor]:
    """Kept count under ``H(q_k) <= budget`` for descending ``vals`` (tempered logits)."""
    p = (vals - log_z.unsqueeze(-1)).exp()
    mass = p.cumsum(-1)
    h_q = torch.special.entr(p).cumsum(-1) / mass + mass.log()
    return _first_violation((h_q > budget.unsqueeze(-1)) | (p <= 0))


def _scan_reference(vals: Tensor, log_z: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    p = (vals - log_z.unsqueeze(-1)).exp()
    terms = torch.special.entr(p)
    budget = alpha * terms.sum(-1)
    n, _ = _first_violation((terms.cumsum(-1) > budget.unsqueeze(-1)) | (p <= 0))
    return n, budget


def _hf_rule(top_logits: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    """``transformers.TopHLogitsWarper``'s arithmetic, op for op (so ties and roundings match)."""
    normalized = top_logits - top_logits.logsumexp(dim=-1, keepdim=True)
    probs = torch.softmax(normalized, dim=-1)
    log_probs = torch.log(probs)
    min_real = torch.finfo(normalized.dtype).min
    budget = -(torch.clamp(normalized, min=min_real) * probs).sum(-1) * alpha
    cumulative = torch.cumsum(-probs * log_probs, dim=-1)
    keep = cumulative <= budget.unsqueeze(-1)
    keep[:, 0] = True
    return keep.sum(-1), budget


def _pad_prefix(ids: Tensor, vals: Tensor, n_keep: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """First ``width`` columns, with entries at or past ``n_keep`` replaced by the row's argmax."""
    ids, vals = ids[:, :width], vals[:, :width]
    keep = torch.arange(width, device=ids.device) < n_keep.unsqueeze(-1)
    return torch.where(keep, ids, ids[:, :1]), torch.where(keep, vals, vals[:, :1])


# -- the rule --------------------------------------------------------------------------------------
def _select(
    x: Float[Tensor, "batch vocab"], alpha: float, variant: str, temperature: float = 1.0
) -> TopHSelection:
    """Selection on ``softmax(x / temperature)`` of float logits ``x``. ``paper``/``reference`` rank the
    candidates on ``x`` (division by ``T > 0`` keeps the order) and divide only the selected values, so
    the kept values are bit-identical to ``(x / T)[kept]``."""
    b, v = x.shape
    if variant == "hf":
        xt = x if temperature == 1.0 else x / temperature
        top_vals, top_ids = torch.topk(xt, min(CAPPED_TOP_N, v), dim=-1)
        _validate_rows(top_vals[:, 0])
        n_keep, budget = _hf_rule(top_vals, alpha)
        ids, vals = _pad_prefix(top_ids, top_vals, n_keep, int(n_keep.max()))
        return TopHSelection(ids, vals, n_keep, budget)

    def tempered(raw: Tensor) -> Tensor:
        return raw if temperature == 1.0 else raw / temperature

    block_max, x_max, log_z, h_p = _full_stats(x, temperature, variant == "paper")
    _validate_rows(tempered(x_max[:, 0]))
    if variant == "reference":
        head_raw, head_ids = _topk_rows(x, min(CAPPED_TOP_N, v), block_max)
        head_vals = tempered(head_raw)
        n_keep, budget = _scan_reference(head_vals, log_z, alpha)
        ids, vals = _pad_prefix(head_ids, head_vals, n_keep, int(n_keep.max()))
        return TopHSelection(ids, vals, n_keep, budget)
    assert h_p is not None
    budget = alpha * h_p
    width = _prefix_width(budget.quantile(0.75), 0, v, _HEAD_FACTOR)
    head_raw, head_ids = _topk_rows(x, width, block_max)
    head_vals = tempered(head_raw)
    n_keep, found = _scan_paper(head_vals, log_z, budget)
    pending = (~found & (n_keep < v)).nonzero().flatten()
    wide: list[tuple[Tensor, Tensor, Tensor]] = []  # (rows, ids, vals) of rows scanned wider
    while pending.numel():
        width = _prefix_width(budget[pending].max(), width * _WIDEN, v, 2.0)
        if _FEW_ROWS * pending.numel() <= b:  # a few rows: only their tokens above a threshold
            sub_raw, sub_ids = _topk_few_rows(x, width, block_max, pending)
        else:
            sub_raw, sub_ids = _topk_rows(x, width, block_max, pending)
        sub_vals = tempered(sub_raw)
        sub_n, sub_found = _scan_paper(sub_vals, log_z[pending], budget[pending])
        n_keep[pending] = sub_n
        wide.append((pending, sub_ids, sub_vals))
        pending = pending[~sub_found & (sub_n < v)]
    m = int(n_keep.max())
    ids, vals = head_ids[:, :m], head_vals[:, :m]
    if m > ids.shape[1]:  # some rows were scanned wider: place their longer prefixes
        ids = torch.cat([ids, ids.new_zeros(b, m - ids.shape[1])], dim=1)
        vals = torch.cat([vals, vals.new_zeros(b, m - vals.shape[1])], dim=1)
        for rows, sub_ids, sub_vals in wide:  # later rounds overwrite earlier ones for the same rows
            w = min(m, sub_ids.shape[1])
            ids[rows, :w], vals[rows, :w] = sub_ids[:, :w], sub_vals[:, :w]
    ids, vals = _pad_prefix(ids, vals, n_keep, m)
    return TopHSelection(ids, vals, n_keep, budget)


def top_h_select(logits: Float[Tensor, "batch vocab"], alpha: float = 0.4, variant: Variant = "paper") -> TopHSelection:
    """The top-H kept set of each row of *already tempered* ``logits`` (pure; inputs untouched).

    >>> sel = top_h_select(torch.tensor([[2.0, 2.0, 0.0, 0.0, 0.0, 0.0]]), alpha=0.6)
    >>> sel.n_keep.tolist(), sorted(sel.ids[0, : sel.n_keep[0]].tolist())
    ([2], [0, 1])
    """
    x = _as_float_2d(logits)
    return _select(x, check_alpha(alpha), check_variant(variant))


def top_h_filter(
    logits: Float[Tensor, "batch vocab"], alpha: float = 0.4, variant: Variant = "paper"
) -> Float[Tensor, "batch vocab"]:
    """Tempered ``logits`` with every token outside the top-H set at ``-inf`` (float32, new tensor)."""
    x = _as_float_2d(logits)
    return _apply(x, check_alpha(alpha), check_variant(variant), owned=False)


def _as_float_2d(logits: Tensor) -> Tensor:
    if logits.ndim != 2:
        raise SpecError(f"logits must have shape [batch, vocab], got {tuple(logits.shape)}")
    return logits.float()


def _apply(x: Tensor, alpha: float, variant: str, owned: bool, temperature: float = 1.0) -> Tensor:
    """Selection on ``x / temperature`` + output. ``owned``: ``x`` is a temporary of ours and may be
    overwritten."""
    sel = _select(x, alpha, variant, temperature)
    out = x if owned else torch.empty_like(x)
    return out.fill_(_NEG_INF).scatter_(1, sel.ids, sel.values)


@register_sampler
class TopH(Sampler):
    """Top-H: the largest-mass descending prefix whose entropy stays within ``alpha`` x the model's.

    Potraghloo et al., NeurIPS 2025, https://arxiv.org/abs/2509.02510. ``alpha`` in (0, 1] (the
    authors use 0.3-0.5; 1 keeps everything for ``paper``); ``variant`` is ``"paper"`` (default, exact,
    uncapped), ``"hf"`` (= ``transformers.TopHLogitsWarper``) or ``"reference"`` (the authors' code);
    see the module docstring. Temperature first, then the rule on ``softmax(logits / T)``.

    Example:
        >>> import torch, steerlab as sl
        >>> s = sl.make_sampler("top_h", alpha=0.8, variant="paper", temperature=1.0)
        >>> s.filter_logits(torch.tensor([[4.0, 3.5, 1.0, 0.0, -2.0]])).isfinite().tolist()
        [[True, True, False, False, False]]
    """

    name = "top_h"

    def __init__(self, alpha: float = 0.4, variant: Variant = "paper", temperature: float = 1.0) -> None:
        super().__init__(temperature)
        self.alpha = check_alpha(alpha)
        self.variant = check_variant(variant)

    def truncate(self, logits: Float[Tensor, "batch vocab"]) -> Float[Tensor, "batch vocab"]:
        """Given tempered logits, return a new tensor with tokens outside the top-H set at ``-inf``."""
        return _apply(_as_float_2d(logits), self.alpha, self.variant, owned=False)

    def filter_logits(self, logits: Float[Tensor, "batch vocab"]) -> Float[Tensor, "batch vocab"]:
        """Temperature, then top-H (fused: invalid logits are caught from the row maxima, no extra pass)."""
        if logits.ndim != 2:
            raise SpecError(f"logits must have shape [batch, vocab], got {tuple(logits.shape)}")
        x = logits.float()
        return _apply(x, self.alpha, self.variant, owned=x is not logits, temperature=self.temperature)

    def select(self, logits: Float[Tensor, "batch vocab"]) -> TopHSelection:
        """The kept set of each row of *raw* logits (temperature applied here)."""
        return _select(_as_float_2d(logits), self.alpha, self.variant, self.temperature)

    def params(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "variant": self.variant, "temperature": self.temperature}

    def as_logits_processor(self) -> TopHLogitsProcessor:
        return TopHLogitsProcessor(self.alpha, self.variant, self.temperature)


class TopHLogitsProcessor(SamplerLogitsProcessor):
    """Top-H as a plain ``transformers.LogitsProcessor`` (returns tempered, truncated logits).

    It applies the temperature itself, so call ``generate`` with ``do_sample=True, temperature=1.0,
    top_k=0, top_p=1.0`` (or pass the same ``temperature`` here and nowhere else); a second HF
    temperature or truncation would change the distribution.

    Example:
        >>> import torch, steerlab as sl
        >>> h = sl.load("shared:stories260K")
        >>> enc = h.tokenize(["Once upon a time"])
        >>> proc = TopHLogitsProcessor(alpha=0.4, temperature=1.5)
        >>> out = h.model.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
        ...                        max_new_tokens=5, logits_processor=[proc], pad_token_id=0)
        >>> out.shape[1] == enc["input_ids"].shape[1] + 5
        True
    """

    def __init__(self, alpha: float = 0.4, variant: Variant = "paper", temperature: float = 1.0) -> None:
        super().__init__(TopH(alpha=alpha, variant=variant, temperature=temperature))
