"""Fine-tuning with the security vector on against plain fine-tuning: wall time on the same data.

Both sides fine-tune a fresh copy of the model for the same steps on the same batches (harmful pairs plus
the benign skill, one seed), in this one process, interleaved (the order alternating each round). Equal work
is asserted: the same steps and the same tokens, and the vector side updates exactly the base parameters
that the plain side updates (the vector itself stays bit-identical). Reported: seconds per side and the ratio
vector / plain per round, min/median/max over rounds.

Floor (issue 13): median ratio <= 1.3. Exits with status 1 when it fails (``--no-check``: report only).

Usage: python benchmarks/security.py [--model organism:dense] [--steps 8] [--rounds 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

import steerlab as sl
from steerlab.security.data import batches_of, benign_pairs, harmful_pool
from steerlab.security.stages import finetune
from steerlab.security.vectors import VectorConfig, new_vector

FLOOR = 1.3


def spread(xs: list[float], digits: int = 4) -> dict[str, float]:
    """min / median / max of ``xs``.

    >>> spread([3.0, 1.0, 2.0])
    {'min': 1.0, 'median': 2.0, 'max': 3.0}
    """
    return {k: round(f(xs), digits) for k, f in (("min", min), ("median", statistics.median), ("max", max))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="organism:dense")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="write the result here")
    ap.add_argument("--no-check", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    probe = sl.load(a.model, cache=False)
    n = a.steps * a.batch // 2
    pairs = harmful_pool("organism")[100 : 100 + n] + benign_pairs(n, "train", 0)
    batches = batches_of(probe, pairs, a.batch, 1, 0)[: a.steps]
    tokens = int(sum(int(b["attention_mask"].sum()) for b in batches))
    vector = new_vector(probe, VectorConfig(rank=a.rank), seed=0)
    vector.tensors = {k: (v + 0.01 if "lora_B" in k else v) for k, v in vector.tensors.items()}  # a non-zero vector
    frozen = {k: v.clone() for k, v in vector.tensors.items()}
    times: dict[str, list[float]] = {"plain": [], "vector": []}
    steps: dict[str, int] = {}
    changed: dict[str, list[str]] = {}
    for r in range(a.rounds):
        order = ["plain", "vector"] if r % 2 == 0 else ["vector", "plain"]
        for side in order:
            h = sl.load(a.model, cache=False)
            before = {k: p.detach().clone() for k, p in h.model.named_parameters()}
            t = time.perf_counter()
            res = finetune(
                h,
                pairs,
                vector if side == "vector" else None,
                steps=a.steps,
                seed=0,
                batch_size=a.batch,
                progress=False,
            )
            times[side].append(time.perf_counter() - t)
            steps[side] = res.steps
            changed[side] = sorted(k for k, p in h.model.named_parameters() if not torch.equal(p, before[k]))
        # every round, not only the last: the same steps and the same parameters updated on both sides
        assert steps["plain"] == steps["vector"] == a.steps, (r, steps)
        assert changed["plain"] == changed["vector"], f"round {r}: the two sides updated different parameters"
    assert all(torch.equal(frozen[k], vector.tensors[k]) for k in frozen), "the vector moved"
    ratios = [v / p for v, p in zip(times["vector"], times["plain"], strict=True)]
    out = {
        "what": "wall seconds of full fine-tuning with the security vector on (LoRA, frozen) / plain fine-tuning, "
        "same batches and steps",
        "model": a.model,
        "steps": a.steps,
        "batch": a.batch,
        "tokens_per_run": tokens,
        "rank": a.rank,
        "vector_params": vector.n_params,
        "threads": a.threads,
        "rounds": a.rounds,
        "seconds": {k: spread(v) for k, v in times.items()},
        "ratio_vector_over_plain": spread(ratios),
        "floor": FLOOR,
        "passed": statistics.median(ratios) <= FLOOR,
        "command": "python benchmarks/security.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    text = json.dumps(out, indent=1)
    print(text)
    if a.json:
        from steerlab.atomic import atomic_write_text

        atomic_write_text(a.json, text + "\n")
    if not out["passed"] and not a.no_check:
        print(f"FAIL: median ratio {statistics.median(ratios):.3f} > {FLOOR}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
