"""Activation capture at named sites for a batch of prompts: padding-aware, memory-bounded,
optionally streamed to disk.

Activations come back left-padded to the longest prompt, ``[n, pos, width]``, with the
``attention_mask`` that says which positions are real (padding positions hold 0, and -1 for
expert indices). ``capture`` runs on the nnsight engine
(with or without interventions) or, with ``engine="bridge"``, through a TransformerLens
``TransformerBridge`` and its ``run_with_cache`` (same numbers; useful to cross-check and for TL
users). ``max_memory_mb`` bounds what is held in memory: with ``out=DIR`` each batch is written to
a safetensors shard and dropped, so memory stays at one batch whatever the number of prompts.

Example:
    >>> import steerlab as sl
    >>> h = sl.load("shared:stories260K")
    >>> cap = sl.capture(h, ["Once upon a time", "The dog"], ["blocks.1.resid_post"])
    >>> cap["blocks.1.resid_post"].shape, cap.last("blocks.1.resid_post").shape
    (torch.Size([2, 5, 64]), torch.Size([2, 64]))
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from safetensors.torch import load_file
from torch import Tensor
from tqdm.auto import tqdm

from steerlab.atomic import atomic_dir, resolve_dir, save_tensors_file
from steerlab.engines import engine_for, position_ids
from steerlab.errors import SteerlabError
from steerlab.generation import check_prompts
from steerlab.interventions.compile import check_inputs, compile_plan
from steerlab.models.handle import ModelHandle
from steerlab.values import as_names

INDEX_FILE = "capture.json"


@dataclass
class Capture:
    """Captured activations. In memory, or backed by shards on disk (``path``)."""

    prompts: list[str]
    sites: list[str]
    input_ids: Int[Tensor, "n pos"]
    attention_mask: Int[Tensor, "n pos"]
    acts: dict[str, Tensor] = field(default_factory=dict)
    path: Path | None = None
    config: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, site: str) -> Tensor:
        if site not in self.sites:
            raise SteerlabError(f"site {site!r} was not captured; captured sites: {self.sites}")
        if site not in self.acts and self.path is not None:
            self.acts[site] = _concat([load_file(str(p))[site] for p in self.shards()], pad_value=0.0)
        return self.acts[site]

    def shards(self) -> list[Path]:
        """Shard files of a streamed capture, in prompt order."""
        return sorted(self.path.glob("shard-*.safetensors")) if self.path else []

    def last(self, site: str) -> Float[Tensor, "n width"]:
        """The activation at each prompt's last token (left padding puts it at position -1)."""
        return self[site][:, -1]

    def masked(self, site: str) -> Float[Tensor, "tokens width"]:
        """All real (non-padding) token activations, flattened over prompts."""
        return self[site][self.attention_mask.bool()]

    @classmethod
    def load(cls, path: str | Path) -> Capture:
        """Open a capture written with ``out=`` (activations are read on first access)."""
        path = resolve_dir(path)  # a crash mid-swap left the old capture whole in its backup
        index = path / INDEX_FILE
        if not index.exists():
            raise SteerlabError(f"{path} is not a steerlab capture: expected {INDEX_FILE} in it")
        meta = json.loads(index.read_text())
        shards = [load_file(str(p)) for p in sorted(path.glob("shard-*.safetensors"))]
        ids = _concat([s["__input_ids__"] for s in shards], pad_value=0)
        mask = _concat([s["__attention_mask__"] for s in shards], pad_value=0)
        return cls(meta["prompts"], meta["sites"], ids, mask, {}, path, meta.get("config", {}))


def _concat(parts: list[Tensor], pad_value: float) -> Tensor:
    """Concatenate left-padded batches, left-padding each to the longest."""
    width = max(p.shape[1] for p in parts)
    padded = []
    for p in parts:
        if p.shape[1] < width:
            pad_shape = (p.shape[0], width - p.shape[1], *p.shape[2:])
            p = torch.cat([torch.full(pad_shape, pad_value, dtype=p.dtype), p], dim=1)
        padded.append(p)
    return torch.cat(padded, dim=0)


def _site_width(h: ModelHandle, site: str) -> int:
    ref = h.site(site)
    if ref.is_router:
        rule = h.adapter.layers[ref.layer].rule
        return rule.n_experts if ref.component == "router_logits" else rule.top_k
    return h.vocab_size if ref.component == "logits" else h.d_model


