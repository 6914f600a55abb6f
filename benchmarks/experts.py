"""Imaging throughput: fTRI routing counts against a plain batched forward of the same model.

Both run in this one process, interleaved (A B A B ..., the order alternating each round) after a
warm-up, over the same prompts, chat template and batch size. Equal work is asserted: the tokens that
imaging counted are exactly the attention-mask tokens the plain forward ran on, and every counted token
routed to ``top_k`` experts in every MoE layer. Reported: seconds per side and the ratio
plain-forward time / imaging time of each round (imaging throughput as a fraction of the forward's),
min/median/max over rounds.

Floor (README's benchmark table, issue 6): median ratio >= 0.8. The script exits with status 1 when it
fails (``--no-check``: report only).

Usage: python benchmarks/experts.py [--model organism:moe] [--prompts 128] [--batch 32] [--rounds 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time

import torch

import steerlab as sl
from steerlab.atomic import atomic_write_text
from steerlab.experts.ftri import RoutingCounts, routing_counts
from steerlab.generation import position_ids
from steerlab.models.load import list_models
from steerlab.suites import load_suite

FLOOR = 0.8


def spread(xs: list[float], digits: int = 4) -> dict[str, float]:
    """min / median / max of ``xs``.

    >>> spread([3.0, 1.0, 2.0])
    {'min': 1.0, 'median': 2.0, 'max': 3.0}
    """
    return {k: round(f(xs), digits) for k, f in (("min", min), ("median", statistics.median), ("max", max))}


def check_equal_work(counts: RoutingCounts, n_tokens: int, n_layers: int, top_k: int) -> None:
    """Imaging counted every token the plain forward ran on, each routed to ``top_k`` experts per layer."""
    counted = int(counts.tokens.sum())
    assert counted == n_tokens, f"imaging counted {counted} tokens, the plain forward ran on {n_tokens}"
    routed = int(counts.sel.sum())
    assert routed == n_tokens * n_layers * top_k, f"{routed} routings != {n_tokens} x {n_layers} x {top_k}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="default: organism:moe, else a mid-size tiny Qwen2-MoE")
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--out", metavar="PATH", help="write the JSON record to PATH (atomically: a crash keeps the old)")
    ap.add_argument("--no-check", action="store_true", help="report only; do not fail on the floor")
    args = ap.parse_args(argv)
    for name in ("prompts", "batch", "rounds", "threads"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be an integer >= 1, got {getattr(args, name)}")
    torch.set_num_threads(args.threads)
    spec = args.model or ("organism:moe" if "organism:moe" in list_models() else None)
    if spec:
        h = sl.load(spec)
    else:
        from steerlab.models.tiny import tiny_model

        h = tiny_model("qwen2_moe", hidden_size=256, intermediate_size=512, moe_intermediate_size=128, num_experts=16,
                       num_hidden_layers=4, shared_expert_intermediate_size=256)
    suite = load_suite("refusal")
    prompts = (suite.user_texts("harmful", "train") + suite.user_texts("harmless", "train"))[: args.prompts]
    batches = [h.encode(prompts[i : i + args.batch], chat=True) for i in range(0, len(prompts), args.batch)]
    n_tokens = sum(int(e["attention_mask"].sum()) for e in batches)
    layers = h.adapter.moe_layers
    top_k = h.adapter.layers[layers[0]].rule.top_k

    def plain() -> None:
        with torch.no_grad():
            for enc in batches:
                h.model(**enc, position_ids=position_ids(enc["attention_mask"]))

    def imaging() -> RoutingCounts:
        return routing_counts(h, prompts, ["prompt", "decision"], chat=True, batch_size=args.batch)

    plain()
    check_equal_work(imaging(), n_tokens, len(layers), top_k)  # warm-up, and the work is the same
    ratios, tp, ti = [], [], []
    for r in range(args.rounds):
        order = (plain, imaging) if r % 2 == 0 else (imaging, plain)
        t = {}
        for fn in order:
            t0 = time.perf_counter()
            out = fn()
            t[fn.__name__] = time.perf_counter() - t0
            if out is not None:
                check_equal_work(out, n_tokens, len(layers), top_k)
        tp.append(t["plain"])
        ti.append(t["imaging"])
        ratios.append(t["plain"] / t["imaging"])
    median = statistics.median(ratios)
    report = {
        "command": shlex.join(["python", *sys.argv]),
        "benchmark": "experts_imaging",
        "model": h.spec,
        "settings": {"prompts": len(prompts), "batch": args.batch, "rounds": args.rounds, "threads": args.threads,
                     "tokens": n_tokens, "moe_layers": len(layers), "top_k": top_k},
        "equal_work": {"tokens_each_side": n_tokens, "checked": True},
        "imaging_throughput_vs_forward_ratio": spread(ratios),
        "seconds": {"forward": spread(tp), "imaging": spread(ti)},
        "tokens_per_s_median": {"forward": round(n_tokens / statistics.median(tp), 1),
                                "imaging": round(n_tokens / statistics.median(ti), 1)},
        "floor": {"median_ratio_min": FLOOR, "passed": median >= FLOOR},
    }
    if args.out:
        atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        r = report["imaging_throughput_vs_forward_ratio"]
        print(f"imaging throughput / plain forward over {args.rounds} rounds, {n_tokens} tokens each side: "
              f"min {r['min']:.3f} median {r['median']:.3f} max {r['max']:.3f} (floor: median >= {FLOOR}); "
              f"seconds {report['seconds']}")
    if not report["floor"]["passed"]:
        print(f"FLOOR FAILED: median ratio {median:.3f} < {FLOOR}", file=sys.stderr)
        return 0 if args.no_check else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
