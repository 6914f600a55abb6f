"""Per-step cost of steerlab's top-H sampler against transformers' top-p and top-H warpers.

One "step" is what sampling costs per generated token after the forward pass, temperature included:
ours ``TopH(alpha, temperature=T).filter_logits(scores)`` (validation, temperature, the rule, the masked
output) against transformers' ``TemperatureLogitsWarper(T)`` followed by ``TopPLogitsWarper(0.9)`` or
``TopHLogitsWarper(alpha)``. Every function gets the same raw ``[batch, vocab]`` float32 logits and
returns the same kind of ``[batch, vocab]`` tensor (tempered logits, the rest at ``-inf``).

Grid: temperature in {0.7, 1, 1.5, 2, 3} x batch in {8, 64} x two logit sources:

- ``synthetic`` (vocab 50,257): per row a Zipf profile ``-s log(rank)`` (``s ~ U(1.1, 2.0)``) plus
  Gaussian noise (sd 1), randomly permuted over the vocabulary (entropies about 1-6 nats at T = 1);
- ``smollm2`` (vocab 49,152): next-token logits of SmolLM2-135M-Instruct (the shared Q4_1 GGUF,
  dequantized) on WikiText-2 test paragraphs (``steerlab.capability.wikitext``), 64 positions collected
  once per run and kept in memory; batch 8 is their first 8 rows.

Rounds are interleaved (one call of every function per round, the order rotated each round),
single-threaded. Each call is timed by the CPU time of the calling thread (``time.thread_time``: the one
thread doing the work, so time the scheduler gives other processes on a shared machine is not counted)
and by the wall clock: ``ms`` (CPU) and ``wall_ms`` give min/median/max over rounds, and each ratio is the
median over rounds of ``ours / theirs`` within the same round, in CPU time (its min/max are reported too;
``paper_vs_hf_top_h_wall``: the same in wall time). Equal work is asserted on every input: our ``hf``
variant returns exactly transformers' ``TopHLogitsWarper`` output (same rule: ``torch.equal``), and every
top-H output keeps the tempered logit on its kept tokens, at least one per row.

Floors for the default variant (``paper``), at every cell of the grid: at most 1.3x transformers' top-p,
and no slower than transformers' top-H at batch 64 (median paired CPU-time ratio <= 1.0, no tolerance). The
script exits with status 1 when one is broken (``--no-check``: report only).

Run:
    .venv/bin/python benchmarks/sampling.py                                        # table
    .venv/bin/python benchmarks/sampling.py --out docs/records/sampling_bench.json  # the record
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from steerlab.atomic import atomic_write_text

TEMPERATURES = (0.7, 1.0, 1.5, 2.0, 3.0)
BATCHES = (8, 64)
SYNTHETIC_VOCAB = 50257
MODEL = "shared:SmolLM2-135M-Instruct-Q4_1-gguf"
TOP_P = 0.9
FLOOR_VS_TOP_P = 1.3
FLOOR_VS_HF_TOP_H_AT_64 = 1.0


def lm_like_logits(batch: int, vocab: int, seed: int = 0) -> torch.Tensor:
    """Zipf-shaped logits with noise, permuted per row (see the module docstring)."""
    g = torch.Generator().manual_seed(seed)
    slope = 1.1 + 0.9 * torch.rand(batch, 1, generator=g)
    rank = torch.arange(1, vocab + 1, dtype=torch.float32)
    x = -slope * rank.log() + torch.randn(batch, vocab, generator=g)
    perm = torch.argsort(torch.rand(batch, vocab, generator=g), dim=-1)
    return torch.gather(x, 1, perm).contiguous()


def model_logits(n_rows: int = 64, spec: str = MODEL) -> torch.Tensor:
    """``n_rows`` next-token logits of ``spec`` on WikiText-2 test paragraphs (evenly spaced positions)."""
    import steerlab as sl
    from steerlab.capability import wikitext

    h = sl.load(spec)
    enc = h.tokenizer(wikitext(16).responses, return_tensors="pt", padding=True, truncation=True, max_length=48)
    with torch.no_grad():
        logits = h.model(**enc).logits.float()
    mask = enc["attention_mask"].bool()
    mask[:, :4] = False  # a few tokens of context first
    rows = logits[mask]
    pick = torch.linspace(0, rows.shape[0] - 1, n_rows).round().long()
    return rows[pick].contiguous()


def time_rounds(
    fns: dict[str, Callable[[], object]], rounds: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Milliseconds per call of each function over interleaved rounds (order rotated each round): CPU time
    of this thread, and wall time."""
    for f in fns.values():
        f()
    names = list(fns)
    cpu: dict[str, list[float]] = {k: [] for k in names}
    wall: dict[str, list[float]] = {k: [] for k in names}
    for r in range(rounds):
        for k in names[r % len(names) :] + names[: r % len(names)]:
            t, c = time.perf_counter(), time.thread_time()
            fns[k]()
            cpu[k].append(1e3 * (time.thread_time() - c))
            wall[k].append(1e3 * (time.perf_counter() - t))
    return cpu, wall


