"""One adapter per architecture family, registered by ``config.model_type``."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from steerlab.errors import SteerlabError
from steerlab.models.adapters.base import Adapter
from steerlab.models.adapters.routing import RoutingRule

ADAPTERS: dict[str, type[Adapter]] = {}


def register(cls: type[Adapter]) -> type[Adapter]:
    for mt in cls.model_types:
        ADAPTERS[mt] = cls
    return cls


def adapter_for(model: nn.Module) -> Adapter:
    """Build the adapter of a loaded Hugging Face causal LM."""
    mt = getattr(model.config, "model_type", None)
    if mt not in ADAPTERS:
        raise SteerlabError(f"architecture {mt!r} is not supported; supported model types: {sorted(ADAPTERS)}")
    return ADAPTERS[mt](model)


@register
class LlamaLike(Adapter):
    """Llama, Mistral, Qwen2/3, OLMo: pre-norm blocks under ``model.layers``."""

    family = "llama"
    model_types = ("llama", "mistral", "qwen2", "qwen3", "olmo")


@register
class GPT2(Adapter):
    family = "gpt2"
    model_types = ("gpt2",)
    layers_path = "transformer.h"
    embed_path = "transformer.wte"
    final_norm_path = "transformer.ln_f"


@register
class GPTNeoX(Adapter):
    """GPT-NeoX / Pythia. With ``use_parallel_residual`` (the default) there is no resid_mid."""

    family = "gpt_neox"
    model_types = ("gpt_neox",)
    layers_path = "gpt_neox.layers"
    embed_path = "gpt_neox.embed_in"
    final_norm_path = "gpt_neox.final_layer_norm"

    def parallel_residual(self, cfg: Any) -> bool:
        return bool(getattr(cfg, "use_parallel_residual", True))


@register
class Mixtral(Adapter):
    """Mixtral: softmax over all experts, top-k, always renormalized over the k (fp32 weights)."""

    family = "mixtral"
    model_types = ("mixtral",)

    def routing_rule(self, cfg: Any, router: nn.Module) -> RoutingRule:
        return RoutingRule(
            n_experts=router.num_experts, top_k=router.top_k, norm_topk=True, weights_dtype_follows_logits=False
        )


@register
class QwenMoE(Adapter):
    """Qwen2-MoE (with a gated shared expert), Qwen3-MoE and OLMoE: softmax, top-k, optional norm."""

    family = "qwen_moe"
    model_types = ("qwen2_moe", "qwen3_moe", "olmoe")

    def routing_rule(self, cfg: Any, router: nn.Module) -> RoutingRule:
        return RoutingRule(n_experts=router.num_experts, top_k=router.top_k, norm_topk=bool(router.norm_topk_prob))


@register
class DeepSeekV2(Adapter):
    """DeepSeek-V2: softmax, greedy or group-limited greedy (group max), routed scaling, shared experts."""

    family = "deepseek_v2"
    model_types = ("deepseek_v2",)

    def routing_rule(self, cfg: Any, router: nn.Module) -> RoutingRule:
        group = "max" if router.topk_method == "group_limited_greedy" else None
        return RoutingRule(
            n_experts=router.num_experts,
            top_k=router.top_k,
            scaling=float(router.routed_scaling_factor),
            group=group,
            n_group=int(router.num_group or 1),
            topk_group=int(router.topk_group or 1),
            sorted_topk=False,
        )


@register
class DeepSeekV3(Adapter):
    """DeepSeek-V3: sigmoid scores, selection-only correction bias, group-limited (top-2 sum), shared experts."""

    family = "deepseek_v3"
    model_types = ("deepseek_v3",)

    def routing_rule(self, cfg: Any, router: nn.Module) -> RoutingRule:
        return RoutingRule(
            n_experts=router.num_experts,
            top_k=router.top_k,
            score="sigmoid",
            norm_topk=bool(router.norm_topk_prob),
            scaling=float(router.routed_scaling_factor),
            group="top2sum",
            n_group=int(router.num_group),
            topk_group=int(router.topk_group),
            sorted_topk=False,
        )

    def router_bias(self, router: nn.Module) -> Tensor | None:
        return router.e_score_correction_bias


class _GraniteScales(Adapter):
    """Granite scales embeddings, each residual update and the logits; sites report the scaled values."""

    def site_scale(self, component: str) -> float:
        cfg = self.model.config
        if component in ("attn_out", "mlp_out"):
            return float(cfg.residual_multiplier)
        if component == "embed":
            return float(cfg.embedding_multiplier)
        if component == "logits":
            return 1.0 / float(cfg.logits_scaling)
        return 1.0


@register
class Granite(_GraniteScales, LlamaLike):
    """Granite (dense): Llama layout with embedding, residual and logit multipliers."""

    family = "granite"
    model_types = ("granite",)


@register
class GraniteMoE(_GraniteScales):
    """Granite-MoE: top-k on raw logits, softmax over the k chosen; Granite's multipliers."""

    family = "granitemoe"
    model_types = ("granitemoe",)

    def routing_rule(self, cfg: Any, router: nn.Module) -> RoutingRule:
        return RoutingRule(
            n_experts=router.num_experts, top_k=router.top_k, score="topk_logits", weights_dtype_follows_logits=False
        )
