"""Side-by-side generations (with and without interventions): view model, artifact, figure.

A :class:`Comparison` holds, for each prompt, the per-token view (:class:`~steerlab.viz.tokens.TokenStep`)
of each run ("baseline", "steered"). It is built from :class:`~steerlab.generation.GenerationResult`
objects, saved as a ``generation_compare`` artifact (the intervention set travels beside it as
``interventions.json`` + ``interventions.safetensors``) and read back for the dashboard.

Example:
    >>> import steerlab as sl
    >>> from steerlab.viz.generation import Comparison
    >>> h = sl.load("shared:stories260K")
    >>> base = sl.generate(h, ["Once upon a time"], max_new_tokens=4, output_scores=True)
    >>> cmp = Comparison.from_results(h.tokenizer, {"baseline": base})
    >>> cmp.texts("baseline") == base.texts
    True
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steerlab.errors import SteerlabError
from steerlab.interventions import InterventionSet
from steerlab.viz.tokens import TokenStep, step_tooltip, token_steps

KIND = "generation_compare"
INTERVENTIONS_FILE = "interventions.json"


@dataclass
class Comparison:
    """Generations of the same prompts under several settings, token by token."""

    prompts: list[str]
    settings: dict[str, dict[str, Any]]  # label -> GenerationResult.settings
    steps: dict[str, list[list[TokenStep]]]  # label -> per prompt -> per token
    interventions: Any = None  # the InterventionSet of the steered run, if any
    labels: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.labels:
            self.labels = list(self.steps)

    @classmethod
    def from_results(
        cls, tokenizer: Any, results: dict[str, Any], samplers: dict[str, Any] | None = None,
        interventions: Any = None, top_k: int = 5,
    ) -> Comparison:
        """Build from ``{label: GenerationResult}`` (all generated with ``output_scores=True``)."""
        if not results:
            raise SteerlabError("no generation results to compare")
        prompts = next(iter(results.values())).prompts
        steps: dict[str, list[list[TokenStep]]] = {}
        for label, res in results.items():
            if res.prompts != prompts:
                raise SteerlabError(f"run {label!r} has different prompts; a comparison needs the same prompts")
            smp = (samplers or {}).get(label)
            steps[label] = [
                token_steps(tokenizer, res.scores, ids, row=i, sampler=smp, top_k=top_k)
                for i, ids in enumerate(res.token_ids)
            ]
        return cls(prompts=list(prompts), settings={k: r.settings for k, r in results.items()}, steps=steps,
                   interventions=interventions)

    def texts(self, label: str) -> list[str]:
        return ["".join(s.piece for s in row) for row in self.steps[label]]

    def metrics(self) -> dict[str, Any]:
        """Headline numbers: how often the steered text differs and where it first diverges."""
        out: dict[str, Any] = {"n_prompts": len(self.prompts)}
        if "baseline" in self.steps and "steered" in self.steps:
            diverge = [first_divergence(a, b) for a, b in zip(self.steps["baseline"], self.steps["steered"],
                                                                 strict=True)]
            changed = [d is not None for d in diverge]
            out["changed_fraction"] = sum(changed) / len(changed)
            firsts = [d for d in diverge if d is not None]
            out["mean_first_divergence"] = sum(firsts) / len(firsts) if firsts else None
        for label, rows in self.steps.items():
            probs = [s.prob for row in rows for s in row]
            out[f"{label}_mean_token_prob"] = sum(probs) / len(probs) if probs else None
        return out

    # -- artifacts ---------------------------------------------------------------------------------
    def to_artifact(self) -> dict[str, Any]:
        """Keyword arguments for :func:`steerlab.artifacts.write_artifact`."""
        base = next(iter(self.settings.values()))
        config = {
            "model": base.get("model"),
            "prompts": self.prompts,
            "runs": self.settings,
        }
        data = {"labels": self.labels,
                "steps": {k: [[s.to_json() for s in row] for row in v] for k, v in self.steps.items()}}
        extra: dict[str, str | bytes] = {}
        if self.interventions is not None and len(self.interventions):
            from safetensors.torch import save

            meta = self.interventions.to_json()
            tensors = self.interventions.tensors()
            if tensors:
                meta["tensors_file"] = "interventions.safetensors"
                extra["interventions.safetensors"] = save(tensors)
            extra[INTERVENTIONS_FILE] = json.dumps(meta, indent=2)
        return {"kind": KIND, "config": config, "metrics": self.metrics(), "data": data, "extra_files": extra}

    @classmethod
    def from_artifact(cls, art: Any) -> Comparison:
        """Read back a ``generation_compare`` artifact."""
        if art.kind != KIND:
            raise SteerlabError(f"artifact {art.path} is a {art.kind!r}; expected {KIND!r}")
        steps = {k: [[TokenStep.from_json(s) for s in row] for row in v] for k, v in art.data["steps"].items()}
        ivs = load_interventions(art.path) if (Path(art.path) / INTERVENTIONS_FILE).exists() else None
        return cls(prompts=list(art.config["prompts"]), settings=dict(art.config["runs"]), steps=steps,
                   interventions=ivs, labels=list(art.data.get("labels") or steps))


def load_interventions(artifact_dir: str | Path) -> Any:
    """The intervention set saved in an artifact folder (``interventions.json``)."""
    return InterventionSet.load(Path(artifact_dir) / INTERVENTIONS_FILE)


def first_divergence(a: list[TokenStep], b: list[TokenStep]) -> int | None:
    """Index of the first token where two completions differ (``None`` if identical)."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x.token_id != y.token_id:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def token_prob_figure(runs: dict[str, list[TokenStep]], title: str = "Probability of each generated token") -> Any:
    """Line per run: the model's probability of the token it produced at each step; hover shows
    the token and the top alternatives."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for label, steps in runs.items():
        fig.add_trace(go.Scatter(
            x=[s.step for s in steps], y=[s.prob for s in steps], mode="lines+markers", name=label,
            text=[html.escape(step_tooltip(s)).replace("\n", "<br>") for s in steps],
            hovertemplate="step %{x}<br>%{text}<extra>" + label + "</extra>",
        ))
    fig.update_layout(title=title, xaxis_title="generated token", yaxis_title="p(token)",
                      yaxis_range=[0, 1.02], height=320, margin=dict(l=40, r=10, t=40, b=40),
                      legend=dict(orientation="h", y=1.12, x=1, xanchor="right"))
    return fig
