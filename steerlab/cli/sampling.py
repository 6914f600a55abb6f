"""``steerlab sampling ...``: compare decoding rules (diversity vs coherence) and per-step diagnostics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from steerlab.cli.common import AT_LEAST_0, AT_LEAST_1, OUT_DIR, SEED, emit, in_range, parse_params, typer_app

app = typer_app("Decoding rules: compare diversity vs coherence; per-step top-H diagnostics.")

_DEFAULT_SAMPLERS = "top_h:alpha=0.3,top_h:alpha=0.4,top_h:alpha=0.5,top_p:p=0.9,min_p:p=0.1,temperature"


@app.command("compare")
def compare(
    model: str = typer.Argument(None, help="Model spec (default: the embedded default model)."),
    prompts: str = typer.Option(
        "creative_writing",
        "--prompts",
        help="Prompt file (one per line) or a built-in set: creative_writing, story_openings.",
    ),
    samplers: str = typer.Option(
        _DEFAULT_SAMPLERS,
        "--samplers",
        help="Comma-separated specs NAME[:k=v[:k=v]], e.g. top_h:alpha=0.4:variant=paper.",
    ),
    temperatures: str = typer.Option("1.0,1.5,2.0,3.0", "--temperatures", help="Comma-separated temperatures."),
    out: Path = typer.Option(..., "--out", help="Artifact folder to write.", **OUT_DIR),
    samples: int = typer.Option(4, "--samples", **in_range(2), help="Samples per prompt (>= 2)."),
    max_new_tokens: int = typer.Option(48, "--max-new-tokens", "-n", **AT_LEAST_1),
    n_prompts: int = typer.Option(0, "--n-prompts", help="Use only the first N prompts (0 = all).", **AT_LEAST_0),
    seed: int = typer.Option(0, "--seed", **SEED),
    chat: bool | None = typer.Option(None, "--chat/--no-chat", help="Chat template (default: if the model has one)."),
    judge: str | None = typer.Option(None, "--judge", help="Judge model spec for perplexity (default: MODEL)."),
    batch_size: int = typer.Option(64, "--batch-size", **AT_LEAST_1),
    embed: bool = typer.Option(True, "--embed/--no-embed", help="Embedding diversity (all-MiniLM-L6-v2)."),
    intervention: Path | None = typer.Option(
        None, "--intervention", "-i", help="Intervention spec JSON applied while generating (not to the judge)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Sample with several decoding rules and temperatures; report diversity and judge perplexity with CIs."""
    from steerlab.decoding.compare import (
        CompareConfig,
        load_prompts,
        parse_samplers,
        parse_temperatures,
        run_compare,
        table_markdown,
    )

    ps = load_prompts(prompts)
    ps = ps[:n_prompts] if n_prompts else ps
    ivs: Any = None
    if intervention is not None:
        from steerlab.interventions import InterventionSet

        ivs = InterventionSet.load(intervention)
    if model is None:
        from steerlab.models.load import default_model

        model = default_model()
    cfg = CompareConfig(
        model=model,
        prompts=ps,
        samplers=parse_samplers(samplers),
        temperatures=parse_temperatures(temperatures),
        samples=samples,
        max_new_tokens=max_new_tokens,
        seed=seed,
        chat=chat,
        judge=judge,
        batch_size=batch_size,
        embed=embed,
        prompt_source=prompts,
        interventions=ivs,
    )
    art = run_compare(cfg, out, progress=True)  # validates before loading; tqdm writes to stderr
    rows = art.data["rows"]
    if as_json:
        emit({"artifact": str(art.path), "metrics": art.metrics, "rows": rows})
        return
    typer.echo(table_markdown(rows))
    typer.echo(f"artifact: {art.path}")


@app.command("diagnose")
def diagnose(
    model: str = typer.Argument(None, help="Model spec (default: the embedded default model)."),
    prompt: str = typer.Option(..., "--prompt", "-p"),
    sampler: str = typer.Option("top_h", "--sampler", help="Sampler used to generate."),
    param: list[str] = typer.Option([], "--param", help="Sampler parameter k=v; repeatable."),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", "-n", **AT_LEAST_1),
    seed: int = typer.Option(0, "--seed", **SEED),
    chat: bool = typer.Option(False, "--chat", help="Wrap the prompt in the model's chat template."),
    top_p: float = typer.Option(0.9, "--top-p", help="p of the top-p rule compared at each step, in (0, 1]."),
    min_p: float = typer.Option(0.1, "--min-p", help="p of the min-p rule compared at each step, in [0, 1]."),
    out: Path | None = typer.Option(
        None, "--out", help="Write a sampling_diagnostics artifact (the Sampling page reopens it) to this folder.",
        **OUT_DIR,
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Generate once and show, per step, what top-H, top-p and min-p keep (sizes, entropies, mass)."""
    import steerlab as sl
    from steerlab.artifacts import write_artifact
    from steerlab.decoding.artifact import diagnostics_artifact
    from steerlab.decoding.diagnostics import diagnose_run

    smp = sl.make_sampler(sampler, **parse_params(param))  # every rule is checked before the model loads
    sl.make_sampler("top_p", p=top_p), sl.make_sampler("min_p", p=min_p)
    h = sl.load(model)
    d, top, settings = diagnose_run(
        h, prompt, smp, max_new_tokens=max_new_tokens, seed=seed, chat=chat, top_p=top_p, min_p=min_p
    )
    path = write_artifact(out, **diagnostics_artifact(d, top, settings)) if out is not None else None
    if as_json:
        emit(d if path is None else {**d, "artifact": str(path)})
        return
    typer.echo(f"{d['text']!r}  (T={d['temperature']}, top-H alpha={d['top_h']['alpha']} {d['top_h']['variant']})")
    typer.echo(f"{'step':>4} {'token':>14} {'H(p)':>6} {'budget':>6} {'top_h':>6} {'top_p':>6} {'min_p':>6}")
    for i in range(d["steps"]):
        tok = (d.get("token_texts") or [str(t) for t in d["tokens"]])[i]
        typer.echo(
            f"{i:>4} {tok!r:>14} {d['entropy'][i]:>6.2f} {d['top_h']['budget'][i]:>6.2f}"
            f" {d['top_h']['kept'][i]:>6} {d['top_p']['kept'][i]:>6} {d['min_p']['kept'][i]:>6}"
        )
    if path is not None:
        typer.echo(f"artifact: {path}")
