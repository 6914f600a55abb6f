"""Per-step cost of steerlab's top-H sampler against transformers' top-p and top-H warpers.

Everything runs side by side in one process, interleaved round by round, single-threaded; the numbers
that matter are the ratios (the machine is shared and absolute times are noisy). One "step" is what a
logits processor costs per generated token: ``TopH(...).filter_logits(scores)`` (validation, the rule,
the masked output) against ``TopPLogitsWarper(0.9)(ids, scores)`` and ``TopHLogitsWarper(alpha)(ids,
scores)``, at temperature 1 (so neither side pays a temperature division).

Logits are synthetic and LM-like: per row a Zipf profile ``-s log(rank)`` (``s ~ U(1.1, 2.0)``) plus
Gaussian noise (sd 1), randomly permuted over the vocabulary; entropies range from about 1 to 6 nats
(mean about 3), like a small LM's next-token distributions at T = 1.

Floors (issue 3), for the default variant: at most 1.3x top-p at every batch and vocabulary, and no
slower than transformers' top-H at batch 64. ``--check`` exits with status 1 when one is broken.

Run:
    .venv/bin/python benchmarks/sampling.py            # table
    .venv/bin/python benchmarks/sampling.py --json     # ratios, keys ending in _ratio
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable

import torch

BATCHES = (1, 8, 64)
VOCABS = (32000, 50257, 152064)
TOP_P = 0.9
FLOOR_VS_TOP_P = 1.3
FLOOR_VS_HF_TOP_H_AT_64 = 1.0


def lm_like_logits(batch: int, vocab: int, seed: int = 0) -> torch.Tensor:
    """Zipf-shaped logits with noise, permuted per row (see the module docstring)."""
    g = torch.Generator().manual_seed(seed)
    slope = 1.1 + 0.9 * torch.rand(batch, 1, generator=g)
    rank = torch.arange(1, vocab + 1, dtype=torch.float32)
    x = -slope * rank.log() + torch.randn(batch, vocab, generator=g)
    perm = torch.argsort(torch.rand(batch, vocab, generator=g), dim=-1)
    return torch.gather(x, 1, perm).contiguous()


def time_interleaved(fns: dict[str, Callable[[], object]], budget_s: float) -> dict[str, float]:
    """Median milliseconds per call; one call of each function per round, rounds until the budget."""
    for f in fns.values():
        f()
    t0 = time.perf_counter()
    for f in fns.values():
        f()
    per_round = time.perf_counter() - t0
    rounds = int(min(200, max(15, math.ceil(budget_s / max(per_round, 1e-9)))))
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}


def run(
    batches: tuple[int, ...] = BATCHES,
    vocabs: tuple[int, ...] = VOCABS,
    alpha: float = 0.4,
    budget_s: float = 2.0,
) -> dict:
    from transformers import TopHLogitsWarper, TopPLogitsWarper

    from steerlab.sampling.top_h import VARIANTS, TopH

    default = TopH().variant
    ids = torch.zeros(1, 1, dtype=torch.long)
    top_p, hf_top_h = TopPLogitsWarper(TOP_P), TopHLogitsWarper(alpha)
    ours = {v: TopH(alpha=alpha, variant=v) for v in VARIANTS}
    rows, out = [], {}
    for vocab in vocabs:
        for batch in batches:
            x = lm_like_logits(batch, vocab)
            fns: dict[str, Callable[[], object]] = {
                "hf_top_p": lambda x=x: top_p(ids, x),
                "hf_top_h": lambda x=x: hf_top_h(ids, x),
            }
            fns.update({f"top_h_{v}": (lambda x=x, s=s: s.filter_logits(x)) for v, s in ours.items()})
            ms = time_interleaved(fns, budget_s)
            sel = ours[default].select(x)
            p = torch.softmax(x, dim=-1)
            row = {
                "batch": batch,
                "vocab": vocab,
                "ms": {k: round(v, 4) for k, v in ms.items()},
                "mean_entropy_nats": round(float(torch.special.entr(p).sum(-1).mean()), 3),
                "mean_kept": round(float(sel.n_keep.float().mean()), 2),
                "max_kept": int(sel.n_keep.max()),
            }
            rows.append(row)
            tag = f"b{batch}_v{vocab // 1000}k"
            out[f"top_h_{tag}_vs_top_p_ratio"] = round(ms[f"top_h_{default}"] / ms["hf_top_p"], 4)
            out[f"top_h_{tag}_vs_hf_top_h_ratio"] = round(ms[f"top_h_{default}"] / ms["hf_top_h"], 4)
            for v in VARIANTS:
                row[f"{v}_vs_top_p"] = round(ms[f"top_h_{v}"] / ms["hf_top_p"], 4)
                row[f"{v}_vs_hf_top_h"] = round(ms[f"top_h_{v}"] / ms["hf_top_h"], 4)
    vs_p = [v for k, v in out.items() if k.endswith("_vs_top_p_ratio")]
    vs_h64 = [out[f"top_h_b64_v{v // 1000}k_vs_hf_top_h_ratio"] for v in vocabs if 64 in batches]
    summary = {
        "max_vs_top_p_ratio": max(vs_p),
        "max_b64_vs_hf_top_h_ratio": max(vs_h64) if vs_h64 else None,
    }
    floors_ok = summary["max_vs_top_p_ratio"] <= FLOOR_VS_TOP_P and (
        not vs_h64 or summary["max_b64_vs_hf_top_h_ratio"] <= FLOOR_VS_HF_TOP_H_AT_64
    )
    return {
        "config": {
            "default_variant": default,
            "alpha": alpha,
            "top_p": TOP_P,
            "temperature": 1.0,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "logits": "lm_like (Zipf s~U(1.1,2.0) + N(0,1), permuted)",
        },
        **out,
        **summary,
        "floors": {"vs_top_p_max": FLOOR_VS_TOP_P, "vs_hf_top_h_at_batch_64_max": FLOOR_VS_HF_TOP_H_AT_64},
        "floors_ok": floors_ok,
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print JSON (ratio keys end in _ratio)")
    ap.add_argument("--quick", action="store_true", help="smaller time budget per size (noisier)")
    ap.add_argument("--check", action="store_true", help="exit 1 if a floor is broken")
    ap.add_argument("--alpha", type=float, default=0.4)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    res = run(alpha=args.alpha, budget_s=0.5 if args.quick else 2.0)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"default variant: {res['config']['default_variant']}, alpha {args.alpha}, 1 thread (ms per step)")
        print(
            f"{'vocab':>7} {'batch':>5} {'top_p':>9} {'hf_top_h':>9} {'paper':>8} {'hf':>8} {'ref':>8}"
            f" {'vs_top_p':>8} {'vs_hf_h':>8} {'kept':>6}"
        )
        for r in res["rows"]:
            ms = r["ms"]
            tag = f"b{r['batch']}_v{r['vocab'] // 1000}k"
            print(
                f"{r['vocab']:>7} {r['batch']:>5} {ms['hf_top_p']:>9.3f} {ms['hf_top_h']:>9.3f}"
                f" {ms['top_h_paper']:>8.3f} {ms['top_h_hf']:>8.3f} {ms['top_h_reference']:>8.3f}"
                f" {res[f'top_h_{tag}_vs_top_p_ratio']:>8.3f} {res[f'top_h_{tag}_vs_hf_top_h_ratio']:>8.3f}"
                f" {r['mean_kept']:>6.1f}"
            )
        print(
            f"max vs top-p {res['max_vs_top_p_ratio']:.3f} (floor {FLOOR_VS_TOP_P}); "
            f"max vs HF top-H at batch 64 {res['max_b64_vs_hf_top_h_ratio']:.3f} "
            f"(floor {FLOOR_VS_HF_TOP_H_AT_64}): {'OK' if res['floors_ok'] else 'FLOOR BROKEN'}"
        )
    return 0 if (res["floors_ok"] or not args.check) else 1


if __name__ == "__main__":
    sys.exit(main())
