"""``steerlab prefs ...``: preference dissection (annotate pairs, judge them, fit property weights, compare judges).

Sources of pairs: ``hh_rlhf[:N]``, ``published``, a JSONL file (docs/preferences.md) or an artifact folder.
"""

from __future__ import annotations

from pathlib import Path

import typer

from steerlab.cli.common import AT_LEAST_1, OUT_DIR, POSITIVE, SEED, emit, in_range, number, typer_app

app = typer_app("Preference dissection: which response properties drive a judge's pairwise preferences.")

_SOURCE = typer.Argument(..., help="hh_rlhf[:N], published, a pairs JSONL file, or an artifact folder.")
_OUT = typer.Option(..., "--out", help="Artifact folder to write.", **OUT_DIR)
_ON_ERROR = typer.Option("raise", "--on-error", help="Malformed JSONL lines: raise (stop) or skip (report).")
_JSON = typer.Option(False, "--json", help="Print JSON.")


def _bar(enabled: bool):
    """A tqdm progress callback on stderr (``None`` when disabled)."""
    if not enabled:
        return None, lambda: None
    from tqdm import tqdm

    bar = tqdm(total=1000, file=None, leave=False)

    def cb(stage: str, frac: float) -> None:
        bar.set_description(stage[:60])
        bar.n = int(1000 * min(max(frac, 0.0), 1.0))
        bar.refresh()

    return cb, bar.close


def _report(path: Path, as_json: bool) -> None:
    from steerlab.preferences.runner import summary

    s = summary(path)
    if as_json:
        emit(s)
        return
    typer.echo(f"wrote {s['kind']} to {s['path']}")
    for k, v in s["metrics"].items():
        typer.echo(f"  {k}: {v}")
    for p in s.get("problems", []):
        typer.echo(f"  skipped line {p['line']}: {p['message']}")
    for j, per in s.get("fits", {}).items():
        for g, rows in per.items():
            typer.echo(f"{j} / {g}: P(A wins | better on this property alone), 90% interval")
            for r in sorted(rows, key=lambda r: -r["weight"]):
                typer.echo(f"  {r['property']:<28} {r['preferred']:5.1f}%  [{r['preferred_lo']:5.1f}, "
                           f"{r['preferred_hi']:5.1f}]")


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


@app.command("annotate")
def annotate_cmd(
    source: str = _SOURCE,
    out: Path = _OUT,
    annotators: str = typer.Option("", "--annotators", help="Comma-separated rule annotators (default: all)."),
    ask: list[str] = typer.Option([], "--ask", help="PROPERTY=QUESTION answered yes/no by --ask-model/endpoint."),
    ask_model: str | None = typer.Option(None, "--ask-model", help="Local model spec answering --ask questions."),
    ask_endpoint: str | None = typer.Option(None, "--ask-endpoint", help="OpenAI-compatible base URL for --ask."),
    endpoint_model: str = typer.Option("", "--endpoint-model", help="Model name at --ask-endpoint."),
    on_error: str = _ON_ERROR,
    seed: int = typer.Option(0, "--seed", **SEED, help="A/B order of hh_rlhf pairs."),
    as_json: bool = _JSON,
) -> None:
    """Annotate each response of each pair with property scores (rules, a local model, an endpoint)."""
    from steerlab.preferences.annotate import RULE_NAMES
    from steerlab.preferences.runner import run_annotate

    cb, close = _bar(not as_json)
    try:
        path = run_annotate(source, out, annotators=_split(annotators) or RULE_NAMES, ask=ask, ask_model=ask_model,
                            ask_endpoint=ask_endpoint, endpoint_model=endpoint_model,
                            on_error=_on_error(on_error), seed=seed, progress=cb)
    finally:
        close()
    _report(path, as_json)


def _on_error(v: str):
    from steerlab.errors import SpecError

    if v not in ("raise", "skip"):
        raise SpecError(f"--on-error must be 'raise' or 'skip', got {v!r}")
    return v


