"""Simulation check of the preference fit: recover known weights from synthetic pairs.

Each round draws 29 true weights from Laplace(0, 0.3) and 5,000 pairs of comparisons in {-1, 0, 1} (0 with
probability 0.4) with labels ~ Bernoulli(sigmoid(x . w)) (:func:`steerlab.preferences.fit.simulate_pairs`),
then fits every method on exactly the same pairs (asserted: one digest of x and y per round). Reported per
method: Pearson r of posterior means with the truth, the share of properties whose 90% credible interval
covers the truth, fit seconds (wall clock; this process's CPU seconds beside them, since the machine is
shared), and (NUTS) max R-hat / min ESS, as min/median/max over rounds.

Floors (issue 14), on the ``--floor-method`` (NUTS by default), median over rounds (each round's values are in
the record): r >= 0.95, coverage >= 0.80, fit < 60 s wall clock. Exit status 1 on a miss (``--no-check``: report only).

Usage: python benchmarks/preferences.py [--rounds 3] [--methods nuts,laplace,svi] [--json PATH]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import time

import torch

from steerlab.preferences.fit import fit, simulate_pairs

FLOORS = {"r": 0.95, "coverage": 0.80, "seconds": 60.0}
P, N = 29, 5000


def spread(xs: list[float], digits: int = 4) -> dict[str, float]:
    """min / median / max of ``xs``.

    >>> spread([3.0, 1.0, 2.0])
    {'min': 1.0, 'median': 2.0, 'max': 3.0}
    """
    return {k: round(f(xs), digits) for k, f in (("min", min), ("median", statistics.median), ("max", max))}


def digest(*ts: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in ts:
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--methods", default="nuts,laplace,svi")
    ap.add_argument("--floor-method", default="nuts")
    ap.add_argument("--chains", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="write the record here")
    ap.add_argument("--no-check", action="store_true", help="report only; do not fail on the floors")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    methods = a.methods.split(",")
    props = [f"p{i}" for i in range(P)]
    keys = ("r", "coverage", "seconds", "cpu_seconds")
    per: dict[str, dict[str, list[float]]] = {m: {k: [] for k in keys} for m in methods}
    rounds = []
    for rnd in range(a.rounds):
        g = torch.Generator().manual_seed(1000 + rnd)
        true_w = _laplace(P, 0.3, g)
        x, y = simulate_pairs(true_w, N, seed=rnd)
        d = digest(x, y)
        row = {"round": rnd, "data": d, "a_share": round(float(y.mean()), 4)}
        for m in methods:
            assert digest(x, y) == d  # every method fits exactly these pairs
            cpu0 = time.process_time()
            r = fit(x, y, props, method=m, chains=a.chains, warmup=a.warmup, samples=a.samples, seed=rnd)
            cpu = time.process_time() - cpu0
            assert r.n_pairs == N and r.mean.shape == (P,)
            corr = float(torch.corrcoef(torch.stack([r.mean.float(), true_w]))[0, 1])
            cover = float(((r.lo <= true_w) & (true_w <= r.hi)).double().mean())
            per[m]["r"].append(corr)
            per[m]["coverage"].append(cover)
            per[m]["seconds"].append(r.seconds)
            per[m]["cpu_seconds"].append(cpu)
            entry = {"r": round(corr, 4), "coverage": round(cover, 4), "seconds": round(r.seconds, 2),
                     "cpu_seconds": round(cpu, 2)}
            if r.rhat is not None and r.ess is not None:
                entry.update(max_rhat=round(float(r.rhat.max()), 4), min_ess=round(float(r.ess.min()), 1))
            row[m] = entry
            print(f"round {rnd} {m}: {entry}", file=sys.stderr)
        rounds.append(row)
    f = {k: statistics.median(v) for k, v in per[a.floor_method].items()}
    misses = []
    if f["r"] < FLOORS["r"]:
        misses.append(f"median r {f['r']:.4f} < {FLOORS['r']}")
    if f["coverage"] < FLOORS["coverage"]:
        misses.append(f"median coverage {f['coverage']:.3f} < {FLOORS['coverage']}")
    if f["seconds"] >= FLOORS["seconds"]:
        misses.append(f"median fit {f['seconds']:.1f} s >= {FLOORS['seconds']} s (wall clock)")
    record = {
        "benchmark": "preferences simulation check",
        "command": "python benchmarks/preferences.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "setup": {"properties": P, "pairs": N, "true_weights": "Laplace(0, 0.3)", "p_zero": 0.4, "level": 0.9,
                  "prior": "Laplace(0, 0.1)", "chains": a.chains, "warmup": a.warmup, "samples": a.samples,
                  "threads": a.threads, "rounds": a.rounds},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "load_average_1m_at_end": round(os.getloadavg()[0], 2), "torch": torch.__version__},
        "floors": {"method": a.floor_method, "over_rounds": "median", **FLOORS},
        "summary": {m: {k: spread(v) for k, v in per[m].items()} for m in methods},
        "rounds": rounds,
        "pass": not misses,
        "misses": misses,
    }
    text = json.dumps(record, indent=2)
    if a.json:
        tmp = a.json + ".tmp"
        with open(tmp, "w") as fh:
            fh.write(text + "\n")
        os.replace(tmp, a.json)
    print(text)
    if misses and not a.no_check:
        print("FLOOR MISSED: " + "; ".join(misses), file=sys.stderr)
        return 1
    return 0


def _laplace(n: int, scale: float, g: torch.Generator) -> torch.Tensor:
    """``n`` draws from Laplace(0, scale) with the generator ``g`` (inverse CDF)."""
    u = torch.rand(n, generator=g) - 0.5
    return -scale * torch.sign(u) * torch.log1p(-2 * u.abs())


if __name__ == "__main__":
    sys.exit(main())
