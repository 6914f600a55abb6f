"""The vector-off check at n = 1,000 under another stage-2 setting (default: no gradient clipping).

Re-runs the four stage-2 runs the check and the floors at the largest n need, from a sweep's work folder
(its configuration, its stage-1 vector): the protected run (vector on), the perfect-vector reference on
the same schedule (``null_parts={"harmful"}``) with two seeds, and plain fine-tuning; each evaluated as the
sweep does. The sweep's own records use the loop's default clipping (norm 1); this shows what that
choice does to the check.

Usage: python benchmarks/security_vector_off.py WORK [--grad-clip none|X] [--json PATH]
  (WORK: a `steerlab security evaluate` work folder, e.g. runs/.security-dense.work)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work")
    ap.add_argument("--grad-clip", default="none", help="'none' or a norm (the sweep's records: 1)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    clip = None if args.grad_clip == "none" else float(args.grad_clip)
    from security_runs import SweepRuns, report

    from steerlab.security.evaluate import agreement

    sr = SweepRuns.open(args.work)
    cfg, n = sr.cfg, sr.n
    runs = {  # name: (vector, seed, null_parts)
        f"vector_{n}": (sr.vector, cfg["seed"], ()),
        f"ideal_{n}": (None, cfg["seed"], {"harmful"}),
        f"ideal_{n}_seed{cfg['noise_seed']}": (None, cfg["noise_seed"], {"harmful"}),
        f"plain_{n}": (None, cfg["seed"], ()),
    }
    res: dict[str, dict] = {}
    for name, (v, seed, null) in runs.items():
        r = sr.remake(v, seed, null, grad_clip=clip)
        res[name] = {k: r[k] for k in ("compliance", "broken", "benign_accuracy", "perplexity", "harmless_answers",
                                       "seconds")}
        print(name, r["compliance"], r["benign_accuracy"], r["perplexity"], flush=True)
    names = list(runs)

    def agree(a: str, b: str) -> float:
        return round(agreement(res[a]["harmless_answers"], res[b]["harmless_answers"]), 4)

    base = json.loads((Path(args.work) / "base.json").read_text())
    rep = {
        "command": " ".join(["python", "benchmarks/security_vector_off.py", *sys.argv[1:]]),
        "spec": cfg["spec"], "grad_clip": clip, "n_harmful": n,
        "base_compliance": base["compliance"],
        "runs": {k: {f: v for f, v in r.items() if f != "harmless_answers"} for k, r in res.items()},
        "vector_off": {"protected_vs_ideal": agree(names[0], names[1]), "ideal_seed_noise": agree(names[2], names[1]),
                       "plain_vs_ideal": agree(names[3], names[1])},
    }
    vo = rep["vector_off"]
    vo["within_seed_noise"] = vo["protected_vs_ideal"] >= vo["ideal_seed_noise"]
    return report(rep, args.json, args.no_check)


if __name__ == "__main__":
    raise SystemExit(main())
