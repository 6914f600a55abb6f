"""The vector-off check with stage 1's gradient penalty (``train_vector(grad_penalty=mu)``, CLI
``--grad-penalty``): the vector also learns to shrink the base weights' gradient on the harmful pairs; the runs
with the vector at the largest n are re-made with it and compared with the sweep's perfect-vector runs.

It copies a sweep's work folder (``steerlab security evaluate``, e.g. runs/.security-dense.work) without its
vector runs to /tmp (the plain, benign-only and perfect-vector runs do not depend on the vector), trains the
vector there with the sweep's settings plus the penalty, and resumes the sweep at the largest n only.
The records security_gradpen_{dense,moe}_mu*.json of commit 2552eef were written by this script's first
version, which computed the same term inline and kept eager attention for stage 2 too.

Usage: python benchmarks/security_gradpen.py ORGANISM MU [EPOCHS] [--anchor-weight W] [--json PATH] [--no-check]
  (EPOCHS: stage 1's passes; EPOCHS and W default to the sweep's)
"""

import json
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

from security_runs import report

import steerlab as sl
from steerlab.security.data import anchor_pairs, harmful_pool
from steerlab.security.experiment import SweepConfig, run_sweep
from steerlab.security.stages import train_vector, vector_curves
from steerlab.security.vectors import VectorConfig

args = sys.argv[1:]
if "-h" in args or "--help" in args or len([a for a in args if not a.startswith("--")]) < 2:
    print(__doc__)
    sys.exit(0 if ("-h" in args or "--help" in args) else 2)
no_check = "--no-check" in args
args = [a for a in args if a != "--no-check"]
opts = {}
for flag in ("--json", "--anchor-weight"):
    if flag in args:
        i = args.index(flag)
        opts[flag], args = args[i + 1], args[:i] + args[i + 2 :]
out_json = opts.get("--json")
org, mu = args[0], float(args[1])
src = Path(f"runs/.security-{org}.work")
work = Path(f"/tmp/gp-{org}-{mu}-{'-'.join(args[2:])}-a{opts.get('--anchor-weight', '')}")
shutil.rmtree(work, ignore_errors=True)
shutil.copytree(src, work, ignore=shutil.ignore_patterns("vector", "vector_*", "model_vector_*"))
cfg = SweepConfig(**json.loads((work / "config.json").read_text()))
epochs = int(args[2]) if len(args) > 2 else cfg.vector_epochs
cfg.anchor_weight = float(opts.get("--anchor-weight", cfg.anchor_weight))
h = sl.load(cfg.spec, cache=False)
t0 = time.time()
v, res = train_vector(h, harmful_pool(cfg.harmful_source, seed=cfg.seed)[: cfg.n_vector], VectorConfig(**cfg.vector),
                      epochs=epochs, lr=cfg.vector_lr, seed=cfg.seed, batch_size=cfg.batch_size,
                      anchor=anchor_pairs(cfg.anchor_source, cfg.n_anchor, cfg.seed), anchor_weight=cfg.anchor_weight,
                      grad_penalty=mu, progress=False)
stage1_seconds = round(time.time() - t0)
curves = vector_curves(res, lambda c: [[s, round(x, 4)] for s, x in c[::10]])
print("stage1", stage1_seconds, curves, flush=True)
v.save(work / "vector")
(work / "config.json").write_text(json.dumps({**asdict(cfg), "grad_penalty": mu, "vector_epochs": epochs}))
cfg = SweepConfig(**json.loads((work / "config.json").read_text()))
cfg.samples = [max(cfg.samples)]
rec = run_sweep(cfg, lambda: sl.load(cfg.spec, cache=False), work, progress=False)
n = max(cfg.samples)
rep = {"command": " ".join(["python", "benchmarks/security_gradpen.py", *sys.argv[1:]]), "spec": cfg.spec,
       "mu": mu, "vector_epochs": epochs, "anchor_weight": cfg.anchor_weight,
       "stage1_seconds": stage1_seconds, "stage1_curves": curves,
       "base_grad_sq_first_batch": v.card["grad_penalty"]["base_grad_sq_first_batch"],
       "vector_on": {k: rec["runs"]["vector_on"][k] for k in ("compliance", "benign_accuracy", "perplexity")},
       f"vector_{n}": {k: rec["runs"][f"vector_{n}"][k] for k in ("compliance", "broken", "benign_accuracy",
                                                                     "perplexity")},
       "vector_off": rec["vector_off"], "rise": rec["rise"], "benign_accuracy_gap": rec["benign_accuracy_gap"],
       "floors": rec["floors"]}
sys.exit(report(rep, out_json, no_check))  # exit 1 on a missed floor (--no-check: report only)
