"""``steerlab steer``: steering directions from prompt suites, linear probes, scale sweeps, the refusal-direction
study, and llama.cpp control-vector (GGUF) export/import."""

from __future__ import annotations

from pathlib import Path

import typer

from steerlab.cli.common import AT_LEAST_0, AT_LEAST_1, OUT_DIR, OUT_FILE, SEED, emit, typer_app

app = typer_app("Steering: directions from contrasting suites, linear probes, scale sweeps, ablation.")

SUITE_HELP = "Prompt suite name or folder (default: organism-refusal on organisms, else refusal)."
SITES_HELP = "Sites, comma-separated, or a component at every layer (resid_pre, resid_mid, resid_post)."
POSITION_HELP = "Token position: last, mean, or comma-separated indices in each prompt (negative: from the end)."


def _position(text: str):  # noqa: ANN202
    from steerlab.errors import SpecError

    if text in ("last", "mean"):
        return text
    try:
        return [int(p) for p in text.split(",") if p.strip()]
    except ValueError as e:
        raise SpecError(f"--position {text!r} must be last, mean or comma-separated integers") from e


def _sites(text: str | None):  # noqa: ANN202
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",") if p.strip()]
    return parts[0] if len(parts) == 1 else parts


def _floats(text: str, option: str) -> list[float]:
    from steerlab.errors import SpecError
    from steerlab.steering.apply import check_scales

    try:
        values = [float(p) for p in text.split(",") if p.strip()]
    except ValueError as e:
        raise SpecError(f"{option} {text!r} must be comma-separated numbers") from e
    return check_scales(values)


