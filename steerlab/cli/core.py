"""Core commands: ``steerlab info``, ``steerlab generate``, ``steerlab models``, ``steerlab kinds``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from steerlab.cli.common import AT_LEAST_1, OUT_DIR, SEED, emit, parse_params

if TYPE_CHECKING:
    from steerlab.models.handle import ModelHandle


def register(app: typer.Typer) -> None:
    app.command("info")(info)
    app.command("generate")(generate_cmd)
    app.command("models")(models)
    app.command("kinds")(kinds)


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


def kinds(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Artifact kinds: the analysis that owns each, the command that writes it (--out) and what it holds."""
    import steerlab as sl

    rows = [{"kind": k.name, "owner": k.owner, "producer": f"steerlab {k.producer} --out DIR", "summary": k.summary}
            for k in sl.artifact_kinds()]
    if as_json:
        emit(rows)
        return
    for r in rows:
        typer.echo(f"{r['kind']:<22} {r['producer']:<38} {r['summary']}")


def generate_cmd(
    model: str = typer.Argument(None, help="Model spec (default: the embedded default model)."),
    prompt: list[str] = typer.Option(..., "--prompt", "-p", help="A prompt; repeat for a batch."),
    intervention: Path | None = typer.Option(None, "--intervention", "-i", help="Intervention spec JSON file."),
    sampler: str = typer.Option("greedy", "--sampler", help="greedy, temperature, top_k, top_p, min_p, top_h."),
    param: list[str] = typer.Option([], "--param", help="Sampler parameter k=v; repeatable."),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", "-n", **AT_LEAST_1),
    seed: int = typer.Option(0, "--seed", **SEED),
    chat: bool = typer.Option(False, "--chat", help="Wrap prompts in the model's chat template."),
    compare: bool = typer.Option(
        False, "--compare", help="Also generate without the interventions (needs --intervention): baseline vs steered."
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Write a generation_compare artifact (the Generate page reopens it) to this folder.",
        **OUT_DIR,
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    remote: str = typer.Option(None, "--remote", help="Run on NDIF ('ndif', key in NDIF_API_KEY) or nnsight's local "
                               "simulation of it ('local'); greedy only (docs/scale.md)."),
) -> None:
    """Generate completions, optionally with interventions and a sampler; --compare --out saves the runs."""
    import steerlab as sl
    from steerlab.errors import SpecError
    from steerlab.interventions import InterventionSet

    if compare and intervention is None:
        raise SpecError("--compare needs --intervention SPEC: it compares generations without and with it")
    if remote not in (None, "ndif", "local"):
        raise SpecError(f"--remote must be 'ndif' or 'local', got {remote!r}")
    if remote and (compare or out is not None):
        raise SpecError("--remote runs one plain generation; drop --compare/--out")
    if remote == "ndif":
        from steerlab.engines.nnsight_engine import check_ndif_key

        check_ndif_key()
    smp = sl.make_sampler(sampler, **parse_params(param))  # the sampler and the spec file before the model
    ivs: Any = InterventionSet.load(intervention) if intervention else None
    h = sl.load(model)
    if compare or out is not None:
        _compare(h, prompt, ivs, compare or ivs is None, out, as_json,
                 sampler=smp, max_new_tokens=max_new_tokens, seed=seed, chat=chat)
        return
    out = sl.generate(h, prompt, interventions=ivs, sampler=smp, max_new_tokens=max_new_tokens, seed=seed, chat=chat,
                      remote={"ndif": True, "local": "local"}.get(remote or "", False))
    if as_json:
        emit(out.to_json())
        return
    for p, t in zip(out.prompts, out.texts, strict=True):
        typer.echo(f"{p!r} -> {t!r}")


def _compare(
    h: ModelHandle, prompts: list[str], ivs: Any, baseline: bool, out: Path | None, as_json: bool, **kwargs: Any
) -> None:
    """The runs of ``generate --compare/--out``: baseline and/or steered, written as ``generation_compare``."""
    from steerlab.artifacts import write_artifact
    from steerlab.steering.artifact import comparison_payload
    from steerlab.steering.compare import compare_generations

    cmp = compare_generations(h, prompts, ivs, baseline=baseline, **kwargs)
    path = write_artifact(out, **comparison_payload(cmp)) if out is not None else None
    if as_json:
        emit({"artifact": str(path) if path else None, "metrics": cmp.metrics(),
              "runs": {label: cmp.texts(label) for label in cmp.labels}})
        return
    for label in cmp.labels:
        for p, t in zip(cmp.prompts, cmp.texts(label), strict=True):
            typer.echo(f"[{label}] {p!r} -> {t!r}")
    if path is not None:
        typer.echo(f"artifact: {path}")

