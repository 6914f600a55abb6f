"""Installing interventions and recordings as PyTorch hooks on the HF modules, and removing them.

``intervene(handle, interventions)`` is a context manager: every hook it adds and every parameter
it edits is undone on exit, also when the body raises. Nothing is installed unless the whole
list validates first. A model-level pre-hook tracks where each forward sits in the sequence
(padding, prompt length, KV-cache offset) so position selectors mean the same thing with and
without the KV cache.

Example:
    >>> import torch, steerlab as sl
    >>> from steerlab.interventions import AddVector
    >>> h = sl.load("shared:stories260K")
    >>> ids = h.tokenize(["Once upon a time"])
    >>> with sl.intervene(h, [AddVector(site="blocks.2.resid_post", vector=torch.randn(64), scale=4.0)]):
    ...     steered = h.model(**ids).logits
    >>> bool((steered != h.model(**ids).logits).any())
    True
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from steerlab.errors import SpecError, UnknownSiteError
from steerlab.interventions import ops
from steerlab.interventions.spec import (
    AddVector,
    ExpertMask,
    LastK,
    ParamEdit,
    Patch,
    ProjectOut,
    ScaleUnits,
    as_set,
)
from steerlab.models.adapters import route
from steerlab.sites import SiteRef


# ---------------------------------------------------------------------------------------------
# where the current forward sits in the sequence
# ---------------------------------------------------------------------------------------------
@dataclass
class RunState:
    """Per-forward position bookkeeping, shared by all hooks of one context."""

    prompt_len: int | None = None  # padded prompt length; set by generate, else inferred
    pad_lens: Tensor | None = None  # [batch] left-padding of each row
    offset: int = 0  # tokens already in the KV cache
    batch: int = 0
    seq: int = 0
    explicit_prompt: bool = False
    _masks: dict[str, Tensor | None | bool] = field(default_factory=dict)
    resid_pre: dict[int, Tensor] = field(default_factory=dict)

    def set_prompt(self, attention_mask: Tensor | None, prompt_len: int) -> None:
        self.prompt_len = prompt_len
        self.explicit_prompt = True
        if attention_mask is not None:
            self.pad_lens = (attention_mask.cumsum(-1) == 0).sum(-1)

    def begin_forward(self, batch: int, seq: int, attention_mask: Tensor | None, cache_len: int) -> None:
        self.batch, self.seq, self.offset = batch, seq, cache_len
        self._masks = {}
        self.resid_pre = {}
        if attention_mask is not None and attention_mask.ndim == 2:
            self.pad_lens = (attention_mask.cumsum(-1) == 0).sum(-1)
        elif self.pad_lens is None or self.pad_lens.shape[0] != batch:
            self.pad_lens = torch.zeros(batch, dtype=torch.long)
        if not self.explicit_prompt and cache_len == 0:
            self.prompt_len = seq

    def mask(self, positions: Any, device: torch.device) -> Tensor | None | bool:
        """``None``: every position; ``False``: none in this forward; else a ``[batch, seq]`` mask."""
        if positions == "all":
            return None
        key = repr(positions)
        if key in self._masks:
            return self._masks[key]
        pad = (self.pad_lens if self.pad_lens is not None else torch.zeros(self.batch, dtype=torch.long)).to(device)
        prompt_len = self.prompt_len if self.prompt_len is not None else self.offset + self.seq
        cols = self.offset + torch.arange(self.seq, device=device)
        pos = cols.unsqueeze(0) - pad.unsqueeze(1)  # [batch, seq] in each row's own coordinates
        prompt_real = (prompt_len - pad).unsqueeze(1)
        if positions == "prompt":
            m = pos < prompt_real
        elif positions == "generated":
            m = pos >= prompt_real
        elif isinstance(positions, LastK):
            m = (pos >= prompt_real - positions.last) & (pos < prompt_real)
        else:
            wanted = torch.tensor(list(positions), device=device)
            m = torch.isin(pos, wanted) & (pos < prompt_real)
        if bool(m.all()):
            out: Tensor | None | bool = None
        elif not bool(m.any()):
            out = False
        else:
            out = m
        self._masks[key] = out
        return out


# ---------------------------------------------------------------------------------------------
# compiled operations (validated against the model, ready to run inside a hook)
# ---------------------------------------------------------------------------------------------
ActFn = Callable[[Tensor, Any], Tensor]  # (activation [b, t, d], mask) -> activation


@dataclass
class _ActOp:
    fn: ActFn
    positions: Any
    additive: bool = False


def _check_width(name: str, t: Tensor, ref: SiteRef, width: int, field_name: str) -> None:
    if t.shape[-1] != width:
        raise SpecError(
            f"{field_name} width {t.shape[-1]} does not match site {ref.name!r}, whose width is {width}"
        )


def _site_width(h: Any, ref: SiteRef) -> int:
    return h.vocab_size if ref.component == "logits" else h.d_model


def _compile_act(h: Any, iv: Any, device: torch.device, dtype: torch.dtype) -> tuple[SiteRef, _ActOp]:
    ref = h.site(iv.site)
    if ref.is_router:
        raise SpecError(
            f"site {iv.site!r} is a router output; use ExpertMask to change routing, not {type(iv).__name__}"
        )
    width = _site_width(h, ref)
    if isinstance(iv, AddVector):
        _check_width(ref.name, iv.vector, ref, width, "vector")
        vec, scale = iv.vector.to(device=device, dtype=dtype), iv.scale
        return ref, _ActOp(lambda x, m: ops.add_vector(x, vec, scale, m), iv.positions, additive=True)
    if isinstance(iv, ProjectOut):
        _check_width(ref.name, iv.direction, ref, width, "direction")
        d = iv.direction.to(device=device, dtype=dtype)
        return ref, _ActOp(lambda x, m: ops.project_out(x, d, m), iv.positions)
    if isinstance(iv, ScaleUnits):
        bad = [u for u in iv.units if u >= width]
        if bad:
            raise SpecError(f"units {bad} out of range for site {ref.name!r} of width {width}; expected 0..{width - 1}")
        units = torch.tensor(iv.units, dtype=torch.long, device=device)
        return ref, _ActOp(lambda x, m: ops.scale_units(x, units, iv.scale, m), iv.positions)
    if isinstance(iv, Patch):
        _check_width(ref.name, iv.value, ref, width, "value")
        val = iv.value.to(device=device, dtype=dtype)
        if val.ndim == 2:
            if not isinstance(iv.positions, list) or len(iv.positions) != val.shape[0]:
                raise SpecError(
                    f"patch value of shape {tuple(val.shape)} needs an explicit positions list of length "
                    f"{val.shape[0]}, got positions={iv.positions!r}"
                )
            return ref, _ActOp(_rowwise_patch(val, list(iv.positions)), "all")

        def full(x: Tensor, m: Any) -> Tensor:
            v = val
            if v.ndim == 3 and v.shape != x.shape:
                raise SpecError(f"patch value shape {tuple(v.shape)} does not match activation shape {tuple(x.shape)}")
            return ops.patch(x, v, m)

        return ref, _ActOp(full, iv.positions)
    raise AssertionError(type(iv))  # pragma: no cover


def _rowwise_patch(val: Tensor, positions: list[int]) -> ActFn:
    state_holder: dict[str, RunState] = {}

    def fn(x: Tensor, m: Any, _state: RunState | None = None) -> Tensor:
        state = state_holder["state"]
        out = x
        for row, p in enumerate(positions):
            mask = state.mask([p], x.device)
            if mask is False:
                continue
            out = ops.patch(out, val[row], mask)
        return out

    fn.state_holder = state_holder  # type: ignore[attr-defined]
    return fn


def _validate_mask(h: Any, iv: ExpertMask) -> None:
    adapter = h.adapter
    if iv.layer >= adapter.n_layers:
        raise SpecError(f"expert mask layer {iv.layer} out of range; the model has {adapter.n_layers} layers")
    parts = adapter.layers[iv.layer]
    if parts.rule is None:
        raise SpecError(f"layer {iv.layer} is not an MoE layer; MoE layers: {adapter.moe_layers or 'none (dense model)'}")
    n, k = parts.rule.n_experts, parts.rule.top_k
    for what, idx in (("off", iv.off), ("on", iv.on), ("scale", list(iv.scale))):
        bad = [e for e in idx if not 0 <= e < n]
        if bad:
            raise SpecError(f"expert index {bad} in {what!r} out of range for layer {iv.layer}; expected 0..{n - 1}")
    both = set(iv.off) & set(iv.on)
    if both:
        raise SpecError(f"experts {sorted(both)} are both switched off and forced on in layer {iv.layer}")
    if len(set(iv.on)) > k:
        raise SpecError(f"{len(set(iv.on))} experts forced on in layer {iv.layer}, but top_k is {k}")
    if n - len(set(iv.off)) < k:
        raise SpecError(f"{len(set(iv.off))} of {n} experts switched off in layer {iv.layer}; at least top_k={k} must remain")


def _compile_mask(h: Any, iv: ExpertMask, device: torch.device) -> Callable[[tuple, RunState], tuple]:
    parts = h.adapter.layers[iv.layer]
    rule = parts.rule
    n = rule.n_experts
    off = torch.zeros(n, dtype=torch.bool, device=device)
    off[list(iv.off)] = True
    on = torch.zeros(n, dtype=torch.bool, device=device)
    on[list(iv.on)] = True
    gate_scale = None
    if iv.scale:
        gate_scale = torch.ones(n, dtype=torch.float32, device=device)
        for e, s in iv.scale.items():
            gate_scale[e] = s
    bias = h.adapter.router_bias(parts.router)

    def fn(out: tuple, state: RunState) -> tuple:
        logits, weights, indices = out[0], out[1], out[2]
        m = state.mask(iv.positions, logits.device)
        if m is False:
            return out
        w, idx = route(
            rule, logits, off=off if iv.off else None, on=on if iv.on else None, bias=bias,
            gate_scale=gate_scale, renormalize=iv.renormalize,
        )
        w = w.to(weights.dtype)
        if m is not None:
            flat = m.reshape(-1, 1)
            w, idx = torch.where(flat, w, weights), torch.where(flat, idx, indices)
        return (logits, w, idx, *out[3:])

    return fn


class _ParamEditor:
    """Applies :class:`ParamEdit` in place and restores the exact original values."""

    def __init__(self, h: Any, iv: ParamEdit) -> None:
        params = dict(h.model.named_parameters())
        if iv.param not in params:
            import difflib

            close = difflib.get_close_matches(iv.param, list(params), n=3)
            raise SpecError(f"unknown parameter {iv.param!r}" + (f"; did you mean {close}?" if close else ""))
        p = params[iv.param]
        self.param, self.iv = p, iv
        if iv.mask is not None and tuple(iv.mask.shape) != tuple(p.shape):
            raise SpecError(f"mask shape {tuple(iv.mask.shape)} does not match parameter {iv.param!r} shape {tuple(p.shape)}")
        if iv.indices is not None:
            bad = [i for i in iv.indices if i >= p.numel()]
            if bad:
                raise SpecError(f"flat indices {bad[:5]} out of range for parameter {iv.param!r} with {p.numel()} elements")
        if iv.op == "add":
            if iv.delta is None or tuple(iv.delta.shape) != tuple(p.shape):
                got = None if iv.delta is None else tuple(iv.delta.shape)
                raise SpecError(f"op 'add' needs a delta of shape {tuple(p.shape)} for {iv.param!r}, got {got}")
        self.saved: Tensor | None = None

    def _select(self) -> Tensor:
        p, iv = self.param, self.iv
        if iv.mask is not None:
            return iv.mask.to(p.device).reshape(-1).nonzero().flatten()
        if iv.indices is not None:
            return torch.tensor(iv.indices, dtype=torch.long, device=p.device)
        return torch.arange(p.numel(), device=p.device)

    @torch.no_grad()
    def apply(self) -> None:
        p, iv = self.param, self.iv
        flat = p.data.view(-1)
        idx = self._select()
        self.idx = idx
        self.saved = flat[idx].clone()
        cur = flat[idx]
        if iv.op == "zero":
            new = torch.zeros_like(cur)
        elif iv.op == "scale":
            new = cur * iv.value
        elif iv.op == "noise":
            g = torch.Generator(device="cpu").manual_seed(iv.seed)
            new = cur + (torch.randn(cur.shape, generator=g) * iv.value).to(cur)
        else:
            new = cur + iv.delta.reshape(-1).to(p.device, p.dtype)[idx]
        flat[idx] = new

    @torch.no_grad()
    def restore(self) -> None:
        if self.saved is not None:
            self.param.data.view(-1)[self.idx] = self.saved
            self.saved = None


# ---------------------------------------------------------------------------------------------
# the context
# ---------------------------------------------------------------------------------------------
class InterventionContext:
    """Live hooks for one ``intervene`` block. ``records`` holds recorded activations."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.state = RunState()
        self.handles: list[Any] = []
        self.editors: list[_ParamEditor] = []
        self.records: dict[str, list[Tensor]] = defaultdict(list)

    def set_prompt(self, attention_mask: Tensor | None, prompt_len: int) -> None:
        self.state.set_prompt(attention_mask, prompt_len)

    def close(self) -> None:
        errors = []
        for hd in reversed(self.handles):
            try:
                hd.remove()
            except Exception as e:  # pragma: no cover - removal does not fail in practice
                errors.append(e)
        self.handles.clear()
        for ed in reversed(self.editors):
            ed.restore()
        self.editors.clear()
        if errors:  # pragma: no cover
            raise errors[0]


