"""``steerlab regions ...``: importance scoring, regions, perturbation against controls (Zhang et al. 2024)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import typer

from steerlab.cli.common import (
    AT_LEAST_1,
    FINITE,
    FRACTION,
    OUT_DIR,
    OUT_FILE,
    POSITIVE,
    SEED,
    emit,
    in_range,
    typer_app,
)

app = typer_app("Linguistic regions: importance scoring, core/bottom/random/monolingual regions, perturbation.")


def _codes(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


def _files(items: list[str]) -> dict[str, str]:
    from steerlab.errors import SpecError

    out = {}
    for it in items:
        code, sep, path = it.partition("=")
        if not sep or not code.strip() or not path.strip():
            raise SpecError(f"--text {it!r} must be CODE=FILE (a language code and a text file)")
        if not Path(path.strip()).is_file():
            raise SpecError(f"--text {it!r}: {path.strip()} is not a file; expected a text file, one passage per line")
        out[code.strip()] = path.strip()
    return out


def _check_op(op: str, value: float) -> None:
    """``--op`` and its ``--value`` (perturb, dims)."""
    from steerlab.errors import SpecError

    if op not in ("zero", "scale", "noise", "set"):
        raise SpecError(f"--op {op!r} is not one of ['zero', 'scale', 'noise', 'set']")
    if op == "noise" and value < 0:
        raise SpecError(f"--value {value} with --op noise is a standard deviation; expected a number >= 0")


def _command(ctx: typer.Context) -> str:
    """The command line that reproduces this call, every option spelled out (from the parsed parameters)."""
    parts = ["steerlab", "regions", ctx.info_name or ""]
    for p in ctx.command.params:
        v = ctx.params.get(p.name or "")
        if p.name in ("as_json", "progress") or v is None:
            continue
        if p.param_type_name == "argument":
            parts.append(str(v))
        elif getattr(p, "is_flag", False):
            flag = p.opts[0] if v else (p.secondary_opts or [None])[0]
            parts += [flag] if flag else []
        else:
            for item in v if isinstance(v, (list, tuple)) else [v]:
                parts += [max(p.opts, key=len), str(item)]
    return " ".join(shlex.quote(x) for x in parts)


def _fraction(value: float | None) -> float | None:
    from steerlab.regions.importance import check_fraction

    return None if value is None else check_fraction(value, "--fraction")


@app.command("score")
def score(
    ctx: typer.Context,
    model: str = typer.Argument(..., help="Model spec, e.g. shared:SmolLM2-135M-Instruct-Q4_1-gguf."),
    langs: str = typer.Option("eng,deu,fra,spa,rus,zho-CN", "--lang", help="Comma-separated language codes."),
    text: list[str] = typer.Option([], "--text", help="CODE=FILE: a language of your own (one passage per line)."),
    method: str = typer.Option("taylor", "--method", help="taylor (|theta * accumulated grad|) or fisher."),
    budget: int = typer.Option(2048, "--budget", help="Tokens per language.", **AT_LEAST_1),
    batch_size: int = typer.Option(4, "--batch-size", **AT_LEAST_1),
    max_len: int = typer.Option(64, "--max-len", help="Tokens per passage.", **in_range(2)),
    keep: float = typer.Option(
        0.02, "--keep", help="Fraction per matrix whose top/bottom indices are stored.", **FRACTION
    ),
    out: Path = typer.Option(..., "--out", help="Artifact folder to write.", **OUT_DIR),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Score every parameter's importance per language and store the sparse top/bottom sets."""
    from steerlab.models.load import load
    from steerlab.regions.artifact import write_importance
    from steerlab.regions.corpus import corpus_texts
    from steerlab.regions.importance import check_fraction, score_importance

    check_fraction(keep, "--keep")
    files = _files(text)
    codes = _codes(langs) + [c for c in files if c not in _codes(langs)]
    for c in codes:
        corpus_texts(c, "score", n=1, files=files)  # bad codes and empty files fail before the model loads
    h = load(model)
    imp = score_importance(
        h,
        codes,
        method=method,
        token_budget=budget,
        batch_size=batch_size,
        max_len=max_len,
        keep=keep,  # type: ignore[arg-type]
        files=files,
        progress=progress,
    )
    imp.config["command"] = _command(ctx)
    path = write_importance(out, imp)
    res = {"out": str(path), **imp.metrics, "tokens_per_language": imp.tokens}
    emit(res) if as_json else typer.echo(f"wrote {path}: {imp.metrics['tokens']} tokens in {imp.metrics['seconds']} s")


