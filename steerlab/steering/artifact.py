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


# -- the steering analysis's own artifacts (directions, probes, sweeps, the refusal study) ---------------
# Reopened by the Steer page (its analysis: STEER_OWNER), written by `steerlab steer ... --out DIR`.
STEER_OWNER = "steerlab.steering.vectors"
DIRECTIONS_KIND, PROBES_KIND, SWEEP_KIND, REFUSAL_KIND = (
    "steering_directions", "steering_probes", "steering_sweep", "steering_refusal")


def _bundle(save: Any, stem: str) -> dict[str, str | bytes]:
    """The files ``save(tmp/stem)`` writes (``stem.json`` + ``stem.safetensors``), as artifact extra files."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        save(Path(tmp) / stem)
        return {p.name: p.read_bytes() for p in Path(tmp).iterdir()}


def write_directions_payload(d: Any) -> dict[str, Any]:
    """Keyword arguments of :func:`steerlab.artifacts.write_artifact` for saved directions (``directions.json``
    + ``.safetensors`` inside; :func:`steerlab.steering.vectors.load_directions` reads the folder)."""
    norms = {s: float(v.norm()) for s, v in d.vectors.items()}
    return {"kind": DIRECTIONS_KIND, "config": dict(d.meta), "metrics": {"norm": norms}, "data": {"sites": d.sites},
            "extra_files": _bundle(d.save, "directions")}


def write_directions(out: str | Path, d: Any) -> Path:
    """An artifact folder holding saved directions."""
    from steerlab.artifacts import write_artifact

    return write_artifact(out, **write_directions_payload(d))


def write_probes_payload(profile: Any) -> dict[str, Any]:
    """Artifact arguments for probes (``probes.json`` + ``.safetensors``), their table and profile figure."""
    from steerlab.steering.figures import probe_profile_figure
    from steerlab.steering.linear_probes import save_probes

    fig = probe_profile_figure(profile.table()).to_html(include_plotlyjs="cdn", full_html=True)
    files = {**_bundle(lambda p: save_probes(profile, p), "probes"), "probe_profile.html": fig}
    return {"kind": PROBES_KIND, "config": dict(profile.meta), "metrics": {"best": profile.best.row()},
            "data": {"table": profile.table()}, "extra_files": files}


def write_probes(out: str | Path, profile: Any) -> Path:
    """An artifact folder holding probes."""
    from steerlab.artifacts import write_artifact

    return write_artifact(out, **write_probes_payload(profile))


def write_sweep_payload(config: dict[str, Any], rows: list[dict[str, Any]], behavior: str,
                        control: str) -> dict[str, Any]:
    """Artifact arguments for a scale sweep's rows and its plotly trade-off figure (``sweep.html``)."""
    from steerlab.steering.figures import sweep_figure

    fig = sweep_figure(rows, behavior, control).to_html(include_plotlyjs="cdn", full_html=True)
    metrics = {"scales": [r["scale"] for r in rows], f"{control}_refusal": [r[f"{control}_refusal"] for r in rows]}
    return {"kind": SWEEP_KIND, "config": {**config, "behavior": behavior, "control": control}, "metrics": metrics,
            "data": {"rows": rows}, "extra_files": {"sweep.html": fig}}


def write_sweep(out: str | Path, config: dict[str, Any], rows: list[dict[str, Any]], behavior: str,
                control: str) -> Path:
    """An artifact folder holding a scale sweep."""
    from steerlab.artifacts import write_artifact

    return write_artifact(out, **write_sweep_payload(config, rows, behavior, control))


def write_refusal(out: str | Path, res: dict[str, Any], record: str | Path | None = None,
                  command: str | None = None) -> Path:
    """An artifact folder with the refusal study; with ``record``, also its compact JSON record (config,
    metrics, the command that produced it), written crash-safe."""
    from steerlab.artifacts import write_artifact
    from steerlab.atomic import atomic_write_text

    path = write_artifact(out, kind=REFUSAL_KIND, config=res["config"], metrics=res["metrics"], data=res["data"],
                          tensors=res["tensors"])
    if record is not None:
        compact = {"command": command, "config": res["config"], "metrics": res["metrics"],
                   "add_selection": res["data"]["add_selection"], "runs": res["data"]["runs"]}
        atomic_write_text(record, json.dumps(compact, indent=1, default=str) + "\n")
    return path


for _name, _producer, _summary in (
    (DIRECTIONS_KIND, "steer extract", "steering directions per site from a prompt suite (safetensors + JSON)"),
    (PROBES_KIND, "steer probe", "linear probes per site: held-out accuracy, AUROC, shuffled control"),
    (SWEEP_KIND, "steer sweep", "a direction added at several scales: behavior rates, perplexity, KL"),
    (REFUSAL_KIND, "steer refusal", "the refusal-direction study: ablation, addition, random controls"),
):
    register_kind(_name, owner=STEER_OWNER, producer=_producer, summary=_summary)
