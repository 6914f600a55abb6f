"""The nnsight engine: runs a compiled :class:`~steerlab.interventions.compile.Plan` on the plain
Hugging Face model through an ``nnsight.TransformersModel`` trace.

Each forward (one per generation step, KV cache included) visits the plan's modules in forward
order: it reads the value there, applies the compiled edits, writes the result back and records
what was asked. nnsight registers its hooks only for the run and removes them afterwards, also
when an edit raises; parameter edits are restored in a ``finally``. An empty plan bypasses
nnsight altogether, so an unsteered run is the bare model.

Example:
    >>> import steerlab as sl
    >>> from steerlab.interventions.compile import compile_plan
    >>> h = sl.load("shared:stories260K")
    >>> enc = h.tokenize(["Once upon a time"])
    >>> plan = compile_plan(h, record=["blocks.0.resid_post"])
    >>> logits, recs = NNsightEngine(h).forward(enc, plan)
    >>> recs["blocks.0.resid_post"][0].shape
    torch.Size([1, 5, 64])
"""

from __future__ import annotations

import threading
import warnings
from collections import defaultdict
from typing import Any

import torch
from torch import Tensor

from steerlab.engines.base import Records, register_engine
from steerlab.interventions.compile import Plan, Visit, record_value
from steerlab.interventions.positions import StepState
from steerlab.interventions.weights import param_edits
from steerlab.models.handle import ModelHandle


def _element(value: Any, element: int | None) -> Any:
    if element is not None:
        return value[element]
    return value[0] if isinstance(value, tuple) else value


def _replace(value: Any, element: int | None, new: Tensor) -> Any:
    if element is not None:
        return (*value[:element], new, *value[element + 1 :])
    if isinstance(value, tuple):
        return (new, *value[1:])
    return new


def _seq_len(v: Visit, t: Any, batch: int) -> int:
    x = t[0] if v.is_router else t
    return int(x.shape[1]) if x.ndim == 3 else int(x.shape[0]) // max(batch, 1)


@register_engine("nnsight")
class NNsightEngine:
    """Runs plans on one handle's model through nnsight (one wrapper per handle, built lazily)."""

    name = "nnsight"

    def __init__(self, handle: ModelHandle) -> None:
        self.handle = handle
        self.lock = threading.RLock()
        self._lm: Any = None
        self._key: tuple = ()
        self._gen_out: dict[str, Any] = {}

    @property
    def lm(self) -> Any:
        """The ``nnsight.TransformersModel`` over a twin of the handle's model (same weights, own modules).

        nnsight replaces every module's ``forward`` with its controller; doing that on a twin keeps
        ``handle.model`` the plain Hugging Face model for unsteered runs and for users' own code.
        """
        key = self.handle.tensors_key()
        if self._lm is None or key != self._key:  # a tensor of the model was replaced: rebuild the twin
            from nnsight.modeling.transformers import TransformersModel

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                lm = TransformersModel(self.handle.twin(), tokenizer=self.handle.tokenizer)
            # generate's return value passes through nnsight's own Generator module; keep it there,
            # so it is available even when generation stops early (all rows at EOS)
            lm.generator._module.register_forward_hook(lambda m, a, out: self._gen_out.__setitem__("out", out))
            self._lm, self._key = lm, key
        return self._lm

    # -- the per-forward body --------------------------------------------------------------------
    def _visit(self, envoys: list[Any], plan: Plan, state: StepState, step: int, sink: Records) -> None:
        first = True
        for v, env in zip(plan.visits, envoys, strict=True):
            value = env.input if v.kind == "input" else env.output
            t = value if v.is_router else _element(value, v.element)
            if first:
                state.at_step(step, _seq_len(v, t, state.batch))
                first = False
            if v.scale != 1.0:
                t = t * v.scale
            new = v.apply(t, state)
            if new is not None:
                raw = new / v.scale if v.scale != 1.0 else new
                if v.kind == "input":
                    env.input = raw
                else:
                    env.output = raw if v.is_router else _replace(value, v.element, raw)
                t = new
            if v.records:
                record_value(v, t, state, sink)

    def _envoys(self, plan: Plan) -> list[Any]:
        lm = self.lm
        return [lm.get(v.path) for v in plan.visits]

    # -- public runs ---------------------------------------------------------------------------
    def forward(self, enc: dict[str, Tensor], plan: Plan, **kwargs: Any) -> tuple[Any, Records]:
        """One forward pass with the plan; returns ``(model output, records)``."""
        model = self.handle.model
        sink: Records = defaultdict(list)
        with self.lock, param_edits(plan.editors), torch.no_grad():
            if not plan.visits:
                return model(**enc, **kwargs), sink
            state = StepState.start(enc.get("attention_mask"), enc["input_ids"].shape[1], enc["input_ids"].shape[0])
            lm = self.lm
            envoys = self._envoys(plan)
            box: dict[str, Any] = {}
            with lm.trace(dict(enc), **kwargs):
                self._visit(envoys, plan, state, 0, sink)
                box["out"] = lm.output.save()
            return box["out"], sink

    def generate(self, enc: dict[str, Tensor], plan: Plan, **generate_kwargs: Any) -> tuple[Any, Records]:
        """Hugging Face ``generate`` (KV cache, left padding, stopping) with the plan at every step."""
        model = self.handle.model
        sink: Records = defaultdict(list)
        with self.lock, param_edits(plan.editors), torch.no_grad():
            if not plan.visits:
                return model.generate(**enc, **generate_kwargs), sink
            state = StepState.start(enc.get("attention_mask"), enc["input_ids"].shape[1], enc["input_ids"].shape[0])
            lm = self.lm
            envoys = self._envoys(plan)
            self._gen_out.clear()
            with warnings.catch_warnings():
                # an open `tracer.all()` loop ends at the last step the run makes; nnsight warns about
                # the step it never reached, which is expected here
                warnings.filterwarnings("ignore", message=".*was never reached.*")
                with lm.generate(dict(enc), **generate_kwargs) as tracer:
                    for step in tracer.all():
                        self._visit(envoys, plan, state, step, sink)
            out = self._gen_out.pop("out")
            return out, sink
