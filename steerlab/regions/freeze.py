"""Freeze-region training: further training on one language with the core region held fixed, against
unfrozen training and a random region (same per-matrix counts) held fixed.

Each variant starts from the same weights and runs the shared loop (:func:`steerlab.training.train`, same
seed, batches and steps); the held region is gradient-masked (bit-identical after training). Every
language's held-out loss is tracked at step 0, every ``eval_every`` steps and at the end; *forgetting* is
the rise of the mean held-out loss of the languages not trained on. The weights are restored after each
variant, also on error.

Example:
    >>> import steerlab as sl
    >>> from steerlab.regions.importance import score_importance
    >>> h = sl.load("shared:stories260K")
    >>> imp = score_importance(h, ["eng", "deu"], token_budget=128, progress=False)
    >>> res = freeze_train(h, imp, "deu", ["eng"], steps=2, eval_every=1, progress=False)
    >>> sorted(res.curves)
    ['core-frozen', 'random-frozen', 'unfrozen']
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from steerlab.errors import SpecError
from steerlab.interventions.regions import model_signature
from steerlab.models.handle import ModelHandle
from steerlab.regions.corpus import corpus_texts, token_batches
from steerlab.regions.importance import Importance
from steerlab.regions.select import Region, core_region, random_region
from steerlab.training import train
from steerlab.values import check_count


@dataclass
class FreezeResult:
    """Held-out loss curves per variant and language, and the forgetting of each variant."""

    train_lang: str
    languages: list[str]
    curves: dict[str, dict[str, list[list[float]]]] = field(default_factory=dict)  # variant -> lang -> [[step, loss]]
    train_losses: dict[str, list[list[float]]] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Per variant: change of the trained language's held-out loss, and forgetting (mean rise of the others')."""
        out: dict[str, Any] = {}
        for v, c in self.curves.items():
            others = [c[lang][-1][1] - c[lang][0][1] for lang in self.languages if lang != self.train_lang]
            out[v] = {
                "trained_delta": c[self.train_lang][-1][1] - c[self.train_lang][0][1],
                "forgetting": statistics.fmean(others) if others else None,
            }
        fr = {v: s["forgetting"] for v, s in out.items()}
        if all(x is not None for x in fr.values()):
            out["core_forgets_least"] = fr["core-frozen"] < min(fr["unfrozen"], fr["random-frozen"])
        return out


def _mask(h: ModelHandle, region: Region) -> dict[str, torch.Tensor]:
    """``True`` where an entry may train: everything outside ``region``."""
    named = dict(h.model.named_parameters())
    out = {}
    for n, idx in region.indices.items():
        m = torch.ones(named[n].numel(), dtype=torch.bool)
        m[idx.long()] = False
        out[n] = m.view(named[n].shape)
    return out


def freeze_train(
    h: ModelHandle,
    imp: Importance,
    train_lang: str,
    other_langs: Sequence[str],
    *,
    fraction: float = 0.01,
    scope: str = "layers",
    steps: int = 100,
    lr: float = 1e-3,
    seed: int = 0,
    random_seed: int = 0,
    batch_size: int = 8,
    max_len: int = 64,
    n_eval: int = 16,
    eval_every: int = 10,
    progress: bool = True,
) -> FreezeResult:
    """Train on ``train_lang``'s score corpus for ``steps`` steps three times (core region frozen, nothing
    frozen, a random region frozen) and track every language's held-out loss; see the module docstring."""
    if imp.signature != model_signature(h):
        raise SpecError(f"importance made for {imp.model!r}; {h.spec!r} is another model")
    for name, value, least in (("steps", steps, 1), ("n_eval", n_eval, 1), ("random_seed", random_seed, 0),
                               ("seed", seed, 0), ("eval_every", eval_every, 0)):
        check_count(name, value, least)  # named here: the token budget and batch size are made from them
    langs = list(dict.fromkeys([train_lang, *other_langs]))
    texts = corpus_texts(train_lang, "score")
    batches = list(token_batches(h, texts, token_budget=steps * batch_size * max_len, batch_size=batch_size,
                                 max_len=max_len))  # fmt: skip
    evals = {
        lang: next(
            iter(
                token_batches(
                    h, corpus_texts(lang, "eval", n=n_eval), token_budget=10**9, batch_size=n_eval, max_len=max_len
                )
            )
        )  # fmt: skip
        for lang in langs
    }
    variants = {
        "core-frozen": _mask(h, core_region(imp, fraction, scope)),
        "unfrozen": {},
        "random-frozen": _mask(h, random_region(imp, fraction, random_seed, scope)),
    }
    res = FreezeResult(train_lang, langs, config={
        "fraction": fraction, "scope": scope, "steps": steps, "lr": lr, "seed": seed, "random_seed": random_seed,
        "batch_size": batch_size, "max_len": max_len, "n_eval": n_eval, "eval_every": eval_every, "model": h.spec,
        "train_batches": len(batches)})  # fmt: skip
    saved = {n: p.detach().clone() for n, p in h.model.named_parameters()}
    try:
        for name, mask in variants.items():
            r = train(h.model, batches, steps=steps, lr=lr, seed=seed, grad_mask=mask or None, eval_batches=evals,
                      eval_every=eval_every, progress=progress, desc=f"train {name}")  # fmt: skip
            res.curves[name] = {k: [[s, v] for s, v in c] for k, c in r.eval_losses.items()}
            res.train_losses[name] = [[s, v] for s, v in r.losses.get("train", [])]
            with torch.no_grad():
                for n, p in h.model.named_parameters():
                    p.copy_(saved[n])
    finally:
        with torch.no_grad():
            for n, p in h.model.named_parameters():
                p.copy_(saved[n])
    return res
