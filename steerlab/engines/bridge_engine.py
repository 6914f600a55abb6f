"""The TransformerLens 4 bridge engine: records sites through ``TransformerBridge.run_with_cache``.

It runs no interventions (a plan with any raises :class:`SpecError`); it exists to cross-check the
nnsight engine's records and to hand TL users a bridge over the very same weights.

Example:
    >>> import steerlab as sl
    >>> from steerlab.engines import engine_for
    >>> from steerlab.interventions.compile import compile_plan
    >>> h = sl.load("shared:stories260K")
    >>> _, recs = engine_for(h, "bridge").forward(h.tokenize(["Once upon a time"]),
    ...                                            compile_plan(h, record=["blocks.0.resid_post"]))
    >>> recs["blocks.0.resid_post"][0].shape
    torch.Size([1, 5, 64])
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any

import torch
from torch import Tensor

from steerlab.engines.base import Records, position_ids, register_engine
from steerlab.errors import SpecError, SteerlabError
from steerlab.interventions.compile import Plan
from steerlab.models.handle import ModelHandle
from steerlab.models.sites import tl_hook_name


@register_engine("bridge")
class BridgeEngine:
    """Records a plan's sites through a TransformerLens ``TransformerBridge`` (built lazily)."""

    name = "bridge"

    def __init__(self, handle: ModelHandle) -> None:
        self.handle = handle
        self.lock = threading.RLock()
        self._bridge: Any = None
        self._key: object | None = None  # handle.tensors_key() when the twin was built

    @property
    def bridge(self) -> Any:
        """A ``TransformerBridge`` over this model's weights (shared, not copied).

        The bridge wraps modules in place, so it is built on the handle's twin, whose parameters and
        buffers are the very tensors of ``handle.model``; it is rebuilt when one of them is replaced or a module of
        ``handle.model`` is swapped for another.
        """
        key = self.handle.tensors_key()
        if self._bridge is None or self._key is None or key != self._key:
            from transformer_lens.model_bridge import TransformerBridge

            h = self.handle
            twin = h.twin()
            if not getattr(twin.config, "architectures", None):  # the bridge picks its adapter by this name
                twin.config.architectures = [type(twin).__name__]
            self._bridge = TransformerBridge.boot_transformers(
                h.spec, hf_model=twin, device=str(h.device), tokenizer=h.tokenizer, dtype=h.dtype
            )
            self._key = key
        return self._bridge

    def forward(self, enc: dict[str, Tensor], plan: Plan, **kwargs: Any) -> tuple[Any, Records]:
        """Logits and the plan's recorded sites, ``[batch, seq, ...]``, one entry per site."""
        if plan.n_interventions:
            raise SpecError("the bridge engine records activations only; run interventions on the nnsight engine")
        names = {s: tl_hook_name(s) for s in plan.records}
        with self.lock, torch.no_grad():
            bridge = self.bridge
            missing = [n for n in names.values() if n not in bridge.hook_dict]
            if missing:
                raise SteerlabError(
                    f"the TransformerBridge of {self.handle.spec!r} has no hooks {missing}; use engine='nnsight'"
                )
            logits, cache = bridge.run_with_cache(
                enc["input_ids"],
                attention_mask=enc["attention_mask"],
                position_ids=position_ids(enc["attention_mask"]),
                names_filter=list(names.values()),
            )
        batch, seq = enc["input_ids"].shape
        out: Records = defaultdict(list)
        for s, n in names.items():
            t = cache[n]
            out[s].append(t.reshape(batch, seq, -1) if t.ndim == 2 else t)
        return logits, out

    def generate(self, enc: dict[str, Tensor], plan: Plan, **generate_kwargs: Any) -> tuple[Any, Records]:
        raise SteerlabError("the bridge engine does not generate; use the nnsight engine")
