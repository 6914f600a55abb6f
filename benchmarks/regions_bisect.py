"""Diagnostic: which entries of a random region carry its effect (group ablations, then halving).

Zeroes the random region of ``--seed`` (``--fraction`` per matrix, ``--scope``), then its norm / attention /
MLP entries alone, then halves of its entries (in parameter order) while one half alone still raises the
median perplexity ratio to at least ``--threshold``; reports the single weight it ends at (value and |w| rank
in its matrix), or that the effect is spread. Writes a JSON record (``--out``).

Usage: python benchmarks/regions_bisect.py IMPORTANCE_DIR [--seed 0] [--langs eng,deu] [--n-eval 6]
       [--fraction 0.01] [--scope layers] [--threshold 3] [--out docs/records/regions_smollm2_random_seed0.json]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import torch

import steerlab as sl
from steerlab.atomic import atomic_write_text
from steerlab.regions.artifact import read_importance
from steerlab.regions.perturb import language_nll
from steerlab.regions.select import Region, random_region


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("importance")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--langs", default="eng,deu")
    ap.add_argument("--n-eval", type=int, default=6)
    ap.add_argument("--fraction", type=float, default=0.01)
    ap.add_argument("--scope", default="layers")
    ap.add_argument("--threshold", type=float, default=3.0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    imp = read_importance(args.importance)
    h = sl.load(imp.model)
    langs = [c for c in args.langs.split(",") if c]
    base = language_nll(h, langs, n_eval=args.n_eval)
    rows: list[dict] = []

    def ratio(indices: dict[str, torch.Tensor], label: str) -> float:
        r = Region(label, {n: t for n, t in indices.items() if t.numel()}, imp.shapes, imp.signature, imp.model)
        nll = language_nll(h, langs, n_eval=args.n_eval, interventions=[r.edit("zero")])
        rat = {lang: math.exp(min(nll[lang] - base[lang], 700.0)) for lang in langs}
        med = statistics.median(rat.values())
        rows.append({"label": label, "size": r.size(), "ratio": rat, "median_ratio": med})
        print(f"{label:50s} {r.size():8d} entries  median ratio {med:.3f}", flush=True)
        return med

    rnd = random_region(imp, args.fraction, seed=args.seed, scope=args.scope)
    ratio(rnd.indices, "full region")
    groups = {"norms": lambda n: len(imp.shapes[n]) == 1, "attention": lambda n: "attn" in n,
              "mlp": lambda n: "mlp" in n}  # fmt: skip
    for g, keep in groups.items():
        ratio({n: t for n, t in rnd.indices.items() if keep(n)}, f"{g} entries only")
    units = [(n, int(i)) for n, t in rnd.indices.items() for i in t.tolist()]

    def as_indices(us: list[tuple[str, int]]) -> dict[str, torch.Tensor]:
        d: dict[str, list[int]] = {}
        for n, i in us:
            d.setdefault(n, []).append(i)
        return {n: torch.tensor(v) for n, v in d.items()}

    while len(units) > 1:
        a, b = units[: len(units) // 2], units[len(units) // 2 :]
        if ratio(as_indices(a), f"half of {len(units)}: first") >= args.threshold:
            units = a
        elif ratio(as_indices(b), f"half of {len(units)}: second") >= args.threshold:
            units = b
        else:
            break
    single = None
    if len(units) == 1:
        n, i = units[0]
        p = dict(h.model.named_parameters())[n].detach()
        cols = p.shape[1] if p.dim() == 2 else 1
        w = float(p.reshape(-1)[i])
        single = {"param": n, "flat_index": i, "row": i // cols, "col": i % cols, "value": w,
                  "abs_rank_in_matrix": int((p.abs().reshape(-1) > abs(w)).sum()) + 1,
                  "matrix_max_abs": float(p.abs().max()), "matrix_numel": p.numel()}  # fmt: skip
        print("single weight:", single)
    rec = {
        "command": "python benchmarks/regions_bisect.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "model": imp.model, "languages": langs, "seed": args.seed, "fraction": args.fraction, "scope": args.scope,
        "threshold": args.threshold, "base_nll": base, "rows": rows, "single_weight": single,
        "spread": single is None,
    }  # fmt: skip
    text = json.dumps(rec, indent=1)
    if args.out:
        atomic_write_text(Path(args.out), text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
