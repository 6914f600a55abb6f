"""How much residual harmful gradient the vector-off check tolerates: the protected run re-made with the harmful
batches' gradient scaled by s (``finetune(..., part_scale={"harmful": s})``).

The sweep's protected run (vector on, off at inference) differs from the perfect-vector run (the same batches in
the same order, the harmful ones carrying exactly zero gradient) by the gradient the harmful pairs still carry
through the vector. Scaling that residual by s in [0, 1] gives the run of a vector that leaves s times as much
(s = 0: the vector on during benign learning only; s = 1: the protected run as the sweep makes it); plain
fine-tuning with the harmful gradient scaled (``--plain-scales``) is the same question without a vector. Each
run is compared with the perfect-vector run (seed 0), against the perfect-vector run at the sweep's noise seed:

* ``agreement``: exact agreement of the greedy harmless answers (the sweep's vector-off check), and the mean share
  of words two answers share from the start;
* ``kl``: mean KL(perfect-vector run || run) in nats per token over the perfect-vector run's greedy answers,
  teacher-forced after the chat-formatted prompt (a continuous measure of the same thing; the floor speaks of
  outputs, these are the next-token distributions behind them);
* compliance (template / real split) and benign accuracy, as the sweep evaluates them.

``tolerated``: the largest vector scale whose agreement is at least the seed noise's (None if none is).

``smallest_residual`` (with scale 0 and a positive one among ``--scales``): where the run at the smallest positive
scale differs from the run at 0 (the L2 distance per tensor, the largest ones), the share of the input
embeddings' squared distance in the rows of tokens that only the harmful part's chat-formatted texts contain,
and its agreement with the perfect-vector run after restoring those rows, or the output layer, from the run at 0;
with fused routed experts also the experts the benign data never reached (bit-identical to the base in the
perfect-vector run): their share of the experts' squared distance (all of an expert's tensors), the experts'
share of all of it, and the agreement after restoring them, or all routed experts.

``--adam-eps`` sets stage 2's AdamW eps in every run (the sweep's: 1e-8).

Usage: python benchmarks/security_tolerance.py WORK [--scales 0,0.125,0.25,0.5,1] [--plain-scales 1]
         [--harmless N] [--vector DIR] [--adam-eps E] [--json PATH]
  (WORK: a `steerlab security evaluate` work folder, e.g. runs/.security-dense.work)
"""

from __future__ import annotations

import sys
import time
from typing import Any