@app.command("find")
def find(
    importance: Path = typer.Argument(..., help="A regions_importance artifact folder (steerlab regions score)."),
    fraction: float = typer.Option(0.01, "--fraction", help="Fraction per matrix, in (0, 0.5].", **FRACTION),
    scope: str = typer.Option("layers", "--scope", help="matrices | layers (norms too) | all (embeddings too)."),
    seeds: int = typer.Option(3, "--seeds", help="Random control regions.", **AT_LEAST_1),
    out: Path = typer.Option(..., "--out", help="Artifact folder to write (region files inside).", **OUT_DIR),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Core, bottom, random and monolingual regions as region files, with language overlaps."""
    from steerlab.regions.artifact import read_importance, write_find

    imp = read_importance(importance)
    path, info = write_find(out, imp, _fraction(fraction) or 0.01, scope, seeds)
    emit({"out": str(path), **info}) if as_json else typer.echo(f"wrote {path}: {info['sizes']}")


@app.command("perturb")
def perturb_cmd(
    ctx: typer.Context,
    importance: Path = typer.Argument(..., help="A regions_importance artifact folder (steerlab regions score)."),
    langs: str = typer.Option(
        "arb,deu,eng,fra,hin,ita,jpn,kor,por,rus,spa,zho-CN", "--lang", help="Evaluation languages (held-out text)."
    ),
    text: list[str] = typer.Option([], "--text", help="CODE=FILE: a language of your own."),
    fraction: float = typer.Option(0.01, "--fraction", help="Fraction per matrix, in (0, 0.5].", **FRACTION),
    scopes: str = typer.Option("layers", "--scopes", help="Comma-separated: matrices, layers, all."),
    control_scopes: str | None = typer.Option(None, "--control-scopes", help="Scopes with bottom/random controls."),
    seeds: str = typer.Option("0,1,2", "--seeds", help="Seeds of the random control regions."),
    op: str = typer.Option("zero", "--op", help="zero | scale | noise | set."),
    value: float = typer.Option(0.0, "--value", help="Scale factor, noise std or value to set.", **FINITE),
    monolingual: bool = typer.Option(False, "--monolingual/--no-monolingual", help="Also each language's region."),
    n_eval: int = typer.Option(16, "--n-eval", help="Held-out passages per language.", **AT_LEAST_1),
    model: str | None = typer.Option(
        None, "--model", help="Model spec (default: the one the importance was scored on)."
    ),
    record: Path | None = typer.Option(None, "--record", help="Also write a compact JSON record here.", **OUT_FILE),
    seed: int = typer.Option(0, "--seed", help="Noise seed.", **SEED),
    out: Path = typer.Option(..., "--out", help="Artifact folder to write.", **OUT_DIR),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Edit the core region and its controls; per-language perplexity before and after."""
    from steerlab.errors import SpecError
    from steerlab.models.load import load
    from steerlab.regions.artifact import read_importance, write_perturb
    from steerlab.regions.corpus import corpus_texts

    _check_op(op, value)
    _fraction(fraction)
    try:
        seed_list = [int(s) for s in _codes(seeds)]
    except ValueError:
        raise SpecError(f"--seeds {seeds!r} must be comma-separated integers") from None
    files = _files(text)
    codes = _codes(langs)
    for c in codes:
        corpus_texts(c, "eval", n=1, files=files)
    imp = read_importance(importance)
    h = load(model or imp.model)
    from steerlab.regions.perturb import perturb

    res = perturb(
        h, imp, codes, fraction=fraction, scopes=_codes(scopes),
        control_scopes=None if control_scopes is None else _codes(control_scopes), seeds=seed_list, op=op,
        value=value, monolingual=monolingual, n_eval=n_eval, files=files, progress=progress,
    )  # fmt: skip
    command = _command(ctx)
    path, rec = write_perturb(out, h, imp, res, fraction=fraction, command=command, n_eval=n_eval, record=record)
    emit({"out": str(path), **rec}) if as_json else typer.echo(json.dumps(rec["summary"], indent=1))


@app.command("dims")
def dims_cmd(
    ctx: typer.Context,
    importance: Path = typer.Argument(..., help="A regions_importance artifact folder (steerlab regions score)."),
    langs: str = typer.Option("deu,eng,fra,rus,spa,zho-CN", "--lang", help="Evaluation languages (held-out text)."),
    candidates: int = typer.Option(8, "--candidates", help="Candidate single weights.", **AT_LEAST_1),
    n_random: int = typer.Option(
        100, "--random", help="Random single weights of the top candidate's matrix.", **AT_LEAST_1
    ),
    op: str = typer.Option("zero", "--op", help="zero | scale | noise | set."),
    value: float = typer.Option(0.0, "--value", help="Scale factor, noise std or value to set.", **FINITE),
    n_eval: int = typer.Option(8, "--n-eval", help="Held-out passages per language.", **AT_LEAST_1),
    scope: str = typer.Option("matrices", "--scope", help="matrices | layers | all."),
    seed: int = typer.Option(0, "--seed", **SEED),
    model: str | None = typer.Option(None, "--model", help="Model spec (default: the scored one)."),
    record: Path | None = typer.Option(None, "--record", help="Also write a compact JSON record here.", **OUT_FILE),
    out: Path = typer.Option(..., "--out", help="Artifact folder to write.", **OUT_DIR),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Single weights that break the model (dimension dependency) against random single weights."""
    from steerlab.errors import SpecError
    from steerlab.models.load import load
    from steerlab.regions.artifact import read_importance, write_dims
    from steerlab.regions.corpus import corpus_texts
    from steerlab.regions.dims import find_dims
    from steerlab.regions.select import in_scope

    _check_op(op, value)
    if n_random < 0:
        raise SpecError(f"--random must be an integer >= 0, got {n_random}")
    in_scope("x", [1], scope)
    codes = _codes(langs)
    for c in codes:
        corpus_texts(c, "eval", n=1)
    imp = read_importance(importance)
    h = load(model or imp.model)
    res = find_dims(h, imp, codes, n_candidates=candidates, n_random=n_random, op=op, value=value, n_eval=n_eval,
                    seed=seed, scope=scope, progress=progress)  # fmt: skip
    path, rec = write_dims(out, imp, res, command=_command(ctx), record=record)
    emit({"out": str(path), **rec["summary"]}) if as_json else typer.echo(json.dumps(rec["summary"], indent=1))


@app.command("freeze-train")
def freeze_cmd(
    ctx: typer.Context,
    importance: Path = typer.Argument(..., help="A regions_importance artifact folder (steerlab regions score)."),
    train_lang: str = typer.Option("deu", "--train-lang", help="The language trained on (its score corpus)."),
    langs: str = typer.Option("eng", "--lang", help="Other languages whose held-out loss is tracked."),
    fraction: float = typer.Option(0.01, "--fraction", help="Fraction per matrix, in (0, 0.5].", **FRACTION),
    scope: str = typer.Option("layers", "--scope", help="matrices | layers | all."),
    steps: int = typer.Option(100, "--steps", **AT_LEAST_1),
    lr: float = typer.Option(1e-3, "--lr", **POSITIVE),
    batch_size: int = typer.Option(8, "--batch-size", **AT_LEAST_1),
    eval_every: int = typer.Option(10, "--eval-every", **AT_LEAST_1),
    n_eval: int = typer.Option(16, "--n-eval", **AT_LEAST_1),
    seed: int = typer.Option(0, "--seed", **SEED),
    random_seed: int = typer.Option(0, "--random-seed", help="Seed of the random frozen region.", **SEED),
    model: str | None = typer.Option(None, "--model", help="Model spec (default: the scored one)."),
    record: Path | None = typer.Option(None, "--record", help="Also write a compact JSON record here.", **OUT_FILE),
    out: Path = typer.Option(..., "--out", help="Artifact folder to write.", **OUT_DIR),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Train on one language with the core region frozen, unfrozen, and a random region frozen."""
    from steerlab.models.load import load
    from steerlab.regions.artifact import read_importance, write_freeze
    from steerlab.regions.corpus import corpus_texts
    from steerlab.regions.freeze import freeze_train
    from steerlab.regions.select import in_scope

    _fraction(fraction)
    in_scope("x", [1], scope)
    codes = _codes(langs)
    for c in [train_lang, *codes]:
        corpus_texts(c, "eval", n=1)
    imp = read_importance(importance)
    h = load(model or imp.model)
    res = freeze_train(h, imp, train_lang, codes, fraction=fraction, scope=scope, steps=steps, lr=lr, seed=seed,
                       random_seed=random_seed, batch_size=batch_size, n_eval=n_eval, eval_every=eval_every,
                       progress=progress)  # fmt: skip
    path, rec = write_freeze(out, imp, res, command=_command(ctx), record=record)
    emit({"out": str(path), **rec["summary"]}) if as_json else typer.echo(json.dumps(rec["summary"], indent=1))