def spread(xs: list[float]) -> dict[str, float]:
    return {"min": round(min(xs), 4), "median": round(statistics.median(xs), 4), "max": round(max(xs), 4)}


def check_equal_work(x: torch.Tensor, outs: dict[str, torch.Tensor], temperature: float) -> None:
    """Raise unless every top-H output is a masked copy of the tempered logits and ``hf`` == transformers."""
    tempered = x / temperature
    for name, out in outs.items():
        if out.shape != x.shape or out.dtype != torch.float32:
            raise RuntimeError(f"{name}: output {tuple(out.shape)} {out.dtype}, expected {tuple(x.shape)} float32")
        kept = torch.isfinite(out)
        if name != "hf_top_p" and not bool(kept.any(-1).all()):
            raise RuntimeError(f"{name}: a row keeps no token")
        if not torch.equal(out[kept], tempered[kept]):
            raise RuntimeError(f"{name}: kept logits are not the tempered ones")
    if not torch.equal(outs["top_h_hf"], outs["hf_top_h"]):
        raise RuntimeError("variant 'hf' differs from transformers' TopHLogitsWarper on the same logits")


def bench_cell(x: torch.Tensor, temperature: float, alpha: float, rounds: int) -> dict:
    from transformers import TemperatureLogitsWarper, TopHLogitsWarper, TopPLogitsWarper

    from steerlab.sampling.top_h import VARIANTS, TopH

    ids = torch.zeros(x.shape[0], 1, dtype=torch.long)
    temp, top_p, hf_top_h = TemperatureLogitsWarper(temperature), TopPLogitsWarper(TOP_P), TopHLogitsWarper(alpha)
    fns: dict[str, Callable[[], torch.Tensor]] = {
        "hf_top_p": lambda: top_p(ids, temp(ids, x)),
        "hf_top_h": lambda: hf_top_h(ids, temp(ids, x)),
    }
    samplers = {v: TopH(alpha=alpha, variant=v, temperature=temperature) for v in VARIANTS}
    fns.update({f"top_h_{v}": (lambda s=s: s.filter_logits(x)) for v, s in samplers.items()})
    check_equal_work(x, {k: f() for k, f in fns.items()}, temperature)
    times, wall = time_rounds(fns, rounds)
    kept = samplers["paper"].select(x).n_keep.float()
    cell: dict = {
        "ms": {k: spread(v) for k, v in times.items()},
        "wall_ms": {k: spread(v) for k, v in wall.items()},
        "paper_vs_hf_top_h_wall": spread([a / b for a, b in zip(wall["top_h_paper"], wall["hf_top_h"], strict=True)]),
        "kept_paper": {"mean": round(float(kept.mean()), 2), "max": int(kept.max())},
        "mean_entropy_nats": round(float(torch.special.entr(torch.softmax(x / temperature, -1)).sum(-1).mean()), 3),
    }
    for v in VARIANTS:
        for base in ("hf_top_p", "hf_top_h"):
            paired = [a / b for a, b in zip(times[f"top_h_{v}"], times[base], strict=True)]
            cell[f"{v}_vs_{base}"] = spread(paired)
    return cell


