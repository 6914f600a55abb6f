"""``ModelHandle``: one loaded model with its tokenizer, adapter and site map."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from steerlab.models import sites as _sites
from steerlab.models.adapters import Adapter, adapter_for

_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks_always_called",
)


class _ObjectsKey:
    """:meth:`ModelHandle.tensors_key`: equal only to a key of the very same objects in the same places. It
    keeps them alive, so a freed object's ``id`` cannot come back as a new object's while a key holds it."""

    __slots__ = ("ids", "objs")

    def __init__(self, objs: list[object]) -> None:
        self.objs = objs
        self.ids = tuple(map(id, objs))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _ObjectsKey) and other.ids == self.ids

    def __hash__(self) -> int:
        return hash(self.ids)


@dataclass
class ModelHandle:
    """A Hugging Face causal LM prepared for steerlab.

    ``model`` is the plain HF model (eval mode); ``adapter`` knows its layout. Runs never rewrite or hook it:
    steered runs and captures compute on a structural twin with the very same weights (:meth:`twin`), and
    parameter edits are put back after each run (tested). Blocks that change it on purpose (a security
    vector's ``on``, the regions' direct vocabulary gradients, eager attention for the gradient penalty)
    restore it on exit.

    Example:
        >>> import steerlab as sl
        >>> h = sl.load("shared:stories260K")
        >>> h.info()["n_layers"], "blocks.0.resid_pre" in h.sites
        (5, True)
    """

    spec: str
    model: nn.Module
    tokenizer: Any
    adapter: Adapter
    path: Path | None = None
    engine_cache: dict[str, Any] = field(default_factory=dict, repr=False)  # engines built for it (engine_for)
    _structure: tuple[int, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        self._structure = self._structure_key()

    def _structure_key(self) -> tuple[int, ...]:
        return tuple(id(m) for m in self.model.modules())

    def sync(self) -> ModelHandle:
        """Follow modules injected or replaced after load (a peft LoRA layer, a swapped block): the
        adapter and the site map are rebuilt when the module tree changed. Compilation calls it, so
        interventions and captures always resolve sites on the model as it is now."""
        key = self._structure_key()
        if key != self._structure:
            self.adapter = adapter_for(self.model)
            self.__dict__.pop("sites", None)  # the cached site list
            self._structure = key
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def config(self) -> Any:
        return self.model.config

    @cached_property
    def sites(self) -> list[str]:
        """Every site name of this model (see :mod:`steerlab.models.sites`)."""
        return _sites.site_names(self.adapter)

    def site(self, name: str) -> _sites.SiteRef:
        """Resolve a site name (raises ``UnknownSiteError`` with suggestions)."""
        return _sites.resolve(self.adapter, name)

    @property
    def d_model(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    def info(self) -> dict[str, Any]:
        """Architecture summary (what ``steerlab info --json`` prints)."""
        cfg = self.model.config
        arch = (getattr(cfg, "architectures", None) or [type(self.model).__name__])[0]
        n_params = sum(p.numel() for p in self.model.parameters())
        return {
            "spec": self.spec,
            "architecture": arch,
            "model_type": cfg.model_type,
            "family": self.adapter.family,
            "n_layers": self.adapter.n_layers,
            "d_model": self.d_model,
            "vocab_size": self.vocab_size,
            "n_params": n_params,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
            "chat_template": bool(getattr(self.tokenizer, "chat_template", None)),
            "sites": self.sites,
            "moe": self.adapter.moe_info(),
        }

    def format_chat(self, user_text: str, system: str | None = None) -> str:
        """Wrap a user message in the model's chat template (plain text if it has none)."""
        if not getattr(self.tokenizer, "chat_template", None):
            return user_text
        msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user_text}]
        return self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)

    def tokenize(self, prompts: list[str], add_special_tokens: bool | None = None) -> dict[str, torch.Tensor]:
        """Left-padded batch encoding on the model's device (``input_ids``, ``attention_mask``)."""
        kw: dict[str, Any] = {}
        if add_special_tokens is not None:
            kw["add_special_tokens"] = add_special_tokens
        enc = self.tokenizer(list(prompts), return_tensors="pt", padding=True, **kw)
        return {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}

    def encode(self, prompts: list[str], chat: bool = False, system: str | None = None) -> dict[str, torch.Tensor]:
        """Tokenize raw prompts, or wrap each in the chat template first (``chat=True``, with an
        optional ``system`` message); templated text gets no extra special tokens."""
        if not chat:
            return self.tokenize(prompts)
        texts = [self.format_chat(p, system=system) for p in prompts]
        templated = bool(getattr(self.tokenizer, "chat_template", None))
        return self.tokenize(texts, add_special_tokens=False if templated else None)

    # -- what engines build on ---------------------------------------------------------------------
    def tensors_key(self) -> _ObjectsKey:
        """Identity of the model's module, parameter and buffer *objects* (not their values).

        In-place edits keep the key; replacing a tensor (``lm_head.weight = nn.Parameter(...)``,
        ``load_state_dict(assign=True)``) or swapping a module in (also one without parameters, such as an
        activation) changes it, and the engines rebuild their twin so a steered run never uses stale weights
        or modules.
        """
        objs: list[object] = []
        stack: list[Any] = [self.model]
        while stack:  # depth first over every module slot, shared ones each time (as remove_duplicate=False)
            m = stack.pop()
            objs.append(m)
            if m is not None:
                objs += m._parameters.values()
                objs += m._buffers.values()
                stack += reversed(m._modules.values())
        return _ObjectsKey(objs)

    def twin(self) -> nn.Module:
        """A structural copy of ``model`` whose parameters and buffers are the very same tensors.

        Engines that patch modules (nnsight replaces each ``forward``; the bridge swaps modules in)
        work on a twin, so ``self.model`` stays the plain Hugging Face model, while parameter edits
        made through either are seen by both. Costs module objects, not weights.
        """
        memo = {id(t): t for t in list(self.model.parameters()) + list(self.model.buffers())}
        twin = copy.deepcopy(self.model, memo)
        for m in twin.modules():  # hooks someone left on the original must not live on in the twin
            for attr in _HOOK_DICTS:
                getattr(m, attr).clear()
        return twin
