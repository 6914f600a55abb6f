"""Helpers shared by every CLI command: JSON output, parameter parsing, the one place that turns bad
input into a one-line error with exit status 2, and the ranges of the numeric options."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

from steerlab.errors import SpecError, SteerlabError
from steerlab.values import parse_assignments

try:  # typer >= 0.20 carries its own copy of click
    from typer._click import exceptions as _click_exc
except ImportError:  # pragma: no cover
    from click import exceptions as _click_exc

_NO_ARGS_IS_HELP: Any = getattr(_click_exc, "NoArgsIsHelpError", ())


def in_range(minimum: int, maximum: int | None = None) -> dict[str, Any]:
    """Keyword arguments of ``typer.Option`` checking an integer option while the command line is parsed,
    before the command runs (so before any model loads), with an error naming the value."""
    expected = f"an integer >= {minimum}" if maximum is None else f"an integer in {minimum}..{maximum}"

    def check(param: typer.CallbackParam, value: Any) -> Any:
        if value is not None and (value < minimum or (maximum is not None and value > maximum)):
            raise SpecError(f"{max(param.opts, key=len)} must be {expected}, got {value}")
        return value

    return {"callback": check}


def number(low: float | None = None, high: float | None = None, *, low_open: bool = True) -> dict[str, Any]:
    """Keyword arguments of ``typer.Option`` checking a float option while the command line is parsed:
    finite, above ``low`` (strictly when ``low_open``) and at most ``high``; the error names the value."""
    if low is None:
        expected = "a finite number" if high is None else f"a finite number <= {high:g}"
    elif high is None:
        expected = f"a finite number {'>' if low_open else '>='} {low:g}"
    else:
        expected = f"a number in {'(' if low_open else '['}{low:g}, {high:g}]"

    def check(param: typer.CallbackParam, value: Any) -> Any:
        if value is None:
            return value
        bad = not math.isfinite(value) or (low is not None and (value <= low if low_open else value < low))
        if bad or (high is not None and value > high):
            raise SpecError(f"{max(param.opts, key=len)} must be {expected}, got {value}")
        return value

    return {"callback": check}


def _target(folder: bool) -> dict[str, Any]:
    """Keyword arguments of ``typer.Option`` checking an output path while the command line is parsed, before
    any work: a folder (``folder=True``) or a file can be written there (:func:`steerlab.atomic.check_target`),
    and a command's ``--record`` file is not its ``--out`` folder (whichever of the two is checked second sees it)."""

    def check(ctx: typer.Context, param: typer.CallbackParam, value: Any) -> Any:
        if value is not None:
            from steerlab.atomic import OWN_MARKERS, check_target

            try:
                check_target(value, folder=folder, own=OWN_MARKERS if folder else None)
            except SpecError as e:
                raise SpecError(f"{max(param.opts, key=len)} {value}: {e}") from None
            other = ctx.params.get("record" if folder else "out")
            if param.name in ("out", "record") and other is not None:
                out, record = (value, other) if folder else (other, value)
                o, r = Path(out).resolve(), Path(record).resolve()
                if o == r or o in r.parents:  # inside it, the next run's --out would delete the record
                    where = "is" if o == r else "is inside"
                    raise SpecError(f"--record {record} {where} the --out folder; expected a file outside it")
        return value

    return {"callback": check}


OUT_DIR = _target(folder=True)  # an output folder (artifact, model, work folder)
OUT_FILE = _target(folder=False)  # an output file (a record, a GGUF file)

# Ranges of the numeric options.
SEED = in_range(0, 2**32 - 1)
AT_LEAST_1 = in_range(1)
AT_LEAST_0 = in_range(0)
POSITIVE = number(0.0)
FINITE = number()
FRACTION = number(0.0, 0.5)  # a region's fraction per matrix, (0, 0.5]


def emit(obj: Any) -> None:
    """Print ``obj`` as strict JSON on stdout (tensors and paths converted; NaN and infinities as null)."""
    from steerlab.artifacts import strict_json

    typer.echo(strict_json(obj))


def parse_params(items: list[str]) -> dict[str, Any]:
    """Parse repeated ``--param k=v`` options into a dict, with a clear error for malformed ones.

    >>> parse_params(["p=0.9", "variant=paper"])
    {'p': 0.9, 'variant': 'paper'}
    """
    return parse_assignments(items, "--param")


def one_line(message: str) -> str:
    """``message`` on one line (newlines folded into spaces).

    >>> one_line("bad value\\n  expected 1")
    'bad value expected 1'
    """
    return " ".join(message.split())


def _got(e: Exception) -> str:
    """``" (got VALUE)"`` for a value typer could not convert (its message leaves the value out), else ``""``."""
    try:
        return f" (got {e.__cause__.errors()[0]['input']!r})"  # type: ignore[union-attr]
    except (AttributeError, IndexError, KeyError, TypeError):
        return ""


class Group(TyperGroup):
    """The click group of every steerlab command group: a bad option value (click's usage errors), a
    :class:`~steerlab.errors.SteerlabError` or a missing file ends as ``error: ...`` on one line of
    stderr and exit status 2, never a traceback. Commands need no error handling of their own."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except _NO_ARGS_IS_HELP:
            raise  # a bare group prints its help
        except _click_exc.UsageError as e:
            msg = e.format_message() + _got(e)
        except (SteerlabError, FileNotFoundError) as e:
            msg = str(e)
        typer.echo(f"error: {one_line(msg)}", err=True)
        raise typer.Exit(2)


def typer_app(help: str, **kwargs: Any) -> typer.Typer:  # noqa: A002
    """A command group whose errors go through :class:`Group`."""
    return typer.Typer(help=help, cls=Group, no_args_is_help=True, pretty_exceptions_enable=False, **kwargs)
