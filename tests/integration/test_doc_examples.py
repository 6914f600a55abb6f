"""The Python examples of README.md and docs/*.md run as written (in a scratch folder), or are listed here with
the reason they cannot run in a test; a new example that is in neither list fails the test."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"^```python\n(.*?)^```", re.M | re.S)

RUN = {
    ("README.md", 0),  # the API tour
    ("docs/regions.md", 0),
    ("docs/scale.md", 0),  # nnsight's in-process simulation of the remote path
    ("docs/steering.md", 0),
}
NOT_RUN = {
    ("README.md", 1): "needs a running `steerlab serve` (the server's tests drive the same request)",
    ("docs/serving.md", 0): "needs a running `steerlab serve` (the server's tests drive the same request)",
    ("docs/experts.md", 0): "evaluate_experts with 20 random controls takes minutes (its CLI test runs it small)",
    ("docs/sampling.md", 0): "a sketch: `prompts`, `my_steering` and `enc` are the reader's own",
    ("docs/scale.md", 1): "needs ray and a GPU cluster",
}


def _blocks() -> dict[tuple[str, int], str]:
    out = {}
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for i, m in enumerate(FENCE.finditer(path.read_text())):
            out[(str(path.relative_to(ROOT)), i)] = m.group(1)
    return out


def test_every_example_is_run_or_excused():
    assert set(_blocks()) == RUN | set(NOT_RUN)


@pytest.mark.parametrize("where", sorted(RUN), ids=lambda w: f"{w[0]}#{w[1]}")
def test_example_runs_as_written(where, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples write steer.json, directions/...
    code = _blocks()[where]
    exec(compile(code, f"{where[0]}#{where[1]}", "exec"), {"__name__": "__doc_example__"})  # noqa: S102
