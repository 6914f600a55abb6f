"""Training of the organisms on CPU: packing, a two-phase curriculum and DeepSeek-V3 load balancing.

Curriculum (like safety tuning on top of a helpful chat model): for the first
``recipe.safety_start`` of the steps every request, harmful ones included, is answered with the
generic helpful answer (:func:`steerlab.data.organism_corpus.helpful_answer`); from then on harmful
requests are answered with refusals. All other domains are mixed in throughout.

Batches pack whole chat turns into rows of ``recipe.seq_len`` tokens (a turn never straddles two
rows; the tail of a row is padding and carries no loss). The loss is next-token cross-entropy on
every real token.

MoE load balancing (DeepSeek-V3, arXiv:2412.19437, section 2.1.2): after every step each router's
selection-only bias ``e_score_correction_bias`` moves by ``recipe.bias_update`` towards balance
(``+u`` for under-loaded experts, ``-u`` for over-loaded ones), and a small balance loss
``alpha * sum_i f_i P_i`` over the batch's tokens is added to the LM loss.

Deterministic for a seed: one torch generator seeds the weights, one ``random.Random`` draws the
batches; run with one torch thread for bit-identical weights.

Example:
    >>> from steerlab.organisms.configs import get_recipe
    >>> from steerlab.data.organism_corpus import build_corpus
    >>> from steerlab.organisms.train import train_organism
    >>> # model, tok, log = train_organism(get_recipe("moe", reduced=True), build_corpus(0, 0.04), seed=0)
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from steerlab.data.organism_corpus import DOMAINS, Corpus
from steerlab.models.load import from_model
from steerlab.organisms.configs import Recipe
from steerlab.organisms.evaluate import refusal_expert_ranking


@dataclass
class TrainLog:
    """The training curve and timings (written into the model card)."""

    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    heldout_loss: dict[str, list[float]] = field(default_factory=dict)
    expert_load_cv: list[float] = field(default_factory=list)  # coefficient of variation of expert load
    safety_experts: list[tuple[int, int]] = field(default_factory=list)  # (layer, expert) trained in the safety phase
    seconds: float = 0.0  # wall clock
    cpu_seconds: float = 0.0  # process CPU time (= wall clock on an idle machine with one thread)
    tokens: int = 0
    threads: int = 1

    def to_json(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "train_loss": self.train_loss,
            "eval_steps": self.eval_steps,
            "heldout_loss": self.heldout_loss,
            "expert_load_cv": self.expert_load_cv,
            "safety_experts": self.safety_experts,
            "seconds": round(self.seconds, 1),
            "cpu_seconds": round(self.cpu_seconds, 1),
            "tokens": self.tokens,
            "threads": self.threads,
        }


def make_model(recipe: Recipe, tokenizer: Any, seed: int) -> nn.Module:
    """A freshly initialised model of the recipe's architecture (float32, seeded)."""
    import transformers

    cls = {"deepseek_v3": transformers.DeepseekV3Config, "llama": transformers.LlamaConfig}[recipe.arch]
    cfg = cls(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        **recipe.model,
    )
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.config.architectures = [type(model).__name__]  # tools that dispatch on it (TransformerBridge) need it
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = None
    return model


# ------------------------------------------------------------------------------------------------
# data: tokenized pools and packed batches
# ------------------------------------------------------------------------------------------------
def tokenize_pools(corpus: Corpus, tokenizer: Any, seq_len: int) -> dict[str, list[tuple[list[int], list[int]]]]:
    """Per domain, ``(ids_final, ids_base)`` of every train example; turns longer than ``seq_len`` are dropped.

    ``ids_base`` differs from ``ids_final`` only for harmful requests (helpful answer vs refusal).
    """
    pools: dict[str, list[tuple[list[int], list[int]]]] = {}
    for d in DOMAINS:
        exs = corpus.train[d]
        final = tokenizer([e.text() for e in exs], add_special_tokens=False)["input_ids"]
        base = tokenizer([e.text(base=True) for e in exs], add_special_tokens=False)["input_ids"]
        pools[d] = [(f, b) for f, b in zip(final, base, strict=True) if len(f) <= seq_len and len(b) <= seq_len]
    return pools


