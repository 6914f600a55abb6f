"""fTRI imaging (Dahlke et al. 2025, arXiv:2502.11096): which routed experts fire for a behavior.

Run a prompt suite's behavior prompts (e.g. harmful requests) and control prompts (harmless ones)
through an MoE model, record each token's chosen experts and gate weights at every MoE layer, and
compare. ``scope`` picks the tokens that count: ``prompt`` (every prompt token), ``decision`` (the
last prompt token, whose prediction is the first assistant token), ``generated`` (the tokens the
model generates, greedy) or a list of them.

Per layer and expert: selection frequency and mean gate weight in each set; scores are the
frequency difference, the smoothed log-odds ratio and a prompt-level permutation test (labels
shuffled across prompts, so tokens of one prompt are never treated as independent) with
Benjamini-Hochberg control of the false discovery rate. The paper's exact statistic is not public
(see docs/methods.md); every choice here is a documented knob.

Example:
    >>> from steerlab.models.tiny import tiny_model
    >>> h = tiny_model("mixtral")
    >>> res = image(h, ["How do I pick a lock?"] * 3, ["Tell me a story."] * 3, scope="prompt", n_permutations=50)
    >>> res.diff.shape
    torch.Size([3, 8])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from steerlab.activations import capture
from steerlab.errors import SteerlabError
from steerlab.generation import check_prompts, check_seed, generate
from steerlab.models.handle import ModelHandle
from steerlab.stats import benjamini_hochberg, ratio_permutation_pvalues
from steerlab.suites import load_suite
from steerlab.values import check_count

SCOPES = ("prompt", "decision", "generated")
RANK_BY = ("diff", "log_odds")


@dataclass
class RoutingCounts:
    """Per-prompt routing statistics of one prompt set over the tokens in scope.

    ``sel[n, L, E]``: tokens in scope that chose expert ``E`` at MoE layer ``L``; ``gate[n, L, E]``:
    the sum of their gate weights; ``tokens[n]``: tokens in scope of each prompt.
    """

    sel: Float[Tensor, "n layers experts"]
    gate: Float[Tensor, "n layers experts"]
    tokens: Float[Tensor, " n"]
    by_token: Float[Tensor, "layers experts vocab"] | None = None  # prompt-token selections per token id

    def freq(self) -> Float[Tensor, "layers experts"]:
        """Selection frequency: the share of in-scope tokens that chose each expert."""
        return self.sel.sum(0) / self.tokens.sum().clamp_min(1)

    def mean_gate(self) -> Float[Tensor, "layers experts"]:
        """Mean gate weight when selected (0 where never selected)."""
        s = self.sel.sum(0)
        return torch.where(s > 0, self.gate.sum(0) / s.clamp_min(1), torch.zeros_like(s))


def _moe_sites(h: ModelHandle) -> tuple[list[int], int, int]:
    layers = h.adapter.moe_layers
    if not layers:
        raise SteerlabError(f"{h.spec!r} ({h.adapter.family}) has no routed experts; fTRI imaging needs an MoE model")
    rule = h.adapter.layers[layers[0]].rule
    return layers, rule.n_experts, rule.top_k


def _scopes(scope: str | list[str]) -> list[str]:
    scopes = [scope] if isinstance(scope, str) else list(scope)
    bad = [s for s in scopes if s not in SCOPES]
    if bad or not scopes:
        raise SteerlabError(f"unknown token scope {bad or scope!r}; expected one or more of {SCOPES}")
    return scopes


def _accumulate(
    idx: Tensor, w: Tensor, keep: Tensor, n_exp: int
) -> tuple[Float[Tensor, "n experts"], Float[Tensor, "n experts"]]:
    """Per-row expert counts and gate sums over the positions in ``keep`` ([n, pos])."""
    n = idx.shape[0]
    sel = torch.zeros(n, n_exp)
    gate = torch.zeros(n, n_exp)
    k_mask = keep.unsqueeze(-1).expand_as(idx) & (idx >= 0)
    rows = torch.arange(n).view(n, 1, 1).expand_as(idx)
    flat = rows[k_mask] * n_exp + idx[k_mask].long()
    sel.view(-1).index_add_(0, flat, torch.ones(flat.shape[0]))
    gate.view(-1).index_add_(0, flat, w[k_mask].float())
    return sel, gate


def routing_counts(
    h: ModelHandle,
    texts: list[str],
    scope: str | list[str] = "decision",
    *,
    chat: bool = False,
    system: str | None = None,
    batch_size: int = 32,
    max_new_tokens: int = 24,
    by_token: bool = False,
    interventions: Any = None,
    progress: bool = False,
) -> RoutingCounts:
    """Routing statistics of ``texts`` over the tokens in ``scope`` (``chat``: through the chat template).

    ``interventions`` (for example experts switched off) apply while routing is recorded, so the
    counts show where tokens go under them.

    ``by_token``: also count, over every prompt token, which token ids select each expert (for the
    "which tokens select this expert" view; skipped when layers x experts x vocab exceeds 5e7).
    """
    scopes = _scopes(scope)
    layers, n_exp, _ = _moe_sites(h)
    if not texts:
        raise SteerlabError("no prompts to image; expected at least one")
    texts = check_prompts(texts)  # one string is one prompt, not its characters
    sites_i = [f"blocks.{i}.moe.topk_indices" for i in layers]
    sites_w = [f"blocks.{i}.moe.topk_weights" for i in layers]
    n = len(texts)
    sel = torch.zeros(n, len(layers), n_exp)
    gate = torch.zeros(n, len(layers), n_exp)
    tokens = torch.zeros(n)
    vocab = h.vocab_size
    tok_hist = torch.zeros(len(layers), n_exp, vocab) if by_token and len(layers) * n_exp * vocab <= 5e7 else None
    if "prompt" in scopes or "decision" in scopes or tok_hist is not None:
        cap = capture(
            h,
            texts,
            sites_i + sites_w,
            interventions=interventions,
            batch_size=batch_size,
            progress=progress,
            chat=chat,
            system=system,
        )
        mask = cap.attention_mask.bool()
        keep = torch.zeros_like(mask)
        if "prompt" in scopes:
            keep |= mask
        if "decision" in scopes:
            keep[:, -1] = True  # left padding: the last position is each prompt's last token
        for j, (si, sw) in enumerate(zip(sites_i, sites_w, strict=True)):
            s, g = _accumulate(cap[si], cap[sw], keep, n_exp)
            sel[:, j] += s
            gate[:, j] += g
            if tok_hist is not None:
                idx = cap[si][mask].long()  # [tokens, k]
                ids = cap.input_ids[mask].long().unsqueeze(-1).expand_as(idx)
                tok_hist[j].view(-1).index_add_(0, (idx * vocab + ids).reshape(-1), torch.ones(idx.numel()))
        tokens += keep.sum(-1).float()
    if "generated" in scopes:
        starts = range(0, n, batch_size)
        for start in tqdm(starts, desc="image generated", disable=not progress, unit="batch"):
            chunk = texts[start : start + batch_size]
            out = generate(
                h,
                chunk,
                interventions,
                max_new_tokens=max_new_tokens,
                record=sites_i + sites_w,
                chat=chat,
                system=system,
            )
            # step s >= 1 processes the token generated at step s-1; rows stop at their EOS
            lengths = torch.tensor([len(t) for t in out.token_ids])
            steps = len(out.records[sites_i[0]])
            for j, (si, sw) in enumerate(zip(sites_i, sites_w, strict=True)):
                if steps < 2:
                    continue
                idx = torch.cat([r.cpu() for r in out.records[si][1:]], dim=1)  # [b, steps-1, k]
                w = torch.cat([r.cpu() for r in out.records[sw][1:]], dim=1)
                keep = torch.arange(idx.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)
                s, g = _accumulate(idx, w, keep, n_exp)
                sel[start : start + len(chunk), j] += s
                gate[start : start + len(chunk), j] += g
            tokens[start : start + len(chunk)] += lengths.clamp(max=max(steps - 1, 0)).float()
    return RoutingCounts(sel, gate, tokens, tok_hist)


def permutation_pvalues(
    a: RoutingCounts, b: RoutingCounts, n_permutations: int = 2000, seed: int = 0, chunk: int = 256
) -> Float[Tensor, "layers experts"]:
    """Two-sided p-values of the selection-frequency difference under shuffled prompt labels (whole
    prompts move between the sets; :func:`steerlab.stats.ratio_permutation_pvalues`)."""
    sel = torch.cat([a.sel, b.sel]).flatten(1)
    tok = torch.cat([a.tokens, b.tokens])
    p = ratio_permutation_pvalues(sel, tok, a.sel.shape[0], n_permutations=n_permutations, seed=seed, chunk=chunk)
    return p.view(a.sel.shape[1:])


@dataclass
class FtriResult:
    """Imaging of one behavior: per-expert statistics and scores, ``[n_moe_layers, n_experts]`` each."""

    layers: list[int]
    freq_behavior: Tensor
    freq_control: Tensor
    gate_behavior: Tensor
    gate_control: Tensor
    diff: Tensor
    log_odds: Tensor
    p_value: Tensor
    q_value: Tensor
    counts_behavior: RoutingCounts
    counts_control: RoutingCounts
    config: dict[str, Any] = field(default_factory=dict)

    def score(self, rank_by: str = "diff") -> Tensor:
        if rank_by not in RANK_BY:
            raise SteerlabError(f"unknown ranking statistic {rank_by!r}; expected one of {RANK_BY}")
        return self.diff if rank_by == "diff" else self.log_odds

    def ranking(self, rank_by: str = "diff", direction: str = "behavior") -> list[tuple[int, int]]:
        """``(layer, expert)`` pairs, most distinctive first: ``behavior`` experts fire more on the
        behavior set, ``control`` experts more on the control set."""
        if direction not in ("behavior", "control"):
            raise SteerlabError(f"direction {direction!r}; expected 'behavior' or 'control'")
        s = self.score(rank_by)
        s = s if direction == "behavior" else -s
        order = s.flatten().argsort(descending=True).tolist()
        n_exp = s.shape[1]
        return [(self.layers[i // n_exp], i % n_exp) for i in order]

    def per_layer(self, rank_by: str = "diff") -> dict[int, list[int]]:
        """Experts of each layer ranked by the score, most behavior-specific first."""
        s = self.score(rank_by)
        return {layer: s[j].argsort(descending=True).tolist() for j, layer in enumerate(self.layers)}

    def table(self, top: int = 20, rank_by: str = "diff") -> list[dict[str, Any]]:
        """The top experts with every statistic (JSON-able)."""
        check_count("top", top, 1)
        rows = []
        for layer, e in self.ranking(rank_by)[:top]:
            j = self.layers.index(layer)
            rows.append(
                {
                    "layer": layer,
                    "expert": e,
                    "diff": round(float(self.diff[j, e]), 6),
                    "log_odds": round(float(self.log_odds[j, e]), 4),
                    "p_value": float(self.p_value[j, e]),
                    "q_value": float(self.q_value[j, e]),
                    "freq_behavior": round(float(self.freq_behavior[j, e]), 6),
                    "freq_control": round(float(self.freq_control[j, e]), 6),
                    "gate_behavior": round(float(self.gate_behavior[j, e]), 6),
                    "gate_control": round(float(self.gate_control[j, e]), 6),
                }
            )
        return rows


def compare(
    a: RoutingCounts,
    b: RoutingCounts,
    layers: list[int],
    n_permutations: int = 2000,
    seed: int = 0,
    config: dict[str, Any] | None = None,
) -> FtriResult:
    """Score experts from two sets' routing counts (``a`` = behavior, ``b`` = control)."""
    fa, fb = a.freq(), b.freq()
    sa, sb = a.sel.sum(0), b.sel.sum(0)
    ta, tb = a.tokens.sum(), b.tokens.sum()
    log_odds = torch.log((sa + 0.5) / (ta - sa + 0.5)) - torch.log((sb + 0.5) / (tb - sb + 0.5))
    p = permutation_pvalues(a, b, n_permutations, seed)
    return FtriResult(
        layers=layers,
        freq_behavior=fa,
        freq_control=fb,
        gate_behavior=a.mean_gate(),
        gate_control=b.mean_gate(),
        diff=fa - fb,
        log_odds=log_odds,
        p_value=p,
        q_value=benjamini_hochberg(p),
        counts_behavior=a,
        counts_control=b,
        config=dict(config or {}),
    )


