"""``steerlab dashboard``: start the Streamlit dashboard (bound to 127.0.0.1 unless told otherwise)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import typer

from steerlab._paths import REPO_ROOT
from steerlab.errors import SteerlabError

APP = REPO_ROOT / "dashboards" / "app.py"


def streamlit_command(port: int, host: str = "127.0.0.1", app: Path = APP) -> list[str]:
    """The ``streamlit run`` command line (headless, no telemetry, errors without tracebacks)."""
    return [
        sys.executable, "-m", "streamlit", "run", str(app),
        "--server.address", host,
        "--server.port", str(port),
        "--server.headless", "true",
        "--browser.gatherUsageStats", "false",
        "--client.showErrorDetails", "type",
        "--client.toolbarMode", "minimal",
        "--theme.base", "light",
    ]


def dashboard(
    model: str = typer.Option(None, "--model", "-m", help="Model shown first (default: the embedded default)."),
    port: int = typer.Option(8501, "--port", "-p", help="Port to serve on."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; 0.0.0.0 exposes it to the network."),
    runs: Path = typer.Option(Path("runs"), "--runs", help="Folder of saved artifacts listed on the Runs page."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the command and environment, start nothing."),
) -> None:
    """Start the interactive dashboard (Generate, Sampling, Runs, ...) in a browser tab."""
    if not 0 < port < 65536:
        raise SteerlabError(f"--port must be in 1..65535, got {port}")
    if not APP.exists():
        raise SteerlabError(f"dashboard app not found at {APP}; the dashboard runs from a steerlab checkout")
    if model:
        from steerlab.models.load import resolve_spec

        resolve_spec(model)  # fail here, with the reason, rather than in the browser
    try:
        import plotly  # noqa: F401
        import streamlit  # noqa: F401
    except ImportError as e:
        raise SteerlabError(
            f"{e.name} is not installed; install the extra: pip install 'steerlab[dashboard]'"
        ) from e
    cmd = streamlit_command(port, host)
    env = dict(os.environ, STEERLAB_RUNS=str(runs.expanduser().resolve()))
    if model:
        env["STEERLAB_DASHBOARD_MODEL"] = model
    if dry_run:
        typer.echo(" ".join(shlex.quote(c) for c in cmd))
        model_env = env.get("STEERLAB_DASHBOARD_MODEL", "")
        typer.echo(f"STEERLAB_RUNS={env['STEERLAB_RUNS']} STEERLAB_DASHBOARD_MODEL={model_env}")
        return
    typer.echo(f"steerlab dashboard on http://{host}:{port}  (runs: {env['STEERLAB_RUNS']}; Ctrl+C stops it)", err=True)
    if os.name == "posix":
        os.execve(sys.executable, cmd, env)  # the server replaces this process: signals reach it directly
    sys.exit(subprocess.call(cmd, env=env))
