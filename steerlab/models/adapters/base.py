"""The adapter layer: the only place that knows how each architecture is laid out.

An :class:`Adapter` resolves, for one loaded Hugging Face model, the modules behind each site
(decoder layers, attention, MLP / MoE block, the second norm, routers) and the routing rule of
each MoE layer. Analyses find sites, layers and routers through the adapter, not by module name. Names are
read where they are the interface: LoRA targets (``steerlab.security.vectors``; peft matches modules by name),
the regions' parameter scopes (``steerlab.regions.select.in_scope``: a parameter inside a numbered
``layers``/``h``/``blocks`` container, tested to equal the adapter's decoder layers on every tiny
architecture) and the organisms' routed-parameter count.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor, nn

from steerlab.errors import SteerlabError
from steerlab.models.adapters.routing import RoutingRule


@dataclass
class LayerParts:
    """Modules of one decoder layer."""

    index: int
    layer: nn.Module
    attn: nn.Module
    mlp: nn.Module
    ln2: nn.Module | None  # None for parallel-residual blocks (GPT-NeoX, GPT-J): no resid_mid
    router: nn.Module | None = None
    rule: RoutingRule | None = None
    has_shared_expert: bool = False


@dataclass
class Adapter:
    """Structure of one model, resolved once at load time."""

    family: ClassVar[str] = "generic"
    model_types: ClassVar[tuple[str, ...]] = ()
    layers_path: ClassVar[str] = "model.layers"
    embed_path: ClassVar[str] = "model.embed_tokens"
    final_norm_path: ClassVar[str] = "model.norm"
    attn_names: ClassVar[tuple[str, ...]] = ("self_attn", "attn", "attention")
    mlp_names: ClassVar[tuple[str, ...]] = ("mlp", "block_sparse_moe", "feed_forward")
    ln2_names: ClassVar[tuple[str, ...]] = ("post_attention_layernorm", "ln_2")
    router_names: ClassVar[tuple[str, ...]] = ("gate", "router")

    model: nn.Module
    layers: list[LayerParts] = field(default_factory=list)

    def __post_init__(self) -> None:
        cfg = self.model.config
        self.embed = _get(self.model, self.embed_path)
        self.final_norm = _get(self.model, self.final_norm_path)
        self.lm_head = self.model.get_output_embeddings()
        decoder = _get(self.model, self.layers_path)
        parallel = self.parallel_residual(cfg)
        for i, layer in enumerate(decoder):
            attn = _first_child(layer, self.attn_names, f"attention of layer {i}")
            mlp = _first_child(layer, self.mlp_names, f"MLP of layer {i}")
            ln2 = None if parallel else _first_child(layer, self.ln2_names, f"second norm of layer {i}")
            parts = LayerParts(index=i, layer=layer, attn=attn, mlp=mlp, ln2=ln2)
            router = _maybe_child(mlp, self.router_names)
            if router is not None and self.is_router(router):
                parts.router = router
                parts.rule = self.routing_rule(cfg, router)
                parts.has_shared_expert = any(
                    hasattr(mlp, n) for n in ("shared_expert", "shared_experts", "shared_mlp")
                )
            self.layers.append(parts)

    # -- family hooks ---------------------------------------------------------------------------
    def parallel_residual(self, cfg: Any) -> bool:
        return False

    def is_router(self, module: nn.Module) -> bool:
        return isinstance(getattr(module, "weight", None), Tensor) and hasattr(module, "top_k")

    def routing_rule(self, cfg: Any, router: nn.Module) -> RoutingRule:
        raise SteerlabError(f"{self.family} adapter has no routing rule")

    def router_bias(self, router: nn.Module) -> Tensor | None:
        return None

    def site_scale(self, component: str) -> float:
        """Factor between a module's output and the site's value (1 unless the family rescales)."""
        return 1.0

    # -- derived facts -----------------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def moe_layers(self) -> list[int]:
        return [p.index for p in self.layers if p.router is not None]

    @property
    def is_moe(self) -> bool:
        return bool(self.moe_layers)

    def moe_info(self) -> dict[str, Any] | None:
        if not self.is_moe:
            return None
        rule = self.layers[self.moe_layers[0]].rule
        assert rule is not None
        return {
            "n_experts": rule.n_experts,
            "top_k": rule.top_k,
            "layers": self.moe_layers,
            "routing": rule.score,
            "shared_experts": any(p.has_shared_expert for p in self.layers),
        }


def _get(root: nn.Module, path: str) -> Any:
    obj: Any = root
    for part in path.split("."):
        if not hasattr(obj, part):
            raise SteerlabError(f"model {type(root).__name__} has no module at {path!r}")
        obj = getattr(obj, part)
    return obj


def _maybe_child(module: nn.Module, names: tuple[str, ...]) -> nn.Module | None:
    for n in names:
        child = getattr(module, n, None)
        if isinstance(child, nn.Module):
            return child
    return None


def _first_child(module: nn.Module, names: tuple[str, ...], what: str) -> nn.Module:
    child = _maybe_child(module, names)
    if child is None:
        raise SteerlabError(f"cannot find the {what} in {type(module).__name__}; looked for {names}")
    return child
