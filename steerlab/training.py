"""The shared training loop: seeded, resumable, gradient-maskable; loss curves per data part.

:func:`train` runs AdamW over chosen parameters of any ``nn.Module`` for a fixed number of steps.

* **Deterministic for a seed** on CPU (one torch thread): the torch RNG is reseeded from
  ``(seed, step)`` before every step inside a forked RNG (the caller's global RNG is untouched), and
  batch ``k`` is the same batch on every run.
* **Resumable**: with ``checkpoint_dir`` the trained parameters, the optimizer state and the curves
  are written every ``checkpoint_every`` steps and at the end through :func:`steerlab.atomic.atomic_dir`
  (old checkpoint or new one, whole, after a crash at any point); a second call with the same
  arguments continues from it, and the result equals the uninterrupted run bit for bit. The checkpoint
  keeps a digest of every batch it trained on; a resume whose batches differ is refused (naming the
  first batch that differs) before anything is loaded into the model. To check them, a resume from step
  ``k`` draws batches ``0 .. k-1`` again (a callable source is called for them, an iterator consumed).
* **Gradient masks**: ``grad_mask={name: bool tensor}`` (``True`` where an entry may train) zeroes
  the gradient of the other entries and restores them after every optimizer step, so they stay
  bit-identical even under AdamW weight decay.
* **Curves per part**: ``part_of(batch)`` names the data part of each training batch ("harmful",
  "benign"); ``eval_batches={part: batch}`` are scored without gradient at step 0, every
  ``eval_every`` steps and at the end.
* **Loss terms**: a ``loss_fn`` may return ``{name: loss}`` instead of one loss (e.g. the data's NLL
  plus a weighted distillation term); the step minimises their sum and each term gets its own curve
  under its name (in ``losses`` and ``eval_losses``) instead of the part's.

A batch is a mapping with ``input_ids`` and ``attention_mask`` (``[batch, seq]``; padding anywhere)
and optionally ``target_mask`` (``1`` on the tokens to predict, e.g. the response); the default loss
is the mean next-token NLL over the targets (every real token after the first without one).

Example:
    >>> import torch
    >>> from steerlab.models.tiny import tiny_model
    >>> h = tiny_model("llama")
    >>> b = h.tokenize(["a b c d"])
    >>> r = train(h.model, [b], params=[h.model.model.norm.weight], steps=3, lr=1e-2, seed=0, progress=False)
    >>> r.steps, [s for s, _ in r.losses["train"]]
    (3, [0, 1, 2])
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from steerlab.atomic import atomic_dir, cpu_copies, resolve_dir, save_tensors_file
from steerlab.engines import position_ids
from steerlab.errors import SpecError
from steerlab.generation import seeded_rng
from steerlab.values import check_count, derive_seed

Batch = Mapping[str, Any]
"""``{"input_ids": [b, s], "attention_mask": [b, s], "target_mask": [b, s] (optional), ...}``."""

LossFn = Callable[[nn.Module, Batch], Tensor | Mapping[str, Tensor]]

__all__ = ["ADAM_EPS", "Batch", "LossFn", "TrainResult", "check_grad_clip", "lm_loss", "train"]

ADAM_EPS = 1e-8  # AdamW's (and torch's) default eps


@dataclass
class TrainResult:
    """What :func:`train` did.

    ``losses[part]`` is ``[(step, training loss)]`` for every step of that part (the loss before the
    step's update); ``eval_losses[part]`` is ``[(step, loss)]`` on ``eval_batches[part]`` where
    ``step`` updates have been made (``0``: before training).
    """

    losses: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    eval_losses: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    steps: int = 0
    resumed_from: int = 0  # the checkpoint's step (0: started fresh)
    seconds: float = 0.0  # wall clock of this call
    params: list[str] = field(default_factory=list)  # names of the trained parameters

    def to_json(self) -> dict[str, Any]:
        return {
            "losses": {k: [[s, v] for s, v in c] for k, c in self.losses.items()},
            "eval_losses": {k: [[s, v] for s, v in c] for k, c in self.eval_losses.items()},
            "steps": self.steps,
            "resumed_from": self.resumed_from,
            "seconds": round(self.seconds, 3),
            "params": self.params,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> TrainResult:
        return cls(
            losses={k: [(int(s), float(v)) for s, v in c] for k, c in d["losses"].items()},
            eval_losses={k: [(int(s), float(v)) for s, v in c] for k, c in d["eval_losses"].items()},
            steps=int(d["steps"]),
            resumed_from=int(d.get("resumed_from", 0)),
            seconds=float(d.get("seconds", 0.0)),
            params=list(d.get("params", [])),
        )


def lm_loss(model: nn.Module, batch: Batch) -> Tensor:
    """Mean next-token NLL (nats) of the batch's target tokens: ``target_mask`` marks the tokens to
    predict (its first column is ignored); without it every real token after the first.

    Example:
        >>> from steerlab.models.tiny import tiny_model
        >>> h = tiny_model("llama")
        >>> float(lm_loss(h.model, h.tokenize(["a b c"]))) > 0
        True
    """
    ids, mask = batch["input_ids"], batch["attention_mask"]
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits.float()
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]
    tm = batch.get("target_mask")
    sel = (mask[:, 1:].bool() & mask[:, :-1].bool()) if tm is None else (tm[:, 1:].bool() & mask[:, 1:].bool())
    n = int(sel.sum())
    if n == 0:
        raise SpecError("a batch has no target tokens (target_mask/attention_mask select nothing); expected >= 1")
    return -(logp * sel).sum() / n


class _Source:
    """Batch ``k`` for step ``k``: a callable is called, a sequence is cycled, an iterator is consumed
    in order (on resume the first ``k`` batches are drawn and dropped)."""

    def __init__(self, batches: Iterable[Batch] | Callable[[int], Batch]) -> None:
        self.fn: Callable[[int], Batch] | None = None
        self.seq: Sequence[Batch] | None = None
        self.it: Iterator[Batch] | None = None
        self.pos = 0
        if callable(batches) and not isinstance(batches, Mapping | Sequence):
            self.fn = batches
        elif isinstance(batches, Mapping):
            raise SpecError("batches is one batch (a mapping); expected a list of batches or a callable step -> batch")
        elif isinstance(batches, Sequence):
            if len(batches) == 0:
                raise SpecError("batches is empty; expected at least one batch")
            self.seq = batches
        else:
            self.it = iter(batches)

    def get(self, step: int) -> Batch:
        if self.fn is not None:
            return self.fn(step)
        if self.seq is not None:
            return self.seq[step % len(self.seq)]
        assert self.it is not None
        while True:
            try:
                b = next(self.it)
            except StopIteration:
                what = "is empty" if self.pos == 0 else f"ran out after {self.pos} batches"
                raise SpecError(f"batches {what}; expected one batch per step (step {step})") from None
            self.pos += 1
            if self.pos > step:
                return b


def _digest(b: Batch) -> str:
    """A short digest of one batch: every tensor (dtype, shape, bytes; a sparse one as its dense values) and
    plain value under its key; lists, tuples and dicts are walked item by item (other objects count as ``?``)."""
    h = hashlib.sha256()
    for k in sorted(b, key=str):
        _feed(h, str(k), b[k])
    return h.hexdigest()[:16]


def _feed(h: Any, k: str, v: Any) -> None:
    if isinstance(v, Tensor):
        t = v.detach().cpu()
        t = t.to_dense() if t.layout != torch.strided else t
        t = t.contiguous().reshape(-1)
        t = t.to(torch.uint8) if t.dtype == torch.bool else t
        h.update(f"{k}|{v.dtype}|{tuple(v.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(v, str | int | float | bool | None):
        h.update(f"{k}|{v!r}|".encode())
    elif isinstance(v, list | tuple):
        h.update(f"{k}|{type(v).__name__}[{len(v)}]|".encode())
        for i, x in enumerate(v):
            _feed(h, f"{k}[{i}]", x)
    elif isinstance(v, Mapping):
        h.update(f"{k}|dict[{len(v)}]|".encode())
        for kk in sorted(v, key=repr):
            _feed(h, f"{k}[{kk!r}]", v[kk])
    else:
        h.update(f"{k}|?|".encode())


def _fingerprint(names: list[str], shapes: list[tuple[int, ...]], steps: int, lr: float, seed: int, extra: Any) -> str:
    text = json.dumps([names, shapes, steps, repr(lr), seed, extra], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _terms(out: Tensor | Mapping[str, Tensor], part: str) -> tuple[Tensor, dict[str, Tensor]]:
    """The loss to minimise and the curves' values: one loss is the part's; ``{name: loss}`` sums."""
    if isinstance(out, Mapping):
        if not out:
            raise SpecError("loss_fn returned no loss terms; expected a tensor or a non-empty {name: loss}")
        terms = dict(out)
        return sum(terms.values()), terms  # type: ignore[return-value]
    return out, {part: out}


def _check_batch(b: Any, step: int) -> None:
    if not isinstance(b, Mapping) or "input_ids" not in b or "attention_mask" not in b:
        got = sorted(b) if isinstance(b, Mapping) else type(b).__name__
        raise SpecError(f"batch {step} is {got}; expected a mapping with input_ids and attention_mask")


def _check_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise SpecError(f"{name}={value!r}; expected a finite number > 0")


def check_grad_clip(grad_clip: float | None) -> float | None:
    """``grad_clip`` if it is a finite number > 0 or None (no clipping), else a one-line :class:`SpecError`."""
    if grad_clip is not None and (
        isinstance(grad_clip, bool) or not isinstance(grad_clip, int | float) or not math.isfinite(grad_clip)
        or grad_clip <= 0
    ):
        raise SpecError(f"grad_clip={grad_clip!r}; expected a finite number > 0, or None (no clipping)")
    return grad_clip


def train(
    model: nn.Module,
    batches: Iterable[Batch] | Callable[[int], Batch],
    *,
    steps: int,
    lr: float,
    seed: int,
    params: Iterable[nn.Parameter] | None = None,
    loss_fn: LossFn | None = None,
    grad_mask: Mapping[str, Tensor] | None = None,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = ADAM_EPS,
    grad_clip: float | None = 1.0,
    warmup: int = 0,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 50,
    part_of: Callable[[Batch], str] | None = None,
    eval_batches: Mapping[str, Batch] | None = None,
    eval_every: int = 0,
    progress: bool = True,
    desc: str = "train",
    run_key: Any = None,
) -> TrainResult:
    """Train ``params`` of ``model`` with AdamW for ``steps`` steps (default: the parameters that
    require grad, or all of them when none does, as on a loaded ``ModelHandle``).

    ``lr`` is constant after a linear ``warmup``; ``betas`` and ``eps`` are AdamW's (``eps`` is added to the
    root of each weight's running mean squared gradient, so gradients well below it move that weight little).
    During the call only the trained parameters require grad, no parameter holds a ``.grad`` from before, and the
    model is in train mode; all three are restored afterwards (each module's mode, each parameter's ``.grad``), also
    on error (the parameter values keep what was trained). See the module docstring for determinism, resume,
    ``grad_mask`` and the curves. ``run_key`` (JSON-able) names what else defines the run (e.g. a loss term's weight):
    a checkpoint of another ``run_key`` is refused like one of another ``lr``.

    Example:
        >>> from steerlab.models.tiny import tiny_model
        >>> h = tiny_model("llama")
        >>> w = h.model.model.norm.weight
        >>> keep = torch.zeros_like(w, dtype=torch.bool); keep[:4] = True
        >>> before = w.detach().clone()
        >>> _ = train(h.model, [h.tokenize(["a b c"])], params=[w], grad_mask={"model.norm.weight": keep},
        ...           steps=2, lr=0.1, seed=0, weight_decay=0.1, progress=False)
        >>> bool((w[4:] == before[4:]).all()), bool((w[:4] != before[:4]).any())
        (True, True)
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
        raise SpecError(f"steps={steps!r}; expected a positive integer")
    _check_positive("lr", lr)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise SpecError(f"seed={seed!r}; expected an integer")
    check_grad_clip(grad_clip)
    _check_positive("eps", eps)
    if (isinstance(weight_decay, bool) or not isinstance(weight_decay, int | float) or not math.isfinite(weight_decay)
            or weight_decay < 0):
        raise SpecError(f"weight_decay={weight_decay!r}; expected a finite number >= 0")
    if (not isinstance(betas, tuple | list) or len(betas) != 2
            or not all(isinstance(b, int | float) and not isinstance(b, bool) and 0 <= b < 1 for b in betas)):
        raise SpecError(f"betas={betas!r}; expected two numbers in [0, 1)")
    check_count("warmup", warmup, 0)
    check_count("checkpoint_every", checkpoint_every, 1)
    check_count("eval_every", eval_every, 0)
    named = dict(model.named_parameters())
    name_of = {id(p): n for n, p in named.items()}
    if params is None:  # a loaded ModelHandle freezes everything: then train everything
        chosen = [p for p in named.values() if p.requires_grad] or list(named.values())
    else:
        chosen = list(params)
    foreign = [tuple(p.shape) for p in chosen if id(p) not in name_of]
    if foreign:
        raise SpecError(
            f"params holds {len(foreign)} tensors not in the model (shapes {foreign[:3]}); expected its own"
        )
    names = list(dict.fromkeys(name_of[id(p)] for p in chosen))
    if not names:
        raise SpecError("params is empty; expected at least one parameter of the model to train")
    masks: dict[str, Tensor] = {}
    for n, m in (grad_mask or {}).items():
        if n not in names:
            raise SpecError(f"grad_mask names {n!r}, which is not trained; expected one of {names[:5]}")
        if tuple(m.shape) != tuple(named[n].shape) or m.dtype != torch.bool:
            raise SpecError(
                f"grad_mask[{n!r}] is {m.dtype} {tuple(m.shape)}; expected torch.bool {tuple(named[n].shape)}"
            )
        masks[n] = m.to(named[n].device)
    source = _Source(batches)
    loss_fn = loss_fn or lm_loss
    eval_batches = dict(eval_batches or {})
    ps = [named[n] for n in names]
    frozen = {n: named[n].detach().clone() for n in masks}
    opt = torch.optim.AdamW(ps, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    extra = [weight_decay, betas, grad_clip, warmup, sorted(masks)] + ([] if eps == ADAM_EPS else [{"eps": eps}])
    if masks:  # what the masks hold, not only which parameters they name: another mask is another run
        extra.append({n: hashlib.sha256(m.cpu().numpy().tobytes()).hexdigest()[:16] for n, m in sorted(masks.items())})
    extra += [] if run_key is None else [run_key]  # (a default eps leaves older checkpoints' fingerprints as they were)
    fp = _fingerprint(names, [tuple(p.shape) for p in ps], steps, lr, seed, extra)
    result = TrainResult(params=names)
    start = 0
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    digests: list[str] = []  # one per trained batch, kept in the checkpoint: a resume on other data is refused
    if ckpt is not None and (resolve_dir(ckpt) / "state.json").exists():
        start = _load_checkpoint(resolve_dir(ckpt), fp, named, names, opt, result, source, digests)
        result.resumed_from = start

    from tqdm.auto import tqdm

    before_grad = {n: p.requires_grad for n, p in named.items()}
    before_grads = {n: p.grad for n, p in named.items()}  # set aside: the caller's gradients are given back
    was_training = {m: m.training for m in model.modules()}  # per module: a submodule kept in eval stays so
    t0 = time.perf_counter()
    bar = tqdm(total=steps, initial=start, desc=desc, disable=not progress, mininterval=2.0)

    def evaluate(step: int) -> None:
        model.eval()
        with torch.no_grad():
            for part, b in eval_batches.items():
                for k, v in _terms(loss_fn(model, b), part)[1].items():
                    result.eval_losses.setdefault(k, []).append((step, float(v)))
        model.train()

    try:
        for p in named.values():
            p.grad = None
            p.requires_grad_(False)
        for p in ps:
            p.requires_grad_(True)
        model.train()
        if start == 0 and eval_batches:
            evaluate(0)
        for step in range(start, steps):
            batch = source.get(step)
            _check_batch(batch, step)
            if ckpt is not None:  # the digests are only kept in a checkpoint
                digests.append(_digest(batch))
            for g in opt.param_groups:
                g["lr"] = lr * min(1.0, (step + 1) / warmup) if warmup else lr
            with seeded_rng(derive_seed(seed, step)):
                part = str(part_of(batch)) if part_of is not None else "train"
                with torch.enable_grad():
                    loss, terms = _terms(loss_fn(model, batch), part)
                    if not torch.isfinite(loss):
                        raise SpecError(f"loss is {float(loss)} at step {step}; expected a finite loss (lower lr?)")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
            for n, m in masks.items():
                if named[n].grad is not None:
                    named[n].grad.mul_(m)
            if grad_clip is not None:
                nn.utils.clip_grad_norm_(ps, grad_clip)
            opt.step()
            with torch.no_grad():
                for n, m in masks.items():
                    named[n].copy_(torch.where(m, named[n], frozen[n]))
            for k, v in terms.items():
                result.losses.setdefault(k, []).append((step, float(v.detach())))
            done = step + 1
            result.steps = done
            if eval_batches and eval_every and (done % eval_every == 0 or done == steps):
                evaluate(done)
            elif eval_batches and done == steps:
                evaluate(done)
            if ckpt is not None and (done % checkpoint_every == 0 or done == steps):
                _save_checkpoint(ckpt, fp, named, names, opt, result, digests)
            bar.update(1)
            bar.set_postfix(loss=round(float(loss.detach()), 4), refresh=False)
        result.steps = steps
    finally:
        bar.close()
        opt.zero_grad(set_to_none=True)
        for n, p in named.items():
            p.requires_grad_(before_grad[n])
            p.grad = before_grads[n]
        for m, mode in was_training.items():
            m.training = mode
    result.seconds = time.perf_counter() - t0
    return result


def _save_checkpoint(
    ckpt: Path,
    fp: str,
    named: dict[str, nn.Parameter],
    names: list[str],
    opt: torch.optim.Optimizer,
    r: TrainResult,
    digests: list[str],
) -> None:
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    with atomic_dir(ckpt) as tmp:
        save_tensors_file(tmp / "params.safetensors", cpu_copies({n: named[n] for n in names}))
        (tmp / "optimizer.pt").write_bytes(buf.getvalue())
        (tmp / "state.json").write_text(json.dumps(
            {"fingerprint": fp, "step": r.steps, "batches": digests, "result": r.to_json()}
        ))


def _load_checkpoint(
    ckpt: Path,
    fp: str,
    named: dict[str, nn.Parameter],
    names: list[str],
    opt: torch.optim.Optimizer,
    r: TrainResult,
    source: _Source,
    digests: list[str],
) -> int:
    """Load the checkpoint into the parameters and the optimizer, after checking the run's fingerprint and
    that batches ``0 .. step-1`` are the ones it trained on (drawn here; ``digests`` gets theirs). Nothing
    is loaded when a check fails."""
    from safetensors.torch import load_file

    state = json.loads((ckpt / "state.json").read_text())
    if state.get("fingerprint") != fp:
        raise SpecError(
            f"checkpoint {ckpt} is of another run (fingerprint {state.get('fingerprint')}, this run {fp}); "
            "expected the same parameters, steps, lr, seed and optimizer settings, or a fresh checkpoint_dir"
        )
    step = int(state["step"])
    kept = state.get("batches")  # absent in checkpoints written before batches were kept: not checked
    for k in range(step):
        b = source.get(k)
        _check_batch(b, k)
        digests.append(_digest(b))
        if kept is not None and (k >= len(kept) or digests[k] != kept[k]):
            raise SpecError(
                f"checkpoint {ckpt} was trained on other data: batch {k} differs from the one it saw; "
                "expected the same batches in the same order, or a fresh checkpoint_dir"
            )
    tensors = load_file(str(ckpt / "params.safetensors"))
    with torch.no_grad():
        for n in names:
            named[n].copy_(tensors[n])
    opt.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
    loaded = TrainResult.from_json(state["result"])
    r.losses, r.eval_losses, r.steps = loaded.losses, loaded.eval_losses, loaded.steps
    return step
