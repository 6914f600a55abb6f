"""Where steerlab finds the shared assets folder (models and data that are read in place)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_dir() -> Path:
    """Return the shared assets folder.

    Order: ``$STEERLAB_SHARED``; ``../shared`` relative to the repository root; ``./shared``.

    >>> shared_dir().name
    'shared'
    """
    env = os.environ.get("STEERLAB_SHARED")
    candidates = [Path(env)] if env else []
    candidates += [REPO_ROOT.parent / "shared", Path.cwd() / "shared", Path.cwd().parent / "shared"]
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    tried = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"shared assets folder not found; tried {tried}. Set STEERLAB_SHARED.")
