"""Where the protected model's drift from the perfect-vector run lives, and which weights carry it.

The vector-off check compares the protected model (fine-tuned with the vector on, off at inference) with the
perfect-vector run (the same batches in the same order, the harmful ones carrying exactly zero gradient). This
script re-makes, as the sweep does at its largest n, the protected run, the perfect-vector run at two seeds and
plain fine-tuning, keeps their weights and reports:

* ``agreement``: exact agreement of the greedy harmless answers with the perfect-vector run (as the sweep);
* ``distance``: the L2 distance of every weight tensor from the perfect-vector run's (protected, plain, the second
  seed), over all tensors and the largest ones;
* ``output_rows``: the output layer's distance per row, grouped by where the row's token occurs in the responses of
  the fine-tuning data (harmful part only, benign part only, both, neither): mean row distance and share of the
  squared distance;
* ``swap``: agreement after giving the protected model the perfect-vector run's output layer (and input
  embeddings), and the other way round;
* ``experts`` (models with fused routed experts, ``...mlp.experts.*`` tensors with the expert first): the experts
  the benign data never reached (bit-identical to the base in both perfect-vector runs), their share of the
  squared distance, and agreement after resetting them in the protected and plain models; and per expert the share
  of harmful tokens among the fine-tuning tokens routed to it (320 pairs of each part; with the vector on, as the
  protected run routes them, and off, as the plain run does) against its distance from the perfect-vector run's
  (gate and up and down tensors together): the correlation, and the mean distance in the third of the experts with
  the lowest and with the highest harmful share.

Usage: python benchmarks/security_drift.py WORK [--harmless N] [--vector DIR] [--top K] [--json PATH]
  (WORK: a `steerlab security evaluate` work folder, e.g. runs/.security-dense.work)
"""

from __future__ import annotations

import collections
import sys
import time
from typing import Any


def routing(sr: Any, weights: dict[str, dict[str, Any]], keys: list[str], n: int = 320) -> dict[str, Any]:
    """Per-expert harmful share of the routed fine-tuning tokens against the per-expert distance (see the top)."""
    import contextlib

    import torch

    from steerlab.activations import capture

    h = sr.ref
    layers = list(h.adapter.moe_layers)
    n_exp = h.adapter.layers[layers[0]].rule.n_experts
    sites = [f"blocks.{i}.moe.topk_indices" for i in layers]

    def counts(part: str, on: bool) -> Any:
        texts = [h.format_chat(p.prompt) + p.response for p in sr.pairs if p.part == part][:n]
        with sr.vector.on(h) if on else contextlib.nullcontext():
            cap = capture(h, texts, sites, batch_size=16)
        m = cap.attention_mask.bool()
        return torch.stack([torch.bincount(cap[s][m].long().flatten(), minlength=n_exp).float() for s in sites])

    def share(on: bool) -> Any:
        harm = counts("harmful", on)
        return harm / (harm + counts("benign", on)).clamp_min(1)

    def drift(a: str) -> Any:  # [layers, experts]
        rows = []
        for i in layers:
            ks = [k for k in keys if f"layers.{i}.mlp.experts." in k]
            rows.append(sum((weights[a][k].float() - weights["ideal"][k].float()).flatten(1).norm(dim=1) ** 2
                            for k in ks) ** 0.5)
        return torch.stack(rows).flatten()

    def corr(a: Any, b: Any) -> float:
        a, b = a - a.mean(), b - b.mean()
        return round(float((a * b).sum() / (a.norm() * b.norm())), 4)

    on, off = share(True).flatten(), share(False).flatten()
    d = {a: drift(a) for a in ("protected", "plain", "ideal_seed1")}
    order = on.argsort()
    third = len(order) // 3
    groups = {"lowest_third": order[:third], "highest_third": order[-third:]}
    return {
        "pairs_per_part": n,
        "correlation_share_vs_distance": {"protected (vector on)": corr(on, d["protected"]),
                                          "plain (vector off)": corr(off, d["plain"])},
        "by_harmful_share_with_vector_on": {
            g: {"harmful_share": round(float(on[ix].mean()), 4),
                **{a: round(float(x[ix].mean()), 4) for a, x in d.items()}}
            for g, ix in groups.items()
        },
    }