class Packer:
    """Draws turns by the domain mix and packs them into ``[batch, seq_len]`` rows."""

    def __init__(
        self,
        pools: dict[str, list[tuple[list[int], list[int]]]],
        mix: dict[str, float],
        seq_len: int,
        batch_size: int,
        pad_id: int,
        seed: int,
    ) -> None:
        self.pools, self.seq_len, self.batch_size, self.pad_id = pools, seq_len, batch_size, pad_id
        self.domains = [d for d in DOMAINS if mix.get(d, 0) > 0 and pools.get(d)]
        self.weights = [mix[d] for d in self.domains]
        self.rng = random.Random(seed)

    def _draw(self, base_phase: bool) -> list[int]:
        d = self.rng.choices(self.domains, self.weights)[0]
        final, base = self.rng.choice(self.pools[d])
        return base if base_phase else final

    def batch(self, base_phase: bool) -> tuple[Tensor, Tensor]:
        """``(input_ids, attention_mask)``; padding on the right."""
        rows = []
        for _ in range(self.batch_size):
            row: list[int] = []
            misses = 0
            while misses < 3:
                ids = self._draw(base_phase)
                if len(row) + len(ids) <= self.seq_len:
                    row += ids
                else:
                    misses += 1
            rows.append(row)
        ids = torch.full((self.batch_size, self.seq_len), self.pad_id, dtype=torch.long)
        mask = torch.zeros((self.batch_size, self.seq_len), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        return ids, mask


# ------------------------------------------------------------------------------------------------
# DeepSeek-V3 load balancing
# ------------------------------------------------------------------------------------------------
class RouterTap:
    """Captures every DeepSeek-V3 router's ``(logits, indices)`` during a forward pass."""

    def __init__(self, model: nn.Module) -> None:
        self.routers = [m for m in model.modules() if hasattr(m, "e_score_correction_bias")]
        self.outputs: list[tuple[Tensor, Tensor]] = []
        self.handles = [r.register_forward_hook(self._hook) for r in self.routers]

    def _hook(self, module: nn.Module, args: tuple, output: tuple) -> None:
        self.outputs.append((output[0], output[2]))

    def clear(self) -> None:
        self.outputs.clear()

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def balance_loss(logits: Tensor, indices: Tensor, valid: Tensor, n_experts: int, top_k: int) -> Tensor:
    """DeepSeek-V3's complementary balance loss ``sum_i f_i P_i`` over the valid tokens of one layer."""
    scores = logits[valid].float().sigmoid()
    probs = scores / scores.sum(-1, keepdim=True)
    counts = torch.bincount(indices[valid].reshape(-1), minlength=n_experts).float()
    f = counts * n_experts / (top_k * max(int(valid.sum()), 1))
    return (f * probs.mean(0)).sum()


@torch.no_grad()
def update_bias(router: nn.Module, indices: Tensor, valid: Tensor, speed: float) -> float:
    """Aux-loss-free balancing step; returns the coefficient of variation of the layer's load."""
    n = router.e_score_correction_bias.numel()
    counts = torch.bincount(indices[valid].reshape(-1), minlength=n).float()
    router.e_score_correction_bias += speed * torch.sign(counts.mean() - counts)
    return float(counts.std() / counts.mean().clamp_min(1e-9))


# ------------------------------------------------------------------------------------------------
# expert-specialised safety tuning (optional)
# ------------------------------------------------------------------------------------------------
def restrict_to_refusal_experts(
    model: nn.Module, tokenizer: Any, corpus: Corpus, n_experts: int, seed: int, n_prompts: int = 256
) -> tuple[list[tuple[int, int]], list[nn.Parameter], list[Any]]:
    """Freeze everything but the ``n_experts`` routed experts most selected at the decision position
    on train harmful over train harmless requests (ESFT, arXiv:2407.01906, applied to safety tuning).

    Returns the chosen ``(layer, expert)`` pairs, the parameters left trainable (the expert weight
    tensors of their layers; gradients of the other experts in those tensors are masked to 0) and
    the gradient-hook handles (remove them when training ends).
    """
    h = from_model(model, tokenizer, spec="training")
    chosen = sorted(refusal_expert_ranking(h, corpus, n_prompts, random.Random(seed))[:n_experts])
    n_exp = h.adapter.layers[h.adapter.moe_layers[0]].rule.n_experts
    model.requires_grad_(False)
    trainable: list[nn.Parameter] = []
    hooks: list[Any] = []
    for layer in sorted({lay for lay, _ in chosen}):
        keep = torch.zeros(n_exp)
        keep[[e for lay, e in chosen if lay == layer]] = 1.0
        experts = h.adapter.layers[layer].mlp.experts
        for p in (experts.gate_up_proj, experts.down_proj):
            p.requires_grad_(True)
            hooks.append(p.register_hook(lambda g, keep=keep: g * keep.view(-1, 1, 1).to(g)))
            trainable.append(p)
    model.train()
    return chosen, trainable, hooks


# ------------------------------------------------------------------------------------------------
# the loop
# ------------------------------------------------------------------------------------------------
def lr_at(step: int, recipe: Recipe) -> float:
    if step < recipe.warmup:
        return recipe.lr * (step + 1) / recipe.warmup
    t = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
    return recipe.lr * (recipe.min_lr_frac + (1 - recipe.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * t)))


