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


    # -- the remote path (see remote_program below) ----------------------------------------------
    def generate_remote(
        self, enc: dict[str, Tensor], interventions: Any = None, *, remote: bool | str = "local",
        max_new_tokens: int = 16, **generate_kwargs: Any
    ) -> Tensor:
        """Greedy generation of exactly ``max_new_tokens`` tokens (no stop at EOS) with ``interventions``
        through nnsight's remote path: ``remote=True`` ships the run to NDIF (a model it hosts, the key
        in nnsight's config), ``"local"`` runs nnsight's serialize -> deserialize -> execute path here.
        Returns the sequences ``[batch, prompt + max_new_tokens]``."""
        import sys

        import nnsight

        from steerlab.interventions import ops
        from steerlab.models.adapters import routing

        program = remote_program(self.handle, interventions, enc, max_new_tokens)
        for module in (ops, routing, sys.modules[__name__]):  # shipped by value (source), never imported there
            nnsight.register(module)
        route = routing.route
        lm = self.lm
        kw = {"do_sample": False, "eos_token_id": [], "pad_token_id": self.handle.tokenizer.pad_token_id,
              **generate_kwargs}
        with self.lock, torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with lm.generate(dict(enc), max_new_tokens=max_new_tokens, remote=remote, **kw) as tracer:
                for step in tracer.iter[:max_new_tokens]:
                    _remote_step(lm, program, step, route)
                out = tracer.result.save()
        return out.sequences if hasattr(out, "sequences") else out


# -- the remote path (NDIF) ----------------------------------------------------------------------
# nnsight ships a traced block to NDIF as source plus the values it references, and the server runs
# it with an import whitelist (torch, numpy, einops, math, collections, ...). So nothing of steerlab
# runs there: `remote_program` compiles an intervention list, before the trace, into plain data
# (module paths, tensors, per-step position masks) and `_remote_step`, which touches only torch and
# that data, applies it. The pure tensor functions of `steerlab.interventions.ops` and the routing
# rule (`route`) ship by value (their module registered with nnsight, source only).
def _remote_masks(positions: Any, attention_mask: Tensor, prompt_len: int, n_steps: int) -> list[Any]:
    """The position mask of each step (``None``: all, ``False``: none, else ``[batch, seq]``), as a list."""
    state = StepState.start(attention_mask, prompt_len, attention_mask.shape[0])
    return [state.at_step(s, prompt_len if s == 0 else 1).mask(positions, attention_mask.device)
            for s in range(n_steps + 1)]


def _event_order(model: torch.nn.Module) -> dict[tuple[str, str], int]:
    """(module path, "input"/"output") -> when it happens in a forward: a module's input is read
    when it is entered, its output when it is left (registration order = execution order)."""
    order: dict[tuple[str, str], int] = {}

    def walk(name: str, m: torch.nn.Module) -> None:
        order[(name, "input")] = len(order)
        for child, sub in m.named_children():
            walk(f"{name}.{child}" if name else child, sub)
        order[(name, "output")] = len(order)

    walk("", model)
    return order


