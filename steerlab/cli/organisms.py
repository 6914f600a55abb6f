"""``steerlab organisms``: build, list and evaluate the project's model organisms."""

from __future__ import annotations

from pathlib import Path

import typer

from steerlab.cli.common import AT_LEAST_1, OUT_DIR, SEED, emit, typer_app

app = typer_app("The project's model organisms (organism:moe, organism:dense).")


def _build_one(
    name: str,
    out: str | None,
    seed: int,
    reduced: bool,
    threads: int,
    eval_limit: int | None,
    progress: bool,
    conditions: str,
    base_out: str | None = None,
) -> str:
    from steerlab.organisms.build import build_organism

    return str(
        build_organism(
            name,
            out_dir=out,
            seed=seed,
            reduced=reduced,
            threads=threads,
            progress=progress,
            eval_limit=eval_limit,
            conditions=conditions,
            base_out=base_out,
        )
    )


@app.command("build")
def build(
    name: str = typer.Argument(None, help="moe or dense; all organisms when omitted."),
    out: Path | None = typer.Option(
        None, "--out", help="Output folder (default: steerlab/organisms/weights/NAME).", **OUT_DIR
    ),
    seed: int = typer.Option(0, "--seed", **SEED),
    reduced: bool = typer.Option(False, "--reduced", help="A tiny organism in about a minute (tests, CI)."),
    threads: int = typer.Option(
        1, "--threads", help="torch threads per organism (1 is fastest per core here).", **AT_LEAST_1
    ),
    jobs: int = typer.Option(
        2, "--jobs", help="Organisms trained in parallel processes when building several.", **AT_LEAST_1
    ),
    eval_limit: int = typer.Option(
        None, "--eval-limit", help="Cap each evaluation prompt set (quick builds).", **AT_LEAST_1
    ),
    base_out: Path | None = typer.Option(
        None, "--base-out", help="Also save each base model (before safety tuning) to DIR/NAME."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the built folders and headline figures as JSON."),
) -> None:
    """Train, evaluate and write organism(s): HF folder + eval.json + model card (README.md)."""
    from steerlab.organisms.build import read_record
    from steerlab.organisms.configs import ORGANISM_NAMES

    names = [name] if name else list(ORGANISM_NAMES)
    for n in names:
        if n not in ORGANISM_NAMES:
            raise _err(f"unknown organism {n!r}; expected one of {list(ORGANISM_NAMES)}")
    if out is not None and len(names) > 1:
        raise _err("--out needs a single organism NAME")
    conditions = f"{len(names)} organism(s), {min(jobs, len(names))} parallel process(es), {threads} thread(s) each"
    args = [
        (
            n,
            str(out) if out else None,
            seed,
            reduced,
            threads,
            eval_limit,
            True,
            conditions,
            str(base_out / n) if base_out else None,
        )
        for n in names
    ]
    if jobs > 1 and len(names) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=min(jobs, len(names)), mp_context=mp.get_context("spawn")) as ex:
            paths = list(ex.map(_build_one, *zip(*args, strict=True)))
    else:
        paths = [_build_one(*a) for a in args]
    summary = {}
    for n, p in zip(names, paths, strict=True):
        m = read_record(p)["metrics"]
        summary[n] = {
            "path": p,
            **{k: m[k] for k in ("refusal_harmful", "refusal_harmless", "compliance_harmful", "compliance_harmless")},
        }
    if as_json:
        emit(summary)
    else:
        for n, s in summary.items():
            typer.echo(
                f"{n}: {s['path']}  refusal harmful {s['refusal_harmful']:.3f}, harmless {s['refusal_harmless']:.3f}"
            )


@app.command("list")
def list_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """The organisms, whether they are built, their size and headline figures."""
    from steerlab.organisms.build import WEIGHTS_DIR, read_record
    from steerlab.organisms.configs import ORGANISM_NAMES, get_recipe

    rows = []
    for n in ORGANISM_NAMES:
        path = WEIGHTS_DIR / n
        row: dict = {
            "name": n,
            "spec": f"organism:{n}",
            "arch": get_recipe(n).arch,
            "built": (path / "config.json").exists(),
            "path": str(path),
        }
        if (path / "eval.json").exists():
            rec = read_record(path)
            m = rec["metrics"]
            row.update(
                n_params=rec["architecture"]["n_params"],
                weights_mb=rec["build"]["weights_mb"],
                refusal_harmful=m["refusal_harmful"],
                refusal_harmless=m["refusal_harmless"],
            )
        rows.append(row)
    if as_json:
        emit({"organisms": rows})
        return
    for r in rows:
        extra = (
            (
                f"  {r['n_params']:,} params, {r['weights_mb']} MB, refusal harmful {r['refusal_harmful']:.3f} / "
                f"harmless {r['refusal_harmless']:.3f}"
            )
            if "n_params" in r
            else ""
        )
        typer.echo(f"{r['spec']:<16} {r['arch']:<12} {'built' if r['built'] else 'not built'}{extra}")


@app.command("eval")
def eval_cmd(
    name: str = typer.Argument(..., help="moe, dense, organism:NAME or a built organism folder."),
    limit: int = typer.Option(
        None, "--limit", help="Only the first N prompts of each set (quick check).", **AT_LEAST_1
    ),
    localization: bool = typer.Option(False, "--localization", help="Also run the expert switch-off check (MoE)."),
    write: bool = typer.Option(False, "--write", help="Rewrite the folder's eval.json and model card (README.md)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Re-measure an organism: refusal/compliance rates, perplexity per domain, routing statistics."""
    import steerlab as sl
    from steerlab.data.organism_corpus import build_corpus
    from steerlab.organisms.build import read_record, refresh_card
    from steerlab.organisms.evaluate import evaluate, is_organism, localization_check, organism_corpus

    spec = name if (":" in name or "/" in name) else f"organism:{name}"
    h = sl.load(spec)
    if localization and not h.adapter.is_moe:
        raise _err(f"--localization switches experts off; {spec} ({h.adapter.family}) has no routed experts")
    has_record = is_organism(h)
    if write:
        if not has_record:
            raise _err(f"{spec} has no eval.json to rewrite; build it with `steerlab organisms build`")
        rec = read_record(refresh_card(h.path, eval_limit=limit, progress=not as_json))
        res = {"metrics": rec["metrics"], **{k: rec[k] for k in ("routing", "localization") if k in rec}}
    else:
        corpus = organism_corpus(read_record(h.path)) if has_record else build_corpus(0)
        res = evaluate(h, corpus, limit=limit, progress=not as_json)
        if localization and h.adapter.is_moe:
            res["localization"] = localization_check(h, corpus, limit=limit, progress=not as_json)
    out = {"model": spec, **res["metrics"], **{k: res[k] for k in ("routing", "localization") if k in res}}
    if as_json:
        emit(out)
        return
    for k, v in out.items():
        if not isinstance(v, dict):
            typer.echo(f"{k:<36} {v}")
    typer.echo(f"{'ppl':<36} {out['ppl']}")


def _err(msg: str) -> Exception:
    from steerlab.errors import SteerlabError

    return SteerlabError(msg)