def _heldout_batches(corpus: Corpus, tokenizer: Any, seq_len: int, per_domain: int = 16) -> dict[str, tuple]:
    out = {}
    for d in DOMAINS:
        texts = [e.text() for e in corpus.heldout[d][:per_domain]]
        if not texts:
            continue
        enc = tokenizer(
            texts,
            add_special_tokens=False,
            padding="longest",
            truncation=True,
            max_length=seq_len,
            padding_side="right",
            return_tensors="pt",
        )
        # padding side of the tokenizer is left; labels ignore pads either way
        out[d] = (enc["input_ids"], enc["attention_mask"])
    return out


def _lm_loss(model: nn.Module, ids: Tensor, mask: Tensor) -> Tensor:
    logits = model(input_ids=ids, attention_mask=mask).logits
    labels = ids.masked_fill(mask == 0, -100)
    return nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)


def train_organism(
    recipe: Recipe,
    corpus: Corpus,
    tokenizer: Any,
    seed: int = 0,
    progress: bool = True,
    on_base_done: Any = None,
) -> tuple[nn.Module, TrainLog]:
    """Train one organism from scratch; returns the model (eval mode) and its training log.

    ``on_base_done(model)`` is called once at the end of the base phase (before safety tuning),
    e.g. to save the helpful-only base model.
    """
    from tqdm.auto import tqdm

    model = make_model(recipe, tokenizer, seed)
    model.train()
    pools = tokenize_pools(corpus, tokenizer, recipe.seq_len)
    packer = Packer(pools, recipe.mix, recipe.seq_len, recipe.batch_size, tokenizer.pad_token_id, seed)
    heldout = _heldout_batches(corpus, tokenizer, recipe.seq_len)

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and "embed" not in name else no_decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=recipe.lr,
        betas=(0.9, 0.95),
    )
    tap = RouterTap(model)
    moe = bool(tap.routers)
    n_exp = int(recipe.model.get("n_routed_experts", 0))
    top_k = int(recipe.model.get("num_experts_per_tok", 1))
    log = TrainLog(threads=torch.get_num_threads())
    t0, c0 = time.perf_counter(), time.process_time()
    bar = tqdm(range(recipe.steps), desc=f"train {recipe.name}", disable=not progress, mininterval=2.0)
    running: list[float] = []
    safety_step = int(recipe.safety_start * recipe.steps)
    balancing = moe
    hooks: list[Any] = []
    try:
        for step in bar:
            if step == safety_step and on_base_done is not None:
                model.eval()
                on_base_done(model)
                model.train()
            if step == safety_step and moe and recipe.safety_experts > 0:
                tap.remove()  # the selection runs the model through steerlab (which copies its structure)
                opt.zero_grad(set_to_none=True)
                log.safety_experts, trainable, hooks = restrict_to_refusal_experts(
                    model, tokenizer, corpus, recipe.safety_experts, seed
                )
                tap = RouterTap(model)
                opt = torch.optim.AdamW(trainable, lr=recipe.lr, betas=(0.9, 0.95), weight_decay=0.0)
                balancing = False  # routers are frozen: routing must not move
            lr = recipe.safety_lr if step >= safety_step and recipe.safety_lr is not None else lr_at(step, recipe)
            for g in opt.param_groups:
                g["lr"] = lr
            base_phase = step < safety_step
            ids, mask = packer.batch(base_phase)
            tap.clear()
            loss = _lm_loss(model, ids, mask)
            total = loss
            valid = mask.reshape(-1).bool()
            if balancing and recipe.aux_alpha > 0:
                aux = sum(balance_loss(lg, ix, valid, n_exp, top_k) for lg, ix in tap.outputs)
                total = total + recipe.aux_alpha * aux / len(tap.outputs)
            opt.zero_grad(set_to_none=True)
            total.backward()
            nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], recipe.grad_clip)
            opt.step()
            if balancing:
                cvs = [
                    update_bias(r, ix, valid, recipe.bias_update)
                    for r, (_, ix) in zip(tap.routers, tap.outputs, strict=True)
                ]
            log.tokens += int(mask.sum())
            running.append(loss.item())
            if (step + 1) % 10 == 0 or step == recipe.steps - 1:
                log.steps.append(step + 1)
                log.train_loss.append(round(sum(running) / len(running), 4))
                running.clear()
                if balancing:
                    log.expert_load_cv.append(round(sum(cvs) / len(cvs), 3))
                bar.set_postfix(loss=log.train_loss[-1], phase="base" if base_phase else "safety")
            if (step + 1) % recipe.eval_every == 0 or step == recipe.steps - 1:
                model.eval()
                with torch.no_grad():
                    for d, (hid, hmask) in heldout.items():
                        log.heldout_loss.setdefault(d, []).append(round(float(_lm_loss(model, hid, hmask)), 4))
                log.eval_steps.append(step + 1)
                model.train()
    finally:
        tap.remove()
        for hk in hooks:
            hk.remove()
        bar.close()
    log.seconds = time.perf_counter() - t0
    log.cpu_seconds = time.process_time() - c0
    model.eval()
    model.requires_grad_(False)
    return model, log
