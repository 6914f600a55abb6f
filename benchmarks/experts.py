"""Imaging throughput: fTRI routing counts against a plain batched forward of the same model.

Both run in this one process, interleaved (A B A B ...) after a warm-up, over the same prompts and
batch size; the ratio is plain-forward time / imaging time, i.e. imaging throughput as a fraction of
the forward's (floor, issue 6: at least 0.8).

Usage: python benchmarks/experts.py [--model organism:moe] [--prompts 256] [--batch 32] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

import steerlab as sl
from steerlab.experts.ftri import routing_counts
from steerlab.generation import position_ids
from steerlab.models.load import list_models
from steerlab.probes import load_suite

FLOOR = 0.8


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="default: organism:moe, else a mid-size tiny Qwen2-MoE")
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
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

    def plain() -> None:
        with torch.no_grad():
            for enc in batches:
                h.model(**enc, position_ids=position_ids(enc["attention_mask"]))

    def imaging() -> None:
        routing_counts(h, prompts, ["prompt", "decision"], chat=True, batch_size=args.batch)

    plain(), imaging()
    ratios, tp, ti = [], [], []
    for r in range(args.rounds):
        order = (plain, imaging) if r % 2 == 0 else (imaging, plain)
        t = {}
        for fn in order:
            t0 = time.perf_counter()
            fn()
            t[fn.__name__] = time.perf_counter() - t0
        tp.append(t["plain"])
        ti.append(t["imaging"])
        ratios.append(t["plain"] / t["imaging"])
    n_tokens = sum(int(e["attention_mask"].sum()) for e in batches)
    report = {
        "benchmark": "experts_imaging",
        "model": h.spec,
        "settings": {"prompts": len(prompts), "batch": args.batch, "rounds": args.rounds, "threads": args.threads,
                     "tokens": n_tokens},
        "imaging_throughput_vs_forward_ratio": round(statistics.median(ratios), 4),
        "tokens_per_s": {"forward": round(n_tokens / statistics.median(tp), 1),
                         "imaging": round(n_tokens / statistics.median(ti), 1)},
        "floor": {"min": FLOOR, "passed": statistics.median(ratios) >= FLOOR},
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"imaging throughput / plain forward: {report['imaging_throughput_vs_forward_ratio']:.3f} "
              f"(floor {FLOOR}); tokens/s {report['tokens_per_s']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