def run(alpha: float = 0.4, rounds: int = 15, model: bool = True) -> dict:
    sources = {"synthetic": lm_like_logits(max(BATCHES), SYNTHETIC_VOCAB)}
    if model:
        sources["smollm2"] = model_logits(max(BATCHES))
    cells, failures = [], []
    for source, logits in sources.items():
        for temperature in TEMPERATURES:
            for batch in BATCHES:
                x = logits[:batch].contiguous()
                cell = {"source": source, "vocab": x.shape[1], "batch": batch, "temperature": temperature}
                cell.update(bench_cell(x, temperature, alpha, rounds if batch > 8 else 4 * rounds))
                cells.append(cell)
                tag = f"{source} T={temperature} b{batch}"
                if cell["paper_vs_hf_top_p"]["median"] > FLOOR_VS_TOP_P:
                    failures.append(f"{tag}: paper / top-p {cell['paper_vs_hf_top_p']['median']}")
                if batch == 64 and cell["paper_vs_hf_top_h"]["median"] > FLOOR_VS_HF_TOP_H_AT_64:
                    failures.append(f"{tag}: paper / HF top-H {cell['paper_vs_hf_top_h']['median']}")
    b64 = [c for c in cells if c["batch"] == 64]
    return {
        "config": {
            "default_variant": "paper",
            "variant_equal_to_transformers": "hf",
            "alpha": alpha,
            "top_p": TOP_P,
            "temperatures": list(TEMPERATURES),
            "batches": list(BATCHES),
            "rounds_batch_64": rounds,
            "rounds_batch_8": 4 * rounds,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "load_average_1m_at_end": round(os.getloadavg()[0], 2),
            "synthetic": f"lm_like, vocab {SYNTHETIC_VOCAB} (Zipf s~U(1.1,2.0) + N(0,1), permuted)",
            "smollm2": f"{MODEL} next-token logits on WikiText-2 test" if model else None,
            "ratio": "median over rounds of ours/theirs timed in the same round",
        },
        "max_paper_vs_hf_top_p_ratio": max(c["paper_vs_hf_top_p"]["median"] for c in cells),
        "max_b64_paper_vs_hf_top_h_ratio": max(c["paper_vs_hf_top_h"]["median"] for c in b64),
        "floors": {"vs_top_p_max": FLOOR_VS_TOP_P, "vs_hf_top_h_at_batch_64_max": FLOOR_VS_HF_TOP_H_AT_64},
        "floors_ok": not failures,
        "failures": failures,
        "cells": cells,
    }


