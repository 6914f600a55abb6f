"""``steerlab suites``: list and inspect prompt suites."""

from __future__ import annotations

import typer

from steerlab.cli.common import emit, typer_app

app = typer_app("Prompt suites: contrasting prompt sets that image a behavior.")


@app.command("list")
def list_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Suites under suites/."""
    from steerlab.suites import list_suites

    names = list_suites()
    if as_json:
        emit({"suites": names})
    else:
        typer.echo("\n".join(names))


@app.command("show")
def show(
    name: str = typer.Argument(..., help="Suite name or path to a suite folder."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Labels, splits and prompt counts of a suite."""
    from steerlab.suites import load_suite

    info = load_suite(name).describe()
    if as_json:
        emit(info)
        return
    typer.echo(f"{info['name']} {info['version']}: {info['behavior']} vs {info['control']}")
    for label, per_split in info["counts"].items():
        typer.echo(f"  {label}: " + ", ".join(f"{s} {n}" for s, n in per_split.items()))