def _model_prehook(state: RunState) -> Callable:
    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        x = kwargs.get("input_ids")
        if x is None:
            x = args[0] if args else None
        if x is None:
            x = kwargs.get("inputs_embeds")
        if x is None:
            return
        batch, seq = x.shape[0], x.shape[1]
        cache_len = 0
        pkv = kwargs.get("past_key_values")
        if pkv is not None and hasattr(pkv, "get_seq_length"):
            cache_len = int(pkv.get_seq_length())
        state.begin_forward(batch, seq, kwargs.get("attention_mask"), cache_len)

    return hook


def _get_act(ref: SiteRef, args: tuple, kwargs: dict, output: Any) -> Tensor:
    if ref.kind == "input":
        return args[0] if args else kwargs["hidden_states"]
    if ref.element is not None:
        return output[ref.element]
    return output[0] if isinstance(output, tuple) else output


def _set_output(ref: SiteRef, output: Any, new: Tensor) -> Any:
    if ref.element is not None:
        return (*output[: ref.element], new, *output[ref.element + 1 :])
    if isinstance(output, tuple):
        return (new, *output[1:])
    return new


def _run_ops(ops_list: list[_ActOp], x: Tensor, state: RunState) -> Tensor:
    for op in ops_list:
        m = state.mask(op.positions, x.device)
        if m is False:
            continue
        holder = getattr(op.fn, "state_holder", None)
        if holder is not None:
            holder["state"] = state
        x = op.fn(x, m)
    return x


