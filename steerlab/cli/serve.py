"""``steerlab serve``: the OpenAI-compatible HTTP server with per-request interventions (uvicorn).

Loopback unless ``--host`` says otherwise; exposed without ``--api-key-env`` it warns. See
``docs/serving.md``.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from steerlab.cli.common import AT_LEAST_1, in_range
from steerlab.errors import SteerlabError


def _positive(param: typer.CallbackParam, value: float) -> float:
    if value is not None and not value > 0:
        raise SteerlabError(f"{max(param.opts, key=len)} must be a number of seconds > 0, got {value}")
    return value


def serve(
    model: str = typer.Argument(..., help="Model spec: organism:NAME, shared:NAME, a local folder or a hub id."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; 0.0.0.0 exposes it to the network."),
    port: int = typer.Option(8000, "--port", "-p", help="Port to serve on.", **in_range(1, 65535)),
    presets: Path = typer.Option(None, "--presets", help="Folder of NAME.json intervention specs (with safetensors)."),
    api_key_env: str = typer.Option(None, "--api-key-env", help="Environment variable holding the bearer key."),
    served_name: str = typer.Option(None, "--served-model-name", help="Model id clients send (default: MODEL)."),
    max_prompt_tokens: int = typer.Option(1024, "--max-prompt-tokens", help="Longer prompts get 413.", **AT_LEAST_1),
    max_new_tokens: int = typer.Option(512, "--max-new-tokens", help="Larger max_tokens gets 413.", **AT_LEAST_1),
    max_concurrent: int = typer.Option(8, "--max-concurrent", help="Requests generating at once.", **AT_LEAST_1),
    queue_length: int = typer.Option(64, "--queue-length", help="Requests waiting beyond those; more get 429.",
                                     **AT_LEAST_1),
    timeout: float = typer.Option(120.0, "--timeout", help="Seconds a request may take; then 504.", callback=_positive),
    remote: str = typer.Option(None, "--remote", help="Run every batch on NDIF ('ndif') or nnsight's local "
                               "simulation of it ('local'); greedy only (docs/scale.md)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Load model and presets, serve nothing."),
) -> None:
    """Serve MODEL over an OpenAI-compatible API (/v1/completions, /v1/chat/completions, /v1/models)."""
    if remote not in (None, "ndif", "local"):
        raise SteerlabError(f"--remote must be 'ndif' or 'local', got {remote!r}")
    if remote == "ndif":
        from steerlab.engines.nnsight_engine import check_ndif_key

        check_ndif_key()
    key = None
    if api_key_env:
        key = os.environ.get(api_key_env)
        if not key:
            raise SteerlabError(f"--api-key-env {api_key_env}: the environment variable is unset or empty")
    import steerlab as sl
    from steerlab.server import ServerConfig, create_app, exposure_warning, load_presets

    h = sl.load(model)
    loaded = load_presets(presets, h)
    cfg = ServerConfig(model_name=served_name or model, api_key=key, max_prompt_tokens=max_prompt_tokens,
                       max_new_tokens=max_new_tokens, max_concurrent=max_concurrent, queue_length=queue_length,
                       timeout_s=timeout, remote={"ndif": True, "local": "local"}.get(remote or "", False))
    warning = exposure_warning(host, key)
    if warning:
        typer.echo(warning, err=True)
    typer.echo(f"steerlab serve: {cfg.model_name} on http://{host}:{port}/v1 ({len(loaded)} presets"
               f"{', key required' if key else ''})", err=True)
    if dry_run:
        return
    import uvicorn

    uvicorn.run(create_app(h, cfg, loaded), host=host, port=port, log_level="warning")
