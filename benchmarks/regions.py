"""Importance scoring: peak memory and throughput against a plain forward+backward over the same tokens.

One process: the model is loaded, freed memory is handed back (``malloc_trim``) and the peak-RSS counter is
reset (``/proc/self/clear_refs``); then ``score_importance`` runs once and its peak resident memory is read
(``VmHWM``: the whole process, weights included). Then rounds interleave (order alternating) a plain
forward+backward over exactly the batches scoring streams (same ``token_batches``, the model's own forward and
``sequence_nll(...).backward()``, gradients into every parameter, no fold) and a full scoring call (which
computes the same loss and gradients through its fused, chunked LM head, then folds, selects and sums). Equal
work is asserted: both sides see the same number of predicted tokens. Reported: seconds per side, the ratio
scoring / plain per round (min/median/max), the peak RSS and its multiple of the model's fp32 parameter bytes.

Floors (issue 12): peak RSS <= 4x fp32 parameter bytes; median time ratio <= 1.3. Exit status 1 when a
floor fails (``--no-check``: report only).

Usage: python benchmarks/regions.py [--model shared:SmolLM2-135M-Instruct-Q4_1-gguf] [--langs eng,deu]
       [--budget 512] [--rounds 3] [--out docs/records/regions_bench.json]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

import steerlab as sl
from steerlab.atomic import atomic_write_text
from steerlab.regions.corpus import corpus_texts, token_batches
from steerlab.regions.importance import peak_rss_bytes, reset_peak_rss, score_importance
from steerlab.scoring import gradients, sequence_nll

RSS_FLOOR = 4.0
TIME_FLOOR = 1.3


def spread(xs: list[float], digits: int = 4) -> dict[str, float]:
    """min / median / max of ``xs``.

    >>> spread([3.0, 1.0, 2.0])
    {'min': 1.0, 'median': 2.0, 'max': 3.0}
    """
    return {k: round(f(xs), digits) for k, f in (("min", min), ("median", statistics.median), ("max", max))}


def _trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def plain(h, langs: list[str], budget: int, batch: int, max_len: int) -> int:
    """Forward+backward over the batches scoring would stream; returns the predicted tokens."""
    n = 0
    with gradients(h):
        for lang in langs:
            for enc in token_batches(h, corpus_texts(lang, "score"), token_budget=budget, batch_size=batch,
                                     max_len=max_len):  # fmt: skip
                m = enc["attention_mask"]
                n += int((m[:, 1:].bool() & m[:, :-1].bool()).sum())
                sequence_nll(h, enc).backward()
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="shared:SmolLM2-135M-Instruct-Q4_1-gguf")
    ap.add_argument("--langs", default="eng,deu")
    ap.add_argument("--budget", type=int, default=512, help="tokens per language")
    ap.add_argument("--batch", type=int, default=4, help="passages per batch (the scorer's default)")
    ap.add_argument("--max-len", type=int, default=64, help="tokens per passage (the scorer's default)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="write the JSON record here")
    ap.add_argument("--no-check", action="store_true", help="report only; do not fail on a floor")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    langs = [c for c in args.langs.split(",") if c]
    load_start = round(os.getloadavg()[0], 2)
    h = sl.load(args.model)
    param_bytes = 4 * sum(p.numel() for p in h.model.parameters())
    kw = {"token_budget": args.budget, "batch_size": args.batch, "max_len": args.max_len, "progress": False}

    _trim()
    rss_loaded = peak_rss_bytes() if reset_peak_rss() else 0
    imp = score_importance(h, langs, **kw)
    peak = peak_rss_bytes()
    n_score = sum(imp.tokens.values())
    _trim()
    reset_peak_rss()
    n_plain = plain(h, langs, args.budget, args.batch, args.max_len)
    peak_plain = peak_rss_bytes()
    assert n_plain == n_score, f"plain forward+backward saw {n_plain} tokens, scoring {n_score}"

    t_plain: list[float] = []
    t_score: list[float] = []
    for r in range(args.rounds):
        for side in (("plain", "score") if r % 2 == 0 else ("score", "plain")):
            _trim()
            t0 = time.perf_counter()
            if side == "plain":
                plain(h, langs, args.budget, args.batch, args.max_len)
                t_plain.append(time.perf_counter() - t0)
            else:
                score_importance(h, langs, **kw)
                t_score.append(time.perf_counter() - t0)
    ratios = [s / p for s, p in zip(t_score, t_plain, strict=True)]
    rss_x = peak / param_bytes
    rec = {
        "command": "python benchmarks/regions.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "model": args.model,
        "languages": langs,
        "tokens_per_side": n_score,
        "batch": args.batch,
        "max_len": args.max_len,
        "param_bytes_fp32": param_bytes,
        "rss_after_load_bytes": rss_loaded,
        "peak_rss_scoring_bytes": peak,
        "peak_rss_scoring_x_params": round(rss_x, 3),
        "peak_rss_plain_fwd_bwd_bytes": peak_plain,
        "seconds_plain": spread(t_plain),
        "seconds_scoring": spread(t_score),
        "ratio_scoring_over_plain": spread(ratios),
        "floors": {"peak_rss_x_params_max": RSS_FLOOR, "time_ratio_median_max": TIME_FLOOR},
        "pass": {"rss": rss_x <= RSS_FLOOR, "throughput": statistics.median(ratios) <= TIME_FLOOR},
        "machine": {"cpus": os.cpu_count(), "threads": args.threads, "load_avg_1m_at_start": load_start,
                    "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
                    "platform": platform.platform()},  # fmt: skip
    }
    text = json.dumps(rec, indent=1)
    print(text)
    if args.out:
        atomic_write_text(Path(args.out), text + "\n")
    if not args.no_check and not all(rec["pass"].values()):
        print(f"FAILED floors: {[k for k, v in rec['pass'].items() if not v]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
