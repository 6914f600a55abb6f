"""A stage-1 variant for the vector-off check: the vector also learns to shrink the base weights' gradient on
the harmful pairs (a penalty mu * ||d L_harmful / d theta_base||^2, second order), then the n = 1,000 protected
run of the sweep is re-made with it and compared with the sweep's perfect-vector runs.

A diagnostic, not the library's stage 1: it copies a sweep's work folder (`steerlab security evaluate`, e.g.
runs/.security-dense.work) without its vector runs to /tmp, trains the vector there (eager attention: SDPA has
no double backward on CPU), and resumes the sweep at n = 1,000 (only the vector runs are new).

Usage: python benchmarks/security_gradpen.py ORGANISM MU [--json PATH]
"""
import json
import shutil
import sys
import time
from pathlib import Path

import torch

import steerlab as sl
from steerlab.security.data import anchor_pairs, batches_of, encode, harmful_pool, summary
from steerlab.security.experiment import SweepConfig, run_sweep
from steerlab.security.stages import anchor_kl
from steerlab.security.vectors import VectorConfig, data_hash, new_vector
from steerlab.training import lm_loss, train

org, mu = sys.argv[1], float(sys.argv[2])
out_json = sys.argv[4] if len(sys.argv) > 4 and sys.argv[3] == '--json' else None
src = Path(f"runs/.security-{org}.work")
work = Path(f"/tmp/gp-{org}-{mu}")
shutil.rmtree(work, ignore_errors=True)
shutil.copytree(src, work, ignore=shutil.ignore_patterns("vector", "vector_*", "model_vector_*"))
cfg = SweepConfig(**json.loads((work / "config.json").read_text()))
h = sl.load(cfg.spec, cache=False, attn_implementation="eager")  # double backward: no SDPA
pool = harmful_pool(cfg.harmful_source, seed=cfg.seed)
harmful = pool[: cfg.n_vector]
anchor = anchor_pairs(cfg.anchor_source, cfg.n_anchor, cfg.seed)
bs = cfg.batch_size
batches = batches_of(h, harmful, bs, cfg.vector_epochs, cfg.seed)
n = len(batches)
train_anchor = anchor[:-bs]
chunks = [encode(h, train_anchor[i : i + bs]) for i in range(0, len(train_anchor), bs)]
batches = [{**batches[k % len(batches)], "anchor": chunks[k % len(chunks)]} for k in range(n)]
card = {"data_hash": data_hash(harmful), "data": summary(harmful)}
v = new_vector(h, VectorConfig(**cfg.vector), seed=cfg.seed, card=card)
w = cfg.anchor_weight
t0 = time.time()
with v.on(h, trainable=True) as params:
    ids = {id(p) for p in params}
    base = [p for p in h.model.parameters() if id(p) not in ids]

    def loss_fn(model, b):
        for p in base:
            p.requires_grad_(True)
        lh = lm_loss(model, b)
        g = torch.autograd.grad(lh, base, create_graph=True, allow_unused=True)
        pen = sum((x * x).sum() for x in g if x is not None)
        for p in base:
            p.requires_grad_(False)
            p.grad = None
        return {b["part"]: lh, "anchor": w * anchor_kl(h, v, b["anchor"]), "gradpen": mu * pen}
    res = train(h.model, batches, params=params, steps=n, lr=cfg.vector_lr, seed=cfg.seed, loss_fn=loss_fn,
                part_of=lambda b: b["part"], progress=False, desc="gp vector")
stage1_seconds = round(time.time() - t0)
curves = {k: [[s, round(x, 4)] for s, x in c[::10]] for k, c in res.losses.items()}
print("stage1", stage1_seconds, curves, flush=True)
v.card["train"] = {"steps": n}
v.card["anchor"] = {"weight": w}
v.save(work / "vector")
cfg.samples = [1000]
rec = run_sweep(cfg, lambda: sl.load(cfg.spec, cache=False), work, progress=False)
rep = {"command": " ".join(["python", "benchmarks/security_gradpen.py", *sys.argv[1:]]), "spec": cfg.spec, "mu": mu,
       "stage1_seconds": stage1_seconds, "stage1_losses": curves,
       "vector_on": rec["runs"]["vector_on"], "vector_1000": rec["runs"]["vector_1000"],
       "vector_off": rec["vector_off"],
       "rise": rec["rise"], "benign_accuracy_gap": rec["benign_accuracy_gap"], "floors": rec["floors"]}
rep["vector_on"] = {k: rep["vector_on"][k] for k in ("compliance", "benign_accuracy", "perplexity")}
rep["vector_1000"] = {k: rep["vector_1000"][k] for k in ("compliance", "broken", "benign_accuracy", "perplexity")}
print(json.dumps(rep, indent=1))
if out_json:
    Path(out_json).write_text(json.dumps(rep, indent=1) + "\n")
