"""One naming scheme for hookable sites, on every supported architecture.

Names (``i`` is the decoder layer):

==============================  =================================================================
``embed``                       token embedding output
``blocks.{i}.resid_pre``        residual stream entering layer ``i``
``blocks.{i}.attn_out``         attention output as added to the residual (resid_pre + attn_out = resid_mid)
``blocks.{i}.resid_mid``        residual after attention, before the MLP (not on parallel blocks)
``blocks.{i}.mlp_out``          MLP or MoE block output as added to the residual (shared experts included)
``blocks.{i}.resid_post``       residual stream leaving layer ``i``
``blocks.{i}.moe.router_logits``  router logits ``[batch, pos, n_experts]`` (MoE layers)
``blocks.{i}.moe.topk_indices``   chosen experts ``[batch, pos, top_k]``
``blocks.{i}.moe.topk_weights``   their gate weights ``[batch, pos, top_k]``
``final_norm``                  final norm output
``logits``                      the model's output logits
==============================  =================================================================

The names follow TransformerLens's ``blocks.{i}.hook_resid_pre`` convention without the ``hook_``
prefix; :func:`tl_hook_name` maps each site to the TransformerBridge hook that observes it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from torch import nn

from steerlab.errors import UnknownSiteError
from steerlab.models.adapters import Adapter

BLOCK_SITES = ("resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post")
MOE_SITES = ("router_logits", "topk_weights", "topk_indices")
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(resid_pre|attn_out|resid_mid|mlp_out|resid_post)$")
_MOE_RE = re.compile(r"^blocks\.(\d+)\.moe\.(router_logits|topk_weights|topk_indices)$")

HookKind = Literal["input", "output"]


@dataclass(frozen=True)
class SiteRef:
    """Where a site lives: a module, whether we read its input or output, and which tuple element."""

    name: str
    module: nn.Module
    kind: HookKind
    element: int | None  # tuple element of the output; None when the output is a tensor
    layer: int | None
    component: str  # resid_pre, attn_out, ..., router_logits, embed, final_norm, logits
    is_router: bool = False
    scale: float = 1.0  # site value = scale x module value (Granite's residual/embedding multipliers)


def site_names(adapter: Adapter) -> list[str]:
    """All site names of a model, in forward order."""
    names = ["embed"]
    for p in adapter.layers:
        for comp in BLOCK_SITES:
            if comp == "resid_mid" and p.ln2 is None:
                continue
            names.append(f"blocks.{p.index}.{comp}")
        if p.router is not None:
            names += [f"blocks.{p.index}.moe.{c}" for c in MOE_SITES]
    return names + ["final_norm", "logits"]


def resolve(adapter: Adapter, name: str) -> SiteRef:
    """Resolve a site name to its module; unknown names raise :class:`UnknownSiteError`."""
    if name == "embed":
        return SiteRef(name, adapter.embed, "output", None, None, "embed", scale=adapter.site_scale("embed"))
    if name == "final_norm":
        return SiteRef(name, adapter.final_norm, "output", None, None, "final_norm")
    if name == "logits":
        return SiteRef(name, adapter.lm_head, "output", None, None, "logits", scale=adapter.site_scale("logits"))
    m = _BLOCK_RE.match(name) or _MOE_RE.match(name)
    if m is None:
        raise UnknownSiteError(_unknown(adapter, name))
    i, comp = int(m.group(1)), m.group(2)
    if i >= adapter.n_layers:
        raise UnknownSiteError(
            f"unknown site {name!r}: layer {i} out of range, "
            f"the model has {adapter.n_layers} layers (0..{adapter.n_layers - 1})"
        )
    p = adapter.layers[i]
    if comp == "resid_pre":
        return SiteRef(name, p.layer, "input", None, i, comp)
    if comp == "resid_post":
        return SiteRef(name, p.layer, "output", None, i, comp)
    if comp == "attn_out":
        return SiteRef(name, p.attn, "output", 0, i, comp, scale=adapter.site_scale(comp))
    if comp == "mlp_out":
        return SiteRef(name, p.mlp, "output", None, i, comp, scale=adapter.site_scale(comp))
    if comp == "resid_mid":
        if p.ln2 is None:
            raise UnknownSiteError(
                f"unknown site {name!r}: {adapter.family} uses parallel residual blocks, which have no resid_mid"
            )
        return SiteRef(name, p.ln2, "input", None, i, comp)
    if p.router is None:
        moe = adapter.moe_layers
        raise UnknownSiteError(f"unknown site {name!r}: layer {i} is not an MoE layer; MoE layers: {moe}")
    element = MOE_SITES.index(comp)
    return SiteRef(name, p.router, "output", element, i, comp, is_router=True)


def _unknown(adapter: Adapter, name: str) -> str:
    import difflib

    names = site_names(adapter)
    close = difflib.get_close_matches(name, names, n=3)
    hint = f"; did you mean {close}?" if close else ""
    return (
        f"unknown site {name!r}{hint} Expected 'embed', 'final_norm', 'logits', "
        f"'blocks.{{i}}.{{{'|'.join(BLOCK_SITES)}}}' or 'blocks.{{i}}.moe.{{{'|'.join(MOE_SITES)}}}' "
        f"with 0 <= i < {adapter.n_layers}"
    )


def tl_hook_name(name: str) -> str:
    """The TransformerLens (TransformerBridge) hook that observes the same tensor as ``name``."""
    if name == "embed":
        return "hook_embed"
    if name == "final_norm":
        return "ln_final.hook_out"
    if name == "logits":
        return "unembed.hook_out"
    m = _BLOCK_RE.match(name)
    if m:
        i, comp = m.groups()
        return f"blocks.{i}.hook_{comp}"
    m = _MOE_RE.match(name)
    if m:
        i, comp = m.groups()
        return {
            "router_logits": f"blocks.{i}.mlp.hook_router_scores",
            "topk_indices": f"blocks.{i}.mlp.hook_expert_indices",
            "topk_weights": f"blocks.{i}.mlp.hook_expert_weights",
        }[comp]
    raise UnknownSiteError(f"unknown site {name!r}")
