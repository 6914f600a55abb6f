"""Entry point of the ``steerlab`` console script. Each command group lives in its own module."""

from __future__ import annotations

import typer

from steerlab.cli import core, dashboard, experts, organisms, probes, sampling

app = typer.Typer(
    name="steerlab",
    help="Steering and analysis workbench for dense and MoE transformer language models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
core.register(app)
app.command("dashboard")(dashboard.dashboard)

# Command groups: one sub-app per module, one line each.
app.add_typer(sampling.app, name="sampling")
app.add_typer(probes.app, name="probes")
app.add_typer(organisms.app, name="organisms")
app.add_typer(experts.app, name="experts")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
