"""Tiny from-config models of every supported architecture (random weights) for plumbing tests.

Example:
    >>> from steerlab.models.tiny import tiny_model, TINY_ARCHITECTURES
    >>> h = tiny_model("mixtral")
    >>> h.info()["moe"]["n_experts"]
    8
"""

from __future__ import annotations

from typing import Any

import torch

from steerlab._paths import shared_dir
from steerlab.errors import ModelSpecError
from steerlab.models.handle import ModelHandle
from steerlab.models.load import from_model

_COMMON = dict(vocab_size=512, hidden_size=64, num_attention_heads=4, num_hidden_layers=3, max_position_embeddings=256)
_MOE = dict(num_experts_per_tok=2, intermediate_size=96)

TINY_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", dict(**_COMMON, intermediate_size=128, num_key_value_heads=2)),
    "gpt2": ("GPT2Config", dict(vocab_size=512, n_embd=64, n_head=4, n_layer=3, n_positions=256)),
    "gpt_neox": ("GPTNeoXConfig", dict(**_COMMON, intermediate_size=128)),
    "mixtral": ("MixtralConfig", dict(**_COMMON, **_MOE, num_key_value_heads=2, num_local_experts=8)),
    "qwen2_moe": (
        "Qwen2MoeConfig",
        dict(
            **_COMMON,
            **_MOE,
            num_key_value_heads=2,
            num_experts=8,
            moe_intermediate_size=48,
            shared_expert_intermediate_size=96,
            norm_topk_prob=False,
        ),
    ),
    "qwen3_moe": (
        "Qwen3MoeConfig",
        dict(
            **_COMMON,
            **_MOE,
            num_key_value_heads=2,
            num_experts=8,
            moe_intermediate_size=48,
            norm_topk_prob=True,
            head_dim=16,
        ),
    ),
    "olmoe": ("OlmoeConfig", dict(**_COMMON, **_MOE, num_key_value_heads=2, num_experts=8, norm_topk_prob=False)),
    "deepseek_v2": (
        "DeepseekV2Config",
        dict(
            **_COMMON,
            **_MOE,
            num_key_value_heads=4,
            n_routed_experts=8,
            n_shared_experts=1,
            moe_intermediate_size=48,
            first_k_dense_replace=1,
            topk_method="group_limited_greedy",
            n_group=4,
            topk_group=2,
            routed_scaling_factor=1.0,
            kv_lora_rank=16,
            q_lora_rank=None,
            qk_rope_head_dim=8,
            qk_nope_head_dim=8,
            v_head_dim=16,
        ),
    ),
    "deepseek_v3": (
        "DeepseekV3Config",
        dict(
            **_COMMON,
            **_MOE,
            num_key_value_heads=4,
            n_routed_experts=8,
            n_shared_experts=1,
            moe_intermediate_size=48,
            first_k_dense_replace=1,
            n_group=4,
            topk_group=2,
            routed_scaling_factor=2.5,
            norm_topk_prob=True,
            kv_lora_rank=16,
            q_lora_rank=32,
            qk_rope_head_dim=8,
            qk_nope_head_dim=8,
            v_head_dim=16,
        ),
    ),
    "granitemoe": (
        "GraniteMoeConfig",
        dict(**_COMMON, **_MOE, num_key_value_heads=2, num_local_experts=8, residual_multiplier=0.5,
             embedding_multiplier=2.0, logits_scaling=2.0),
    ),
    "mistral": ("MistralConfig", dict(**_COMMON, intermediate_size=128, num_key_value_heads=2, sliding_window=None)),
    "qwen2": ("Qwen2Config", dict(**_COMMON, intermediate_size=128, num_key_value_heads=2)),
    "qwen3": ("Qwen3Config", dict(**_COMMON, intermediate_size=128, num_key_value_heads=2, head_dim=16)),
    "granite": (
        "GraniteConfig",
        dict(**_COMMON, intermediate_size=128, num_key_value_heads=2, residual_multiplier=0.5,
             embedding_multiplier=2.0, logits_scaling=2.0),
    ),
}
TINY_ARCHITECTURES = tuple(TINY_CONFIGS)
MOE_ARCHITECTURES = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v2", "deepseek_v3", "granitemoe")


def tiny_model(arch: str, seed: int = 0, **overrides: Any) -> ModelHandle:
    """Build a tiny randomly initialised model of ``arch`` with the stories260K tokenizer (vocab 512)."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if arch not in TINY_CONFIGS:
        raise ModelSpecError(f"unknown tiny architecture {arch!r}; expected one of {list(TINY_CONFIGS)}")
    cls_name, kwargs = TINY_CONFIGS[arch]
    cfg = getattr(transformers, cls_name)(
        **{"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, **kwargs, **overrides}
    )
    cfg.architectures = [cls_name.removesuffix("Config") + ("LMHeadModel" if arch == "gpt2" else "ForCausalLM")]
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():  # give routers and biases some spread so routing is not degenerate
        for name, p in model.named_parameters():
            if name.endswith("gate.weight") or name.endswith("router.weight"):
                p.normal_(0, 0.5)
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.normal_(0, 0.05)
    tok = AutoTokenizer.from_pretrained(str(shared_dir() / "models" / "stories260K"))
    return from_model(model, tok, spec=f"tiny:{arch}")
