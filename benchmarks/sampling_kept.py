"""Kept-set sizes of the three top-H variants on the sampling benchmark's LM-like logits (no timing).

For each vocabulary size and temperature, the number of tokens each variant keeps per row, counted from
its output (``filter_logits``: the finite entries), on the same ``[rows, vocab]`` logits
(``benchmarks/sampling.py``'s ``lm_like_logits``, seed 0). Nothing is timed, so the counts do not depend on the
machine's load.
``docs/sampling.md``'s kept-set table is read from it.

Run:
    .venv/bin/python benchmarks/sampling_kept.py --out docs/records/sampling_kept.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sampling import lm_like_logits  # noqa: E402  (the benchmark's logits, one definition)

from steerlab.atomic import atomic_write_text  # noqa: E402
from steerlab.sampling.top_h import VARIANTS, TopH  # noqa: E402


def kept_sizes(rows: int, vocabs: list[int], temperatures: list[float], alpha: float) -> list[dict]:
    cells = []
    for vocab in vocabs:
        x = lm_like_logits(rows, vocab)
        for t in temperatures:
            cell: dict = {"vocab": vocab, "temperature": t}
            for v in VARIANTS:
                kept = torch.isfinite(TopH(alpha=alpha, variant=v, temperature=t).filter_logits(x)).sum(-1).float()
                cell[v] = {"mean": round(float(kept.mean()), 2), "min": int(kept.min()), "max": int(kept.max())}
            cells.append(cell)
    return cells


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--alpha", type=float, default=0.4)
    ap.add_argument("--out", default=None, help="write the record here (JSON)")
    args = ap.parse_args(argv)
    cells = kept_sizes(args.rows, [512, 50257], [1.0, 2.0], args.alpha)
    rec = {"benchmark": "sampling_kept", "command": shlex.join(["python", *sys.argv]), "rows": args.rows,
           "alpha": args.alpha, "logits": "benchmarks/sampling.py lm_like_logits(rows, vocab, seed=0)",
           "cells": cells}
    for c in cells:
        print(f"vocab {c['vocab']:>6}  T {c['temperature']:<4}" + "".join(
            f"  {v} {c[v]['mean']:>6} [{c[v]['min']}-{c[v]['max']}]" for v in VARIANTS))
    if args.out:
        atomic_write_text(Path(args.out), json.dumps(rec, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
