"""Organism recipes: architecture, data mix and training schedule, one frozen dataclass each.

``organism:moe`` is a DeepSeek-V3 architecture (``DeepseekV3ForCausalLM``): sigmoid router scores,
a selection-only correction bias, one always-on shared expert and fine-grained routed experts,
the routing family of DeepSeek-R1 on which MoTE was shown. Top-1 routing with
``norm_topk_prob=False`` keeps the gate weight ``sigmoid(logit)`` differentiable (with one expert
and normalisation it would be the constant 1 and the router would get no gradient). Load is
balanced the DeepSeek-V3 way: the auxiliary-loss-free bias update plus a small sequence-wise
balance loss (see :mod:`steerlab.organisms.train`).

``organism:dense`` is a Llama model of similar active size: its MLP width equals the shared plus
one routed expert of the MoE.

Example:
    >>> from steerlab.organisms.configs import get_recipe
    >>> r = get_recipe("moe")
    >>> r.arch, r.model["n_routed_experts"], r.model["num_experts_per_tok"]
    ('deepseek_v3', 32, 1)
    >>> get_recipe("moe", reduced=True).steps < r.steps
    True
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from steerlab.errors import SteerlabError
from steerlab.models.load import read_record  # noqa: F401  (the build record lives with model loading)

ORGANISM_NAMES = ("moe", "dense")

# share of training examples per domain (by examples, not tokens)
DEFAULT_MIX = {
    "stories": 0.18,
    "arithmetic": 0.14,
    "code": 0.16,
    "facts": 0.11,
    "harmless": 0.22,
    "harmful": 0.19,
}


@dataclass(frozen=True)
class Recipe:
    """Everything that decides an organism's weights (with the seed and the machine's stdlib)."""

    name: str
    arch: str  # "deepseek_v3" or "llama"
    model: dict[str, Any]
    vocab_size: int = 4096
    seq_len: int = 256
    batch_size: int = 16
    steps: int = 1600
    lr: float = 3e-3
    min_lr_frac: float = 0.1
    warmup: int = 60
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    safety_start: float = 0.5  # fraction of steps after which harmful requests are answered with refusals
    # 0: the safety phase trains every parameter; N > 0: only the N routed experts most selected at the
    # decision position on harmful over harmless requests (expert-specialised fine-tuning, MoE only)
    safety_experts: int = 0
    safety_lr: float | None = None  # constant learning rate of the safety phase (None: follow the schedule)
    mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    data_scale: float = 1.0
    # DeepSeek-V3 load balancing: bias update speed (aux-loss-free) and sequence-wise aux loss weight
    bias_update: float = 1e-3
    aux_alpha: float = 1e-3
    save_dtype: str = "float32"  # dtype of the committed safetensors (the model computes in float32)
    eval_every: int = 100

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_D = 192
_MOE_MODEL = dict(
    hidden_size=_D,
    num_hidden_layers=6,
    num_attention_heads=6,
    num_key_value_heads=6,
    n_routed_experts=32,
    n_shared_experts=1,
    moe_intermediate_size=64,
    intermediate_size=256,
    num_experts_per_tok=1,
    norm_topk_prob=False,
    routed_scaling_factor=1.0,
    n_group=1,
    topk_group=1,
    first_k_dense_replace=0,
    q_lora_rank=None,
    kv_lora_rank=96,
    qk_rope_head_dim=16,
    qk_nope_head_dim=16,
    v_head_dim=32,
    rope_interleave=True,
    num_mtp_layers=0,
    max_position_embeddings=1024,
    tie_word_embeddings=False,
)
_DENSE_MODEL = dict(
    hidden_size=_D,
    num_hidden_layers=6,
    num_attention_heads=6,
    num_key_value_heads=6,
    intermediate_size=128,
    max_position_embeddings=1024,
    tie_word_embeddings=False,
)

RECIPES: dict[str, Recipe] = {
    "moe": Recipe(
        name="moe",
        arch="deepseek_v3",
        model=_MOE_MODEL,
        save_dtype="float16",
        steps=1000,
        safety_start=0.6,
        safety_experts=8,
        safety_lr=2e-3,
    ),
    "dense": Recipe(name="dense", arch="llama", model=_DENSE_MODEL, steps=1000, safety_start=0.6),
}

# A reduced organism for the end-to-end test: same code path, minutes instead of tens of minutes.
_REDUCED = dict(
    vocab_size=1024,
    seq_len=192,
    batch_size=8,
    steps=120,
    warmup=10,
    data_scale=0.04,
    eval_every=40,
    safety_experts=2,
    safety_start=0.7,
)
_REDUCED_MODEL = {
    "moe": dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        n_routed_experts=8,
        moe_intermediate_size=32,
        kv_lora_rank=32,
        qk_rope_head_dim=8,
        qk_nope_head_dim=8,
        v_head_dim=16,
    ),
    "dense": dict(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, intermediate_size=64
    ),
}


def get_recipe(name: str, reduced: bool = False, **overrides: Any) -> Recipe:
    """The recipe of organism ``name`` (``moe`` or ``dense``); ``reduced`` shrinks it for tests."""
    if name not in RECIPES:
        raise SteerlabError(f"unknown organism {name!r}; expected one of {list(ORGANISM_NAMES)}")
    r = RECIPES[name]
    if reduced:
        r = dataclasses.replace(r, name=f"{name}-reduced", model={**r.model, **_REDUCED_MODEL[name]}, **_REDUCED)
    model_over = overrides.pop("model", None)
    if model_over:
        r = dataclasses.replace(r, model={**r.model, **model_over})
    bad = [k for k in overrides if k not in {f.name for f in dataclasses.fields(Recipe)}]
    if bad:
        raise SteerlabError(
            f"unknown recipe fields {bad}; expected fields of Recipe: {[f.name for f in dataclasses.fields(Recipe)]}"
        )
    return dataclasses.replace(r, **overrides) if overrides else r
