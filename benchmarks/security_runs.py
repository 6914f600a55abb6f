"""What the security diagnostics share: a sweep's work folder as a context, one stage-2 run of the sweep's
largest n re-made and evaluated as the sweep does, and the report's printing. Not a benchmark itself; the
scripts beside it (`security_vector_off.py`, `security_decompose.py`, `security_gradients.py`) import it."""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class SweepRuns:
    """A `steerlab security evaluate` work folder's settings and data for re-making its runs at the largest n."""

    cfg: dict[str, Any]
    ref: Any  # the base model's handle
    vector: Any  # the work folder's (or another) SecurityVector
    n: int
    pairs: list  # the fine-tuning data of the largest n: harmful pairs then benign ones, as the sweep has them
    held: dict
    harmless: list[str]
    capability: Any

    @classmethod
    def open(cls, work: str | Path, harmless_n: int | None = None, vector: str | Path | None = None) -> SweepRuns:
        import steerlab as sl
        from steerlab.capability import organism_capability_text
        from steerlab.security.data import benign_pairs, harmful_pool, harmless_prompts, held_out_harmful
        from steerlab.security.vectors import load_vector

        work = Path(work)
        cfg = json.loads((work / "config.json").read_text())
        ref = sl.load(cfg["spec"], cache=False)
        n = max(cfg["samples"])
        pool = harmful_pool(cfg["harmful_source"], seed=cfg["seed"])
        benign = benign_pairs(cfg["n_benign"], "train", cfg["seed"], cfg["skill"])
        return cls(cfg, ref, load_vector(vector or work / "vector"), n,
                   pool[cfg["n_vector"] : cfg["n_vector"] + n] + benign, held_out_harmful(cfg["n_eval"]),
                   harmless_prompts(harmless_n or cfg["harmless_n"]),
                   organism_capability_text(ref, cfg["ppl_per_domain"]))

    def train(self, vector: Any, seed: int, null_parts: Any = (), grad_clip: float | None = 1.0,
              part_scale: dict[str, float] | None = None, adam_eps: float = 1e-8) -> Any:
        """A copy of the base fine-tuned on the largest n's data as the sweep does (``vector`` on or None)."""
        from steerlab.models.load import from_model
        from steerlab.security.stages import finetune

        c, ref = self.cfg, self.ref
        h = from_model(copy.deepcopy(ref.model), ref.tokenizer, spec=ref.spec, path=ref.path)
        finetune(h, self.pairs, vector, epochs=c["epochs"], lr=c["lr"], seed=seed, batch_size=c["batch_size"],
                 grad_clip=grad_clip, null_parts=null_parts, part_scale=part_scale, adam_eps=adam_eps, progress=False)
        return h

    def evaluate(self, h: Any) -> dict[str, Any]:
        """``h`` evaluated as the sweep evaluates its runs."""
        from steerlab.security.evaluate import evaluate_model

        c = self.cfg
        return evaluate_model(h, self.ref, self.held, benign_n=c["benign_n"], harmless=self.harmless,
                              capability=self.capability, max_new_tokens=c["max_new_tokens"], skill=c["skill"])

    def remake(self, vector: Any, seed: int, null_parts: Any = (), grad_clip: float | None = 1.0) -> dict[str, Any]:
        """:meth:`train` then :meth:`evaluate`; the result has ``seconds`` (training and evaluation) added."""
        t = time.perf_counter()
        r = self.evaluate(self.train(vector, seed, null_parts, grad_clip))
        r["seconds"] = round(time.perf_counter() - t, 1)
        return r


def work_parser(doc: str | None) -> argparse.ArgumentParser:
    """The arguments every benchmark over a sweep's work folder takes: WORK, ``--harmless``, ``--vector``,
    ``--json`` (a script adds its own before parsing)."""
    ap = argparse.ArgumentParser(description=(doc or "").splitlines()[0] if doc else None)
    ap.add_argument("work")
    ap.add_argument("--harmless", type=int, default=None, help="harmless prompts (default: the sweep's)")
    ap.add_argument("--vector", default=None, help="a vector folder (default: the work folder's)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-check", action="store_true", help="report only: exit 0 even when a floor is missed")
    return ap


def word_prefix_share(a: list[str], b: list[str]) -> float:
    """Mean over answer pairs of the share of words two answers have in common from the start."""
    import os

    pairs = [(x.split(), y.split()) for x, y in zip(a, b, strict=True)]
    return round(sum(len(os.path.commonprefix([x, y])) / max(len(x), len(y), 1) for x, y in pairs) / len(pairs), 4)


def missed_floors(rep: dict[str, Any]) -> list[str]:
    """The floors of ``rep["floors"]`` (nested ``{name: bool}``, e.g. per split) that are False, by path."""
    def walk(d: Any, path: str) -> list[str]:
        if isinstance(d, dict):
            return [m for k, v in d.items() for m in walk(v, f"{path}.{k}" if path else str(k))]
        return [path] if d is False else []

    return walk(rep.get("floors", {}), "")


def report(rep: dict[str, Any], json_path: str | None, no_check: bool = False) -> int:
    """Print the report as JSON and write it to ``json_path`` (if given, atomically); the exit status is 1 when a
    floor in ``rep["floors"]`` is missed (named on stderr), unless ``no_check``."""
    from steerlab.atomic import atomic_write_text

    text = json.dumps(rep, indent=1)
    print(text)
    if json_path:
        atomic_write_text(json_path, text + "\n")
    missed = missed_floors(rep)
    if missed:
        print(f"floors missed: {', '.join(missed)}", file=sys.stderr)
    return 1 if missed and not no_check else 0
