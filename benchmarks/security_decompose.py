"""Where the vector-off gap comes from: the protected run at the largest n re-made with the vector on but the
harmful batches carrying exactly zero gradient (``null_parts={"harmful"}``).

The sweep's protected run differs from the perfect-vector reference in two ways: harmful batches still carry
some gradient through the vector, and every benign batch is learned through the vector-on model. This run
keeps only the second, so its agreement with the reference (greedy answers to the harmless prompts) shows
how much of the gap the vector's presence during benign learning makes, and how much the residual harmful
gradient. It uses a sweep's work folder (configuration, stage-1 vector, finished runs) and its settings. With
``--harmless N`` other than the sweep's, the answers are taken on N harmless prompts instead, so the
protected run, the perfect-vector runs (two seeds) and plain fine-tuning are re-made too (same settings).
Agreement: the sweep's exact match of whole answers, and beside it the mean share of words two answers
share from the start (a finer measure of the same thing).

``--vector DIR`` uses another stage-1 vector (e.g. one trained with ``--grad-penalty``) for the two runs with
the vector on, instead of the work folder's; it implies re-making all runs.

Usage: python benchmarks/security_decompose.py WORK [--harmless N] [--vector DIR] [--json PATH]
  (WORK: a `steerlab security evaluate` work folder, e.g. runs/.security-dense.work)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from security_runs import work_parser

    ap = work_parser(__doc__)
    args = ap.parse_args(argv)
    from security_runs import SweepRuns, report, word_prefix_share

    from steerlab.security.evaluate import agreement

    work = Path(args.work)
    sr = SweepRuns.open(work, args.harmless, args.vector)
    cfg, n, vec, n_harmless = sr.cfg, sr.n, sr.vector, len(sr.harmless)
    null = f"vector_{n}_null_harmful"
    make = {null: (vec, cfg["seed"], {"harmful"})}  # name: (vector, seed, null_parts)
    old = (f"vector_{n}", f"ideal_{n}", f"ideal_{n}_seed{cfg['noise_seed']}", f"plain_{n}")
    reuse = n_harmless == cfg["harmless_n"] and args.vector is None
    runs = {k: json.loads((work / f"{k}.json").read_text()) for k in old} if reuse else {}
    if not runs:
        make.update({old[0]: (vec, cfg["seed"], ()), old[1]: (None, cfg["seed"], {"harmful"}),
                     old[2]: (None, cfg["noise_seed"], {"harmful"}), old[3]: (None, cfg["seed"], ())})
    seconds = {}
    for name, (v, seed, nulled) in make.items():
        runs[name] = sr.remake(v, seed, nulled)
        seconds[name] = runs[name]["seconds"]
        print(name, runs[name]["compliance"], runs[name]["benign_accuracy"], flush=True)

    def agree(a: str, b: str) -> float:
        return round(agreement(runs[a]["harmless_answers"], runs[b]["harmless_answers"]), 4)

    def prefix(a: str, b: str) -> float:
        return word_prefix_share(runs[a]["harmless_answers"], runs[b]["harmless_answers"])

    ideal = f"ideal_{n}"
    rep = {
        "command": " ".join(["python", "benchmarks/security_decompose.py", *sys.argv[1:]]),
        "spec": cfg["spec"], "n_harmful": n, "harmless_prompts": n_harmless, "seconds": seconds,
        "vector": {"path": str(args.vector or work / "vector"), "grad_penalty": vec.card.get("grad_penalty"),
                   "anchor_weight": vec.card.get("anchor", {}).get("weight"), "train": vec.card.get("train")},
        "agreement_with_ideal": {k: agree(k, ideal) for k in runs if k != ideal},
        "word_prefix_share_with_ideal": {k: prefix(k, ideal) for k in runs if k != ideal},
        "vector_null_vs_protected": agree(null, f"vector_{n}"),
        "runs": {k: {f: x[f] for f in ("compliance", "benign_accuracy", "perplexity")} for k, x in runs.items()},
    }
    return report(rep, args.json, args.no_check)


if __name__ == "__main__":
    raise SystemExit(main())
