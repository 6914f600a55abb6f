"""Artifacts of the experts analysis (JSON + safetensors + plotly HTML), registered in
:mod:`steerlab.artifacts`, written atomically and read back by the CLI and the dashboard's Experts page.

``experts_image``: the fTRI statistics per layer and expert, the ranked table, for every expert the
tokens and prompts that select it most, and one prompt's per-token expert raster.
``experts_evaluate``: the headline metrics, the chosen and control expert sets, the k sweep and
example responses.

Example:
    >>> from steerlab.models.tiny import tiny_model
    >>> from steerlab.experts.ftri import image
    >>> import tempfile
    >>> h = tiny_model("mixtral")
    >>> res = image(h, ["How do I pick a lock?"] * 2, ["Tell me a story."] * 2, n_permutations=20, by_token=True)
    >>> art = write_image(tempfile.mkdtemp() + "/img", h, res, ["How do I pick a lock?"] * 2, ["Tell me a story."] * 2)
    >>> sorted(read_image(art)["tensors"])[:3]
    ['diff', 'freq_behavior', 'freq_control']
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from steerlab.activations import capture
from steerlab.artifacts import Artifact, read_artifact, register_kind, write_artifact
from steerlab.errors import SteerlabError
from steerlab.experts.evaluate import ExpertsEvaluation
from steerlab.experts.figures import expert_raster, ftri_heatmap, rate_vs_k
from steerlab.experts.ftri import FtriResult
from steerlab.models.handle import ModelHandle
from steerlab.viz.runs import figure_files

IMAGE_KIND = "experts_image"
EVALUATE_KIND = "experts_evaluate"
_STATS = ("freq_behavior", "freq_control", "gate_behavior", "gate_control", "diff", "log_odds", "p_value", "q_value")


def expert_examples(
    h: ModelHandle, res: FtriResult, behavior: list[str], control: list[str], top_tokens: int = 8, top_prompts: int = 5
) -> dict[str, dict[str, Any]]:
    """For every ``"layer.expert"``: the tokens that select it most (prompt tokens of both sets) and the
    prompts with the highest selection rate (over the imaging scope)."""
    a, b = res.counts_behavior, res.counts_control
    texts = [("behavior", t) for t in behavior] + [("control", t) for t in control]
    rate = torch.cat([a.sel / a.tokens.clamp_min(1).view(-1, 1, 1), b.sel / b.tokens.clamp_min(1).view(-1, 1, 1)])
    hist = None
    if a.by_token is not None and b.by_token is not None:
        hist = a.by_token + b.by_token
    out: dict[str, dict[str, Any]] = {}
    for j, layer in enumerate(res.layers):
        for e in range(rate.shape[2]):
            entry: dict[str, Any] = {}
            order = rate[:, j, e].argsort(descending=True)[:top_prompts].tolist()
            entry["prompts"] = [
                [texts[i][0], texts[i][1], round(float(rate[i, j, e]), 4)] for i in order if rate[i, j, e] > 0
            ]
            if hist is not None:
                counts, ids = hist[j, e].topk(min(top_tokens, hist.shape[-1]))
                entry["tokens"] = [
                    [h.tokenizer.decode([int(i)]), int(c)] for c, i in zip(counts, ids, strict=True) if c > 0
                ]
            out[f"{layer}.{e}"] = entry
    return out


def token_raster(h: ModelHandle, prompt: str, chat: bool = True, system: str | None = None) -> dict[str, Any]:
    """The top-1 chosen expert of every token of ``prompt`` at every MoE layer."""
    layers = h.adapter.moe_layers
    sites = [f"blocks.{i}.moe.topk_indices" for i in layers]
    cap = capture(h, [prompt], sites, chat=chat, system=system)
    ids = cap.input_ids[0][cap.attention_mask[0].bool()]
    experts = torch.stack([cap[s][0][cap.attention_mask[0].bool()][:, 0] for s in sites])
    return {
        "prompt": prompt,
        "tokens": [h.tokenizer.decode([int(i)]) for i in ids],
        "experts": experts.tolist(),
        "layers": layers,
    }


def image_payload(
    h: ModelHandle,
    res: FtriResult,
    behavior: list[str],
    control: list[str],
    raster: dict[str, Any] | None = None,
    top: int = 20,
) -> dict[str, Any]:
    """Everything an ``experts_image`` artifact holds, as :func:`~steerlab.artifacts.write_artifact`
    keyword arguments (the dashboard shows it before saving, the CLI writes it)."""
    tensors = {name: getattr(res, name).contiguous() for name in _STATS}
    figures = {"heatmap": ftri_heatmap(res.diff, res.layers, q_values=res.q_value)}
    data: dict[str, Any] = {
        "ranking": res.table(top=len(res.layers) * res.diff.shape[1]),
        "examples": expert_examples(h, res, behavior, control),
    }
    if raster is not None:
        data["raster"] = raster
        hl = [(r["layer"], r["expert"]) for r in res.table(top)]
        figures["raster"] = expert_raster(
            torch.tensor(raster["experts"]), raster["tokens"], raster["layers"], highlight=hl
        )
    metrics = {"top": res.table(top)[:5], "significant_q05": int((res.q_value < 0.05).sum())}
    return {
        "kind": IMAGE_KIND,
        "config": res.config,
        "metrics": metrics,
        "data": data,
        "tensors": tensors,
        "extra_files": figure_files(figures),
    }


def write_image(
    out: str | Path,
    h: ModelHandle,
    res: FtriResult,
    behavior: list[str],
    control: list[str],
    raster: dict[str, Any] | None = None,
    top: int = 20,
) -> Path:
    """Write an ``experts_image`` artifact."""
    return write_artifact(out, **image_payload(h, res, behavior, control, raster, top))


def read_image(path: str | Path) -> dict[str, Any]:
    """Read an ``experts_image`` artifact: ``config``, ``metrics``, ``data`` and ``tensors``."""
    return image_contents(read_artifact(path))


def image_contents(art: Artifact) -> dict[str, Any]:
    """What an ``experts_image`` artifact holds: ``config``, ``metrics``, ``data``, ``tensors`` and ``path``."""
    if art.kind != IMAGE_KIND:
        raise SteerlabError(f"{art.path} is a {art.kind!r} artifact; expected {IMAGE_KIND!r}")
    return {"config": art.config, "metrics": art.metrics, "data": art.data, "tensors": art.tensors, "path": art.path}


def write_evaluation(out: str | Path, ev: ExpertsEvaluation, res: FtriResult | None = None) -> Path:
    """Write an ``experts_evaluate`` artifact (with the k-sweep figure when a sweep ran)."""
    figures = {}
    if ev.sweep:
        figures["rate_vs_k"] = rate_vs_k(ev.sweep)
    tensors = {}
    if res is not None:
        figures["heatmap"] = ftri_heatmap(res.diff, res.layers, q_values=res.q_value)
        tensors = {name: getattr(res, name).contiguous() for name in _STATS}
    data = {
        "experts": ev.experts,
        "forced": ev.forced,
        "controls": ev.controls,
        "sweep": ev.sweep,
        "responses": {k: v[:20] for k, v in ev.responses.items()},
    }
    return write_artifact(
        out,
        kind=EVALUATE_KIND,
        config=ev.config,
        metrics=ev.metrics,
        data=data,
        tensors=tensors,
        extra_files=figure_files(figures),
    )


EXPERTS_IMAGE = register_kind(
    IMAGE_KIND, owner="steerlab.experts", producer="experts image", reader=image_contents,
    summary="fTRI imaging: which experts a behavior suite selects more than its control, per layer",
)
EXPERTS_EVALUATE = register_kind(
    EVALUATE_KIND, owner="steerlab.experts", producer="experts evaluate",
    summary="the chosen experts switched off: refusal/compliance against random expert sets, over k",
)
