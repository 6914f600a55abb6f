"""The two stages of Zhou et al. (2024), on :func:`steerlab.training.train`.

Stage 1, :func:`train_vector`: only the vector trains, on harmful prompt/response pairs, until the model
with the vector on produces those responses (base weights frozen). Stage 2, :func:`finetune`: the base
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

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from steerlab.atomic import atomic_dir
from steerlab.errors import SpecError
from steerlab.models.handle import ModelHandle
from steerlab.security.data import Pair, batches_of, encode, summary
from steerlab.security.vectors import SecurityVector, VectorConfig, data_hash, new_vector
from steerlab.training import TrainResult, train


def _steps(batches: list, steps: int | None) -> int:
    return len(batches) if steps is None else steps


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
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
) -> tuple[SecurityVector, TrainResult]:
    """Stage 1: a new vector for ``h`` trained on ``harmful`` pairs (``steps`` default: ``epochs`` passes)."""
    harmful = list(harmful)
    if not harmful:
        raise SpecError("the harmful set is empty; expected at least one harmful prompt/response pair")
    config.check()
    batches = batches_of(h, harmful, batch_size, epochs, seed)
    v = new_vector(h, config, seed=seed, card={"data_hash": data_hash(harmful), "data": summary(harmful)})
    with v.on(h, trainable=True) as params:
        res = train(
            h.model,
            batches,
            params=params,
            steps=_steps(batches, steps),
            lr=lr,
            seed=seed,
            part_of=lambda b: b["part"],
            eval_batches={"harmful": encode(h, harmful[:batch_size])},
            eval_every=max(1, _steps(batches, steps) // 10),
            checkpoint_dir=checkpoint_dir,
            progress=progress,
            desc="security vector",
        )
    v.card["train"] = {
        "steps": res.steps,
        "lr": lr,
        "seed": seed,
        "batch_size": batch_size,
        "epochs": epochs,
        "final_eval_loss": res.eval_losses["harmful"][-1][1],
    }
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
    eval_pairs: dict[str, Sequence[Pair]] | None = None,
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
) -> TrainResult:
    """Stage 2: full fine-tuning of ``h`` on ``pairs`` with ``vector`` (if any) on and frozen.

    ``h.model`` is trained in place; the vector is off when this returns. ``eval_pairs={part: pairs}``
    are scored (with the vector on, as training sees them) at step 0, every tenth of the run and at the end.
    """
    pairs = list(pairs)
    batches = batches_of(h, pairs, batch_size, epochs, seed)
    n = _steps(batches, steps)
    evals = {k: encode(h, list(v)[:batch_size]) for k, v in (eval_pairs or {}).items() if v}
    kw: dict[str, Any] = dict(
        steps=n,
        lr=lr,
        seed=seed,
        weight_decay=weight_decay,
        part_of=lambda b: b["part"],
        eval_batches=evals,
        eval_every=max(1, n // 10),
        checkpoint_dir=checkpoint_dir,
        progress=progress,
        desc="fine-tune" + (" (vector on)" if vector is not None else ""),
    )
    if vector is None:
        return train(h.model, batches, params=list(h.model.parameters()), **kw)
    with vector.on(h, trainable=False) as vparams:
        ids = {id(p) for p in vparams}
        base = [p for p in h.model.parameters() if id(p) not in ids]
        return train(h.model, batches, params=base, **kw)


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
