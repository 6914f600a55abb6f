"""Where the vector-off gap comes from: the protected run at the largest n re-made with the vector on but the
harmful batches carrying exactly zero gradient (``null_parts={"harmful"}``).

The sweep's protected run differs from the perfect-vector reference in two ways: harmful batches still carry
some gradient through the vector, and every benign batch is learned through the vector-on model. This run
keeps only the second, so its agreement with the reference (greedy answers to the harmless prompts) shows
how much of the gap the vector's presence during benign learning makes, and how much the residual harmful
gradient. It uses a sweep's work folder (configuration, stage-1 vector, finished runs) and its settings.

Usage: python benchmarks/security_decompose.py WORK [--json PATH]
  (WORK: a `steerlab security evaluate` work folder, e.g. runs/.security-dense.work)
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    import steerlab as sl
    from steerlab.capability import organism_capability_text
    from steerlab.models.load import from_model
    from steerlab.security.data import benign_pairs, harmful_pool, harmless_prompts, held_out_harmful
    from steerlab.security.evaluate import agreement, evaluate_model
    from steerlab.security.stages import finetune
    from steerlab.security.vectors import load_vector

    work = Path(args.work)
    cfg = json.loads((work / "config.json").read_text())
    ref = sl.load(cfg["spec"], cache=False)
    vec = load_vector(work / "vector")
    n = max(cfg["samples"])
    pool = harmful_pool(cfg["harmful_source"], seed=cfg["seed"])
    ft = pool[cfg["n_vector"] : cfg["n_vector"] + n]
    benign = benign_pairs(cfg["n_benign"], "train", cfg["seed"], cfg["skill"])
    held, harmless = held_out_harmful(cfg["n_eval"]), harmless_prompts(cfg["harmless_n"])
    cap = organism_capability_text(ref, cfg["ppl_per_domain"])
    h = from_model(copy.deepcopy(ref.model), ref.tokenizer, spec=ref.spec, path=ref.path)
    t = time.perf_counter()
    finetune(h, ft + benign, vec, epochs=cfg["epochs"], lr=cfg["lr"], seed=cfg["seed"], batch_size=cfg["batch_size"],
             null_parts={"harmful"}, progress=False)
    r = evaluate_model(h, ref, held, benign_n=cfg["benign_n"], harmless=harmless, capability=cap,
                       max_new_tokens=cfg["max_new_tokens"], skill=cfg["skill"])
    seconds = round(time.perf_counter() - t, 1)
    runs = {k: json.loads((work / f"{k}.json").read_text())
            for k in (f"vector_{n}", f"ideal_{n}", f"ideal_{n}_seed{cfg['noise_seed']}", f"plain_{n}")}
    null = f"vector_{n}_null_harmful"
    runs[null] = r

    def agree(a: str, b: str) -> float:
        return round(agreement(runs[a]["harmless_answers"], runs[b]["harmless_answers"]), 4)

    ideal = f"ideal_{n}"
    rep = {
        "command": " ".join(["python", "benchmarks/security_decompose.py", *sys.argv[1:]]),
        "spec": cfg["spec"], "n_harmful": n, "seconds": seconds,
        "agreement_with_ideal": {k: agree(k, ideal) for k in runs if k != ideal},
        "vector_null_vs_protected": agree(null, f"vector_{n}"),
        "runs": {k: {f: x[f] for f in ("compliance", "benign_accuracy", "perplexity")} for k, x in runs.items()},
    }
    text = json.dumps(rep, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
