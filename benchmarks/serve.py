"""Serving throughput and latency on loopback: 1, 8 and 32 concurrent clients against sequential generation.

For each model, in one process: a uvicorn server (``steerlab.server``) on a free loopback port, and
clients (httpx, asyncio) that send the same ``--requests`` greedy requests (``--max-tokens`` each; chat
for organisms) with 1, 8 and 32 of them in flight at a time. The baseline is sequential single-request
generation: ``sl.generate`` on one prompt at a time, in process (no HTTP). Equal work is asserted: every
server answer's text equals the sequential text of the same prompt, so both sides decode the same
tokens. Each round runs the baseline and every client count (the order alternating between rounds);
reported per side: total tokens/s (min/median/max over rounds) and request latency p50/p95 (pooled).

Floor (issue 16): at 8 clients, median tokens/s >= 2x the sequential median, on ``organism:moe`` and on
``shared:stories260K``. Bounded: ``--requests`` per side and ``--max-seconds`` in all (over it: exit 1).

Soak (``--soak SECONDS``, on the first model): 8 clients for that long with mixed interventions (none, a
steering vector, an expert mask on MoE models, a parameter edit) and samplers (greedy, seeded top-p); RSS
sampled every 5 s; floor: RSS growth from the end of a warm-up (the first 10% of the soak, at most 60 s)
under 5%, and no failed request. Exits 1 when any floor fails (``--no-check``: report only).

Usage: python benchmarks/serve.py [--models organism:moe,shared:stories260K] [--requests 32] [--max-tokens 24]
       [--rounds 3] [--soak 600] [--out docs/records/serve_bench.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import httpx
import psutil
import torch

import steerlab as sl
from steerlab.atomic import atomic_write_text
from steerlab.server import ServerConfig, create_app, serve_in_thread

CLIENTS = (1, 8, 32)
FLOOR_RATIO = 2.0
FLOOR_RSS = 0.05
PROMPTS_FILE = Path(sl.__file__).parent / "decoding" / "prompts" / "story_openings.txt"
CHAT_PROMPTS = [
    "Tell me a story about a cat.", "What is 7 plus 5?", "Write a Python function that reverses a list.",
    "What is the capital of France?", "Give me a fact about the sun.", "Tell me a story about a brave knight.",
    "What is 12 minus 4?", "Write a poem about rain.", "What is 3 times 3?", "Tell me about dogs.",
    "Write a story about a robot.", "What is 9 plus 1?", "Explain why the sky is blue.",
    "Write a Python function that adds two numbers.", "Tell me a fact about the moon.", "What is 6 plus 6?",
]


def spread(xs: list[float], digits: int = 2) -> dict[str, float]:
    """min / median / max of ``xs``.

    >>> spread([3.0, 1.0, 2.0])
    {'min': 1.0, 'median': 2.0, 'max': 3.0}
    """
    return {k: round(f(xs), digits) for k, f in (("min", min), ("median", statistics.median), ("max", max))}


def percentile(xs: list[float], q: float) -> float:
    """The ``q``-quantile of ``xs`` (nearest rank).

    >>> percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 0.95)
    10
    """
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, int(round(q * len(s) + 0.5)) - 1))]


def body(spec: str, prompt: str, max_tokens: int, chat: bool, extra: dict | None = None) -> tuple[str, dict]:
    b = {"model": spec, "max_tokens": max_tokens, "temperature": 0, **(extra or {})}
    if chat:
        return "/v1/chat/completions", {**b, "messages": [{"role": "user", "content": prompt}]}
    return "/v1/completions", {**b, "prompt": prompt}


def text_of(r: dict) -> str:
    c = r["choices"][0]
    return c["message"]["content"] if "message" in c else c["text"]


async def clients(url: str, requests: list[tuple[str, dict]], n: int) -> tuple[list[dict], list[float], float]:
    """Send ``requests`` with ``n`` in flight; answers in order, latencies, wall seconds."""
    out: list[dict | None] = [None] * len(requests)
    lat: list[float] = [0.0] * len(requests)
    nxt = iter(range(len(requests)))
    limits = httpx.Limits(max_connections=n + 4, max_keepalive_connections=n + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as c:
        async def worker() -> None:
            for i in nxt:
                path, b = requests[i]
                t0 = time.perf_counter()
                r = await c.post(path, json=b)
                lat[i] = time.perf_counter() - t0
                if r.status_code != 200:
                    raise RuntimeError(f"request {i} answered {r.status_code}: {r.text[:200]}")
                out[i] = r.json()

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(n)))
        wall = time.perf_counter() - t0
    return out, lat, wall  # type: ignore[return-value]


def bench_model(spec: str, args: argparse.Namespace, deadline: float) -> dict:
    h = sl.load(spec)
    chat = spec.startswith("organism:")
    pool = CHAT_PROMPTS if chat else [ln for ln in PROMPTS_FILE.read_text().splitlines() if not ln.startswith("#")]
    prompts = [pool[i % len(pool)] for i in range(args.requests)]
    reqs = [body(spec, p, args.max_tokens, chat) for p in prompts]
    cfg = ServerConfig(model_name=spec, max_concurrent=max(CLIENTS), queue_length=args.requests,
                       max_new_tokens=args.max_tokens, timeout_s=600)

    def sequential() -> tuple[list[str], list[int], list[float], float]:
        texts, ntok, lat = [], [], []
        t0 = time.perf_counter()
        for p in prompts:
            s = time.perf_counter()
            g = sl.generate(h, [p], max_new_tokens=args.max_tokens, chat=chat)
            lat.append(time.perf_counter() - s)
            texts.append(g.texts[0])
            ntok.append(len(g.token_ids[0]))
        return texts, ntok, lat, time.perf_counter() - t0

    sides = ["sequential", *[f"clients_{n}" for n in CLIENTS]]
    tps: dict[str, list[float]] = {s: [] for s in sides}
    lats: dict[str, list[float]] = {s: [] for s in sides}
    batch_sizes: dict[str, list[int]] = {s: [] for s in sides[1:]}
    ref_texts, ref_tokens, _, _ = sequential()  # warm-up, and the reference answers
    total = sum(ref_tokens)
    with serve_in_thread(create_app(h, cfg)) as url:
        asyncio.run(clients(url, reqs[:2], 2))  # warm-up of the server path
        for r in range(args.rounds):
            order = sides if r % 2 == 0 else sides[::-1]
            for side in order:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"over --max-seconds {args.max_seconds} in round {r} of {spec}")
                if side == "sequential":
                    texts, ntok, lat, wall = sequential()
                    assert texts == ref_texts and sum(ntok) == total, "sequential runs disagree"
                else:
                    n = int(side.split("_")[1])
                    answers, lat, wall = asyncio.run(clients(url, reqs, n))
                    texts = [text_of(a) for a in answers]
                    bad = [i for i, (a, b) in enumerate(zip(texts, ref_texts, strict=True)) if a != b]
                    assert not bad, f"{spec} at {n} clients: answers {bad[:5]} differ from sequential generation"
                    ntok = [a["usage"]["completion_tokens"] for a in answers]
                    assert sum(ntok) == total, f"{spec} at {n} clients: {sum(ntok)} tokens, sequential {total}"
                    batch_sizes[side] += [a["steerlab"]["batch_size"] for a in answers]
                tps[side].append(total / wall)
                lats[side].extend(lat)
    seq = statistics.median(tps["sequential"])
    ratio8 = statistics.median(tps["clients_8"]) / seq
    return {
        "model": spec,
        "chat": chat,
        "requests": args.requests,
        "max_tokens": args.max_tokens,
        "tokens_each_side": total,
        "equal_work": {"texts_equal_sequential": True, "tokens_each_side": total},
        "tokens_per_s": {s: spread(tps[s], 1) for s in sides},
        "latency_s": {s: {"p50": round(percentile(lats[s], 0.5), 3), "p95": round(percentile(lats[s], 0.95), 3)}
                      for s in sides},
        "mean_batch_size": {s: round(statistics.mean(v), 2) for s, v in batch_sizes.items()},
        "speedup_vs_sequential_median": {s: round(statistics.median(tps[s]) / seq, 2) for s in sides[1:]},
        "floor": {"clients_8_min_ratio": FLOOR_RATIO, "ratio": round(ratio8, 2), "passed": ratio8 >= FLOOR_RATIO},
    }


def soak(spec: str, seconds: float, max_tokens: int) -> dict:
    """8 clients for ``seconds`` with mixed interventions and samplers; RSS over time; failures."""
    h = sl.load(spec)
    chat = spec.startswith("organism:")
    vec = (torch.randn(h.d_model, generator=torch.Generator().manual_seed(0)) * 8).tolist()
    param = next(n for n, _ in h.model.named_parameters() if n.endswith("layers.0.self_attn.o_proj.weight"))
    sets: list[list[dict]] = [
        [],
        [{"type": "add_vector", "site": "blocks.2.resid_post", "vector": vec}],
        [{"type": "param_edit", "param": param, "op": "scale", "value": -1.0}],
    ]
    if h.info()["moe"]:
        sets.append([{"type": "expert_mask", "layer": 1, "off": list(range(0, h.info()["moe"]["n_experts"], 2))}])
    samplers = [None, {"name": "top_p", "params": {"p": 0.9, "temperature": 1.2}}]
    pool = CHAT_PROMPTS if chat else [ln for ln in PROMPTS_FILE.read_text().splitlines() if not ln.startswith("#")]
    cfg = ServerConfig(model_name=spec, max_concurrent=8, queue_length=16, max_new_tokens=max_tokens, timeout_s=300)
    proc = psutil.Process()
    rss: list[tuple[float, int]] = []
    counts = {"ok": 0, "failed": 0, "tokens": 0}
    failures: list[str] = []
    warmup = min(60.0, 0.1 * seconds)

    async def run(url: str) -> None:
        rng = random.Random(0)
        stop = time.monotonic() + seconds
        async with httpx.AsyncClient(base_url=url, timeout=300) as c:
            async def worker(w: int) -> None:
                k = 0
                while time.monotonic() < stop:
                    k += 1
                    extra = {"steerlab": {"interventions": rng.choice(sets), "seed": w * 100000 + k}}
                    smp = rng.choice(samplers)
                    if smp:
                        extra["steerlab"]["sampler"] = smp
                    path, b = body(spec, rng.choice(pool), rng.randint(4, max_tokens), chat, extra)
                    try:
                        r = await c.post(path, json=b)
                        if r.status_code == 200:
                            counts["ok"] += 1
                            counts["tokens"] += r.json()["usage"]["completion_tokens"]
                        else:
                            counts["failed"] += 1
                            failures.append(f"{r.status_code}: {r.text[:120]}")
                    except httpx.HTTPError as e:
                        counts["failed"] += 1
                        failures.append(repr(e)[:120])

            async def sampler() -> None:
                t0 = time.monotonic()
                while time.monotonic() < stop:
                    rss.append((round(time.monotonic() - t0, 1), proc.memory_info().rss))
                    await asyncio.sleep(5)
                rss.append((round(time.monotonic() - t0, 1), proc.memory_info().rss))

            await asyncio.gather(sampler(), *(worker(w) for w in range(8)))

    before = {k: v.detach().clone() for k, v in h.model.state_dict().items()}
    with serve_in_thread(create_app(h, cfg)) as url:
        t0 = time.perf_counter()
        asyncio.run(run(url))
        wall = time.perf_counter() - t0
    restored = all(torch.equal(before[k], v) for k, v in h.model.state_dict().items())
    base = next(v for t, v in rss if t >= warmup)
    end = rss[-1][1]
    growth = (end - base) / base
    peak = (max(v for t, v in rss if t >= warmup) - base) / base
    return {
        "model": spec,
        "seconds": round(wall, 1),
        "clients": 8,
        "intervention_sets": len(sets),
        "requests_ok": counts["ok"],
        "requests_failed": counts["failed"],
        "failures": failures[:10],
        "tokens": counts["tokens"],
        "tokens_per_s": round(counts["tokens"] / wall, 1),
        "weights_restored": restored,
        "rss_mb": {"start": round(rss[0][1] / 2**20, 1), "after_warmup": round(base / 2**20, 1),
                   "end": round(end / 2**20, 1), "warmup_s": warmup},
        "rss_growth_after_warmup": round(growth, 4),
        "rss_peak_growth_after_warmup": round(peak, 4),
        "rss_samples": [(t, round(v / 2**20, 1)) for t, v in rss],
        "floor": {"rss_growth_max": FLOOR_RSS, "failed_max": 0,
                  "passed": growth < FLOOR_RSS and counts["failed"] == 0 and restored},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="organism:moe,shared:stories260K")
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--soak", type=float, default=0.0, help="seconds of soak on the first model (0: none)")
    ap.add_argument("--max-seconds", type=float, default=1800.0, help="bound on the throughput part")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="write the JSON record here")
    ap.add_argument("--no-check", action="store_true", help="report only; do not fail on a floor")
    args = ap.parse_args(argv)
    for name in ("requests", "max_tokens", "rounds", "threads"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be an integer >= 1, got {getattr(args, name)}")
    torch.set_num_threads(args.threads)
    models = [m for m in args.models.split(",") if m]
    deadline = time.monotonic() + args.max_seconds
    load0 = os.getloadavg()
    report: dict = {
        "benchmark": "serve",
        "command": "python benchmarks/serve.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "settings": {"clients": list(CLIENTS), "rounds": args.rounds, "threads": args.threads,
                     "cpu_count": os.cpu_count()},
        "models": [],
    }
    ok = True
    for spec in models:
        r = bench_model(spec, args, deadline)
        report["models"].append(r)
        ok &= r["floor"]["passed"]
        print(f"{spec}: tok/s {r['tokens_per_s']} speedup {r['speedup_vs_sequential_median']} "
              f"latency {r['latency_s']}", file=sys.stderr, flush=True)
    if args.soak > 0:
        report["soak"] = soak(models[0], args.soak, args.max_tokens)
        ok &= report["soak"]["floor"]["passed"]
    report["load_average"] = {"start": [round(x, 2) for x in load0], "end": [round(x, 2) for x in os.getloadavg()]}
    report["floors_passed"] = ok
    text = json.dumps(report, indent=2)
    if args.out:
        atomic_write_text(args.out, text + "\n")
    print(text)
    if not ok:
        print("FLOOR FAILED", file=sys.stderr)
        return 0 if args.no_check else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