@app.command("judge")
def judge_cmd(
    source: str = _SOURCE,
    out: Path = _OUT,
    judge: list[str] = typer.Option(..., "--judge", help="[NAME=]loglik:MODEL or [NAME=]dpo:POLICY,REF[,BETA]."),
    max_prompt_tokens: int | None = typer.Option(None, "--max-prompt-tokens", **AT_LEAST_1,
                                                 help="Keep the last N prompt tokens (default: what fits)."),
    on_error: str = _ON_ERROR,
    seed: int = typer.Option(0, "--seed", **SEED),
    as_json: bool = _JSON,
) -> None:
    """Label each pair with model judges (likelihood preference, DPO implicit reward)."""
    from steerlab.preferences.runner import run_judge

    cb, close = _bar(not as_json)
    try:
        path = run_judge(source, out, judges=judge, on_error=_on_error(on_error), seed=seed,
                         max_prompt_tokens=max_prompt_tokens, progress=cb)
    finally:
        close()
    _report(path, as_json)


@app.command("fit")
def fit_cmd(
    source: str = _SOURCE,
    out: Path = _OUT,
    judges: str = typer.Option("", "--judges", help="Comma-separated judges (default: every labelled one)."),
    groups: str = typer.Option("all", "--groups", help="Comma-separated groups (scenarios, cases, all)."),
    properties: str = typer.Option("", "--properties", help="Comma-separated properties (default: annotated)."),
    annotators: str = typer.Option("", "--annotators", help="Annotate first with these rule annotators."),
    method: str = typer.Option("nuts", "--method", help="nuts, laplace or svi."),
    prior_scale: float = typer.Option(0.1, "--prior-scale", help="Laplace prior scale (paper: 0.1).", **POSITIVE),
    level: float = typer.Option(0.9, "--level", help="Credible level of the intervals.", **number(0.0, 0.999)),
    chains: int = typer.Option(2, "--chains", **AT_LEAST_1),
    warmup: int = typer.Option(300, "--warmup", **AT_LEAST_1),
    samples: int = typer.Option(500, "--samples", **in_range(2)),
    min_pairs: int = typer.Option(10, "--min-pairs", **AT_LEAST_1),
    on_error: str = _ON_ERROR,
    seed: int = typer.Option(0, "--seed", **SEED),
    as_json: bool = _JSON,
) -> None:
    """Fit each judge's property weights (Bayesian logistic regression, Laplace prior) per group."""
    from steerlab.errors import SpecError
    from steerlab.preferences.fit import METHODS
    from steerlab.preferences.runner import run_fit

    if method not in METHODS:
        raise SpecError(f"--method must be one of {list(METHODS)}, got {method!r}")
    path = run_fit(source, out, judges=_split(judges) or None, groups=_split(groups) or ["all"],
                   properties=_split(properties) or None, annotators=_split(annotators),
                   method=method,  # type: ignore[arg-type]
                   prior_scale=prior_scale, level=level, chains=chains, warmup=warmup, samples=samples, seed=seed,
                   min_pairs=min_pairs, on_error=_on_error(on_error), progress_bar=not as_json)
    _report(path, as_json)


@app.command("compare")
def compare_cmd(
    sources: list[str] = typer.Argument(..., help="'published' and/or preference_fit folders."),
    out: Path = _OUT,
    groups: str = typer.Option("", "--groups", help="Comma-separated groups (default: every shared one)."),
    judges: str = typer.Option("", "--judges", help="Comma-separated judges (default: all)."),
    method: str = typer.Option("pearson", "--method", help="pearson or spearman."),
    as_json: bool = _JSON,
) -> None:
    """Compare judges by the correlation of their property weights (per group, averaged), clustered."""
    from steerlab.errors import SpecError
    from steerlab.preferences.runner import run_compare

    if method not in ("pearson", "spearman"):
        raise SpecError(f"--method must be 'pearson' or 'spearman', got {method!r}")
    path = run_compare(sources, out, groups=_split(groups) or None, judges=_split(judges) or None,
                       method=method)  # type: ignore[arg-type]
    _report(path, as_json)
