"""Overhead of steerlab's forward and greedy generation against raw Hugging Face, side by side.

Every case runs in this one process, interleaved with its baseline (A B A B ...) after a warm-up,
and is reported as the median of the per-round ratios, so drift in machine speed cancels out.

Cases, per model and batch size (greedy, KV cache, the same number of new tokens):
- ``generate_plain``: ``sl.generate`` without interventions (the bare model runs)
- ``generate_steer_vector``: one steering vector at a middle layer, every position
- ``generate_expert_mask``: two experts switched off in every MoE layer (MoE models only)
- ``generate_nnsight``: the same steering vector written by hand in an nnsight trace (beside)
- ``generate_tl_bridge``: the same steering vector through a TransformerLens bridge hook (beside)
- ``forward_steer_vector``: one forward pass over the prompts with the steering vector
each divided by the raw ``model.generate`` (or ``model(...)``) time.

Floor (issue 2): on SmolLM2-135M-Instruct at batch 1 and 8, ``generate_steer_vector`` is at most 1.15x.

Usage: python benchmarks/overhead.py [--models stories,smollm,moe] [--json] [--rounds N] [--tokens N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

import steerlab as sl
from steerlab.interventions import AddVector, ExpertMask
from steerlab.models.load import list_models

FLOOR = 1.15
PROMPTS = [
    "Once upon a time, there was a little girl who",
    "The old man walked slowly to the",
    "Write a short poem about the sea.",
    "What is the capital of France?",
    "Tom and his dog went to the park and",
    "Explain why the sky is blue.",
    "Lily found a shiny red ball under the",
    "List three kinds of fruit.",
]


def _time(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def paired(case: Callable[[], Any], base: Callable[[], Any], rounds: int) -> dict[str, float]:
    """Median over rounds of case/base, timing them alternately after one warm-up each."""
    case(), base()
    ratios, tc, tb = [], [], []
    for r in range(rounds):
        first, second = (case, base) if r % 2 == 0 else (base, case)
        a, b = _time(first), _time(second)
        c, bb = (a, b) if r % 2 == 0 else (b, a)
        tc.append(c)
        tb.append(bb)
        ratios.append(c / bb)
    return {"ratio": statistics.median(ratios), "case_s": statistics.median(tc), "base_s": statistics.median(tb)}


def _moe_spec() -> str:
    return "organism:moe" if "organism:moe" in list_models() else "tiny:qwen2_moe"


def _load(name: str) -> Any:
    if name == "stories":
        return sl.load("shared:stories260K")
    if name == "smollm":
        return sl.load("shared:SmolLM2-135M-Instruct-Q4_1-gguf")
    if name == "moe":
        spec = _moe_spec()
        if spec.startswith("organism:"):
            return sl.load(spec)
        from steerlab.models.tiny import tiny_model

        # a mid-size from-config MoE, so the forward is not trivially small
        return tiny_model(
            "qwen2_moe",
            hidden_size=256,
            intermediate_size=512,
            moe_intermediate_size=128,
            num_experts=16,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            shared_expert_intermediate_size=256,
        )
    raise SystemExit(f"unknown model {name!r}; expected stories, smollm or moe")


def bench_model(name: str, batches: list[int], tokens: int, rounds: int, beside: bool) -> dict[str, Any]:
    h = _load(name)
    mid = h.adapter.n_layers // 2
    vec = torch.randn(h.d_model, generator=torch.Generator().manual_seed(0)) * 0.5
    steer = [AddVector(site=f"blocks.{mid}.resid_post", vector=vec)]
    out: dict[str, Any] = {"spec": h.spec, "n_params": sum(p.numel() for p in h.model.parameters()), "batches": {}}
    for bs in batches:
        prompts = (PROMPTS * ((bs + len(PROMPTS) - 1) // len(PROMPTS)))[:bs]
        enc = h.tokenize(prompts)
        pad = h.tokenizer.pad_token_id

        def raw_generate(enc: dict = enc, pad: int = pad) -> Any:
            with torch.no_grad():
                return h.model.generate(
                    **enc, max_new_tokens=tokens, do_sample=False, eos_token_id=None, pad_token_id=pad
                )

        def ours(ivs: Any, prompts: list[str] = prompts) -> Callable[[], Any]:
            return lambda: sl.generate(h, prompts, interventions=ivs, max_new_tokens=tokens, stop_at_eos=False)

        res: dict[str, Any] = {}
        res["generate_plain"] = paired(ours(None), raw_generate, rounds)
        res["generate_steer_vector"] = paired(ours(steer), raw_generate, rounds)
        if h.adapter.is_moe:
            masks = [ExpertMask(layer=i, off=[0, 1]) for i in h.adapter.moe_layers]
            res["generate_expert_mask"] = paired(ours(masks), raw_generate, rounds)
        if beside:
            res["generate_nnsight"] = paired(_nnsight_generate(h, enc, mid, vec, tokens), raw_generate, rounds)
            res["generate_tl_bridge"] = paired(_bridge_generate(h, enc, mid, vec, tokens), raw_generate, rounds)

        def raw_forward(enc: dict = enc) -> Any:
            with torch.no_grad():
                return h.model(**enc)

        res["forward_steer_vector"] = paired(
            lambda enc=enc: sl.forward(h, enc, interventions=steer), raw_forward, rounds
        )
        out["batches"][bs] = res
        print(f"[{name} b{bs}] " + ", ".join(f"{k} {v['ratio']:.3f}x" for k, v in res.items()), file=sys.stderr)
    return out


def _nnsight_generate(h: Any, enc: dict, layer: int, vec: torch.Tensor, tokens: int) -> Callable[[], Any]:
    """What a user writes with nnsight directly: add the vector to one layer's output at every step."""
    lm = h.nnsight()
    path = {id(m): n for n, m in h.model.named_modules()}[id(h.adapter.layers[layer].layer)]
    pad = h.tokenizer.pad_token_id

    def run() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with (
                torch.no_grad(),
                lm.generate(
                    dict(enc), max_new_tokens=tokens, do_sample=False, eos_token_id=None, pad_token_id=pad
                ) as tracer,
            ):
                for _ in tracer.all():
                    env = lm.get(path)
                    out = env.output
                    env.output = (out[0] + vec, *out[1:]) if isinstance(out, tuple) else out + vec

    return run


