"""What the best-fitting vector one can build leaves on the vector-off check: an oracle re-makes the protected run.

The oracle is the full weight delta of fine-tuning the base on the run's own harmful pairs alone (the largest n's,
vector off, ``--oracle-epochs`` epochs at the sweep's lr): with it added to the weights the model produces those
very pairs as well as that fine-tuning makes it. No provider could ship it (it is the model's size and is trained
on the user's data); it stands for a fit the records' vectors (a few percent of the parameters, trained on other
harmful pairs) do not reach (``residual`` below). Held on, it is added to the weights in place: with no weight
decay, training ``base + delta`` and subtracting the delta afterwards is training ``base`` with the delta on, up to
float rounding.

Runs (each compared with the perfect-vector run at seed 0, against the perfect-vector run at the sweep's noise seed):

* ``oracle_x1``: the protected run with the oracle held on in every batch, as a vector is; ``oracle_x0``: the
  same with the harmful batches' gradient nulled;
* ``gated_x1``: the oracle on in the harmful batches only (a fit like the oracle's with no effect at all on benign
  learning, which no real vector has: stage 2 does not know which pairs are harmful); ``gated_x0``: the same
  nulled, which must be the perfect-vector run bit for bit (``gated_x0_max_abs_diff_from_ideal``: the harness
  check);
* ``vector_x1``: the protected run with the work folder's (or ``--vector``'s) vector, for comparison;
* ``ideal_seed{k}`` for ``--noise-seeds``: more seeds of the perfect-vector run, for the noise's spread.

Measures as ``security_tolerance.py``: exact agreement of the greedy harmless answers (the sweep's vector-off check),
the word-prefix share, the mean KL per token (teacher-forced over the perfect-vector run's answers). ``residual``: the
harmful loss and the squared norm of its gradient on the base weights, mean over the first ``--grad-batches``
harmful batches of the run's order, with no vector, the vector and the oracle on.

Usage: python benchmarks/security_oracle.py WORK [--oracle-epochs 3] [--harmless N] [--vector DIR]
         [--grad-batches 8] [--noise-seeds 2,3] [--json PATH]
  (WORK: a `steerlab security evaluate` work folder, e.g. runs/.security-dense.work)
"""

from __future__ import annotations

import contextlib
import copy
import sys
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any


class DeltaVector:
    """A frozen full-weight delta that ``finetune`` can hold on like a security vector (``on`` adds it in place)."""

    config = SimpleNamespace(kind="delta")

    def __init__(self, delta: dict[str, Any]) -> None:
        self.delta = delta

    @contextlib.contextmanager
    def on(self, h: Any, trainable: bool = False) -> Iterator[list]:
        import torch

        params = dict(h.model.named_parameters())
        with torch.no_grad():
            for k, d in self.delta.items():
                params[k].add_(d)
        try:
            yield []
        finally:
            with torch.no_grad():
                for k, d in self.delta.items():
                    params[k].sub_(d)


def gated_train(sr: Any, delta: dict[str, Any], seed: int, s: float) -> Any:
    """A copy of the base fine-tuned as the sweep does, the oracle on in the harmful batches only (their gradient
    times ``s``) and off in the benign ones: a vector with the oracle's fit that changes nothing on benign data."""
    from torch.func import functional_call

    from steerlab.models.load import from_model
    from steerlab.security.data import batches_of
    from steerlab.training import lm_loss, train

    c, ref = sr.cfg, sr.ref
    h = from_model(copy.deepcopy(ref.model), ref.tokenizer, spec=ref.spec, path=ref.path)
    batches = batches_of(h, sr.pairs, c["batch_size"], c["epochs"], seed)
    params = dict(h.model.named_parameters())

    def loss_fn(model: Any, b: Any) -> Any:
        if b["part"] != "harmful":
            return lm_loss(model, b)
        shifted = {k: p + delta[k] for k, p in params.items()}
        loss = lm_loss(lambda **kw: functional_call(model, shifted, (), kw), b)
        return loss.detach() + s * (loss - loss.detach())

    train(h.model, batches, params=list(params.values()), steps=len(batches), lr=c["lr"], seed=seed,
          weight_decay=0.0, grad_clip=1.0, part_of=lambda b: b["part"], loss_fn=loss_fn, progress=False)
    return h


def residual(sr: Any, h: Any, vector: Any, n_batches: int) -> dict[str, float]:
    """Mean harmful loss and squared base-weight gradient norm over the run's first ``n_batches`` harmful batches."""

    from steerlab.security.data import batches_of
    from steerlab.training import lm_loss

    c = sr.cfg
    order = batches_of(h, sr.pairs, c["batch_size"], c["epochs"], c["seed"])
    harmful = [b for b in order if b["part"] == "harmful"][:n_batches]
    loss_sum = sq_sum = 0.0
    params = list(h.model.parameters())  # the base weights (a LoRA vector's own parameters come and go with it)
    with vector.on(h, trainable=False) if vector is not None else contextlib.nullcontext():
        for p in params:
            p.requires_grad_(True)  # a private copy: left so
        for b in harmful:
            h.model.zero_grad(set_to_none=True)
            loss = lm_loss(h.model, b)
            loss.backward()
            loss_sum += float(loss.detach())
            sq_sum += float(sum((p.grad.float() ** 2).sum() for p in params if p.grad is not None))
        h.model.zero_grad(set_to_none=True)
    return {"loss": round(loss_sum / len(harmful), 4), "grad_sq": round(sq_sum / len(harmful), 6)}


