"""Small typed values: parsing text (``--param k=v``, sampler specs) and checking counts.

Example:
    >>> check_count("n_permutations", 2000, 0)
    >>> parse_value("0.9"), parse_value("3"), parse_value("true"), parse_value("[1,2]"), parse_value("hf")
    (0.9, 3, True, [1, 2], 'hf')
"""

from __future__ import annotations

import json
import numbers
from pathlib import Path
from typing import Any

from steerlab.errors import SpecError


def parse_value(text: str) -> Any:
    """``"0.9"`` -> 0.9, ``"3"`` -> 3, ``"true"`` -> True, ``"[1,2]"`` -> [1, 2]; else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def check_count(name: str, value: Any, minimum: int, *, none_ok: bool = False) -> None:
    """A SpecError unless ``value`` is an integer >= ``minimum`` (or None, with ``none_ok``).

    >>> check_count("n_permutations", -5, 0)
    Traceback (most recent call last):
    steerlab.errors.SpecError: n_permutations must be an integer >= 0, got -5
    """
    if none_ok and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise SpecError(f"{name} must be an integer >= {minimum}{' or None' if none_ok else ''}, got {value!r}")


def derive_seed(seed: int, k: int) -> int:
    """The seed of part ``k`` (a step, a matrix) of a run seeded with ``seed``: ``seed * 1_000_003 + k``, kept as it
    is where torch's generators take it (``[-2**63, 2**64)``), else reduced modulo ``2**64`` (a huge seed works).

    >>> derive_seed(3, 2), derive_seed(2**62, 0) < 2**64
    (3000011, True)
    """
    v = seed * 1_000_003 + k
    return v if -(2**63) <= v < 2**64 else v % 2**64


def as_names(value: Any, what: str) -> list[str]:
    """A list of names from one name or a sequence of them (a string is one name, not its characters).

    >>> as_names("blocks.2.resid_post", "sites"), as_names(("a", "b"), "sites")
    (['blocks.2.resid_post'], ['a', 'b'])
    >>> as_names(["a", 3], "sites")
    Traceback (most recent call last):
    steerlab.errors.SpecError: sites must be a name or a list of names, got 3 (int) among them
    """
    if isinstance(value, str):
        return [value]
    if isinstance(value, (bytes, dict)) or not hasattr(value, "__iter__"):
        raise SpecError(f"{what} must be a name or a list of names, got {value!r} ({type(value).__name__})")
    names = list(value)
    bad = [v for v in names if not isinstance(v, str)]
    if bad:
        raise SpecError(f"{what} must be a name or a list of names, got {bad[0]!r} ({type(bad[0]).__name__}) "
                        "among them")
    return names


def parse_assignments(items: list[str], what: str) -> dict[str, Any]:
    """``["p=0.9", "variant=paper"]`` -> ``{"p": 0.9, "variant": "paper"}``; ``what`` names the source
    in the error for an item that is not ``key=value``.

    >>> parse_assignments(["p=0.9", "variant=paper"], "--param")
    {'p': 0.9, 'variant': 'paper'}
    """
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise SpecError(f"{what}: {item!r} is not of the form key=value")
        k, v = item.split("=", 1)
        if k.strip() in out:
            raise SpecError(f"{what}: {k.strip()!r} is given twice ({item!r}); expected each key once")
        out[k.strip()] = parse_value(v.strip())
    return out


def check_file_name(name: Any, what: str, beside: str) -> str:
    """``name`` if it is a bare file name (no folder part, not absolute, not ``.``/``..``), else a one-line
    :class:`SpecError`: a saved index names its side file by name, so it cannot make its reader open a file
    elsewhere.

    >>> check_file_name("../x", "tensors_file", "it")
    Traceback (most recent call last):
    steerlab.errors.SpecError: tensors_file '../x' is not a file name; expected the name of a file beside it
    """
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", "..") or "\\" in name:
        raise SpecError(f"{what} {name!r} is not a file name; expected the name of a file beside {beside}")
    return name


def read_json(path: Path, subject: str, error: type[Exception] = SpecError) -> Any:
    """The JSON value in ``path``; raises ``error`` naming ``subject`` (the file as the caller calls it)
    and the fault when it is not valid JSON or cannot be read (missing files are the caller's to explain).

    >>> import tempfile; p = Path(tempfile.mkdtemp()) / "x.json"; _ = p.write_text("{")
    >>> read_json(p, "spec")
    Traceback (most recent call last):
    steerlab.errors.SpecError: spec is not valid JSON: Expecting property name enclosed in double quotes at line 1
    """
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise error(f"{subject} is not valid JSON: {e.msg} at line {e.lineno}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{subject} cannot be read: {e}") from e
