"""``steerlab experts``: fTRI imaging of behavior experts and MoTE switching with random controls."""

from __future__ import annotations

from pathlib import Path

import typer

from steerlab.cli.common import AT_LEAST_0, AT_LEAST_1, OUT_DIR, SEED, emit, typer_app

app = typer_app("Experts: image which MoE experts fire for a behavior, switch them off or on.")

SUITE_HELP = "Prompt suite name or folder (default: organism-refusal on organisms, else refusal)."
SCOPE_HELP = "Token scope: prompt, decision (first assistant token), generated; comma-separated to combine."


@app.command("image")
def image_cmd(
    model: str = typer.Argument(None, help="MoE model spec (default: the embedded default model)."),
    suite: str = typer.Option(None, "--suite", help=SUITE_HELP),
    split: str = typer.Option("train", "--split"),
    scope: str = typer.Option("decision", "--scope", help=SCOPE_HELP),
    permutations: int = typer.Option(
        2000, "--permutations", help="Permutations for the p-values (0: none, p = 1).", **AT_LEAST_0
    ),
    limit: int = typer.Option(0, "--limit", help="Use at most this many prompts per label (0: all).", **AT_LEAST_0),
    out: Path = typer.Option(..., "--out", help="Artifact folder to write.", **OUT_DIR),
    top: int = typer.Option(20, "--top", help="Experts in the ranked table.", **AT_LEAST_1),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Image the experts that separate the suite's behavior prompts from its control prompts."""
    import steerlab as sl
    from steerlab.experts.artifact import token_raster, write_image
    from steerlab.experts.ftri import image_suite
    from steerlab.suites import default_suite, load_suite

    h = sl.load(model)
    s = load_suite(suite or default_suite(h))
    res = image_suite(
        h, s, split, scope.split(","), limit or None, n_permutations=permutations, by_token=True, progress=True
    )
    behavior, control = s.contrast(split, limit or None)
    raster = token_raster(h, behavior[0], **s.chat_kwargs())
    path = write_image(out, h, res, behavior, control, raster=raster, top=top)
    table = res.table(top)
    if as_json:
        emit({"artifact": str(path), "config": res.config, "top": table})
        return
    typer.echo(f"wrote {path}")
    for r in table:
        typer.echo(
            f"  layer {r['layer']:>2} expert {r['expert']:>3}  diff {r['diff']:+.3f}  "
            f"log-odds {r['log_odds']:+.2f}  q {r['q_value']:.3g}"
        )


@app.command("evaluate")
def evaluate_cmd(
    model: str = typer.Argument(None, help="MoE model spec (default: the embedded default model)."),
    suite: str = typer.Option(None, "--suite", help=SUITE_HELP),
    k: int = typer.Option(
        None, "--k", help="Experts to switch; default: chosen by a sweep on the train split.", **AT_LEAST_1
    ),
    controls: int = typer.Option(20, "--controls", help="Random expert sets (matched by layer).", **AT_LEAST_1),
    match_rate: bool = typer.Option(False, "--match-rate", help="Also match random experts by base selection rate."),
    select: str = typer.Option(
        "ftri", "--select", help="Switching order: ftri (MoTE ranking), reimage, or ablation (refined on train)."
    ),
    candidates: int = typer.Option(40, "--candidates", help="fTRI candidates for --select ablation.", **AT_LEAST_1),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", **AT_LEAST_1),
    limit: int = typer.Option(0, "--limit", help="Use at most this many prompts per set (0: all).", **AT_LEAST_0),
    image_dir: Path = typer.Option(None, "--image", help="Reuse an experts_image artifact instead of imaging again."),
    out: Path = typer.Option(..., "--out", help="Artifact folder to write.", **OUT_DIR),
    seed: int = typer.Option(0, "--seed", **SEED),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Switch the top experts off (and on) during generation; compare with random expert sets."""
    import steerlab as sl
    from steerlab.experts.artifact import write_evaluation
    from steerlab.experts.evaluate import evaluate_experts
    from steerlab.suites import default_suite

    ftri = _ftri_from_artifact(image_dir) if image_dir is not None else None
    h = sl.load(model)
    ev = evaluate_experts(
        h,
        suite or default_suite(h),
        ftri=ftri,
        k=k,
        n_controls=controls,
        match_rate=match_rate,
        select=select,
        n_candidates=candidates,
        max_new_tokens=max_new_tokens,
        limit=limit or None,
        seed=seed,
    )
    path = write_evaluation(out, ev, ftri)
    if as_json:
        emit({"artifact": str(path), "metrics": ev.metrics, "experts": ev.experts, "config": ev.config})
        return
    m = ev.metrics
    typer.echo(f"wrote {path}: k={m['k']} ({m['k_source']}, select={select})")
    typer.echo(
        f"  refusal    {m['refusal_base']:.2f} -> {m['refusal_off']:.2f} (random {m['refusal_random_mean']:.2f})"
    )
    typer.echo(
        f"  compliance {m['compliance_base']:.2f} -> {m['compliance_off']:.2f} "
        f"(random {m['compliance_random_mean']:.2f})"
    )
    typer.echo(
        f"  forced on, refusal on harmless {m['refusal_forced_harmless']:.2f} "
        f"(random {m['refusal_forced_random_harmless']:.2f}, p={m['forced_p_vs_random']:.3g})"
    )
    typer.echo(f"  perplexity {m['ppl_base']:.2f} -> {m['ppl_off']:.2f}")


def _ftri_from_artifact(path: Path):  # noqa: ANN202
    from steerlab.errors import SteerlabError
    from steerlab.experts.artifact import read_image
    from steerlab.experts.ftri import FtriResult

    art = read_image(path)
    t = art["tensors"]
    if not t:
        raise SteerlabError(f"{path} holds no tensors; re-run `steerlab experts image`")
    return FtriResult(
        layers=art["config"]["layers"],
        counts_behavior=None,
        counts_control=None,  # type: ignore[arg-type]
        config=art["config"],
        **{
            k: t[k]
            for k in (
                "freq_behavior",
                "freq_control",
                "gate_behavior",
                "gate_control",
                "diff",
                "log_odds",
                "p_value",
                "q_value",
            )
        },
    )
