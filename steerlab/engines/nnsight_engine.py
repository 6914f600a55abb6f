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
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from steerlab.engines.base import Records, register_engine
from steerlab.interventions.compile import Plan, Visit, record_value
from steerlab.interventions.positions import StepState
from steerlab.interventions.weights import param_edits
from steerlab.models.handle import ModelHandle


def _define_anyio_classes() -> None:
    """Define anyio's lazily defined classes with no ``.save`` on every object. nnsight, when imported, mounts
    ``.save`` onto every object, and anyio rejects any subclass of its ``TypedAttributeSet`` with an
    unannotated public attribute; anyio 4 defines those classes only when first used, so after the mount they
    fail ("Attribute 'save' is missing its type annotation"): every streamed server answer failed once an
    activation intervention had run. Called before this module can import nnsight; if nnsight is already
    imported, its mount is lifted for the moment these classes take to define. Never raises."""

    def define() -> None:
        import anyio._backends._asyncio  # noqa: F401  (defines anyio.abc's SocketAttribute on the way)
        import anyio.streams.file  # noqa: F401
        import anyio.streams.tls  # noqa: F401

    try:
        try:
            define()
            return
        except TypeError:  # nnsight was imported first: lift its mount while anyio defines them
            import nnsight
            from nnsight._c import mount, unmount

            unmount("save")
            try:
                define()
            finally:
                mount(nnsight.save, "save")
    except Exception:  # noqa: BLE001 - anyio absent, or an nnsight without the mount: nothing to do
        pass


_define_anyio_classes()


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


def _plain_forward_controllers(root: torch.nn.Module) -> list[tuple[torch.nn.Module, Any]]:
    """``(module, controller)`` for every module under ``root`` whose nnsight controller would run the
    class's own ``forward`` (not an accelerate or tensor-parallel wrapper, a forward set on the instance,
    or a sourced forward): the modules :func:`_handoffs_only_at` may hand back their plain forward."""
    from nnsight.intervention.source import Controller

    out = []
    for m in root.modules():
        fwd = m.__dict__.get("forward")
        if isinstance(fwd, Controller) and fwd.state.body is type(m).forward and not fwd.state.sourced:
            out.append((m, fwd))
    return out


@contextmanager
def _handoffs_only_at(keep: set[int], candidates: list[tuple[torch.nn.Module, Any]]) -> Iterator[int]:
    """Run with nnsight's handoff only on the modules in ``keep`` (ids); yields how many were bypassed.

    nnsight installs its controller as the ``forward`` of every module it wraps: inside a trace each
    call then passes the input, a skip gate and the output through the interleaver (three handoffs),
    whether anything waits there or not. A plan reads and writes a handful of modules; for the run,
    every other module whose controller would run the class's own ``forward`` gets that ``forward``
    back (the controller is taken out of the instance ``__dict__``), so it computes exactly what the
    controller would, without the handoffs. Everything is put back on exit, also when the run raises.
    ``candidates``: :func:`_plain_forward_controllers` of the model, computed once per twin (a module whose
    ``forward`` is no longer that controller is left alone).
    """
    bypassed: list[tuple[torch.nn.Module, Any]] = []
    try:
        for m, fwd in candidates:
            if id(m) not in keep and m.__dict__.get("forward") is fwd:
                del m.__dict__["forward"]
                bypassed.append((m, fwd))
        yield len(bypassed)
    finally:
        for m, fwd in bypassed:
            m.__dict__["forward"] = fwd