def _bridge_generate(h: Any, enc: dict, layer: int, vec: torch.Tensor, tokens: int) -> Callable[[], Any]:
    """The same steering through a TransformerLens 4 bridge hook and the bridge's own generate (KV cache)."""
    bridge = h.bridge()
    name = f"blocks.{layer}.hook_resid_post"

    def hook(x: torch.Tensor, hook: Any) -> torch.Tensor:
        return x + vec

    def run() -> None:
        with torch.no_grad(), bridge.hooks(fwd_hooks=[(name, hook)]):
            bridge.generate(
                enc["input_ids"],
                max_new_tokens=tokens,
                do_sample=False,
                stop_at_eos=False,
                use_past_kv_cache=True,
                verbose=False,
            )

    return run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="stories,smollm,moe")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-beside", action="store_true", help="skip the nnsight and TL-bridge comparisons")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    results = {m: bench_model(m, batches, args.tokens, args.rounds, not args.no_beside) for m in args.models.split(",")}
    ratios = {
        f"{model}_b{bs}_{case}_ratio": round(v["ratio"], 4)
        for model, r in results.items()
        for bs, cases in r["batches"].items()
        for case, v in cases.items()
    }
    floor_keys = [k for k in ratios if k.startswith("smollm_") and k.endswith("generate_steer_vector_ratio")]
    report = {
        "benchmark": "overhead",
        "settings": {
            "tokens": args.tokens,
            "rounds": args.rounds,
            "threads": args.threads,
            "batches": batches,
            "torch": torch.__version__,
        },
        "models": {m: {"spec": r["spec"], "n_params": r["n_params"]} for m, r in results.items()},
        "ratios": ratios,
        "floor": {
            "generate_steer_vector_ratio_max": FLOOR,
            "checked": floor_keys,
            "passed": all(ratios[k] <= FLOOR for k in floor_keys) if floor_keys else None,
        },
        "seconds": {
            f"{m}_b{bs}_{c}": {"steerlab_s": round(v["case_s"], 5), "baseline_s": round(v["base_s"], 5)}
            for m, r in results.items()
            for bs, cs in r["batches"].items()
            for c, v in cs.items()
        },
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for k, v in ratios.items():
            print(f"{k:60s} {v:.3f}")
        print(f"floor (smollm generate_steer_vector <= {FLOOR}x): {report['floor']['passed']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
