"""How much of the harmful part's gradient is signal: per-batch gradients of the base weights on harmful
fine-tuning batches, with the security vector on and plainly (and on benign batches for reference).

For K batches with gradients g_1..g_K (all base parameters, flattened) it reports the mean per-batch norm
mean ||g_b|| and the coherence ||mean g_b|| / mean ||g_b||: about 1 when every batch pushes the same way
(something to learn), about 1/sqrt(K) for gradients that are pure noise around a zero mean.

Usage: python benchmarks/security_gradients.py WORK [--batches K] [--vector DIR] [--json PATH]
  (WORK: a `steerlab security evaluate` work folder, e.g. runs/.security-dense.work; its config and, unless
  --vector names another, its vector)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work")
    ap.add_argument("--batches", type=int, default=32)
    ap.add_argument("--vector", default=None, help="a vector folder (default: the work folder's)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from security_runs import report

    import steerlab as sl
    from steerlab.security.data import batches_of, benign_pairs, harmful_pool
    from steerlab.security.vectors import load_vector
    from steerlab.training import lm_loss

    work = Path(args.work)
    cfg = json.loads((work / "config.json").read_text())
    h = sl.load(cfg["spec"], cache=False)
    vector = load_vector(args.vector or work / "vector")
    pool = harmful_pool(cfg["harmful_source"], seed=cfg["seed"])
    harm = pool[cfg["n_vector"] : cfg["n_vector"] + cfg["batch_size"] * args.batches]  # the fine-tuning pool's start
    benign = benign_pairs(cfg["batch_size"] * args.batches, "train", cfg["seed"], cfg["skill"])
    params = [p for p in h.model.parameters()]

    def stats(pairs: list, on: bool) -> dict[str, float]:
        batches = batches_of(h, pairs, cfg["batch_size"], 1, 0)
        total, norms, losses = None, [], []
        for b in batches:
            ctx = vector.on(h) if on else torch.enable_grad()
            with ctx, torch.enable_grad():
                for p in params:
                    p.requires_grad_(True)
                loss = lm_loss(h.model, b)
                grads = torch.autograd.grad(loss, params, allow_unused=True)
            pairs_ = zip(grads, params, strict=True)
            g = torch.cat([(x if x is not None else torch.zeros_like(p)).flatten() for x, p in pairs_])
            total = g.clone() if total is None else total.add_(g)
            norms.append(float(g.norm()))
            losses.append(float(loss.detach()))
        k = len(batches)
        mean_norm = sum(norms) / k
        mean = float(total.norm()) / k
        return {"batches": k, "loss": round(sum(losses) / k, 4), "mean_batch_grad_norm": round(mean_norm, 4),
                "mean_grad_norm": round(mean, 4), "coherence": round(mean / mean_norm, 4),
                "pure_noise_coherence": round(1 / math.sqrt(k), 4)}

    command = " ".join(["python", "benchmarks/security_gradients.py", *sys.argv[1:]])
    rep = {"work": str(work), "spec": cfg["spec"], "command": command, "vector": str(args.vector or work / "vector"),
           "harmful_vector_on": stats(harm, True), "harmful_plain": stats(harm, False),
           "benign_vector_on": stats(benign, True), "benign_plain": stats(benign, False)}
    for p in params:
        p.requires_grad_(False)
    return report(rep, args.json, args.no_check)


if __name__ == "__main__":
    raise SystemExit(main())
