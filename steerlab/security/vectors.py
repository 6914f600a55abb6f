"""Security vectors: a few parameters separable from the model, switched on and off.

Two kinds:

* ``lora``: peft LoRA adapters (``rank``, ``alpha``, ``target_modules``; attention and MLP projections by
  default, :data:`DEFAULT_TARGETS`)
  injected into the model in place (:func:`peft.inject_adapter_in_model`) and removed again by
  putting every wrapped module's ``base_layer`` back, so the model is the very same modules after.
  On transformers 5 MoE models the routed experts are one fused module holding 3-D parameters
  (``mlp.experts.gate_up_proj``/``down_proj``), which ``target_modules`` cannot reach: LoRA there
  reaches attention, the shared experts and any dense MLP; ``target_parameters`` (peft's
  ``ParamWrapper``) adds the fused expert tensors (:func:`reachable_modules` lists both).
* ``add``: one trainable vector per layer added to ``blocks.{i}.resid_post`` at every position. Trained
  through forward hooks on the decoder layers (gradients need the bare model); used at inference as
  :class:`~steerlab.interventions.AddVector` interventions through the registry (:meth:`SecurityVector.interventions`),
  the same sum.

A vector is saved as an artifact folder: ``tensors.safetensors`` plus ``card.json`` (kind, knobs, base model spec,
architecture and widths, tensor shapes, training data hash, steerlab commit) into a folder written
crash-safely; :func:`load_vector` reads it and :meth:`SecurityVector.on` checks that it fits the model.

Example:
    >>> from steerlab.models.tiny import tiny_model
    >>> h = tiny_model("llama")
    >>> v = new_vector(h, VectorConfig(kind="lora", rank=2, target_modules=["q_proj"]), seed=0)
    >>> with v.on(h) as params:
    ...     len(params) == 2 * h.config.num_hidden_layers
    True
    >>> any("lora" in n for n, _ in h.model.named_parameters())
    False
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from torch import nn

from steerlab.artifacts import read_artifact, write_artifact
from steerlab.atomic import resolve_dir
from steerlab.errors import SpecError, SteerlabError
from steerlab.generation import seeded_rng
from steerlab.interventions import AddVector, InterventionSet
from steerlab.models.handle import ModelHandle

KINDS = ("lora", "add")
KIND, CARD_FILE = "security_vector", "card.json"
ADAPTER = "security"
ADD_MODULE = "security_add_vector"
# attention and MLP projections of Llama-style and DeepSeek-V3 models (names that do not exist are skipped);
# not the router (``mlp.gate``: LoRA there would move routing) and not ``lm_head``
DEFAULT_TARGETS = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "kv_a_proj_with_mqa",
    "kv_b_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)


@dataclass
class VectorConfig:
    """The knobs of a security vector. ``layers`` (kind ``add``): which layers get a vector (default all)."""

    kind: str = "lora"
    rank: int = 8
    alpha: float = 16.0
    target_modules: list[str] | str = field(default_factory=lambda: list(DEFAULT_TARGETS))
    target_parameters: list[str] = field(default_factory=list)
    layers: list[int] | None = None

    def check(self) -> None:
        if self.kind not in KINDS:
            raise SpecError(f"vector kind {self.kind!r}; expected one of {list(KINDS)}")
        if self.kind == "lora":
            if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank <= 0:
                raise SpecError(f"rank={self.rank!r}; expected a positive integer")
            if (isinstance(self.alpha, bool) or not isinstance(self.alpha, int | float) or not math.isfinite(self.alpha)
                    or self.alpha <= 0):
                raise SpecError(f"alpha={self.alpha!r}; expected a finite number > 0")
            if not self.target_modules and not self.target_parameters:
                raise SpecError("target_modules and target_parameters are both empty; expected modules to adapt")


def model_shape(h: ModelHandle) -> dict[str, Any]:
    """What a vector must match: architecture, widths, layer count, vocabulary."""
    cfg = h.config
    return {
        "architecture": (list(getattr(cfg, "architectures", None) or []) or [type(h.model).__name__])[0],
        "model_type": getattr(cfg, "model_type", ""),
        "hidden_size": int(h.d_model),
        "num_layers": int(h.adapter.n_layers),
        "vocab_size": int(getattr(cfg, "vocab_size", 0)),
    }


def git_commit() -> str:
    """The steerlab checkout's commit (``""`` outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() if out.returncode == 0 else ""
    except OSError:
        return ""