def remote_program(h: ModelHandle, interventions: Any, enc: dict[str, Tensor], n_steps: int) -> list[dict]:
    """Compile ``interventions`` for ``enc`` into plain data for :func:`_remote_step` (see above).

    Activation edits (any site, any positions) and expert masks (all positions) compile; a parameter
    edit raises :class:`SpecError`: it would change weights that every user of a hosted model shares.
    """
    from steerlab.errors import SpecError
    from steerlab.interventions import ops
    from steerlab.interventions.compile import compile_plan
    from steerlab.interventions.routing import ExpertMask, MergedMask
    from steerlab.interventions.spec import as_set

    ivs = as_set(interventions)
    compile_plan(h, ivs)  # validates everything against the model first
    paths = {id(m): name for name, m in h.model.named_modules()}
    order = _event_order(h.model)
    mask, prompt_len = enc["attention_mask"], enc["input_ids"].shape[1]
    visits: dict[tuple[str, str], dict] = {}

    def visit(ref: Any, router: bool = False) -> dict:
        key = (paths[id(ref.module)], ref.kind)
        if key not in visits:
            visits[key] = {"path": key[0], "kind": ref.kind, "element": None if router else ref.element,
                           "scale": ref.scale, "router": router, "ops": []}
        return visits[key]

    masks: dict[str, list[tuple[int, ExpertMask]]] = {}
    mid_ops: dict[int, list[tuple]] = {}
    for i, iv in enumerate(ivs):
        if iv.kind == "weights":
            raise SpecError(f"intervention {i} ({iv.type}): parameter edits cannot run remotely; they would "
                            "change weights that every user of a hosted model shares")
        if iv.kind == "routing":
            if iv.positions != "all":
                raise SpecError(f"intervention {i} ({iv.type}): remote expert masks act at all positions, "
                                f"got positions={iv.positions!r}")
            masks.setdefault(str(iv.layer), []).append((i, iv))
            continue
        ref = h.site(iv.site)
        sel = _remote_masks(iv.positions, mask, prompt_len, n_steps)
        dt = h.dtype
        if iv.type == "add_vector":
            op = ("add", ops.add_vector, (iv.vector.to(h.device, dt), iv.scale), sel)
        elif iv.type == "project_out":
            op = ("fn", ops.project_out, (iv.direction.to(h.device, dt),), sel)
        elif iv.type == "scale_units":
            op = ("fn", ops.scale_units, (torch.tensor(iv.units, dtype=torch.long, device=h.device), iv.scale), sel)
        elif iv.type == "patch" and iv.value.ndim == 2:
            ops_ = [("fn", ops.patch, (row.to(h.device, dt),), _remote_masks([p], mask, prompt_len, n_steps))
                    for row, p in zip(iv.value, iv.positions, strict=True)]
            op = ("many", None, tuple(ops_), sel)
        elif iv.type == "patch":
            op = ("fn", ops.patch, (iv.value.to(h.device, dt),), sel)
        else:
            raise SpecError(f"intervention {i}: type {iv.type!r} has no remote form yet")
        if ref.component == "resid_mid":
            mid_ops.setdefault(ref.layer, []).append(op)
        else:
            visit(ref)["ops"].append(op)
    for layer, ops_list in mid_ops.items():  # mid = pre + attn: edit attn so that the sum is edited
        attn = visit(h.site(f"blocks.{layer}.attn_out"))
        if all(op[0] == "add" for op in ops_list):
            attn["ops"].extend(ops_list)
            continue
        visit(h.site(f"blocks.{layer}.resid_pre"))["ops"].insert(0, ("keep", None, (layer,), None))
        attn["ops"].append(("mid", None, (layer, ("many", None, tuple(ops_list), None)), None))
    for layer, numbered in masks.items():
        L = int(layer)
        merged = MergedMask.of([m for _, m in numbered])
        parts = h.adapter.layers[L]
        n = parts.rule.n_experts

        def flags(idx: Any, n: int = n) -> Tensor | None:
            if not idx:
                return None
            t = torch.zeros(n, dtype=torch.bool, device=h.device)
            t[sorted(idx)] = True
            return t

        scale = None
        if merged.scale:
            scale = torch.ones(n, dtype=torch.float32, device=h.device)
            for e, s in merged.scale.items():
                scale[e] = s
        bias = h.adapter.router_bias(parts.router)
        args = (parts.rule, flags(merged.off), flags(merged.on), None if bias is None else bias.detach().clone(),
                scale, merged.renormalize)
        visit(h.site(f"blocks.{L}.moe.router_logits"), router=True)["ops"].append(("route", None, args, None))
    return sorted(visits.values(), key=lambda v: order[(v["path"], v["kind"])])


def _remote_step(lm: Any, program: list[dict], step: int, route: Any) -> None:
    """Apply a :func:`remote_program` at generation step ``step`` (plain torch: runs inside the trace)."""
    kept: dict[int, Any] = {}

    def run(op: Any, x: Any) -> Any:
        name, fn, args, sel = op
        if name == "keep":
            kept[args[0]] = x
            return x
        if name == "mid":
            pre = kept.pop(args[0])
            return run(args[1], pre + x) - pre
        if name == "many":
            for sub in args:
                x = run(sub, x)
            return x
        m = sel[step] if step < len(sel) else sel[-1]
        if m is False:
            return x
        if name == "add":
            return fn(x, args[0], args[1], m)
        return fn(x, *args, m)

    for v in program:
        env = lm.get(v["path"])
        value = env.input if v["kind"] == "input" else env.output
        if v["router"]:
            for _name, _, (rule, off, on, bias, scale, renorm), _ in v["ops"]:
                w, idx = route(rule, value[0], off=off, on=on, bias=bias, gate_scale=scale, renormalize=renorm)
                value = (value[0], w.to(value[1].dtype), idx, *value[3:])
            env.output = value
            continue
        el = v["element"]
        t = value[el] if el is not None else (value[0] if isinstance(value, tuple) else value)
        if v["scale"] != 1.0:
            t = t * v["scale"]
        new = t
        for op in v["ops"]:
            new = run(op, new)
        if new is t:
            continue
        raw = new / v["scale"] if v["scale"] != 1.0 else new
        if v["kind"] == "input":
            env.input = raw
        elif el is not None:
            env.output = (*value[:el], raw, *value[el + 1:])
        elif isinstance(value, tuple):
            env.output = (raw, *value[1:])
        else:
            env.output = raw
