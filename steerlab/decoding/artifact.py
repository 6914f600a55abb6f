"""Artifacts of the decoding analysis, registered in :mod:`steerlab.artifacts`.

``sampling_diagnostics``: one generation's per-step diagnostics (JSON) and the top probabilities of every
step (``step_top_probs``/``step_top_ids``), written by ``steerlab sampling diagnose ... --out DIR`` and the
Sampling page's "Save as run". ``sampling_compare``: the comparison harness's table, samples and figures
(:func:`steerlab.decoding.compare.run_compare`, ``steerlab sampling compare --out DIR``). Both reopen on
the Sampling page.

Example:
    >>> import tempfile
    >>> import steerlab as sl
    >>> from steerlab.artifacts import write_artifact
    >>> from steerlab.decoding.diagnostics import StepTop, generation_diagnostics
    >>> h = sl.load("shared:stories260K")
    >>> r = sl.generate(h, ["Once upon a time"], sampler=sl.make_sampler("top_h", alpha=0.4),
    ...                 max_new_tokens=4, output_scores=True)
    >>> diag = generation_diagnostics(r)
    >>> top = StepTop.from_scores(r.scores, 0, diag["steps"], diag["temperature"])
    >>> path = write_artifact(tempfile.mkdtemp() + "/d", **diagnostics_artifact(diag, top, r.settings))
    >>> SAMPLING_DIAGNOSTICS.read(path)[0]["steps"] == diag["steps"]
    True
"""

from __future__ import annotations

from typing import Any

from steerlab.artifacts import Artifact, register_kind
from steerlab.decoding.diagnostics import RULES, StepTop, mean_or_nan
from steerlab.errors import SteerlabError

KIND = "sampling_diagnostics"
COMPARE_KIND = "sampling_compare"


def diagnostics_artifact(diag: dict[str, Any], top: StepTop, settings: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for :func:`steerlab.artifacts.write_artifact` (``sampling_diagnostics``), from the
    diagnostics, the step tops and the generation's settings (``GenerationResult.settings``); the config
    holds what the Sampling page presets when it reopens the run."""
    config = {"model": settings.get("model"), "prompt": diag.get("prompt"), "sampler": diag.get("sampler"),
              "max_new_tokens": int(settings["max_new_tokens"]), "seed": int(settings["seed"] or 0),
              "chat": bool(settings.get("chat")), "alpha": diag["top_h"]["alpha"],
              "variant": diag["top_h"]["variant"], "top_p": diag["top_p"]["p"], "min_p": diag["min_p"]["p"]}
    metrics = {f"mean_kept_{k}": mean_or_nan(diag[k]["kept"]) for k, _ in RULES}
    metrics.update({f"mean_kept_mass_{k}": mean_or_nan(diag[k]["kept_mass"]) for k, _ in RULES})
    metrics["mean_entropy"] = mean_or_nan(diag["entropy"])
    return {"kind": KIND, "config": config, "metrics": metrics, "data": diag,
            "tensors": {"step_top_probs": top.probs, "step_top_ids": top.ids}}


def diagnostics_from_artifact(art: Artifact) -> tuple[dict[str, Any], StepTop]:
    """Read back a ``sampling_diagnostics`` artifact: ``(diagnostics, step tops)``."""
    if art.kind != KIND:
        raise SteerlabError(f"artifact {art.path} is a {art.kind!r}; expected {KIND!r}")
    t = art.tensors
    return art.data, StepTop(t["step_top_probs"], t["step_top_ids"])


SAMPLING_DIAGNOSTICS = register_kind(
    KIND, owner="steerlab.decoding", producer="sampling diagnose", reader=diagnostics_from_artifact,
    summary="one generation's per-step entropy and the kept sets of top-H, top-p and min-p",
)
SAMPLING_COMPARE = register_kind(
    COMPARE_KIND, owner="steerlab.decoding", producer="sampling compare",
    summary="decoding rules compared over temperatures: diversity against judge perplexity, with CIs",
)