def _normal(x: Any) -> Any:
    """``x`` with every inference-mode tensor in it (also inside a ``ModelOutput``, tuple, list or dict)
    replaced by a normal copy; other values as they are."""
    if isinstance(x, Tensor):
        return x.clone() if x.is_inference() else x
    if isinstance(x, dict):  # ModelOutput is a dict: set its fields in place, keep its class
        for k in list(x.keys()):
            x[k] = _normal(x[k])
        return x
    if isinstance(x, tuple | list):
        return type(x)(_normal(v) for v in x)
    return x


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
        self._key: object | None = None  # handle.tensors_key() when the twin was built
        self._gen_out: dict[str, Any] = {}
        self._candidates: list[tuple[torch.nn.Module, Any]] = []

    @property
    def lm(self) -> Any:
        """The ``nnsight.TransformersModel`` over a twin of the handle's model (same weights, own modules).

        nnsight replaces every module's ``forward`` with its controller; doing that on a twin keeps
        ``handle.model`` the plain Hugging Face model for unsteered runs and for users' own code.
        """
        key = self.handle.tensors_key()
        if self._lm is None or self._key is None or key != self._key:  # a tensor or module was swapped: rebuild
            from nnsight.modeling.transformers import TransformersModel

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                lm = TransformersModel(self.handle.twin(), tokenizer=self.handle.tokenizer)
            # generate's return value passes through nnsight's own Generator module; keep it there,
            # so it is available even when generation stops early (all rows at EOS)
            lm.generator._module.register_forward_hook(lambda m, a, out: self._gen_out.__setitem__("out", out))
            self._lm, self._key = lm, key
            self._candidates = _plain_forward_controllers(lm._module)
        return self._lm

    # -- the per-forward body --------------------------------------------------------------------
    def _visit(self, envoys: list[Any], plan: Plan, state: StepState, step: int, sink: Records) -> None:
        first = True
        for v, env in zip(plan.visits, envoys, strict=True):
            value = env.input if v.kind == "input" else env.output
            t = value if v.is_router else _element(value, v.element)
            n = _seq_len(v, t, state.batch)
            if first:
                state.at_step(step, n)
                first = False
            st = state.window(n)  # the logits during generation: the forward's last position(s) only
            if v.scale != 1.0:
                t = t * v.scale
            new = v.apply(t, st)
            if new is not None:
                raw = new / v.scale if v.scale != 1.0 else new
                if v.kind == "input":
                    env.input = raw
                else:
                    env.output = raw if v.is_router else _replace(value, v.element, raw)
                t = new
            if v.records:
                record_value(v, t, st, sink)

    def _envoys(self, plan: Plan, lm: Any) -> list[Any]:
        return [lm.get(v.path) for v in plan.visits]

    def _handoffs(self, envoys: list[Any], lm: Any) -> Any:
        """:func:`_handoffs_only_at` the plan's modules (and nnsight's own root and generator)."""
        keep = {id(e._module) for e in envoys} | {id(lm._module), id(lm.generator._module)}
        return _handoffs_only_at(keep, self._candidates)

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
            envoys = self._envoys(plan, lm)
            box: dict[str, Any] = {}
            with self._handoffs(envoys, lm), lm.trace(dict(enc), **kwargs):
                self._visit(envoys, plan, state, 0, sink)
                box["out"] = lm.output.save()
            return box["out"], sink

    def generate(self, enc: dict[str, Tensor], plan: Plan, **generate_kwargs: Any) -> tuple[Any, Records]:
        """Hugging Face ``generate`` (KV cache, left padding, stopping) with the plan at every step.

        Generation computes the logits of each forward's last position only, unless an op at the
        logits site reads earlier positions (``plan.full_logits``): then every position's are kept.
        """
        model = self.handle.model
        sink: Records = defaultdict(list)
        with self.lock, param_edits(plan.editors):
            lm = self.lm if plan.visits else None  # built (once) outside inference mode: it outlives the run
            with torch.inference_mode():
                out = self._generate(model, lm, enc, plan, sink, generate_kwargs)
        # inference mode skips autograd's bookkeeping on every op of every step; what leaves the run is
        # copied into normal tensors, so callers may modify it in place or use it under autograd
        return _normal(out), {k: [_normal(t) for t in v] for k, v in sink.items()}

    def _generate(
        self, model: torch.nn.Module, lm: Any, enc: dict[str, Tensor], plan: Plan, sink: Records,
        generate_kwargs: dict[str, Any],
    ) -> Any:
        if not plan.visits:
            return model.generate(**enc, **generate_kwargs)
        if plan.full_logits:
            generate_kwargs = {**keep_all_logits(model), **generate_kwargs}
        state = StepState.start(enc.get("attention_mask"), enc["input_ids"].shape[1], enc["input_ids"].shape[0])
        envoys = self._envoys(plan, lm)
        self._gen_out.clear()
        with warnings.catch_warnings():
            # an open `tracer.all()` loop ends at the last step the run makes; nnsight warns about
            # the step it never reached, which is expected here
            warnings.filterwarnings("ignore", message=".*was never reached.*")
            with self._handoffs(envoys, lm), lm.generate(dict(enc), **generate_kwargs) as tracer:
                for step in tracer.all():
                    self._visit(envoys, plan, state, step, sink)
        return self._gen_out.pop("out")


    # -- the remote path (see remote_program below) ----------------------------------------------
    def run_remote(
        self, enc: dict[str, Tensor], interventions: Any = None, *, remote: bool | str = "local",
        max_new_tokens: int = 16, **generate_kwargs: Any
    ) -> Any:
        """Greedy generation of exactly ``max_new_tokens`` tokens (no stop at EOS) with ``interventions``
        (a list, a set or a compiled :class:`Plan`) through nnsight's remote path: ``remote=True`` ships the
        run to NDIF (a model it hosts, the key in nnsight's config), ``"local"`` runs nnsight's serialize ->
        deserialize -> execute path here. Returns Hugging Face ``generate``'s output (``sequences``, and
        ``logits`` with ``output_logits=True``).

        Weight edits are made inside the traced code, before the first forward, and undone there in a
        ``finally`` once generation has ended or failed: the model's weights come back bit for bit.
        """
        import sys

        import nnsight

        from steerlab.interventions import ops
        from steerlab.models.adapters import routing

        if remote is True:
            check_ndif_key()
        if isinstance(interventions, Plan):
            interventions = interventions.interventions
        program = remote_program(self.handle, interventions, enc, max_new_tokens)
        for module in (ops, routing, sys.modules[__name__]):  # shipped by value (source), never imported there
            nnsight.register(module)
        route, route_groups = routing.route, routing.route_by_groups
        lm = self.lm
        keep = keep_all_logits(self.handle.model) if program["full_logits"] else {}
        kw = {"do_sample": False, "eos_token_id": [], "pad_token_id": self.handle.tokenizer.pad_token_id,
              "return_dict_in_generate": True, **keep, **generate_kwargs}
        visits, edits = program["visits"], program["edits"]
        with self.lock, torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with lm.generate(dict(enc), max_new_tokens=max_new_tokens, remote=remote, **kw) as tracer:
                saved: list = []
                memo: dict = {}
                try:
                    _remote_edit(lm, edits, saved)
                    for step in tracer.iter[:max_new_tokens]:
                        _remote_step(lm, visits, step, route, route_groups, memo)
                    out = tracer.result.save()
                finally:
                    _remote_restore(saved)
        return out

    def generate_remote(
        self, enc: dict[str, Tensor], interventions: Any = None, *, remote: bool | str = "local",
        max_new_tokens: int = 16, **generate_kwargs: Any
    ) -> Tensor:
        """:meth:`run_remote`'s sequences ``[batch, prompt + max_new_tokens]``."""
        out = self.run_remote(enc, interventions, remote=remote, max_new_tokens=max_new_tokens, **generate_kwargs)
        return out.sequences if hasattr(out, "sequences") else out


