"""Helpers shared by every CLI command: JSON output, parameter parsing, clean error exits."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer

from steerlab.errors import SteerlabError


def emit(obj: Any) -> None:
    """Print ``obj`` as JSON on stdout (tensors and paths converted)."""
    from steerlab.artifacts import _jsonable

    typer.echo(json.dumps(obj, indent=2, default=_jsonable))


def parse_value(text: str) -> Any:
    """``"0.9"`` -> 0.9, ``"3"`` -> 3, ``"true"`` -> True, ``"[1,2]"`` -> [1, 2]; else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_params(items: list[str]) -> dict[str, Any]:
    """Parse repeated ``--param k=v`` options into a dict, with a clear error for malformed ones."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise SteerlabError(f"--param {item!r} is not of the form key=value")
        k, v = item.split("=", 1)
        out[k.strip()] = parse_value(v.strip())
    return out


@contextmanager
def fail() -> Iterator[None]:
    """Turn steerlab's input errors into a one-line message and exit status 2 (no stack trace)."""
    try:
        yield
    except (SteerlabError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