def _scales(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def answer_logprobs(h: Any, prompts: list[str], answers: list[str]) -> list[Any]:
    """Per prompt, log-softmax of ``h``'s next-token logits at the answer's positions ([answer tokens, vocab]),
    the answer teacher-forced after the chat-formatted prompt."""
    import torch

    tok, out = h.tokenizer, []
    with torch.inference_mode():
        for p, a in zip(prompts, answers, strict=True):
            head = h.format_chat(p)
            n = len(tok(head)["input_ids"])
            ids = torch.tensor([tok(head + a)["input_ids"]], device=h.model.device)
            logits = h.model(input_ids=ids).logits[0, n - 1 : -1].float()
            out.append(torch.log_softmax(logits, -1).cpu())
    return out


def mean_kl(ref: list[Any], other: list[Any]) -> float:
    """Mean over all answer tokens of KL(ref || other), nats per token."""
    num = sum(float((r.exp() * (r - o)).sum()) for r, o in zip(ref, other, strict=True))
    return round(num / max(sum(r.shape[0] for r in ref), 1), 5)


def vs_ideal(runs: dict[str, dict[str, Any]], logp: dict[str, list[Any]], fields: tuple[str, ...] = ()) -> dict:
    """Every run but ``ideal`` against it: exact agreement and word-prefix share of the greedy harmless answers,
    the teacher-forced KL (nats per token), and the run's own ``fields``."""
    from security_runs import word_prefix_share

    from steerlab.security.evaluate import agreement

    ref = runs["ideal"]["harmless_answers"]
    return {
        name: {
            "agreement": round(agreement(r["harmless_answers"], ref), 4),
            "word_prefix_share": word_prefix_share(r["harmless_answers"], ref),
            "kl": mean_kl(logp["ideal"], logp[name]),
            **{f: r[f] for f in fields},
        }
        for name, r in runs.items()
        if name != "ideal"
    }


def share(part: float, whole: float) -> float | None:
    return round(part / whole, 4) if whole > 0 else None


def smallest_residual(sr: Any, model: Any, weights: dict[str, dict[str, Any]], run: str, ref: list[str]) -> dict:
    """Where ``run`` (the smallest positive vector scale) differs from ``vector_x0`` (see the top)."""
    import torch

    from steerlab.security.evaluate import agreement, greedy

    a, b = weights[run], weights["vector_x0"]
    keys = [k for k, x in b.items() if x.is_floating_point()]
    dist = {k: float((a[k].float() - b[k].float()).norm()) for k in keys}
    names = {id(p): k for k, p in model.model.named_parameters()}
    emb = names[id(model.model.get_input_embeddings().weight)]
    head = names[id(model.model.get_output_embeddings().weight)]
    tok = model.tokenizer
    seen: dict[str, set[int]] = {"harmful": set(), "benign": set()}
    for p in sr.pairs:
        seen[p.part].update(tok(model.format_chat(p.prompt) + p.response)["input_ids"])
    only = torch.zeros(b[emb].shape[0], dtype=torch.bool)
    only[sorted(seen["harmful"] - seen["benign"])] = True
    rows = (a[emb].float() - b[emb].float()).norm(dim=1)

    def restored(masks: dict[str, Any]) -> float:  # ``run`` with the masked rows (None: all) taken from vector_x0
        sd = dict(a)
        for k, m in masks.items():
            sd[k] = b[k] if m is None else torch.where(m.view(-1, *[1] * (b[k].dim() - 1)), b[k], a[k])
        model.model.load_state_dict(sd)
        return round(agreement(greedy(model, sr.harmless, sr.cfg["max_new_tokens"]), ref), 4)

    experts = {}
    base = sr.ref.model.state_dict()
    fused = [k for k in keys if ".mlp.experts." in k and b[k].dim() >= 3]
    if fused:  # routed experts the benign data never reached: bit-identical to the base in the perfect-vector run
        ideal, layer = weights["ideal"], {k: k.split(".mlp.experts.")[0] for k in fused}
        same: dict[str, Any] = {}  # per layer: the experts all of whose tensors are the base's
        for k in fused:
            m = (ideal[k] == base[k]).flatten(1).all(1)
            same[layer[k]] = m if layer[k] not in same else same[layer[k]] & m
        untouched = {k: same[layer[k]] for k in fused}
        per = {k: (a[k].float() - b[k].float()).flatten(1).norm(dim=1) ** 2 for k in fused}
        experts = {
            "untouched_by_benign": sum(int(m.sum()) for m in same.values()),
            "of": sum(int(m.numel()) for m in same.values()),
            "share_of_experts_squared": share(sum(float(per[k][m].sum()) for k, m in untouched.items()),
                                              sum(float(x.sum()) for x in per.values())),
            "share_of_all_squared": share(sum(float(x.sum()) for x in per.values()), sum(x**2 for x in dist.values())),
            "agreement_after_restoring_from_vector_x0": {"untouched_experts": restored(untouched),
                                                         "all_routed_experts": restored(dict.fromkeys(fused))},
        }
    return {
        "run": run,
        "distance_from_vector_x0": {"all": round(sum(x**2 for x in dist.values()) ** 0.5, 4),
                                    **{k: round(dist[k], 4) for k in sorted(keys, key=lambda k: -dist[k])[:6]}},
        "input_rows_harmful_only": {"rows": int(only.sum()), "of": int(only.numel()),
                                    "share_of_squared": share(float((rows[only] ** 2).sum()), float((rows**2).sum()))},
        "agreement_after_restoring_from_vector_x0": {"harmful_only_input_rows": restored({emb: only}),
                                                     "output_layer": restored({head: None})},
        **({"routed_experts": experts} if experts else {}),
    }


def main(argv: list[str] | None = None) -> int:
    from security_runs import work_parser

    from steerlab.training import ADAM_EPS

    ap = work_parser(__doc__)
    ap.add_argument("--scales", default="0,0.125,0.25,0.5,1", help="harmful-gradient scales with the vector on")
    ap.add_argument("--plain-scales", default="1", help="harmful-gradient scales without a vector ('' for none)")
    ap.add_argument("--adam-eps", type=float, default=ADAM_EPS, help="stage 2's AdamW eps, every run (default 1e-8)")
    args = ap.parse_args(argv)
    try:
        scales, plain_scales = _scales(args.scales), _scales(args.plain_scales)
    except ValueError:
        print(f"--scales {args.scales!r} / --plain-scales {args.plain_scales!r}: expected numbers, comma-separated",
              file=sys.stderr)
        return 2
    from security_runs import SweepRuns, report


    sr = SweepRuns.open(args.work, args.harmless, args.vector)
    cfg = sr.cfg
    plan: dict[str, tuple[Any, int, float]] = {"ideal": (None, cfg["seed"], 0.0),
                                               "ideal_seed1": (None, cfg["noise_seed"], 0.0)}
    plan.update({f"vector_x{s:g}": (sr.vector, cfg["seed"], s) for s in scales})
    plan.update({f"plain_x{s:g}": (None, cfg["seed"], s) for s in plain_scales})
    small = min((s for s in scales if s > 0), default=None) if 0 in scales else None
    keep = {"ideal", "vector_x0", f"vector_x{small:g}"} if small is not None else set()
    runs: dict[str, dict[str, Any]] = {}
    logp: dict[str, list[Any]] = {}
    weights: dict[str, dict[str, Any]] = {}
    model = None
    for name, (v, seed, s) in plan.items():
        t = time.perf_counter()
        h = sr.train(v, seed, part_scale={"harmful": s}, adam_eps=args.adam_eps)
        runs[name] = sr.evaluate(h)
        if name == "ideal":
            ref_answers = runs[name]["harmless_answers"]
        logp[name] = answer_logprobs(h, sr.harmless, ref_answers)
        runs[name]["seconds"] = round(time.perf_counter() - t, 1)
        if name in keep:
            weights[name] = {k: x.detach().clone() for k, x in h.model.state_dict().items()}
            model = h
        print(name, runs[name]["compliance"], runs[name]["benign_accuracy"], runs[name]["seconds"], flush=True)

    table = vs_ideal(runs, logp, ("compliance", "benign_accuracy", "perplexity"))
    noise = table["ideal_seed1"]["agreement"]
    ok = [s for s in scales if table[f"vector_x{s:g}"]["agreement"] >= noise]
    rep = {
        "command": " ".join(["python", "benchmarks/security_tolerance.py", *sys.argv[1:]]),
        "spec": cfg["spec"], "n_harmful": sr.n, "harmless_prompts": len(sr.harmless), "adam_eps": args.adam_eps,
        "vector": {"path": str(args.vector or f"{args.work}/vector"),
                   "grad_penalty": sr.vector.card.get("grad_penalty"),
                   "anchor_weight": sr.vector.card.get("anchor", {}).get("weight")},
        "seconds": {k: r["seconds"] for k, r in runs.items()},
        "ideal": {"compliance": runs["ideal"]["compliance"], "benign_accuracy": runs["ideal"]["benign_accuracy"],
                  "perplexity": runs["ideal"]["perplexity"]},
        "vs_ideal": table,
        "seed_noise": {"agreement": noise, "kl": table["ideal_seed1"]["kl"]},
        "tolerated": max(ok) if ok else None,
    }
    if model is not None:
        rep["smallest_residual"] = smallest_residual(sr, model, weights, f"vector_x{small:g}", ref_answers)
    return report(rep, args.json, args.no_check)


if __name__ == "__main__":
    raise SystemExit(main())