@app.command("extract")
def extract_cmd(
    model: str = typer.Argument(None, help="Model spec (default: the embedded default model)."),
    suite: str = typer.Option(None, "--suite", help=SUITE_HELP),
    sites: str = typer.Option(None, "--sites", help=SITES_HELP + " Default: resid_post."),
    method: str = typer.Option("diff_in_means", "--method", help="diff_in_means, pca or probe."),
    position: str = typer.Option("last", "--position", help=POSITION_HELP),
    split: str = typer.Option("train", "--split"),
    limit: int = typer.Option(0, "--limit", help="At most this many prompts per label (0: all).", **AT_LEAST_0),
    out: Path = typer.Option(..., "--out", help="Artifact folder to write (holds directions.json).", **OUT_DIR),
    name: str = typer.Option(None, "--name", help="Also save under this name in the directions folder."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Extract one direction per site from a suite's behavior vs control prompts."""
    import steerlab as sl
    from steerlab.steering.artifact import write_directions
    from steerlab.steering.extract import extract_directions
    from steerlab.steering.vectors import directions_root
    from steerlab.suites import default_suite
    from steerlab.values import check_file_name

    if name is not None:  # a name in the directions folder, refused before the run (a path wrote outside it)
        check_file_name(name, "--name", "the others in the directions folder")
    pos = _position(position)
    h = sl.load(model)
    d = extract_directions(h, suite or default_suite(h), _sites(sites), method=method, position=pos,  # type: ignore[arg-type]
                           split=split, limit=limit or None, progress=True)
    path = write_directions(out, d)
    saved = str(d.save(directions_root() / name)) if name else None
    norms = {s: round(float(v.norm()), 4) for s, v in d.vectors.items()}
    if as_json:
        emit({"artifact": str(path), "saved_as": saved, "meta": d.meta, "norms": norms})
        return
    typer.echo(f"wrote {path}" + (f" (and {saved})" if saved else ""))
    for s, n in norms.items():
        typer.echo(f"  {s:<28} |v| = {n:.4g}")


@app.command("probe")
def probe_cmd(
    model: str = typer.Argument(None, help="Model spec (default: the embedded default model)."),
    suite: str = typer.Option(None, "--suite", help=SUITE_HELP),
    sites: str = typer.Option(None, "--sites", help=SITES_HELP + " Default: resid_post."),
    position: str = typer.Option("last", "--position", help=POSITION_HELP),
    limit: int = typer.Option(0, "--limit", help="At most this many prompts per label and split (0: all).",
                              **AT_LEAST_0),
    seed: int = typer.Option(0, "--seed", **SEED),
    out: Path = typer.Option(..., "--out", help="Artifact folder to write (holds probes.json).", **OUT_DIR),
    record: Path = typer.Option(None, "--record", help="Also write the compact JSON record here.", **OUT_FILE),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Fit a logistic-regression probe per site (train split) and score it on the test split."""
    import steerlab as sl
    from steerlab.steering.artifact import write_probes
    from steerlab.steering.linear_probes import probe_profile
    from steerlab.suites import default_suite

    pos = _position(position)
    h = sl.load(model)
    p = probe_profile(h, suite or default_suite(h), _sites(sites), position=pos, limit=limit or None,  # type: ignore[arg-type]
                      seed=seed, progress=True)
    path = write_probes(out, p)
    if record is not None:
        import json as _json

        from steerlab.atomic import atomic_write_text

        command = (f"steerlab steer probe {h.spec}" + (f" --suite {suite}" if suite else "")
                   + (f" --sites {sites}" if sites else "") + f" --position {position} --limit {limit} --seed {seed}"
                   f" --out {out} --record {record}")
        atomic_write_text(record, _json.dumps({"command": command, "meta": p.meta, "best": p.best.row(),
                                               "table": p.table()}, indent=1, default=str) + "\n")
    if as_json:
        emit({"artifact": str(path), "meta": p.meta, "best": p.best.row(), "table": p.table()})
        return
    typer.echo(f"wrote {path}")
    for r in p.table():
        typer.echo(f"  {r['site']:<28} acc {r['test_acc']:.3f}  AUROC {r['test_auroc']:.3f}  "
                   f"shuffled {r['shuffled_acc']:.3f} (chance {r['chance']:.3f})  d {r['separation']:.2f}")


@app.command("sweep")
def sweep_cmd(
    model: str = typer.Argument(None, help="Model spec (default: the embedded default model)."),
    direction: str = typer.Option(..., "--direction", help="Saved directions: a path, an artifact folder or a name."),
    site: str = typer.Option(None, "--site", help="Which saved site to add at (default: the only one)."),
    scales: str = typer.Option("0,2,4,8", "--scales", help="Comma-separated scales (x unit vector)."),
    raw: bool = typer.Option(False, "--raw", help="Scales multiply the raw vector, not its unit vector."),
    positions: str = typer.Option("all", "--positions", help="all, prompt or generated."),
    suite: str = typer.Option(None, "--suite", help=SUITE_HELP),
    split: str = typer.Option("test", "--split"),
    n: int = typer.Option(64, "--n", help="Prompts per label.", **AT_LEAST_1),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", **AT_LEAST_1),
    out: Path = typer.Option(..., "--out", help="Artifact folder to write.", **OUT_DIR),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Add a saved direction at each scale: behavior rates, harmless perplexity, KL to unsteered."""
    import steerlab as sl
    from steerlab.errors import SpecError
    from steerlab.steering.artifact import write_sweep
    from steerlab.steering.sweep import scale_sweep
    from steerlab.steering.vectors import load_directions
    from steerlab.suites import default_suite, load_suite

    values = _floats(scales, "--scales")
    if positions not in ("all", "prompt", "generated"):
        raise SpecError(f"--positions {positions!r} must be all, prompt or generated")
    d = load_directions(direction)
    if site is None and len(d.sites) != 1:
        raise SpecError(f"the directions hold {len(d.sites)} sites; choose one with --site (one of {d.sites})")
    site = site or d.sites[0]
    h = sl.load(model)
    s = load_suite(suite or default_suite(h))
    rows = scale_sweep(h, d[site], site, values, s, split=split, n=n, positions=positions, normalize=not raw,
                       max_new_tokens=max_new_tokens, progress=True)
    config = {"model": h.spec, "direction": str(direction), "direction_meta": d.meta, "site": site, "scales": values,
              "raw": raw, "positions": positions, "suite": s.name, "split": split, "n": n,
              "max_new_tokens": max_new_tokens}
    path = write_sweep(out, config, rows, s.behavior, s.control)
    if as_json:
        emit({"artifact": str(path), "config": config, "rows": rows})
        return
    typer.echo(f"wrote {path}")
    for r in rows:
        typer.echo(f"  scale {r['scale']:>6g}  refusal {s.control} {r[f'{s.control}_refusal']:.2f}  "
                   f"{s.behavior} {r[f'{s.behavior}_refusal']:.2f}  ppl {r['ppl']:.2f}  KL {r['kl']:.3f}")


@app.command("refusal")
def refusal_cmd(
    model: str = typer.Argument(None, help="Model spec (default: the embedded default model)."),
    suite: str = typer.Option(None, "--suite", help=SUITE_HELP),
    limit: int = typer.Option(512, "--limit", help="Train prompts per label for the candidates (0: all).",
                              **AT_LEAST_0),
    n_positions: int = typer.Option(5, "--positions", help="Last prompt positions searched.", **AT_LEAST_1),
    n_select: int = typer.Option(64, "--select", help="Train prompts per label for the selection.", **AT_LEAST_1),
    select_tokens: int = typer.Option(8, "--select-tokens", help="Tokens generated per selection prompt.",
                                      **AT_LEAST_1),
    max_rank: int = typer.Option(3, "--max-rank", help="Largest ablated subspace.", **AT_LEAST_1),
    pool: int = typer.Option(8, "--pool", help="Best single candidates the subspace grows from.", **AT_LEAST_1),
    scales: str = typer.Option("0.5,1,1.5,2,3,4", "--scales", help="Addition scales, in units of |v|."),
    controls: int = typer.Option(5, "--controls", help="Random same-norm directions (and same-rank subspaces).",
                                 **AT_LEAST_1),
    n_test: int = typer.Option(0, "--n-test", help="Held-out prompts per label (0: the whole test split).",
                               **AT_LEAST_0),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", **AT_LEAST_1),
    seed: int = typer.Option(0, "--seed", **SEED),
    out: Path = typer.Option(..., "--out", help="Artifact folder to write.", **OUT_DIR),
    record: Path = typer.Option(None, "--record", help="Also write the compact JSON record here.", **OUT_FILE),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """The refusal-direction study: choose on train, ablate at every layer / add, evaluate on held-out."""
    import steerlab as sl
    from steerlab.steering.ablation import refusal_study
    from steerlab.steering.artifact import write_refusal
    from steerlab.suites import default_suite

    h = sl.load(model)
    add_scales = tuple(_floats(scales, "--scales"))
    res = refusal_study(h, suite or default_suite(h), limit=limit or None, n_positions=n_positions,
                        n_select=n_select, select_tokens=select_tokens, max_rank=max_rank, subspace_pool=pool,
                        scales=add_scales, n_random=controls, n_test=n_test or None,
                        max_new_tokens=max_new_tokens, seed=seed, progress=True)
    command = (f"steerlab steer refusal {h.spec}" + (f" --suite {suite}" if suite else "")
               + f" --limit {limit} --positions {n_positions} --select {n_select} --select-tokens {select_tokens}"
               f" --max-rank {max_rank} --pool {pool} --scales {scales}"
               f" --controls {controls} --n-test {n_test} --max-new-tokens {max_new_tokens} --seed {seed}"
               f" --out {out} --record {record}")
    path = write_refusal(out, res, record, command)
    if as_json:
        emit({"artifact": str(path), "config": res["config"], "metrics": res["metrics"]})
        return
    m = res["metrics"]
    chosen = res["config"]["chosen"]
    typer.echo(f"wrote {path}: direction {chosen['site']} position {chosen['position']}")
    typer.echo(f"  ablated: refusal {m['base_refusal']:.3f} -> {m['ablate_refusal']:.3f} "
               f"({m['ablate_refusal_rel_change']:+.0%}), compliance +{m['ablate_compliance_gain']:.3f}, "
               f"ppl x{m['ablate_ppl_ratio']:.3f}")
    typer.echo(f"  subspace (rank {m['subspace_rank']}): refusal {m['subspace_refusal']:.3f}, "
               f"compliance +{m['subspace_compliance_gain']:.3f}, ppl x{m['subspace_ppl_ratio']:.3f}")
    typer.echo(f"  added: refusal on harmless {m['base_harmless_refusal']:.3f} -> {m['add_refusal']:.3f} "
               f"(random {m['add_refusal_control']:.3f})")
    typer.echo(f"  random controls (worst of {controls}): direction refusal "
               f"{m['random_ablate_refusal_rel_change_worst']:+.0%} "
               f"compliance +{m['random_ablate_compliance_gain_worst']:.3f}"
               f"; rank-{m['subspace_rank']} subspace refusal {m['subspace_random_refusal_rel_change_worst']:+.0%} "
               f"compliance +{m['subspace_random_compliance_gain_worst']:.3f}; within a fifth: ablate "
               f"{m['random_ablate_within_fifth']}, subspace {m['subspace_random_within_fifth']}, "
               f"add {m['add_random_within_fifth']}")


@app.command("export-gguf")
def export_gguf_cmd(
    direction: str = typer.Argument(..., help="Saved directions: a path, an artifact folder or a name."),
    out: Path = typer.Option(..., "--out", help="GGUF file to write.", **OUT_FILE),
    model_hint: str = typer.Option(None, "--model-hint", help="controlvector.model_hint (default: model_type)."),
    sites: str = typer.Option(None, "--sites", help="Comma-separated saved sites to export (default: all of them)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Write saved directions as a llama.cpp control vector (direction.N = output of block N, N >= 1)."""
    from steerlab.errors import SpecError
    from steerlab.steering.interchange import export_gguf, gguf_layer
    from steerlab.steering.vectors import Directions, load_directions

    d = load_directions(direction)
    if sites is not None:
        want = [s.strip() for s in sites.split(",") if s.strip()]
        unknown = [s for s in want if s not in d.sites]
        if unknown or not want:
            raise SpecError(f"--sites {sites!r}: {unknown or 'no site'} not in the saved directions; saved: {d.sites}")
        d = Directions({s: d[s] for s in want}, dict(d.meta))
    path = export_gguf(d, out, model_hint=model_hint)
    layers = sorted(gguf_layer(s) for s in d.sites)
    if as_json:
        emit({"gguf": str(path), "layers": layers})
        return
    typer.echo(f"wrote {path}: direction.{', direction.'.join(map(str, layers))}")


@app.command("import-gguf")
def import_gguf_cmd(
    gguf_file: Path = typer.Argument(..., help="A llama.cpp control-vector GGUF file (e.g. from repeng)."),
    out: Path = typer.Option(..., "--out", help="Where to save the directions (PATH.json + PATH.safetensors)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Read a llama.cpp control vector into saved steerlab directions at blocks.N.resid_post."""
    from steerlab.steering.interchange import import_gguf

    d = import_gguf(gguf_file)
    path = d.save(out)
    if as_json:
        emit({"directions": str(path), "sites": d.sites, "meta": d.meta})
        return
    typer.echo(f"wrote {path}: {', '.join(d.sites)}")


@app.command("sentiment")
def sentiment_cmd(
    model: str = typer.Argument(None, help="Model spec (default: the embedded default model)."),
    suite: str = typer.Option("sentiment", "--suite", help="Suite with behavior/control labels and a 'neutral' one."),
    site: str = typer.Option(..., "--site", help="Where the direction is extracted and added."),
    position: str = typer.Option("mean", "--position", help=POSITION_HELP),
    scales: str = typer.Option("-4,-2,0,2,4", "--scales", help="Scales, in units of the raw diff-in-means vector."),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", **AT_LEAST_1),
    out: Path = typer.Option(..., "--out", help="Artifact folder to write.", **OUT_DIR),
    record: Path = typer.Option(None, "--record", help="Also write the compact JSON record here.", **OUT_FILE),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """A direction from the suite's train split (diff-in-means), added at each scale to the generations of its
    neutral test prompts, scored by an independent sentiment lexicon, with response and capability perplexity."""
    import json as _json

    import steerlab as sl
    from steerlab.artifacts import write_artifact
    from steerlab.atomic import atomic_write_text
    from steerlab.capability import wikitext
    from steerlab.steering.extract import extract_directions
    from steerlab.steering.sentiment import is_monotone, monotone_run, property_sweep
    from steerlab.suites import load_suite

    values = _floats(scales, "--scales")
    pos = _position(position)
    h = sl.load(model)
    s = load_suite(suite)
    prompts = s.user_texts("neutral", "test")
    d = extract_directions(h, s, [site], position=pos, split="train", progress=True)  # type: ignore[arg-type]
    rows = property_sweep(h, d[site], site, values, prompts, max_new_tokens=max_new_tokens,
                          capability=wikitext(16), progress=True, **s.chat_kwargs())
    scores = [r["score"] for r in rows]
    run = monotone_run(scores)
    metrics = {"scores": scores, "monotone_increasing": is_monotone(scores), "n_scales": len(values),
               "monotone_run_scales": [values[run[0]], values[run[1]]], "monotone_run_length": run[1] - run[0] + 1,
               "response_ppl": [r["response_ppl"] for r in rows], "capability_ppl": [r["capability_ppl"] for r in rows],
               "direction_norm": round(float(d[site].norm()), 4)}
    config = {"model": h.spec, "suite": s.name, "site": site, "position": pos, "scales": values,
              "n_prompts": len(prompts), "max_new_tokens": max_new_tokens, "scorer": "lexicon_sentiment",
              "capability": "wikitext2 (16 paragraphs)", "direction": d.meta}
    path = write_artifact(out, kind="steering_sentiment", config=config, metrics=metrics, data={"rows": rows})
    if record is not None:
        command = (f"steerlab steer sentiment {h.spec} --suite {suite} --site {site} --position {position}"
                   f" --scales={scales} --max-new-tokens {max_new_tokens} --out {out} --record {record}")
        atomic_write_text(record, _json.dumps({"command": command, "config": config, "metrics": metrics,
                                               "rows": rows}, indent=1, default=str) + "\n")
    if as_json:
        emit({"artifact": str(path), "metrics": metrics, "rows": rows})
        return
    typer.echo(f"wrote {path}: monotone {metrics['monotone_increasing']}; strictly increasing over "
               f"{metrics['monotone_run_length']} consecutive scales {metrics['monotone_run_scales']}")
    for r in rows:
        typer.echo(f"  scale {r['scale']:>6g}  sentiment {r['score']:+.3f}  response ppl {r['response_ppl']}  "
                   f"capability ppl {r['capability_ppl']}")