# -- the remote path (NDIF) ----------------------------------------------------------------------
# nnsight ships a traced block to NDIF as source plus the values it references, and the server runs
# it with an import whitelist (torch, numpy, einops, math, collections, ...). So nothing of steerlab
# runs there: `remote_program` compiles an intervention list, before the trace, into plain data
# (module and parameter paths, tensors, per-step position masks) and `_remote_edit`, `_remote_step`
# and `_remote_restore`, which touch only torch and that data, apply it. The pure tensor functions of
# `steerlab.interventions.ops` and the routing rule (`route`) ship by value (their module registered
# with nnsight, source only).
REMOTE_TYPES = ("add_vector", "project_out", "scale_units", "patch", "conditional_add", "expert_mask",
                "param_edit", "region_edit")  # every type remote_program compiles (tests enumerate the registry)
_MAX_MASK_GROUPS = 6  # expert masks of one layer with this many distinct position selectors at most


def check_ndif_key() -> None:
    """Raise a one-line :class:`~steerlab.errors.SteerlabError` when nnsight's config has no NDIF API key."""
    import nnsight

    from steerlab.errors import SteerlabError

    if not nnsight.CONFIG.API.APIKEY:
        raise SteerlabError("remote=True runs on NDIF and needs an API key, and nnsight's config has none: set "
                            "NDIF_API_KEY or call nnsight.CONFIG.set_default_api_key(KEY) (remote='local' needs none)")


def keep_all_logits(model: torch.nn.Module) -> dict[str, int]:
    """``generate``'s keyword that keeps the logits of every position (``logits_to_keep=0``), where the
    model takes it (a model that does not computes them all anyway)."""
    import inspect

    return {"logits_to_keep": 0} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


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


def _remote_weight_edits(h: ModelHandle, editors: list[Any]) -> list[tuple]:
    """A plan's weight editors as plain data ``(parameter path, flat indices, op, value, extra)``, in
    the order they apply: ``extra`` is the seeded noise (``noise``) or the delta's entries (``add``),
    drawn and gathered here exactly as :class:`ParamEditor` does."""
    from steerlab.interventions.regions import RegionEditor
    from steerlab.interventions.weights import ParamEditor

    names = {id(p): n for n, p in h.model.named_parameters()}
    flat: list[ParamEditor] = []
    for ed in editors:
        if isinstance(ed, RegionEditor):
            flat.extend(ed.editors)
        elif isinstance(ed, ParamEditor):
            flat.append(ed)
    out = []
    for ed in flat:
        iv, p = ed.iv, ed.param
        idx = ed._select()
        extra = None
        if iv.op == "noise":
            g = torch.Generator(device="cpu").manual_seed(iv.seed)
            extra = torch.randn((idx.numel(),), generator=g) * iv.value
        elif iv.op == "add":
            extra = iv.delta.reshape(-1).to(p.device, p.dtype)[idx]
        out.append((names[id(p)], idx, iv.op, float(iv.value), extra))
    return out


