"""The ``generation_compare`` artifact: a :class:`~steerlab.steering.compare.Comparison` (every run's
settings and per-token steps) with the steered run's intervention set beside it (``interventions.json``
+ ``interventions.safetensors``). Written by ``steerlab generate ... --compare --out DIR`` and the
Generate page's "Save as run"; reopened by the Generate page.

Example:
    >>> import tempfile
    >>> import steerlab as sl
    >>> from steerlab.artifacts import write_artifact
    >>> from steerlab.steering.compare import Comparison
    >>> h = sl.load("shared:stories260K")
    >>> base = sl.generate(h, ["Once upon a time"], max_new_tokens=4, output_scores=True)
    >>> cmp = Comparison.from_results(h.tokenizer, {"baseline": base})
    >>> path = write_artifact(tempfile.mkdtemp() + "/run", **comparison_payload(cmp))
    >>> GENERATION_COMPARE.read(path).texts("baseline") == base.texts
    True
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import save

from steerlab.artifacts import Artifact, register_kind
from steerlab.errors import SteerlabError
from steerlab.interventions import InterventionSet
from steerlab.steering.compare import Comparison
from steerlab.viz.tokens import TokenStep

KIND = "generation_compare"
INTERVENTIONS_FILE = "interventions.json"


def comparison_payload(cmp: Comparison) -> dict[str, Any]:
    """Keyword arguments for :func:`steerlab.artifacts.write_artifact` (kind ``generation_compare``)."""
    base = next(iter(cmp.settings.values()))
    config = {"model": base.get("model"), "prompts": cmp.prompts, "runs": cmp.settings}
    data = {"labels": cmp.labels,
            "steps": {k: [[s.to_json() for s in row] for row in v] for k, v in cmp.steps.items()}}
    extra: dict[str, str | bytes] = {}
    if cmp.interventions is not None and len(cmp.interventions):
        meta = cmp.interventions.to_json()
        tensors = cmp.interventions.tensors()
        if tensors:
            meta["tensors_file"] = "interventions.safetensors"
            extra["interventions.safetensors"] = save(tensors)
        extra[INTERVENTIONS_FILE] = json.dumps(meta, indent=2)
    return {"kind": KIND, "config": config, "metrics": cmp.metrics(), "data": data, "extra_files": extra}


def read_comparison(art: Artifact) -> Comparison:
    """The :class:`Comparison` of a ``generation_compare`` artifact (with its intervention set, if saved)."""
    if art.kind != KIND:
        raise SteerlabError(f"artifact {art.path} is a {art.kind!r}; expected {KIND!r}")
    steps = {k: [[TokenStep.from_json(s) for s in row] for row in v] for k, v in art.data["steps"].items()}
    ivs = load_interventions(art.path) if (Path(art.path) / INTERVENTIONS_FILE).exists() else None
    return Comparison(prompts=list(art.config["prompts"]), settings=dict(art.config["runs"]), steps=steps,
                      interventions=ivs, labels=list(art.data.get("labels") or steps))


def load_interventions(artifact_dir: str | Path) -> InterventionSet:
    """The intervention set saved in an artifact folder (``interventions.json``)."""
    return InterventionSet.load(Path(artifact_dir) / INTERVENTIONS_FILE)


GENERATION_COMPARE = register_kind(
    KIND, owner="steerlab.steering", producer="generate", reader=read_comparison,
    summary="generations of the same prompts without and with interventions, token by token",
)