def markdown(res: dict) -> str:
    """The docs table of a record (``--markdown RECORD``): every number read from the record."""
    lines = [
        "| logits | T | batch | HF top-p | HF top-H | ours `paper` | ours `hf` | ours `reference` | `paper` / top-p "
        "| `paper` / HF top-H | the same, wall time | `paper` kept (mean / max) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in res["cells"]:
        ms, r = c["ms"], c["paper_vs_hf_top_h"]

        def span(k: str, ms: dict = ms) -> str:
            return f"{ms[k]['median']:.2f} ({ms[k]['min']:.2f}-{ms[k]['max']:.2f})"

        ratio = f"{r['median']:.3f} ({r['min']:.2f}-{r['max']:.2f})"
        if c["batch"] == 64 and r["median"] > res["floors"]["vs_hf_top_h_at_batch_64_max"]:
            ratio = f"**{ratio}**"
        kept = c["kept_paper"]
        w = c.get("paper_vs_hf_top_h_wall")
        wall = f"{w['median']:.3f} ({w['min']:.2f}-{w['max']:.2f})" if w else "-"
        lines.append(
            f"| {c['source']} | {c['temperature']:g} | {c['batch']} | {ms['hf_top_p']['median']:.1f} "
            f"| {span('hf_top_h')} | {span('top_h_paper')} | {ms['top_h_hf']['median']:.2f} "
            f"| {ms['top_h_reference']['median']:.2f} | {c['paper_vs_hf_top_p']['median']:.3f} | {ratio} "
            f"| {wall} | {kept['mean']} / {kept['max']} |"
        )
    broken, floors = "; ".join(res["failures"]) or "none", res["floors"]
    lines += [
        "",
        f"Worst cells: `paper` / top-p {res['max_paper_vs_hf_top_p_ratio']:.3f} (floor {floors['vs_top_p_max']}); "
        f"`paper` / transformers top-H at batch 64 {res['max_b64_paper_vs_hf_top_h_ratio']:.3f} "
        f"(floor {floors['vs_hf_top_h_at_batch_64_max']}); floors broken: {broken}.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print the JSON record to stdout")
    ap.add_argument("--out", metavar="PATH", help="write the JSON record to PATH (atomically: a crash keeps the old)")
    ap.add_argument("--markdown", metavar="RECORD", help="print the docs table of a saved record and exit")
    ap.add_argument("--rounds", type=int, default=15, help="rounds at batch 64 (4x at batch 8)")
    ap.add_argument("--no-model", action="store_true", help="synthetic logits only (no SmolLM2 load)")
    ap.add_argument("--no-check", action="store_true", help="exit 0 even if a floor is broken")
    ap.add_argument("--alpha", type=float, default=0.4)
    args = ap.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(Path(args.markdown).read_text())))
        return 0
    torch.set_num_threads(1)
    res = run(alpha=args.alpha, rounds=args.rounds, model=not args.no_model)
    res = {"command": shlex.join(["python", *sys.argv]), **res}
    if args.out:
        atomic_write_text(args.out, json.dumps(res, indent=1) + "\n")
    if args.json:
        print(json.dumps(res, indent=1))
    else:
        print(f"alpha {args.alpha}, 1 thread; CPU ms per step = median [min-max] over rounds; ratios = paired medians")
        print(
            f"{'source':>9} {'T':>4} {'b':>3} {'HF top-p':>9} {'HF top-H':>20} {'paper':>20}"
            f" {'hf':>8} {'ref':>8} {'/top-p':>7} {'/HF top-H':>16} {'kept':>6}"
        )
        for c in res["cells"]:
            ms, r = c["ms"], c["paper_vs_hf_top_h"]

            def cell(k: str, ms: dict = ms) -> str:
                return f"{ms[k]['median']:.2f} [{ms[k]['min']:.2f}-{ms[k]['max']:.2f}]"

            print(
                f"{c['source']:>9} {c['temperature']:>4} {c['batch']:>3} {ms['hf_top_p']['median']:>9.2f}"
                f" {cell('hf_top_h'):>20} {cell('top_h_paper'):>20} {ms['top_h_hf']['median']:>8.2f}"
                f" {ms['top_h_reference']['median']:>8.2f} {c['paper_vs_hf_top_p']['median']:>7.3f}"
                f" {r['median']:>6.3f} [{r['min']:.2f}-{r['max']:.2f}] {c['kept_paper']['mean']:>6.1f}"
            )
        print(
            f"max paper / top-p {res['max_paper_vs_hf_top_p_ratio']:.3f} (floor {FLOOR_VS_TOP_P}); "
            f"max paper / HF top-H at batch 64 {res['max_b64_paper_vs_hf_top_h_ratio']:.3f} "
            f"(floor {FLOOR_VS_HF_TOP_H_AT_64}): {'OK' if res['floors_ok'] else 'FLOOR BROKEN'}"
        )
    for f in res["failures"]:
        print(f"floor broken: {f}", file=sys.stderr)
    return 0 if (res["floors_ok"] or args.no_check) else 1


if __name__ == "__main__":
    sys.exit(main())
