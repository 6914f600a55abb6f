"""The two stages of Zhou et al. (2024), on :func:`steerlab.training.train`.

Stage 1, :func:`train_vector`: only the vector trains, on harmful prompt/response pairs, until the model
with the vector on produces those responses (base weights frozen). With ``anchor`` pairs and an
``anchor_weight`` > 0 every step also adds ``anchor_weight * KL(base || vector on)`` on a batch of harmless
texts (:func:`anchor_kl`), so the vector learns to act on harmful inputs and to leave others as the base
model has them; weight 0 (no anchor) is the plain objective of the paper. With ``grad_penalty`` mu > 0 every
step also adds ``mu * ||d L_harmful / d theta_base||^2`` (:func:`base_grad_sq`), so the vector learns to leave
the base weights little gradient on harmful pairs, which is what stage 2 relies on. Stage 2, :func:`finetune`: the base
model trains (full fine-tuning) on the user's data with the vector on and frozen; harmful pairs are already
predicted through the vector, so they carry almost no gradient. The vector is off afterwards: the model
is the plain architecture again (:func:`save_model` writes it as a normal model folder).

Example:
    >>> from steerlab.models.tiny import tiny_model
    >>> from steerlab.security.data import Pair
    >>> h = tiny_model("llama")
    >>> harm = [Pair("do a bad thing", "sure here it is", "harmful")] * 4
    >>> v, r = train_vector(h, harm, VectorConfig(rank=2), steps=3, lr=1e-2, seed=0, progress=False)
    >>> r.steps, sorted(r.losses)
    (3, ['harmful'])
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from steerlab.atomic import atomic_dir
from steerlab.engines import position_ids
from steerlab.errors import SpecError
from steerlab.models.handle import ModelHandle
from steerlab.security.data import Pair, batches_of, encode, summary
from steerlab.security.vectors import SecurityVector, VectorConfig, data_hash, new_vector
from steerlab.training import ADAM_EPS, Batch, TrainResult, lm_loss, train


def _steps(batches: list, steps: int | None) -> int:
    return len(batches) if steps is None else steps


def vector_curves(res: TrainResult, thin: Callable[[list], list] = lambda c: [list(p) for p in c]) -> dict[str, list]:
    """A vector card's ``curves`` from stage 1's result: ``loss`` and ``eval`` (harmful part), with an anchor
    term ``anchor`` and ``anchor_eval``, with a gradient penalty ``grad_penalty``; each ``[[step, value], ...]``
    through ``thin``."""
    curves = {
        "loss": res.losses["harmful"],
        "eval": res.eval_losses["harmful"],
        "anchor": res.losses.get("anchor"),
        "anchor_eval": res.eval_losses.get("anchor"),
        "grad_penalty": res.losses.get("grad_penalty"),
    }
    return {k: thin(c) for k, c in curves.items() if c is not None}


def _term_weight(w: float, what: str, zero: str) -> float:
    """``w`` if it is a finite number >= 0 (a stage-1 loss term's weight), else a one-line :class:`SpecError`."""
    if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w) or w < 0:
        raise SpecError(f"{what} {w!r}; expected a finite number >= 0 (0: {zero})")
    return float(w)


def check_anchor_weight(w: float) -> float:
    """``w`` if it is a finite number >= 0 (the anchor term's weight), else a one-line :class:`SpecError`."""
    return _term_weight(w, "anchor weight", "no anchor")


def _logits(h: ModelHandle, b: Batch) -> Tensor:
    ids, mask = b["input_ids"], b["attention_mask"]
    return h.model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits.float()


def anchor_kl(h: ModelHandle, vector: SecurityVector, b: Batch) -> Tensor:
    """Mean over the real tokens of ``b`` of KL(base || vector on) between the next-token distributions
    (nats); call inside ``vector.on(h)``. The base side is computed with the vector suspended, without
    gradient, so the gradient reaches only the vector."""
    with torch.no_grad(), vector.suspended(h):
        base = torch.log_softmax(_logits(h, b), -1)
    on = torch.log_softmax(_logits(h, b), -1)
    kl = (base.exp() * (base - on)).sum(-1)
    m = b["attention_mask"].to(kl.dtype)
    return (kl * m).sum() / m.sum().clamp_min(1)


def check_grad_penalty(mu: float) -> float:
    """``mu`` if it is a finite number >= 0 (the gradient-penalty weight), else a one-line :class:`SpecError`."""
    return _term_weight(mu, "gradient penalty", "no penalty")