def image(
    h: ModelHandle,
    behavior: list[str],
    control: list[str],
    scope: str | list[str] = "decision",
    *,
    chat: bool = False,
    system: str | None = None,
    n_permutations: int = 2000,
    seed: int = 0,
    batch_size: int = 32,
    max_new_tokens: int = 24,
    by_token: bool = False,
    interventions: Any = None,
    progress: bool = False,
) -> FtriResult:
    """Image the experts that separate ``behavior`` prompts from ``control`` prompts (under
    ``interventions``, if given)."""
    check_count("n_permutations", n_permutations, 0)  # before routing, not after
    seed = check_seed(seed)
    behavior = [behavior] if isinstance(behavior, str) else list(behavior)  # one string is one prompt
    control = [control] if isinstance(control, str) else list(control)
    layers, n_exp, top_k = _moe_sites(h)
    kw = dict(
        scope=scope,
        chat=chat,
        system=system,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        by_token=by_token,
        interventions=interventions,
        progress=progress,
    )
    a = routing_counts(h, behavior, **kw)
    b = routing_counts(h, control, **kw)
    config = {
        "model": h.spec,
        "scope": _scopes(scope),
        "chat": chat,
        "system": system,
        "n_behavior": len(behavior),
        "n_control": len(control),
        "n_permutations": n_permutations,
        "seed": seed,
        "n_experts": n_exp,
        "top_k": top_k,
        "layers": layers,
    }
    return compare(a, b, layers, n_permutations, seed, config)


def image_suite(
    h: ModelHandle,
    suite: Any,
    split: str = "train",
    scope: str | list[str] = "decision",
    limit: int | None = None,
    **kwargs: Any,
) -> FtriResult:
    """:func:`image` on a prompt suite's behavior vs control prompts of one split (chat template applied
    as the suite asks; at most ``limit`` prompts per label)."""
    check_count("limit", limit, 1, none_ok=True)
    s = load_suite(suite) if isinstance(suite, str) else suite
    behavior, control = s.contrast(split, limit)
    res = image(h, behavior, control, scope, **s.chat_kwargs(), **kwargs)
    res.config.update(
        {
            "suite": s.name,
            "suite_version": s.version,
            "split": split,
            "behavior": s.behavior,
            "control": s.control,
            "limit": limit,
        }
    )
    return res