def capture(
    h: ModelHandle,
    prompts: list[str] | str,
    sites: list[str] | str,
    *,
    interventions: Any = None,
    batch_size: int = 16,
    chat: bool = False,
    system: str | None = None,
    out: str | Path | None = None,
    max_memory_mb: float = 2048.0,
    dtype: torch.dtype = torch.float32,
    engine: Literal["nnsight", "bridge"] = "nnsight",
    progress: bool = False,
) -> Capture:
    """Capture activations at ``sites`` for ``prompts``.

    ``interventions`` apply during the capture (recorded values are post-intervention).
    ``out``: stream each batch to ``out/shard-*.safetensors``; the folder is swapped in by
    :func:`~steerlab.artifacts.atomic_dir`, so after a crash at any point ``Capture.load(out)`` reads
    the old capture or the new one, whole (an error mid-capture leaves the old one as it was).
    ``max_memory_mb``: the most activation memory held at once; an in-memory capture that would
    exceed it raises, naming the estimate and the way out (``out=`` or a larger bound).
    """
    prompts = check_prompts(prompts)
    sites = list(dict.fromkeys(as_names(sites, "sites")))
    if not sites:
        raise SteerlabError("sites is empty; expected at least one site name (see `steerlab info MODEL`)")
    if engine not in ("nnsight", "bridge"):
        raise SteerlabError(f"unknown capture engine {engine!r}; expected 'nnsight' or 'bridge'")
    if batch_size < 1:
        raise SteerlabError(f"batch_size must be >= 1, got {batch_size!r}")
    if engine == "bridge" and interventions:
        raise SteerlabError("engine='bridge' captures unmodified activations; use the nnsight engine for interventions")
    plan = compile_plan(h, interventions, sites)  # validates sites and interventions up front

    enc_all = h.encode(prompts, chat=chat, system=system)
    check_inputs(plan, enc_all["attention_mask"])
    n_tokens = int(enc_all["attention_mask"].sum())
    bytes_per_token = sum(_site_width(h, s) for s in sites) * torch.empty((), dtype=dtype).element_size()
    max_pos = enc_all["input_ids"].shape[1]
    per_prompt = max_pos * bytes_per_token
    budget = max_memory_mb * 2**20
    if out is None and per_prompt * len(prompts) > budget:
        raise SteerlabError(
            f"capture needs about {per_prompt * len(prompts) / 2**20:.0f} MB for {len(prompts)} prompts "
            f"({n_tokens} tokens) x {len(sites)} sites, over max_memory_mb={max_memory_mb:g}; "
            "pass out=DIR to stream batches to disk, capture fewer sites, or raise max_memory_mb"
        )
    batch_size = max(1, min(batch_size, int(budget // max(per_prompt, 1))))
    if plan.input_shapes and batch_size < len(prompts):
        raise SteerlabError(f"a [batch, pos, d] patch value replaces the activation of all {len(prompts)} prompts at "
                            f"once, but the capture runs batches of {batch_size}; pass batch_size >= {len(prompts)} "
                            "(and a max_memory_mb that holds them)")

    config = {
        "model": h.spec,
        "sites": sites,
        "n_prompts": len(prompts),
        "chat": chat,
        "system": system,
        "engine": engine,
        "batch_size": batch_size,
        "dtype": str(dtype).removeprefix("torch."),
        "interventions": plan.n_interventions,
    }
    parts: dict[str, list[Tensor]] = {s: [] for s in sites}
    ids_parts, mask_parts = [], []
    with atomic_dir(out) if out is not None else nullcontext() as tmp:  # out: old or new folder, whole
        starts = range(0, len(prompts), batch_size)
        for b, start in enumerate(tqdm(starts, desc="capture", disable=not progress, unit="batch")):
            enc = h.encode(prompts[start : start + batch_size], chat=chat, system=system)
            _, records = engine_for(h, engine).forward(enc, plan, position_ids=position_ids(enc["attention_mask"]))
            acts = {s: records[s][0] for s in sites}
            ids, mask = enc["input_ids"].cpu(), enc["attention_mask"].cpu()
            acts = {s: _zero_padding(a.cpu(), mask, dtype) for s, a in acts.items()}
            if tmp is not None:
                save_tensors_file(
                    tmp / f"shard-{b:05d}.safetensors", {**acts, "__input_ids__": ids, "__attention_mask__": mask}
                )
            else:
                for s in sites:
                    parts[s].append(acts[s])
            ids_parts.append(ids)
            mask_parts.append(mask)
        if tmp is not None:
            (tmp / INDEX_FILE).write_text(
                json.dumps(
                    {"format": "steerlab.capture", "version": 1, "prompts": prompts, "sites": sites, "config": config}
                )
            )
    return Capture(
        prompts,
        sites,
        _concat(ids_parts, 0),
        _concat(mask_parts, 0),
        {s: _concat(v, 0.0) for s, v in parts.items()} if out is None else {},
        None if out is None else Path(out),
        config,
    )


def _zero_padding(a: Tensor, mask: Tensor, dtype: torch.dtype) -> Tensor:
    """Padding positions carry no meaning: zero them (``-1`` for expert indices)."""
    pad = ~mask.bool().reshape(*mask.shape, *([1] * (a.ndim - 2)))
    if a.is_floating_point():
        return a.to(dtype).masked_fill(pad, 0.0)
    return a.masked_fill(pad, -1)
