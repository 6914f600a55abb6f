"""``intervene``: compile an intervention list once and run forwards, captures and generations with it.

The list is validated against the model before anything runs; parameter edits stay applied for
the whole block, under the engine's lock (another thread's calls wait for the block to end), and
are restored exactly on exit, also when the body raises. Activation edits and expert masks run
inside each call through the nnsight engine, whose hooks exist only during the call.
Calling ``h.model`` directly inside the block sees the parameter edits only.

Example:
    >>> import torch, steerlab as sl
    >>> from steerlab.interventions import AddVector
    >>> h = sl.load("shared:stories260K")
    >>> steer = [AddVector(site="blocks.2.resid_post", vector=torch.randn(64), scale=4.0)]
    >>> with sl.intervene(h, steer) as run:
    ...     steered = run.forward(["Once upon a time"])
    ...     text = run.generate(["Once upon a time"], max_new_tokens=4).texts[0]
    >>> bool((steered != sl.forward(h, ["Once upon a time"])).any())
    True
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from steerlab.activations import Capture, capture
from steerlab.engines import engine_for
from steerlab.errors import SteerlabError
from steerlab.generation import GenerationResult, forward, generate
from steerlab.interventions.compile import Plan, compile_plan
from steerlab.interventions.spec import InterventionSet, as_set
from steerlab.interventions.weights import param_edits
from steerlab.models.handle import ModelHandle


@dataclass
class InterventionContext:
    """A validated intervention list bound to one model; ``forward``/``generate``/``capture`` use it."""

    handle: ModelHandle
    interventions: InterventionSet  # activation edits and expert masks (parameter edits are applied by the block)
    record: list[str]
    closed: bool = False  # set when the ``with`` block ends: its weight edits are gone, so calls would lie

    def plan(self, record: list[str] | None = None) -> Plan:
        """The compiled plan for one call, recording ``record`` on top of the block's own sites."""
        self._check_open()
        return compile_plan(self.handle, self.interventions, self.record + list(record or []))

    def _check_open(self) -> None:
        if self.closed:
            raise SteerlabError(
                "this intervene() block has ended and its weight edits are restored; expected calls inside the "
                "`with` block (or pass interventions= to sl.forward / sl.generate / sl.capture)"
            )

    def forward(self, inputs: Any, record: list[str] | None = None, **kwargs: Any) -> Any:
        """:func:`steerlab.forward` with these interventions."""
        return forward(self.handle, inputs, plan=self.plan(record), **kwargs)

    def generate(self, prompts: Any, record: list[str] | None = None, **kwargs: Any) -> GenerationResult:
        """:func:`steerlab.generate` with these interventions."""
        return generate(self.handle, prompts, plan=self.plan(record), **kwargs)

    def capture(self, prompts: Any, sites: list[str], **kwargs: Any) -> Capture:
        """:func:`steerlab.capture` with these interventions."""
        self._check_open()
        return capture(self.handle, prompts, sites, interventions=self.interventions, **kwargs)


@contextmanager
def intervene(
    handle: ModelHandle, interventions: Any = None, *, record: list[str] | None = None
) -> Iterator[InterventionContext]:
    """Validate ``interventions`` once and yield a context whose calls run with them.

    ``interventions``: an :class:`InterventionSet`, a list of intervention models or dicts, or a
    path to a saved spec. ``record``: sites recorded by every call made through the context.
    """
    ivs = as_set(interventions)
    plan = compile_plan(handle, ivs, record)  # validates everything before the model is touched
    # every weight edit (ParamEdit, RegionEdit, any type of kind "weights") is applied once, by this block; the
    # calls made through it re-apply only the rest (a weight edit re-applied per call would compose with itself)
    activation = InterventionSet([iv for iv in ivs if iv.kind != "weights"])
    # the engine's lock is held for the whole block: another thread's run never sees the edited weights
    ctx = InterventionContext(handle, activation, list(record or []))
    try:
        with engine_for(handle).lock, param_edits(plan.editors):
            yield ctx
    finally:
        ctx.closed = True
