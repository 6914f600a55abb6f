"""Parsing of small typed values written as text (``--param k=v``, sampler specs).

Example:
    >>> parse_value("0.9"), parse_value("3"), parse_value("true"), parse_value("[1,2]"), parse_value("hf")
    (0.9, 3, True, [1, 2], 'hf')
"""

from __future__ import annotations

import json
from typing import Any


def parse_value(text: str) -> Any:
    """``"0.9"`` -> 0.9, ``"3"`` -> 3, ``"true"`` -> True, ``"[1,2]"`` -> [1, 2]; else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text