@contextlib.contextmanager
def requiring_grad(params: Sequence[torch.nn.Parameter]) -> Iterator[None]:
    """``params`` with ``requires_grad`` on (their ``.grad`` untouched), as they were afterwards."""
    was = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(True)
        yield
    finally:
        for p, r in zip(params, was, strict=True):
            p.requires_grad_(r)


def base_grad_sq(loss_of: Callable[[], Tensor], base: Sequence[torch.nn.Parameter]) -> tuple[Tensor, Tensor]:
    """``(loss, ||d loss / d base||^2)`` for ``loss = loss_of()``, the squared norm summed over all ``base``
    tensors and differentiable (second order), so its gradient reaches whatever else the loss depends on (the
    vector). ``base`` may have ``requires_grad=False``: it is on for the call only, ``.grad`` untouched.

    Example:
        >>> w, v = torch.nn.Parameter(torch.tensor(3.0)), torch.nn.Parameter(torch.tensor(2.0))
        >>> loss, g2 = base_grad_sq(lambda: w * v, [w])  # d(wv)/dw = v, so g2 = v^2
        >>> float(g2.detach()), float(torch.autograd.grad(g2, v)[0])  # d(v^2)/dv = 2v
        (4.0, 4.0)
    """
    with requiring_grad(base):
        loss = loss_of()
        grads = torch.autograd.grad(loss, list(base), create_graph=True, allow_unused=True)
    sq = sum(((g.float() ** 2).sum() for g in grads if g is not None), torch.zeros((), device=loss.device))
    return loss, sq


@contextlib.contextmanager
def _attention(h: ModelHandle, impl: str | None) -> Iterator[None]:
    """``h.model`` with attention implementation ``impl`` (None: as it is), restored afterwards."""
    old = getattr(h.model.config, "_attn_implementation", None)
    if impl is None or impl == old:
        yield
        return
    h.model.set_attn_implementation(impl)
    try:
        yield
    finally:
        h.model.set_attn_implementation(old)