def _router_args(h: ModelHandle, layer: int, masks: list[Any]) -> tuple:
    """``route``'s arguments for the masks of ``layer`` that apply together (merged), as plain data."""
    from steerlab.interventions.routing import MergedMask

    merged = MergedMask.of(masks)
    parts = h.adapter.layers[layer]
    n = parts.rule.n_experts

    def flags(idx: Any) -> Tensor | None:
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
    off, on = flags(merged.off), flags(merged.on)
    only_off = off is not None and on is None and scale is None and not merged.renormalize and parts.rule.off_is_local
    return (parts.rule, off, on, None if bias is None else bias.detach().clone(), scale, merged.renormalize, only_off)


def remote_program(h: ModelHandle, interventions: Any, enc: dict[str, Tensor], n_steps: int) -> dict[str, Any]:
    """Compile ``interventions`` for ``enc`` into plain data for :func:`_remote_step` (``"visits"``, in
    forward order) and :func:`_remote_edit` (``"edits"``, weight edits). Every type of
    :data:`REMOTE_TYPES` compiles; any other raises :class:`SpecError` naming it."""
    from steerlab.errors import SpecError
    from steerlab.interventions import ops
    from steerlab.interventions.compile import check_inputs, compile_plan
    from steerlab.interventions.spec import as_set

    ivs = as_set(interventions)
    for i, iv in enumerate(ivs):
        if iv.type not in REMOTE_TYPES:
            raise SpecError(f"intervention {i}: type {iv.type!r} has no remote form; the remote path runs "
                            f"{list(REMOTE_TYPES)}")
    plan = compile_plan(h, ivs)  # validates everything against the model first
    mask, prompt_len = enc["attention_mask"], enc["input_ids"].shape[1]
    check_inputs(plan, mask, generating=True)
    paths = {id(m): name for name, m in h.model.named_modules()}
    order = _event_order(h.model)
    pad_lens = StepState.start(mask, prompt_len).pad_lens.to(h.device)
    visits: dict[tuple[str, str], dict] = {}

    def visit(ref: Any, router: bool = False) -> dict:
        key = (paths[id(ref.module)], ref.kind)
        if key not in visits:
            visits[key] = {"path": key[0], "kind": ref.kind, "element": None if router else ref.element,
                           "scale": ref.scale, "router": router, "ops": []}
        return visits[key]

    masks: dict[int, list[Any]] = {}
    mid_ops: dict[int, list[tuple]] = {}
    for i, iv in enumerate(ivs):
        if iv.kind == "weights":
            continue  # plan.editors, below
        if iv.kind == "routing":
            masks.setdefault(iv.layer, []).append(iv)
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
        elif iv.type == "patch" and iv.value.ndim == 3:
            raise SpecError(f"intervention {i} (patch): a [batch, pos, d] value patches one plain forward; "
                            "generation needs a [d] or [P, d] value")
        elif iv.type == "patch" and iv.value.ndim == 2:
            ops_ = [("fn", ops.patch, (row.to(h.device, dt),), _remote_masks([p], mask, prompt_len, n_steps))
                    for row, p in zip(iv.value, iv.positions, strict=True)]
            op = ("many", None, tuple(ops_), sel)
        elif iv.type == "patch":
            op = ("fn", ops.patch, (iv.value.to(h.device, dt),), sel)
        else:  # conditional_add
            args = ((iv.scale * iv.vector).to(h.device, dt), iv.probe_weight.to(h.device, torch.float32),
                    iv.probe_bias, iv.threshold, iv.mode, i, pad_lens, prompt_len)
            op = ("cond", None, args, sel)
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
    for layer, layer_masks in masks.items():
        groups: dict[str, list[Any]] = {}
        for m in layer_masks:
            groups.setdefault(repr(m.positions), []).append(m)
        members = list(groups.values())
        if len(members) > _MAX_MASK_GROUPS:
            raise SpecError(f"expert masks on layer {layer} use {len(members)} different positions; the remote "
                            f"path takes at most {_MAX_MASK_GROUPS} per layer")
        sels = [_remote_masks(g[0].positions, mask, prompt_len, n_steps) for g in members]
        variants = {bits: _router_args(h, layer, [m for g, ms in enumerate(members) if bits >> g & 1 for m in ms])
                    for bits in range(1, 1 << len(members))}
        visit(h.site(f"blocks.{layer}.moe.router_logits"), router=True)["ops"].append(
            ("route", None, (variants, sels), None))
    # the plan's weight editors (ParamEditor, RegionEditor; expert masks route in the trace instead)
    from steerlab.interventions.regions import RegionEditor
    from steerlab.interventions.weights import ParamEditor

    editors = [ed for ed in plan.editors if isinstance(ed, (ParamEditor, RegionEditor))]
    return {"visits": sorted(visits.values(), key=lambda v: order[(v["path"], v["kind"])]),
            "edits": _remote_weight_edits(h, editors), "full_logits": plan.full_logits}