def main(argv: list[str] | None = None) -> int:
    from security_runs import work_parser

    ap = work_parser(__doc__)
    ap.add_argument("--top", type=int, default=12, help="tensors listed by distance")
    args = ap.parse_args(argv)
    import torch
    from security_runs import SweepRuns, report

    from steerlab.security.evaluate import agreement, greedy

    sr = SweepRuns.open(args.work, args.harmless, args.vector)
    base = {k: x.detach().clone() for k, x in sr.ref.model.state_dict().items()}
    cfg, n = sr.cfg, sr.n
    plan = {  # name: (vector, seed, null_parts)
        "protected": (sr.vector, cfg["seed"], ()),
        "ideal": (None, cfg["seed"], {"harmful"}),
        "ideal_seed1": (None, cfg["noise_seed"], {"harmful"}),
        "plain": (None, cfg["seed"], ()),
    }
    weights, runs, seconds = {}, {}, {}
    model = None
    for name, (v, seed, nulled) in plan.items():
        t = time.perf_counter()
        h = sr.train(v, seed, nulled)
        runs[name] = sr.evaluate(h)
        weights[name] = {k: x.detach().clone() for k, x in h.model.state_dict().items()}
        seconds[name] = round(time.perf_counter() - t, 1)
        model = h
        print(name, runs[name]["compliance"], runs[name]["benign_accuracy"], seconds[name], flush=True)
    assert model is not None
    ref = runs["ideal"]["harmless_answers"]
    names = {id(p): k for k, p in model.model.named_parameters()}
    head = names[id(model.model.get_output_embeddings().weight)]
    emb = names[id(model.model.get_input_embeddings().weight)]

    def dist(a: str, b: str, k: str) -> float:
        return float((weights[a][k].float() - weights[b][k].float()).norm())

    keys = [k for k, x in weights["ideal"].items() if x.is_floating_point()]
    per = {k: {o: dist(o, "ideal", k) for o in ("protected", "plain", "ideal_seed1")} for k in keys}
    total = {o: sum(per[k][o] ** 2 for k in keys) ** 0.5 for o in ("protected", "plain", "ideal_seed1")}
    top = sorted(keys, key=lambda k: -per[k]["protected"])[: args.top]

    tok = model.tokenizer
    counts = {part: collections.Counter() for part in ("harmful", "benign")}
    for p in sr.pairs:
        counts[p.part].update(tok(p.response, add_special_tokens=False)["input_ids"])
    rows: dict[str, dict[str, float | int | None]] = {}
    d = {o: (weights[o][head].float() - weights["ideal"][head].float()).norm(dim=1)
         for o in ("protected", "ideal_seed1")}
    vocab = d["protected"].numel()
    in_h = torch.tensor([counts["harmful"][i] > 0 for i in range(vocab)])
    in_b = torch.tensor([counts["benign"][i] > 0 for i in range(vocab)])
    for group, m in (("harmful_only", in_h & ~in_b), ("benign_only", in_b & ~in_h), ("both", in_h & in_b),
                     ("neither", ~in_h & ~in_b)):
        rows[group] = {"rows": int(m.sum())}
        for o, x in d.items():
            rows[group][f"{o}_mean_row_distance"] = round(float(x[m].mean()), 5) if m.any() else None
            rows[group][f"{o}_share_of_squared"] = round(float((x[m] ** 2).sum() / (x**2).sum()), 4)

    def answers_with(base: str, donor: str, ks: list[str]) -> list[str]:
        sd = dict(weights[base])
        sd.update({k: weights[donor][k] for k in ks})
        model.model.load_state_dict(sd)
        return greedy(model, sr.harmless, cfg["max_new_tokens"])

    swap = {
        "protected_with_ideal_output_layer": agreement(answers_with("protected", "ideal", [head]), ref),
        "protected_with_ideal_output_layer_and_embeddings": agreement(
            answers_with("protected", "ideal", list(dict.fromkeys([head, emb]))), ref
        ),
        "ideal_with_protected_output_layer": agreement(answers_with("ideal", "protected", [head]), ref),
        "plain_with_ideal_output_layer": agreement(answers_with("plain", "ideal", [head]), ref),
    }
    experts: dict[str, object] = {}
    untouched = {
        k: ((weights["ideal"][k] == base[k]) & (weights["ideal_seed1"][k] == base[k])).flatten(1).all(1)
        for k in keys if ".mlp.experts." in k and weights["ideal"][k].dim() >= 3
    }
    if untouched:

        def reset(a: str) -> list[str]:  # a's answers with the untouched experts as the base has them
            sd = dict(weights[a])
            for k, m in untouched.items():
                sd[k] = torch.where(m.view(-1, *[1] * (base[k].dim() - 1)), base[k], weights[a][k])
            model.model.load_state_dict(sd)
            return greedy(model, sr.harmless, cfg["max_new_tokens"])

        def share(a: str) -> float:
            sq = sum(
                float(((weights[a][k].float() - base[k].float()).flatten(1).norm(dim=1)[m] ** 2).sum())
                for k, m in untouched.items()
            )  # untouched experts: the perfect-vector run has the base's weights there
            return round(sq / total[a] ** 2, 4)

        experts = {
            "routing": routing(sr, weights, list(untouched)),
            "untouched": {k: int(m.sum()) for k, m in untouched.items()},
            "of": {k: int(m.numel()) for k, m in untouched.items()},
            "share_of_squared_distance": {a: share(a) for a in ("protected", "plain")},
            "agreement_after_reset": {a: round(agreement(reset(a), ref), 4) for a in ("protected", "plain")},
        }
    rep = {
        "command": " ".join(["python", "benchmarks/security_drift.py", *sys.argv[1:]]),
        "spec": cfg["spec"], "n_harmful": n, "harmless_prompts": len(sr.harmless),
        "seconds": seconds,
        "vector": {"path": str(args.vector or f"{args.work}/vector"),
                   "grad_penalty": sr.vector.card.get("grad_penalty"),
                   "anchor_weight": sr.vector.card.get("anchor", {}).get("weight")},
        "runs": {k: {f: x[f] for f in ("compliance", "benign_accuracy", "perplexity")} for k, x in runs.items()},
        "agreement": {k: round(agreement(x["harmless_answers"], ref), 4) for k, x in runs.items() if k != "ideal"},
        "distance": {"output_layer": head, "input_embeddings": emb,
                     "total": {k: round(v, 4) for k, v in total.items()},
                     "largest": {k: {o: round(v, 4) for o, v in per[k].items()} for k in top}},
        "output_rows": rows,
        "swap": {k: round(v, 4) for k, v in swap.items()},
        "experts": experts,
    }
    return report(rep, args.json, args.no_check)


if __name__ == "__main__":
    sys.exit(main())