def main(argv: list[str] | None = None) -> int:
    from security_runs import work_parser

    ap = work_parser(__doc__)
    ap.add_argument("--oracle-epochs", type=int, default=3, help="epochs of harmful-only fine-tuning for the oracle")
    ap.add_argument("--grad-batches", type=int, default=8, help="harmful batches for the residual reading")
    ap.add_argument("--noise-seeds", default="", help="more seeds of the perfect-vector run, for the noise's spread")
    args = ap.parse_args(argv)
    try:
        extra_seeds = [int(x) for x in args.noise_seeds.split(",") if x.strip()]
    except ValueError:
        print(f"--noise-seeds {args.noise_seeds!r}: expected integers, comma-separated", file=sys.stderr)
        return 2
    if args.oracle_epochs <= 0 or args.grad_batches <= 0:
        print(f"--oracle-epochs {args.oracle_epochs} / --grad-batches {args.grad_batches}: expected positive "
              "integers", file=sys.stderr)
        return 2
    from security_runs import SweepRuns, report
    from security_tolerance import answer_logprobs, vs_ideal

    from steerlab.models.load import from_model
    from steerlab.security.stages import finetune

    sr = SweepRuns.open(args.work, args.harmless, args.vector)
    cfg, ref = sr.cfg, sr.ref
    t = time.perf_counter()
    oh = from_model(copy.deepcopy(ref.model), ref.tokenizer, spec=ref.spec, path=ref.path)
    harmful = [p for p in sr.pairs if p.part == "harmful"]
    finetune(oh, harmful, None, epochs=args.oracle_epochs, lr=cfg["lr"], seed=cfg["seed"],
             batch_size=cfg["batch_size"], progress=False)
    base = dict(ref.model.named_parameters())
    oracle = DeltaVector({k: (p.detach() - base[k].detach()).clone() for k, p in oh.model.named_parameters()})
    oracle_seconds = round(time.perf_counter() - t, 1)
    del oh
    probe = from_model(copy.deepcopy(ref.model), ref.tokenizer, spec=ref.spec, path=ref.path)
    res = {name: residual(sr, probe, v, args.grad_batches)
           for name, v in (("no_vector", None), ("vector", sr.vector), ("oracle", oracle))}
    print("residual", res, flush=True)
    del probe

    noise_run = f"ideal_seed{cfg['noise_seed']}"
    plan: dict[str, tuple[Any, int, float]] = {
        "ideal": (None, cfg["seed"], 0.0), noise_run: (None, cfg["noise_seed"], 0.0),
        "oracle_x0": (oracle, cfg["seed"], 0.0), "oracle_x1": (oracle, cfg["seed"], 1.0),
        "vector_x1": (sr.vector, cfg["seed"], 1.0),
        "gated_x0": ("gated", cfg["seed"], 0.0), "gated_x1": ("gated", cfg["seed"], 1.0),
        **{f"ideal_seed{k}": (None, k, 0.0) for k in extra_seeds},
    }
    runs: dict[str, dict[str, Any]] = {}
    logp: dict[str, list[Any]] = {}
    for name, (v, seed, s) in plan.items():
        t = time.perf_counter()
        if isinstance(v, str):
            h = gated_train(sr, oracle.delta, seed, s)
        else:
            h = sr.train(v, seed, part_scale={"harmful": s})
        runs[name] = sr.evaluate(h)
        if name == "ideal":
            ref_answers = runs[name]["harmless_answers"]
            ideal_weights = {k: p.detach().clone() for k, p in h.model.named_parameters()}
        if name == "gated_x0":  # must be the perfect-vector run itself: the harness check
            gated_x0_max_abs_diff = max(float((p.detach() - ideal_weights[k]).abs().max())
                                        for k, p in h.model.named_parameters())
        logp[name] = answer_logprobs(h, sr.harmless, ref_answers)
        runs[name]["seconds"] = round(time.perf_counter() - t, 1)
        print(name, runs[name]["compliance"], runs[name]["benign_accuracy"], runs[name]["seconds"], flush=True)
        del h

    table = vs_ideal(runs, logp, ("compliance", "benign_accuracy", "perplexity"))
    noise = table[noise_run]["agreement"]
    rep = {
        "command": " ".join(["python", "benchmarks/security_oracle.py", *sys.argv[1:]]),
        "spec": cfg["spec"], "n_harmful": sr.n, "harmless_prompts": len(sr.harmless),
        "oracle_epochs": args.oracle_epochs,
        "vector": {"path": str(args.vector or f"{args.work}/vector"),
                   "grad_penalty": sr.vector.card.get("grad_penalty"),
                   "anchor_weight": sr.vector.card.get("anchor", {}).get("weight")},
        "seconds": {"oracle": oracle_seconds, **{k: r["seconds"] for k, r in runs.items()}},
        "residual": res,
        "ideal": {"compliance": runs["ideal"]["compliance"], "benign_accuracy": runs["ideal"]["benign_accuracy"],
                  "perplexity": runs["ideal"]["perplexity"]},
        "vs_ideal": table,
        "seed_noise": {"agreement": noise, "kl": table[noise_run]["kl"]},
        "seed_noise_spread": {f"seed{k}": {m: table[f"ideal_seed{k}"][m] for m in ("agreement", "kl")}
                              for k in [cfg["noise_seed"], *extra_seeds]},
        "gated_x0_max_abs_diff_from_ideal": gated_x0_max_abs_diff,
        "within_seed_noise": {k: table[k]["agreement"] >= noise
                              for k in ("oracle_x0", "oracle_x1", "vector_x1", "gated_x1")},
    }
    code = report(rep, args.json, args.no_check)
    if gated_x0_max_abs_diff != 0.0:  # the harness check: a gate at 0 must reproduce the perfect-vector run
        print(f"harness check failed: gated_x0 differs from the perfect-vector run by {gated_x0_max_abs_diff}",
              file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    raise SystemExit(main())
