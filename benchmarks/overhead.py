"""Overhead of steerlab's forward and greedy generation against raw Hugging Face, side by side.

Every case runs in this one process, interleaved with its baseline (A B A B ...) after a warm-up,
and is reported as the median of the per-round ratios (with their min and max, and the per-token
time of each side), so drift in machine speed cancels out. Wall-clock and process CPU time are both
measured; the floors are checked on the median wall-clock ratio.

Every generating side runs under ``torch.inference_mode`` (as ``sl.generate``'s engine does) and every
forward under ``torch.no_grad`` (as ``sl.forward`` does): the same autograd mode on both sides.

Both sides do the same work, asserted on the warm-up outputs: greedy, KV cache, exactly ``--tokens``
new tokens per row (EOS does not stop either side), and for the cases that change nothing
(``generate_plain``, ``generate_zero_mask``, ``forward_*``'s shapes) the very same token ids.

Cases, per model and batch size:
- ``generate_plain``: ``sl.generate`` without interventions (the bare model runs); same ids
- ``generate_zero_mask``: a mask that changes nothing (gate scale 1 for expert 0) in every MoE
  layer, so routing is redone at every step (MoE models only); same ids
- ``generate_steer_vector``: one steering vector at a middle layer, every position; same length
- ``generate_expert_mask``: two experts switched off in every MoE layer (MoE models only); same length
- ``generate_nnsight`` / ``generate_tl_bridge`` (``--beside``): the steering vector written by hand
  in an nnsight trace / through a TransformerLens bridge hook; same length
- ``forward_steer_vector``: one forward pass over the prompts with the steering vector; same shape
each divided by the raw ``model.generate`` (or ``model(...)``) time.

Floors (exit code 1 when one fails): ``generate_steer_vector`` on SmolLM2-135M-Instruct and
``generate_expert_mask`` on ``organism:moe``, each at most 1.15x at batch 1 and 8.

Usage: python benchmarks/overhead.py [--models stories,smollm,moe] [--json PATH|-] [--rounds N] [--tokens N]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

import steerlab as sl
from steerlab.atomic import atomic_write_text
from steerlab.engines import engine_for
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


def _time(fn: Callable[[], Any]) -> tuple[float, float]:
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def _spread(xs: list[float], digits: int = 4) -> dict[str, float]:
    return {k: round(f(xs), digits) for k, f in (("min", min), ("median", statistics.median), ("max", max))}


def paired(
    case: Callable[[], Any], base: Callable[[], Any], rounds: int, check: Callable[[Any, Any], None], n_tokens: int
) -> dict[str, Any]:
    """Per-round ratios case/base (wall and CPU), timed alternately after one checked warm-up each."""
    check(case(), base())
    ratios, cpu_ratios, tc, tb = [], [], [], []
    for r in range(rounds):
        first, second = (case, base) if r % 2 == 0 else (base, case)
        a, b = _time(first), _time(second)
        c, bb = (a, b) if r % 2 == 0 else (b, a)
        tc.append(c[0])
        tb.append(bb[0])
        ratios.append(c[0] / bb[0])
        cpu_ratios.append(c[1] / bb[1])
    return {
        "ratio": statistics.median(ratios),
        "ratios": _spread(ratios),
        "cpu_ratios": _spread(cpu_ratios),
        "case_s": statistics.median(tc),
        "base_s": statistics.median(tb),
        "case_ms_per_token": _spread([1000 * t / n_tokens for t in tc], 3),
        "base_ms_per_token": _spread([1000 * t / n_tokens for t in tb], 3),
    }


def _new_tokens(out: Any, prompt_len: int) -> torch.Tensor:
    """The generated part: after the result's own prompt (``sl.generate``) or ``prompt_len`` tokens."""
    if hasattr(out, "prompt_ids"):
        return out.sequences[:, out.prompt_ids.shape[1] :]
    seqs = out.sequences if hasattr(out, "sequences") else out
    return seqs[:, prompt_len:]


def generation_check(prompt_len: int, tokens: int, same_ids: bool) -> Callable[[Any, Any], None]:
    """Both sides made exactly ``tokens`` new tokens per row (and, if ``same_ids``, the same ones)."""

    def check(ours: Any, raw: Any) -> None:
        a, b = _new_tokens(ours, prompt_len), _new_tokens(raw, prompt_len)
        if a.shape != b.shape or a.shape[1] != tokens:
            raise AssertionError(f"unequal work: {tuple(a.shape)} vs raw {tuple(b.shape)} new tokens, wanted {tokens}")
        if same_ids and not torch.equal(a.cpu(), b.cpu()):
            raise AssertionError("greedy token ids differ from raw Hugging Face generate")

    return check


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
            with torch.inference_mode():  # as sl.generate's engine runs generation: the same autograd mode
                return h.model.generate(
                    **enc, max_new_tokens=tokens, do_sample=False, eos_token_id=None, pad_token_id=pad
                )

        def ours(ivs: Any, prompts: list[str] = prompts) -> Callable[[], Any]:
            return lambda: sl.generate(h, prompts, interventions=ivs, max_new_tokens=tokens, stop_at_eos=False)

        plen = enc["input_ids"].shape[1]
        same, longer = generation_check(plen, tokens, True), generation_check(plen, tokens, False)
        res: dict[str, Any] = {}
        res["generate_plain"] = paired(ours(None), raw_generate, rounds, same, tokens)
        res["generate_steer_vector"] = paired(ours(steer), raw_generate, rounds, longer, tokens)
        if h.adapter.is_moe:
            zero = [ExpertMask(layer=i, scale={0: 1.0}) for i in h.adapter.moe_layers]
            res["generate_zero_mask"] = paired(ours(zero), raw_generate, rounds, same, tokens)
            masks = [ExpertMask(layer=i, off=[0, 1]) for i in h.adapter.moe_layers]
            res["generate_expert_mask"] = paired(ours(masks), raw_generate, rounds, longer, tokens)
        if beside:
            nn_run = _nnsight_generate(h, enc, mid, vec, tokens)
            res["generate_nnsight"] = paired(nn_run, raw_generate, rounds, longer, tokens)
            tl_run = _bridge_generate(h, enc, mid, vec, tokens)
            res["generate_tl_bridge"] = paired(tl_run, raw_generate, rounds, longer, tokens)

        def raw_forward(enc: dict = enc) -> Any:
            with torch.no_grad():
                return h.model(**enc)

        def same_logits(ours: Any, raw: Any) -> None:
            a, b = ours, raw.logits
            if a.shape != b.shape:
                raise AssertionError(f"unequal work: logits {tuple(a.shape)} vs raw {tuple(b.shape)}")

        res["forward_steer_vector"] = paired(
            lambda enc=enc: sl.forward(h, enc, interventions=steer), raw_forward, rounds, same_logits, 1
        )
        out["batches"][bs] = res
        print(f"[{name} b{bs}] " + ", ".join(f"{k} {v['ratio']:.3f}x" for k, v in res.items()), file=sys.stderr)
    return out