def data_hash(rows: Sequence[Any]) -> str:
    """SHA-256 (first 16 hex digits) of the training rows' JSON."""
    return hashlib.sha256(
        json.dumps([asdict(r) if hasattr(r, "__dataclass_fields__") else r for r in rows], sort_keys=True).encode()
    ).hexdigest()[:16]


def reachable_modules(h: ModelHandle, config: VectorConfig | None = None) -> dict[str, list[str]]:
    """Which module names (suffixes) LoRA reaches on this model and which parameters it cannot:
    ``{"linear": [...], "fused_experts": [...]}``; fused expert tensors need ``target_parameters``."""
    linear = sorted({n.rsplit(".", 1)[-1] for n, m in h.model.named_modules() if isinstance(m, nn.Linear)})
    fused = sorted({n.split("layers.")[-1].split(".", 1)[-1] for n, p in h.model.named_parameters() if p.ndim == 3})
    return {"linear": linear, "fused_experts": fused}


def target_names(h: ModelHandle, config: VectorConfig) -> list[str]:
    """The full names of the ``nn.Linear`` modules that ``config.target_modules`` selects (by last name
    component; ``"all-linear"``: every linear but ``lm_head``). Explicit names keep peft from mapping
    suffixes onto fused expert tensors on its own."""
    want = config.target_modules
    out = []
    for n, m in h.model.named_modules():
        if not isinstance(m, nn.Linear) or not n:
            continue
        last = n.rsplit(".", 1)[-1]
        if (want == "all-linear" and last != "lm_head") or (not isinstance(want, str) and last in want):
            out.append(n)
    return out


def _lora_config(h: ModelHandle, config: VectorConfig) -> Any:
    from peft import LoraConfig

    names = target_names(h, config)
    if config.target_modules and not names:
        raise SpecError(
            f"target_modules={config.target_modules!r} match no linear module of {h.spec}; "
            f"expected names from {reachable_modules(h)['linear']}"
        )
    if not isinstance(config.target_modules, str) and tuple(config.target_modules) != DEFAULT_TARGETS:
        # the defaults name every architecture's projections (absent ones skipped); a user's list means each name
        missed = [t for t in config.target_modules if not any(n.rsplit(".", 1)[-1] == t for n in names)]
        if missed:
            raise SpecError(f"target_modules {missed} match no linear module of {h.spec} (the others do); "
                            f"expected names from {reachable_modules(h)['linear']}")
    params = [n for n, _ in h.model.named_parameters()]
    for t in config.target_parameters:
        if not any(n == t or n.endswith(f".{t}") for n in params):
            raise SpecError(
                f"target_parameters entry {t!r} matches no parameter of {h.spec}; "
                f"expected names from {reachable_modules(h)['fused_experts']}"
            )
    return LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        target_modules=names or None,
        target_parameters=list(config.target_parameters) or None,
        lora_dropout=0.0,
        bias="none",
    )


def _unwrap(model: nn.Module) -> int:
    """Put every peft-wrapped module's base layer back; returns how many wrappers were removed."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    removed = 0
    while True:
        found = [(n, m) for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
        if not found:
            return removed
        name, mod = found[0]
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, mod.base_layer)
        removed += 1



def _lora_layers(h: ModelHandle, what: str) -> list[nn.Module]:
    """The peft LoRA layers of ``h.model`` (a LoRA vector switched on), or a one-line error naming ``what``."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in h.model.modules() if isinstance(m, BaseTunerLayer)]
    if not layers:
        raise SteerlabError(f"{what}() needs the vector switched on; expected a call inside vector.on(h)")
    return layers

