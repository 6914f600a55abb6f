"""Entry point of the ``steerlab`` console script. Each command group lives in its own module; bad input
ends as one line and exit status 2 (:class:`steerlab.cli.common.Group`)."""

from __future__ import annotations

from steerlab.cli import core, dashboard, experts, organisms, prefs, regions, sampling, security, serve, steer, suites
from steerlab.cli.common import typer_app

app = typer_app("Steering and analysis workbench for dense and MoE transformer language models.", name="steerlab")
core.register(app)
app.command("dashboard")(dashboard.dashboard)
app.command("serve")(serve.serve)

# Command groups: one sub-app per module, one line each.
app.add_typer(sampling.app, name="sampling")
app.add_typer(suites.app, name="suites")
app.add_typer(organisms.app, name="organisms")
app.add_typer(experts.app, name="experts")
app.add_typer(steer.app, name="steer")
app.add_typer(regions.app, name="regions")
app.add_typer(prefs.app, name="prefs")
app.add_typer(security.app, name="security")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