def _install(ctx: InterventionContext, interventions: Any, record: list[str]) -> None:
    h = ctx.handle
    ivs = as_set(interventions)
    device, dtype = h.device, h.dtype
    # 1. validate and compile everything before touching the model
    act_ops: dict[str, tuple[SiteRef, list[_ActOp]]] = {}
    mid_ops: dict[int, list[_ActOp]] = defaultdict(list)
    mask_ops: dict[int, list[Callable]] = defaultdict(list)
    editors: list[_ParamEditor] = []
    needs_state = bool(record)
    for i, iv in enumerate(ivs):
        try:
            if isinstance(iv, ExpertMask):
                _validate_mask(h, iv)
                mask_ops[iv.layer].append(_compile_mask(h, iv, device))
                needs_state = True
            elif isinstance(iv, ParamEdit):
                editors.append(_ParamEditor(h, iv))
            else:
                ref, op = _compile_act(h, iv, device, dtype)
                needs_state = needs_state or op.positions != "all" or isinstance(iv, Patch)
                if ref.component == "resid_mid":
                    mid_ops[ref.layer].append(op)  # type: ignore[index]
                else:
                    act_ops.setdefault(ref.name, (ref, []))[1].append(op)
        except (SpecError, UnknownSiteError) as e:
            label = f" ({iv.name})" if getattr(iv, "name", None) else ""
            raise type(e)(f"intervention {i}{label}: {e}") from None
    record_refs = [h.site(s) for s in record]
    state = ctx.state

    # 2. install (the caller's finally removes whatever got installed if anything below raises)
    if needs_state or mid_ops:
        ctx.handles.append(h.model.register_forward_pre_hook(_model_prehook(state), with_kwargs=True))

    def add_hook(ref: SiteRef, fn: Callable) -> None:
        if ref.kind == "input":
            def pre(module: nn.Module, args: tuple, kwargs: dict) -> Any:
                x = args[0] if args else kwargs["hidden_states"]
                new = fn(x)
                if new is x:
                    return None
                if args:
                    return (new, *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": new}

            ctx.handles.append(ref.module.register_forward_pre_hook(pre, with_kwargs=True))
        else:
            def post(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
                x = _get_act(ref, args, kwargs, output)
                new = fn(x)
                return None if new is x else _set_output(ref, output, new)

            ctx.handles.append(ref.module.register_forward_hook(post, with_kwargs=True))

    for name, (ref, ops_list) in act_ops.items():
        add_hook(ref, lambda x, ops_list=ops_list: _run_ops(ops_list, x, state))

    for layer, ops_list in mid_ops.items():
        parts = h.adapter.layers[layer]
        attn_ref = h.site(f"blocks.{layer}.attn_out")
        pre_ref = h.site(f"blocks.{layer}.resid_pre")

        def keep_pre(x: Tensor, layer: int = layer) -> Tensor:
            state.resid_pre[layer] = x
            return x

        def mid_fn(attn: Tensor, layer: int = layer, ops_list: list[_ActOp] = ops_list) -> Tensor:
            if all(op.additive for op in ops_list):
                return _run_ops(ops_list, attn, state)  # exact: (pre + attn) + v == pre + (attn + v)
            pre = state.resid_pre[layer]
            mid = pre + attn
            return _run_ops(ops_list, mid, state) - pre

        add_hook(pre_ref, keep_pre)
        add_hook(attn_ref, mid_fn)
        del parts

    for layer, fns in mask_ops.items():
        router = h.adapter.layers[layer].router

        def rhook(module: nn.Module, args: tuple, output: Any, fns: list[Callable] = fns) -> Any:
            for fn in fns:
                output = fn(output, state)
            return output

        ctx.handles.append(router.register_forward_hook(rhook))

    for ref in record_refs:
        def rec(x: Tensor, ref: SiteRef = ref) -> Tensor:
            ctx.records[ref.name].append(_as_btd(x.detach(), state))
            return x

        if ref.is_router:
            def rrec(module: nn.Module, args: tuple, output: Any, ref: SiteRef = ref) -> None:
                ctx.records[ref.name].append(_as_btd(output[ref.element].detach(), state))

            ctx.handles.append(ref.module.register_forward_hook(rrec))
        else:
            add_hook(ref, rec)

    # 3. parameter edits last, so a failure above leaves weights untouched
    for ed in editors:
        ctx.editors.append(ed)
        ed.apply()


def _as_btd(x: Tensor, state: RunState) -> Tensor:
    if x.ndim == 2 and state.batch and x.shape[0] == state.batch * state.seq:
        return x.reshape(state.batch, state.seq, -1)
    return x


@contextmanager
def intervene(handle: Any, interventions: Any = None, *, record: list[str] | None = None) -> Iterator[InterventionContext]:
    """Apply interventions (and record sites) for the duration of the block; always cleaned up.

    ``interventions``: an :class:`InterventionSet`, a list of intervention models or dicts, or a
    path to a saved spec. ``record``: site names whose activations are appended to
    ``ctx.records[site]`` on every forward (after the interventions at earlier sites).
    """
    ctx = InterventionContext(handle)
    try:
        _install(ctx, interventions, list(record or []))
        yield ctx
    finally:
        ctx.close()