@dataclass
class SecurityVector:
    """A security vector: its knobs, its tensors and its card (see the module docstring)."""

    config: VectorConfig
    tensors: dict[str, torch.Tensor]
    card: dict[str, Any] = field(default_factory=dict)

    # -- fit -------------------------------------------------------------------------------------
    def check_fits(self, h: ModelHandle) -> None:
        """Raise :class:`SteerlabError` naming both shapes when this vector was made for another model."""
        want, have = self.card.get("model_shape"), model_shape(h)
        if want is not None:
            keys = ("model_type", "hidden_size", "num_layers", "vocab_size")
            diff = {k: (want.get(k), have[k]) for k in keys if want.get(k) != have[k]}
            if diff:
                text = ", ".join(f"{k} {a} (vector) vs {b} (model)" for k, (a, b) in diff.items())
                raise SteerlabError(
                    f"security vector for {want.get('model_type')} (from {self.card.get('base_model')}) does not fit "
                    f"{h.spec}: {text}; expected a vector trained on this architecture and width"
                )

    # -- switching -------------------------------------------------------------------------------
    @contextmanager
    def on(self, h: ModelHandle, *, trainable: bool = False) -> Iterator[list[nn.Parameter]]:
        """Switch the vector on inside the block; yields its parameters (``requires_grad=trainable``).

        On exit (also on error) the vector is switched off and the model holds exactly its old modules and
        ``requires_grad`` flags; with ``trainable`` the trained values are copied back into :attr:`tensors`.
        """
        self.config.check()
        self.check_fits(h)
        # a vector of this kind already on is refused before anything changes: tearing down after the error would
        # switch the outer one off (a LoRA vector's exit unwraps every LoRA layer, an add vector's removes the holder)
        if self.config.kind == "lora" and any("lora_" in n for n, _ in h.model.named_parameters()):
            raise SteerlabError(f"{h.spec} already carries LoRA layers; expected a model without a vector switched on")
        if self.config.kind == "add" and hasattr(h.model, ADD_MODULE):
            raise SteerlabError(f"{h.spec} already carries an add vector; expected one vector switched on at a time")
        before = {n: p.requires_grad for n, p in h.model.named_parameters()}
        had_config = hasattr(h.model, "peft_config")
        params: dict[str, nn.Parameter] = {}
        hooks: list[Any] = []  # filled as each hook is registered, so an error midway leaves none behind
        try:
            if self.config.kind == "lora":
                # peft draws its initial A from the global RNG; a vector with tensors overwrites them, so it draws
                # from a forked one and leaves the caller's as it was
                with torch.random.fork_rng(devices=[]) if self.tensors else nullcontext():
                    params = self._inject_lora(h)
            else:
                params = self._hook_add(h, hooks)
            for p in params.values():
                p.requires_grad_(trainable)
            h.sync()
            yield list(params.values())
            if trainable:
                self.tensors = {n: p.detach().clone() for n, p in params.items()}
        finally:
            for hk in hooks:
                hk.remove()
            if self.config.kind == "add" and hasattr(h.model, ADD_MODULE):
                delattr(h.model, ADD_MODULE)
            if self.config.kind == "lora":
                _unwrap(h.model)
                if not had_config and hasattr(h.model, "peft_config"):
                    del h.model.peft_config  # peft's bookkeeping: the model is exactly as before
            for n, p in h.model.named_parameters():
                p.requires_grad_(before.get(n, False))
            h.sync()

    @contextmanager
    def suspended(self, h: ModelHandle) -> Iterator[None]:
        """Inside an :meth:`on` block: the vector has no effect within this block (the model computes the
        base model's outputs; used to distil the base model into the vector-on model), and is back after."""
        if self.config.kind == "lora":
            layers = _lora_layers(h, "suspended")
            flags = [m._disable_adapters for m in layers]
            try:
                for m in layers:
                    m._disable_adapters = True  # peft's switch, without enable_adapters' requires_grad changes
                yield
            finally:
                for m, f in zip(layers, flags, strict=True):
                    m._disable_adapters = f
            return
        holder = getattr(h.model, ADD_MODULE, None)
        if holder is None:
            raise SteerlabError("suspended() needs the vector switched on; expected a call inside vector.on(h)")
        holder.suspended = True
        try:
            yield
        finally:
            holder.suspended = False

    @contextmanager
    def merged(self, h: ModelHandle) -> Iterator[None]:
        """Inside an :meth:`on` block (kind ``lora``): the frozen vector is folded into the weights it adapts
        (``W + s B A``) and taken out again after the block (also on error). The outputs are the same, a
        forward costs what the plain model's does, and the gradient of ``W`` is unchanged (the delta is a
        constant), so training ``W`` inside the block is training it with the vector on."""
        if self.config.kind != "lora":
            raise SpecError(f"a {self.config.kind!r} vector cannot be merged into weights; expected kind 'lora'")
        layers = _lora_layers(h, "merged")
        done = []
        try:
            with torch.no_grad():
                for m in layers:
                    m.merge()
                    done.append(m)
            yield
        finally:
            with torch.no_grad():
                for m in reversed(done):
                    m.unmerge()

    def _inject_lora(self, h: ModelHandle) -> dict[str, nn.Parameter]:
        import peft.utils.transformers_weight_conversion as conv
        from peft import inject_adapter_in_model

        try:
            # peft remaps v4 names ending in gate_proj/up_proj/down_proj (DeepSeek's shared experts too) onto the
            # fused routed experts; steerlab names modules explicitly, so target_modules means what it says
            with mock.patch.object(conv, "convert_peft_config_for_transformers", lambda *a, **k: None):
                inject_adapter_in_model(_lora_config(h, self.config), h.model, adapter_name=ADAPTER)
        except ValueError as e:
            _unwrap(h.model)
            raise SpecError(
                f"LoRA target_modules={self.config.target_modules!r} "
                f"target_parameters={self.config.target_parameters!r} "
                f"do not fit {h.spec}: {str(e).splitlines()[0]}; reachable: {reachable_modules(h)}"
            ) from e
        params = {n: p for n, p in h.model.named_parameters() if f".{ADAPTER}" in n and "lora_" in n}
        if self.tensors:
            missing = sorted(set(self.tensors) ^ set(params))
            bad = [n for n in params if n in self.tensors and tuple(self.tensors[n].shape) != tuple(params[n].shape)]
            if missing or bad:
                raise SteerlabError(
                    f"security vector tensors do not fit {h.spec}: {len(missing)} names differ (e.g. {missing[:2]}), "
                    f"{len(bad)} shapes differ (e.g. {bad[:2]}); expected a vector trained on this architecture"
                )
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(self.tensors[n].to(p))
        return params

    def _layers(self, h: ModelHandle) -> list[int]:
        layers = list(range(h.adapter.n_layers)) if self.config.layers is None else list(self.config.layers)
        bad = [i for i in layers if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < h.adapter.n_layers]
        if bad:
            raise SpecError(f"layers {bad} out of range; expected integers in 0..{h.adapter.n_layers - 1}")
        twice = sorted({i for i in layers if layers.count(i) > 1})
        if twice:
            raise SpecError(f"layers {twice} are given twice; expected each layer once")
        return layers

    def _hook_add(self, h: ModelHandle, hooks: list[Any]) -> dict[str, nn.Parameter]:
        """Register the add vector on ``h`` (its parameters under the model, a hook per layer appended to
        ``hooks`` as it is made); returns the parameters."""
        layers = self._layers(h)
        holder = nn.Module()  # registered on the model while on, so its parameters are the model's
        holder.suspended = False  # set by suspended(): the hooks add nothing
        params: dict[str, nn.Parameter] = {}
        for i in layers:
            name = f"blocks.{i}.resid_post"
            t = self.tensors.get(name)
            if t is None or tuple(t.shape) != (h.d_model,):
                got = None if t is None else tuple(t.shape)
                raise SteerlabError(
                    f"security vector has {got} for {name}; expected a vector of width {h.d_model} for {h.spec}"
                )
            p = nn.Parameter(t.detach().clone().to(device=h.device, dtype=h.dtype))
            holder.register_parameter(f"layer{i}", p)
            params[name] = p
        h.model.add_module(ADD_MODULE, holder)
        for i, p in zip(layers, params.values(), strict=True):

            def hook(mod: nn.Module, args: Any, out: Any, p: nn.Parameter = p) -> Any:
                if holder.suspended:
                    return out
                if isinstance(out, tuple):
                    return (out[0] + p,) + tuple(out[1:])
                return out + p

            hooks.append(h.adapter.layers[i].layer.register_forward_hook(hook))
        return params

    def interventions(self) -> InterventionSet:
        """The ``add`` vector as :class:`AddVector` interventions (the registry path for generation)."""
        if self.config.kind != "add":
            raise SpecError(f"a {self.config.kind!r} vector is switched on with .on(h); interventions() is for 'add'")
        return InterventionSet([AddVector(site=n, vector=t, positions="all") for n, t in sorted(self.tensors.items())])

    @property
    def n_params(self) -> int:
        return sum(t.numel() for t in self.tensors.values())

    # -- files -----------------------------------------------------------------------------------
    def save(self, out: str | Path) -> Path:
        """Write the vector as a ``security_vector`` artifact folder (``tensors.safetensors`` + ``card.json``
        + ``artifact.json``), crash-safely."""
        card = {
            **self.card,
            "kind": self.config.kind,
            "config": asdict(self.config),
            "n_params": self.n_params,
            "shapes": {n: list(t.shape) for n, t in self.tensors.items()},
        }
        write_artifact(
            out,
            kind=KIND,
            config=card,
            metrics={"n_params": self.n_params},
            tensors=self.tensors,
            extra_files={CARD_FILE: json.dumps(card, indent=2)},
        )
        self.card = card
        return Path(out)


