"""Training throughput of the organisms: one torch thread per process (both in parallel) vs two threads each.

Runs ``--steps`` training steps of each full recipe (moe, dense) in two ways, side by side in
one invocation, and reports tokens per second of the whole machine:

* ``parallel_1t``: both organisms at once, one process each with one torch thread;
* ``sequential_2t``: one after the other, each process with two torch threads.

    .venv/bin/python benchmarks/organisms_threads.py --steps 20 --json

``parallel_vs_sequential_ratio`` > 1 means one thread per process is faster (what
``steerlab organisms build`` does by default). One run per way, no floor: a diagnostic, not a benchmark with a
spread; the tokens of each organism are asserted equal both ways. Timings are noisy on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time


def _steps(name: str, steps: int, threads: int) -> tuple[float, int]:
    import torch

    torch.set_num_threads(threads)
    from steerlab.data.organism_corpus import build_corpus
    from steerlab.organisms.configs import get_recipe
    from steerlab.organisms.tokenizer import tokenizer_texts, train_tokenizer
    from steerlab.organisms.train import train_organism

    recipe = get_recipe(name, steps=steps, warmup=2, eval_every=10**9, data_scale=0.1)
    corpus = build_corpus(0, scale=recipe.data_scale)
    tok = train_tokenizer(tokenizer_texts(corpus), recipe.vocab_size)
    _, log = train_organism(recipe, corpus, tok, seed=0, progress=False)
    return log.seconds, log.tokens


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    ctx = mp.get_context("spawn")
    names = ["moe", "dense"]

    t0 = time.perf_counter()
    with ctx.Pool(2) as pool:
        par = pool.starmap(_steps, [(n, args.steps, 1) for n in names])
    wall_par = time.perf_counter() - t0
    t0 = time.perf_counter()
    seq = []
    for n in names:
        with ctx.Pool(1) as pool:
            seq.append(pool.apply(_steps, (n, args.steps, 2)))
    # the same work both ways: each organism trains on the same tokens in parallel and in sequence
    assert [t for _, t in par] == [t for _, t in seq], f"unequal work: tokens {par} vs {seq}"
    train_seq = sum(s for s, _ in seq)
    train_par = max(s for s, _ in par)  # the training intervals only (corpus and tokenizer building excluded)
    tokens = sum(t for _, t in par)
    out = {
        "steps": args.steps,
        "parallel_1t": {n: {"seconds": round(s, 2), "tokens": t} for n, (s, t) in zip(names, par, strict=True)},
        "sequential_2t": {n: {"seconds": round(s, 2), "tokens": t} for n, (s, t) in zip(names, seq, strict=True)},
        "parallel_1t_tokens_per_s": round(tokens / train_par, 1),
        "sequential_2t_tokens_per_s": round(sum(t for _, t in seq) / train_seq, 1),
        "parallel_vs_sequential_ratio": round(train_seq / train_par, 3),
        "wall_parallel_s": round(wall_par, 1),
    }
    print(json.dumps(out, indent=2) if args.json else out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