def train_vector(
    h: ModelHandle,
    harmful: Sequence[Pair],
    config: VectorConfig,
    *,
    steps: int | None = None,
    epochs: int = 1,
    lr: float = 1e-3,
    seed: int = 0,
    batch_size: int = 16,
    anchor: Sequence[Pair] = (),
    anchor_weight: float = 0.0,
    grad_penalty: float = 0.0,
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
) -> tuple[SecurityVector, TrainResult]:
    """Stage 1: a new vector for ``h`` trained on ``harmful`` pairs (``steps`` default: ``epochs`` passes).

    With ``anchor_weight`` > 0, step ``k`` also adds ``anchor_weight * KL(base || vector on)`` on anchor batch
    ``k`` (``anchor`` pairs chunked in order and cycled; their last batch is held out and scored); the
    curves then hold ``harmful`` and ``anchor`` (the weighted term). The card's ``anchor`` entry records
    the setting and ``anchor_kl_heldout``, the unweighted KL on the held-out anchor batch after training
    (measured for weight 0 too, when anchor pairs are given).

    With ``grad_penalty`` mu > 0, step ``k`` also adds ``mu * ||d L_harmful / d theta_base||^2`` on its harmful
    batch (curve ``grad_penalty``, the weighted term): a second-order term (a double backward per step), run
    with eager attention (PyTorch's fused attention has no double backward on CPU; the model's setting is
    restored afterwards). The card's ``grad_penalty`` entry records mu and the unweighted squared gradient
    norm on the first harmful batch before and after training.
    """
    harmful = list(harmful)
    if not harmful:
        raise SpecError("the harmful set is empty; expected at least one harmful prompt/response pair")
    config.check()
    w = check_anchor_weight(anchor_weight)
    mu = check_grad_penalty(grad_penalty)
    anchor = list(anchor)
    if w > 0 and len(anchor) < 2 * batch_size:
        raise SpecError(
            f"anchor weight {w} with {len(anchor)} anchor pairs; expected at least {2 * batch_size} "
            "(one batch to train on and one held out)"
        )
    batches = batches_of(h, harmful, batch_size, epochs, seed)
    n = _steps(batches, steps)
    held_anchor = encode(h, anchor[-batch_size:]) if anchor else None
    evals = {"harmful": encode(h, harmful[:batch_size])}
    loss_fn = None
    if w > 0:
        train_anchor = anchor[:-batch_size]
        chunks = [encode(h, train_anchor[i : i + batch_size]) for i in range(0, len(train_anchor), batch_size)]
        batches = [{**batches[k % len(batches)], "anchor": chunks[k % len(chunks)]} for k in range(n)]
        evals["harmful"] = {**evals["harmful"], "anchor": held_anchor}
    v = new_vector(h, config, seed=seed, card={"data_hash": data_hash(harmful), "data": summary(harmful)})
    base: list[torch.nn.Parameter] = []
    if w > 0 or mu > 0:

        def loss_fn(model: torch.nn.Module, b: Batch) -> dict[str, Tensor]:
            if mu > 0 and torch.is_grad_enabled():  # a training step (evaluation runs without gradient)
                lh, sq = base_grad_sq(lambda: lm_loss(model, b), base)
                out = {b["part"]: lh, "grad_penalty": mu * sq}
            else:
                out = {b["part"]: lm_loss(model, b)}
            if w > 0:
                out["anchor"] = w * anchor_kl(h, v, b["anchor"])
            return out

    run_key: dict[str, Any] = {"anchor_weight": w, "anchor_hash": data_hash(anchor)} if w > 0 else {}
    run_key.update({"grad_penalty": mu} if mu > 0 else {})
    gsq: list[float] = []

    def first_batch_sq() -> float:  # the card's before/after value: the base's squared gradient, first harmful batch
        return round(float(base_grad_sq(lambda: lm_loss(h.model, evals["harmful"]), base)[1].detach()), 8)

    with _attention(h, "eager" if mu > 0 else None), v.on(h, trainable=True) as params:
        ids = {id(p) for p in params}
        base[:] = [p for p in h.model.parameters() if id(p) not in ids]
        if mu > 0:
            gsq.append(first_batch_sq())
        res = train(
            h.model,
            batches,
            params=params,
            steps=n,
            lr=lr,
            seed=seed,
            loss_fn=loss_fn,
            part_of=lambda b: b["part"],
            eval_batches=evals,
            eval_every=max(1, n // 10),
            checkpoint_dir=checkpoint_dir,
            progress=progress,
            desc="security vector",
            run_key=run_key or None,
        )
        if mu > 0:
            gsq.append(first_batch_sq())
        kl_end = None
        if held_anchor is not None:
            with torch.no_grad():
                kl_end = round(float(anchor_kl(h, v, held_anchor)), 6)
    v.card["train"] = {
        "steps": res.steps,
        "lr": lr,
        "seed": seed,
        "batch_size": batch_size,
        "epochs": epochs,
        "final_eval_loss": res.eval_losses["harmful"][-1][1],
    }
    v.card["anchor"] = {
        "weight": w,
        "n": len(anchor),
        "data_hash": data_hash(anchor) if anchor else None,
        "loss": "KL(base || vector on) per real token, nats",
        "anchor_kl_heldout": kl_end,
    }
    first = {"start": gsq[0], "end": gsq[1]} if gsq else None
    v.card["grad_penalty"] = {"weight": mu, "base_grad_sq_first_batch": first}
    return v, res


def finetune(
    h: ModelHandle,
    pairs: Sequence[Pair],
    vector: SecurityVector | None = None,
    *,
    steps: int | None = None,
    epochs: int = 1,
    lr: float = 1e-4,
    seed: int = 0,
    batch_size: int = 16,
    weight_decay: float = 0.0,
    grad_clip: float | None = 1.0,
    adam_eps: float = ADAM_EPS,
    eval_pairs: dict[str, Sequence[Pair]] | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 50,
    progress: bool = True,
    merge: bool = True,
    null_parts: Collection[str] = (),
    part_scale: Mapping[str, float] | None = None,
) -> TrainResult:
    """Stage 2: full fine-tuning of ``h`` on ``pairs`` with ``vector`` (if any) on and frozen (``checkpoint_dir``:
    a resumable checkpoint every ``checkpoint_every`` steps, as :func:`steerlab.training.train`).

    ``h.model`` is trained in place; the vector is off when this returns. ``eval_pairs={part: pairs}``
    are scored (with the vector on, as training sees them) at step 0, every tenth of the run and at the end.
    With ``merge`` (and a LoRA vector, no weight decay) the frozen vector is folded into the weights while
    they train (:meth:`SecurityVector.merged`): the same updates up to float rounding, at the plain model's
    cost per step; weight decay would decay the folded delta too, so it runs unmerged.

    ``grad_clip``: the loop's clipping norm (``None``: no clipping; the sweep's records clip at 1, and
    ``docs/security.md`` has the vector-off check without clipping). ``adam_eps``: AdamW's eps (the loop's).

    ``null_parts`` names parts whose batches keep their place in the run but carry exactly zero gradient
    (their loss is still recorded): the optimizer steps on momentum alone there. With ``{"harmful"}`` and no
    vector this is the run a perfect security vector would give: fine-tuned on the benign part only, on
    the same schedule (same steps, same batch order) as the run on all of ``pairs``.

    ``part_scale={part: s}`` multiplies that part's gradient by ``s`` (a finite number >= 0; the recorded loss
    is unchanged): ``null_parts`` is ``part_scale`` 0 for each part it names. With a vector on, a harmful
    scale below 1 is the run of a vector that leaves that fraction of its residual gradient
    (``benchmarks/security_tolerance.py``).
    """
    pairs = list(pairs)
    scale = _part_scale(null_parts, part_scale, {p.part for p in pairs})
    batches = batches_of(h, pairs, batch_size, epochs, seed)
    n = _steps(batches, steps)
    evals = {k: encode(h, list(v)[:batch_size]) for k, v in (eval_pairs or {}).items() if v}
    kw: dict[str, Any] = dict(
        steps=n,
        lr=lr,
        seed=seed,
        weight_decay=weight_decay,
        grad_clip=grad_clip,
        eps=adam_eps,
        part_of=lambda b: b["part"],
        eval_batches=evals,
        eval_every=max(1, n // 10),
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every,
        progress=progress,
        desc="fine-tune" + (" (vector on)" if vector is not None else ""),
    )
    if scale:

        def loss_fn(model: torch.nn.Module, b: Batch) -> Tensor:
            loss = lm_loss(model, b)
            s = scale.get(b["part"])
            # the same value, gradient s * g (s = 0: exactly 0, the part's batches step on momentum alone)
            return loss if s is None else loss.detach() + s * (loss - loss.detach())

        kw["loss_fn"] = loss_fn
        nulled = sorted(k for k, v in scale.items() if v == 0)
        everything = len(nulled) == len(scale)
        kw["run_key"] = {"null_parts": nulled} if everything else {"part_scale": dict(sorted(scale.items()))}
    if vector is None:
        return train(h.model, batches, params=list(h.model.parameters()), **kw)
    fold = merge and vector.config.kind == "lora" and weight_decay == 0
    with vector.on(h, trainable=False) as vparams:
        ids = {id(p) for p in vparams}
        base = [p for p in h.model.parameters() if id(p) not in ids]
        with vector.merged(h) if fold else contextlib.nullcontext():
            return train(h.model, batches, params=base, **kw)


def _part_scale(
    null_parts: Collection[str], part_scale: Mapping[str, float] | None, parts: set[str]
) -> dict[str, float]:
    """``null_parts`` and ``part_scale`` as one ``{part: scale}`` (parts at scale 1 left out), checked."""
    scale = {p: 0.0 for p in null_parts}
    for part, s in (part_scale or {}).items():
        if isinstance(s, bool) or not isinstance(s, int | float) or not math.isfinite(s) or s < 0:
            raise SpecError(f"part_scale[{part!r}]={s!r}; expected a finite number >= 0")
        if part in scale and scale[part] != s:
            raise SpecError(f"part {part!r} is in null_parts and has part_scale {s!r}; expected one of the two")
        scale[part] = float(s)
    unknown = sorted(set(scale) - parts)
    if unknown:
        name = "null_parts" if unknown[0] in null_parts else "part_scale"
        raise SpecError(f"{name} names {unknown[0]!r}, not a part of the data; expected one of {sorted(parts)}")
    return {p: s for p, s in scale.items() if s != 1.0}


def save_model(h: ModelHandle, out: str | Path, card: dict[str, Any] | None = None) -> Path:
    """Write ``h``'s model and tokenizer as a Hugging Face folder (a normal model spec), crash-safely;
    ``card`` goes to ``security.json`` beside them."""
    if any("lora_" in n for n, _ in h.model.named_parameters()):
        raise SpecError(f"{h.spec} still carries a switched-on vector; expected the plain model to save")
    out = Path(out)
    with atomic_dir(out) as tmp:
        h.model.save_pretrained(str(tmp))
        h.tokenizer.save_pretrained(str(tmp))
        if card is not None:
            (tmp / "security.json").write_text(json.dumps(card, indent=2))
    return out
