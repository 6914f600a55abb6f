"""Core commands: ``steerlab info``, ``steerlab generate``, ``steerlab models``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from steerlab.cli.common import AT_LEAST_1, SEED, emit, parse_params


def register(app: typer.Typer) -> None:
    app.command("info")(info)
    app.command("generate")(generate_cmd)
    app.command("models")(models)


def info(
    model: str = typer.Argument(None, help="Model spec: organism:NAME, shared:NAME, a local folder or a hub id."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Architecture summary and every site name of MODEL."""
    import steerlab as sl

    data = sl.load(model).info()
    if as_json:
        emit(data)
        return
    moe = data["moe"]
    typer.echo(f"{data['spec']}: {data['architecture']} ({data['family']}), {data['n_params']:,} parameters")
    typer.echo(f"  layers {data['n_layers']}, d_model {data['d_model']}, vocab {data['vocab_size']}, {data['dtype']}")
    if moe:
        typer.echo(f"  MoE: {moe['n_experts']} experts, top-{moe['top_k']}, layers {moe['layers']}")
    typer.echo(f"  {len(data['sites'])} sites, e.g. {', '.join(data['sites'][:4])}, ...")


def models(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Model specs that load offline (organisms and shared models)."""
    from steerlab.models.load import default_model, list_models

    specs = list_models()
    if as_json:
        emit({"models": specs, "default": default_model()})
        return
    for s in specs:
        typer.echo(s + ("  (default)" if s == default_model() else ""))


def generate_cmd(
    model: str = typer.Argument(None, help="Model spec (default: the embedded default model)."),
    prompt: list[str] = typer.Option(..., "--prompt", "-p", help="A prompt; repeat for a batch."),
    intervention: Path | None = typer.Option(None, "--intervention", "-i", help="Intervention spec JSON file."),
    sampler: str = typer.Option("greedy", "--sampler", help="greedy, temperature, top_k, top_p, min_p, top_h."),
    param: list[str] = typer.Option([], "--param", help="Sampler parameter k=v; repeatable."),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", "-n", **AT_LEAST_1),
    seed: int = typer.Option(0, "--seed", **SEED),
    chat: bool = typer.Option(False, "--chat", help="Wrap prompts in the model's chat template."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Generate completions, optionally with interventions and a sampler."""
    import steerlab as sl
    from steerlab.interventions import InterventionSet

    smp = sl.make_sampler(sampler, **parse_params(param))  # the sampler and the spec file before the model
    ivs: Any = InterventionSet.load(intervention) if intervention else None
    h = sl.load(model)
    out = sl.generate(h, prompt, interventions=ivs, sampler=smp, max_new_tokens=max_new_tokens, seed=seed, chat=chat)
    if as_json:
        emit(out.to_json())
        return
    for p, t in zip(out.prompts, out.texts, strict=True):
        typer.echo(f"{p!r} -> {t!r}")