def new_vector(
    h: ModelHandle, config: VectorConfig, seed: int = 0, card: dict[str, Any] | None = None
) -> SecurityVector:
    """A freshly initialised vector for ``h`` (LoRA: peft's init, B = 0, so it starts as the identity;
    ``add``: zeros)."""
    config.check()
    base = {"base_model": h.spec, "model_shape": model_shape(h), "commit": git_commit(), **(card or {})}
    v = SecurityVector(config, {}, base)
    if config.kind == "add":
        v.tensors = {f"blocks.{i}.resid_post": torch.zeros(h.d_model) for i in v._layers(h)}
        return v
    with seeded_rng(seed):
        with v.on(h, trainable=True):
            pass
    return v


def load_vector(path: str | Path) -> SecurityVector:
    """Read a folder written by :meth:`SecurityVector.save` (clear errors for anything else)."""
    path = resolve_dir(path)
    if not (path / CARD_FILE).exists():
        raise SteerlabError(f"{path} is not a security vector: expected {CARD_FILE} in the folder")
    art = read_artifact(path)
    if art.kind != KIND:
        raise SteerlabError(f"{path} is a {art.kind!r} artifact; expected {KIND!r}")
    card = json.loads((path / CARD_FILE).read_text())
    cfg = VectorConfig(**card["config"])
    cfg.check()
    return SecurityVector(cfg, dict(art.tensors), card)