def _nnsight_generate(h: Any, enc: dict, layer: int, vec: torch.Tensor, tokens: int) -> Callable[[], Any]:
    """What a user writes with nnsight directly: add the vector to one layer's output at every step."""
    lm = engine_for(h).lm
    path = {id(m): n for n, m in h.model.named_modules()}[id(h.adapter.layers[layer].layer)]
    pad = h.tokenizer.pad_token_id

    def run() -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with (
                torch.inference_mode(),
                lm.generate(
                    dict(enc), max_new_tokens=tokens, do_sample=False, eos_token_id=None, pad_token_id=pad
                ) as tracer,
            ):
                for _ in tracer.all():
                    env = lm.get(path)
                    out = env.output
                    env.output = (out[0] + vec, *out[1:]) if isinstance(out, tuple) else out + vec
        return engine_for(h)._gen_out.pop("out")  # generate's return value, kept by the engine's wrapper

    return run


def _bridge_generate(h: Any, enc: dict, layer: int, vec: torch.Tensor, tokens: int) -> Callable[[], Any]:
    """The same steering through a TransformerLens 4 bridge hook and the bridge's own generate (KV cache)."""
    bridge = engine_for(h, "bridge").bridge
    name = f"blocks.{layer}.hook_resid_post"

    def hook(x: torch.Tensor, hook: Any) -> torch.Tensor:
        return x + vec

    def run() -> Any:
        with torch.inference_mode(), bridge.hooks(fwd_hooks=[(name, hook)]):
            return bridge.generate(
                enc["input_ids"],
                max_new_tokens=tokens,
                do_sample=False,
                stop_at_eos=False,
                use_past_kv_cache=True,
                verbose=False,
            )

    return run


FLOORS = {  # (model, case): the ratio that must not be exceeded at every batch size
    ("smollm", "generate_steer_vector"): FLOOR,
    ("moe", "generate_expert_mask"): FLOOR,
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="stories,smollm,moe")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--beside", action="store_true", help="also time hand-written nnsight and a TL bridge")
    ap.add_argument("--json", nargs="?", const="-", default=None, help="write the full result as JSON (to stdout: -)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    results = {m: bench_model(m, batches, args.tokens, args.rounds, args.beside) for m in args.models.split(",")}
    ratios = {
        f"{model}_b{bs}_{case}_ratio": round(v["ratio"], 4)
        for model, r in results.items()
        for bs, cases in r["batches"].items()
        for case, v in cases.items()
    }
    checked = {
        f"{model}_b{bs}_{case}_ratio": limit
        for (model, case), limit in FLOORS.items()
        if model in results
        for bs in batches
    }
    failed = sorted(k for k, limit in checked.items() if ratios[k] > limit)
    report = {
        "benchmark": "overhead",
        "command": shlex.join(["python", *sys.argv]),
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        "settings": {
            "tokens": args.tokens,
            "rounds": args.rounds,
            "threads": args.threads,
            "batches": batches,
            "torch": torch.__version__,
        },
        "models": {m: {"spec": r["spec"], "n_params": r["n_params"]} for m, r in results.items()},
        "ratios": ratios,
        "floor": {"max_ratio": FLOOR, "checked": sorted(checked), "failed": failed, "passed": not failed},
        "cases": {
            f"{m}_b{bs}_{c}": {k: v[k] for k in ("ratios", "cpu_ratios", "case_ms_per_token", "base_ms_per_token")}
            for m, r in results.items()
            for bs, cs in r["batches"].items()
            for c, v in cs.items()
        },
    }
    if args.json == "-":
        print(json.dumps(report, indent=2))
    else:
        if args.json:
            atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
        for k, v in report["cases"].items():
            r = v["ratios"]
            print(f"{k:45s} {r['median']:.3f}x [{r['min']:.3f}..{r['max']:.3f}]  cpu {v['cpu_ratios']['median']:.3f}x")
        print(f"floors (<= {FLOOR}x): {'passed' if not failed else 'FAILED ' + ', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