def _remote_edit(lm: Any, edits: list[tuple], saved: list) -> None:
    """Apply :func:`remote_program`'s weight edits in place (plain torch: runs inside the trace), each
    one's original entries appended to ``saved`` before it is changed."""
    for path, idx, op, value, extra in edits:
        flat = lm.get(path).data.view(-1)
        cur = flat[idx]
        saved.append((flat, idx, cur.clone()))
        if op == "zero":
            new = torch.zeros_like(cur)
        elif op == "scale":
            new = cur * value
        elif op == "set":
            new = torch.full_like(cur, value)
        elif op == "noise":
            new = cur + extra.to(cur)
        else:
            new = cur + extra
        flat[idx] = new


def _remote_restore(saved: list) -> None:
    """Undo :func:`_remote_edit`, in reverse order (plain torch: runs inside the trace)."""
    for flat, idx, old in reversed(saved):
        flat[idx] = old


def _remote_route(route: Any, route_groups: Any, out: Any, variants: dict, sels: list, step: int) -> Any:
    """The router output with the expert masks of one layer (plain torch: runs inside the trace)."""

    def redo(bits: int) -> Any:
        rule, off, on, bias, scale, renorm, only_off = variants[bits]
        if only_off and not bool(off[out[2]].any()):
            return out
        w, idx = route(rule, out[0], off=off, on=on, bias=bias, gate_scale=scale, renormalize=renorm)
        return (out[0], w.to(out[1].dtype), idx, *out[3:])

    ms = [s[step] if step < len(s) else s[-1] for s in sels]
    return route_groups(out, ms, redo)


def _remote_step(lm: Any, program: list[dict], step: int, route: Any, route_groups: Any, memo: dict) -> None:
    """Apply :func:`remote_program`'s visits at generation step ``step`` (plain torch: runs inside the
    trace). ``memo`` keeps what lasts across steps (conditional steering's verdicts)."""
    kept: dict[int, Any] = {}

    def conditional(args: Any, x: Any, m: Any) -> Any:  # ConditionalAdd's op, step by step
        vec, w, bias, thr, mode, key, pad, plen = args
        fires = (x.float() @ w + bias) > thr
        off = max(plen + step - x.shape[1], 0)
        if mode == "row":
            col = plen - 1 - off  # the last prompt token (left padding: same column)
            if 0 <= col < x.shape[1]:
                memo[key] = fires[:, col]
            active = memo[key].unsqueeze(1).expand_as(fires)
        else:
            cols = off + torch.arange(x.shape[1], device=x.device)
            real = cols.unsqueeze(0) >= pad.unsqueeze(1)
            carry = memo.get(key) if off > 0 else None
            hit = (fires & real).int().cumsum(1) > 0
            active = hit if carry is None else hit | carry.unsqueeze(1)
            memo[key] = active[:, -1]
        if m is False:
            return x
        if m is not None:
            active = active & m
        return x + active.unsqueeze(-1).to(x.dtype) * vec

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
        if m is not None and m is not False and m.shape[1] != x.shape[1]:
            m = m[:, m.shape[1] - x.shape[1]:]  # a site holding the forward's last positions only (the logits)
            m = None if bool(m.all()) else False if not bool(m.any()) else m
        if name == "cond":
            return conditional(args, x, m)
        if m is False:
            return x
        if name == "add":
            return fn(x, args[0], args[1], m)
        return fn(x, *args, m)

    for v in program:
        env = lm.get(v["path"])
        value = env.input if v["kind"] == "input" else env.output
        if v["router"]:
            for _name, _, (variants, sels), _ in v["ops"]:
                value = _remote_route(route, route_groups, value, variants, sels, step)
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
