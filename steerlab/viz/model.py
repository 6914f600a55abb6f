"""The one-line model summary shown in the dashboard's status line.

Example:
    >>> import steerlab as sl
    >>> from steerlab.viz.model import status_line
    >>> status_line(sl.load("shared:stories260K").info(), "shared:stories260K", rss=2**30)
    'shared:stories260K · LlamaForCausalLM · 260K params · cpu · float32 · RSS 1,024 MiB'
"""

from __future__ import annotations

from typing import Any


def si(n: float) -> str:
    """``260032 -> '260K'``, ``1.35e8 -> '135M'``, ``7e9 -> '7B'``."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.3g}{suffix}"
    return f"{n:.0f}"


def status_line(info: dict[str, Any] | None, spec: str, rss: int, failed: bool = False) -> str:
    """``spec · architecture · params · device · dtype · RSS`` from ``ModelHandle.info()``.

    ``info=None``: the model is not loaded (yet, or ``failed``); ``spec=""``: none is chosen.
    """
    mem = f"RSS {rss / 2**20:,.0f} MiB"
    if not spec:
        return f"no model chosen · {mem}"
    if info is None:
        state = "failed to load (see the message)" if failed else "not loaded yet (loads when a page needs it)"
        return f"{spec} · {state} · {mem}"
    moe = info.get("moe")
    arch = info["architecture"] + (f" (MoE {moe['n_experts']} experts, top-{moe['top_k']})" if moe else "")
    return " · ".join([info["spec"], arch, f"{si(info['n_params'])} params", info["device"], info["dtype"], mem])
