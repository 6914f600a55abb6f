"""Compare decoding rules: diversity vs coherence across temperatures (the top-H paper's trade-off).

For every (sampler, temperature) the harness draws ``samples`` completions per prompt with
``sl.generate`` (batched; the same seeds and batches for every configuration, so rules are compared on
shared randomness), then measures per prompt:

- diversity of the samples: distinct-1/2/3, self-BLEU, embedding diversity (see :mod:`.metrics`);
- coherence: the per-token negative log-likelihood of each completion under a *judge*, the unmodified
  model at temperature 1 by default (or another model: ``judge=``), reported as perplexity
  ``exp(mean NLL)``; lower = more coherent. When the judge is the generating model itself and no
  intervention is active, the NLL is read from the raw logits of the generation (a forward pass's values up
  to float rounding, tested within 1e-4 nats, at no extra cost); otherwise the judge runs one forward pass per
  batch;
- the completion length in tokens.

Each metric is averaged over prompts with a 95% percentile-bootstrap CI (prompts are the unit of
resampling; the perplexity CI is the exponentiated NLL CI). The artifact (kind ``sampling_compare``)
holds the table, per-prompt values, every sample, per-step top-H / top-p / min-p diagnostics of one
generation, and two plotly figures (HTML files + figure JSON in ``data["figures"]``).

Example:
    >>> import tempfile
    >>> from steerlab.decoding.compare import CompareConfig, run_compare
    >>> cfg = CompareConfig(model="shared:stories260K", prompts=["Once upon a time", "The dog"],
    ...                     samplers=[{"name": "top_h", "params": {"alpha": 0.4}}], temperatures=[1.0],
    ...                     samples=2, max_new_tokens=8, embed=False)
    >>> art = run_compare(cfg, tempfile.mkdtemp() + "/cmp", progress=False)
    >>> sorted(art.metrics)
    ['top_h(alpha=0.4)@T=1']
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from steerlab.artifacts import read_artifact, write_artifact
from steerlab.decoding.artifact import COMPARE_KIND
from steerlab.decoding.diagnostics import diagnose_generation
from steerlab.decoding.figures import diversity_coherence_figure, per_step_figure
from steerlab.decoding.metrics import default_embedder, distinct_n, embedding_diversity, self_bleu
from steerlab.errors import SpecError
from steerlab.generation import describe_interventions, generate
from steerlab.models.handle import ModelHandle
from steerlab.models.load import load
from steerlab.sampling.base import make_sampler
from steerlab.scoring import judge_nll, nll_from_scores
from steerlab.stats import mean_ci
from steerlab.values import parse_assignments
from steerlab.viz.runs import FIGURE_SUFFIX, figure_files

PROMPTS_DIR = Path(__file__).parent / "prompts"
DEFAULT_SAMPLERS = "top_h:alpha=0.3,top_h:alpha=0.4,top_h:alpha=0.5,top_p:p=0.9,min_p:p=0.1,temperature"
DEFAULT_TEMPERATURES = (1.0, 1.5, 2.0, 3.0)
DIVERSITY = ("distinct_1", "distinct_2", "distinct_3", "self_bleu", "embedding_diversity")
METRICS = (*DIVERSITY, "judge_nll", "judge_ppl", "length")


# -- specs -----------------------------------------------------------------------------------------
def parse_sampler_spec(text: str) -> dict[str, Any]:
    """``"top_h:alpha=0.4:variant=hf"`` -> ``{"name": "top_h", "params": {"alpha": 0.4, "variant": "hf"}}``.

    The temperature comes from the sweep, so it may not be given here; the spec is validated by
    building the sampler.
    """
    name, *items = [s.strip() for s in text.strip().split(":")]
    spec = {"name": name, "params": parse_assignments(items, f"sampler spec {text!r}")}
    check_sampler_spec(spec)
    return spec


def check_sampler_spec(spec: dict[str, Any]) -> None:
    if spec.get("name") == "greedy":
        raise SpecError("greedy decoding has no temperature; compare sampling rules (temperature, top_p, ...)")
    if "temperature" in spec.get("params", {}):
        raise SpecError(f"sampler {spec['name']!r}: set temperatures with the sweep, not in the sampler spec")
    make_sampler(spec["name"], **spec.get("params", {}))


def parse_samplers(text: str) -> list[dict[str, Any]]:
    """Comma-separated sampler specs (see :func:`parse_sampler_spec`)."""
    specs = [parse_sampler_spec(s) for s in text.split(",") if s.strip()]
    if not specs:
        raise SpecError(f"no sampler in {text!r}; expected e.g. {DEFAULT_SAMPLERS!r}")
    labels = [sampler_label(s) for s in specs]
    twice = sorted({x for x in labels if labels.count(x) > 1})
    if twice:  # results are keyed by label: a repeat would be run and then shown as one
        raise SpecError(f"samplers {twice} are given twice in {text!r}; expected each once")
    return specs


def parse_temperatures(text: str) -> list[float]:
    try:
        temps = [float(t) for t in text.split(",") if t.strip()]
    except ValueError as e:
        raise SpecError(f"temperatures must be comma-separated numbers, got {text!r}") from e
    if not temps or any(not math.isfinite(t) or t <= 0 for t in temps):
        raise SpecError(f"temperatures must be finite numbers > 0, got {text!r}")
    if len(set(temps)) < len(temps):
        raise SpecError(f"temperatures {text!r} repeat a value; expected each once")
    return temps


def sampler_label(spec: dict[str, Any]) -> str:
    params = ", ".join(f"{k}={v}" for k, v in spec.get("params", {}).items())
    return f"{spec['name']}({params})" if params else spec["name"]


def builtin_prompt_sets() -> list[str]:
    return sorted(p.stem for p in PROMPTS_DIR.glob("*.txt"))


def load_prompts(path_or_name: str | Path) -> list[str]:
    """Prompts from a text file (one per line; blank lines and ``#`` comments skipped) or a built-in set.

    >>> len(load_prompts("story_openings")) >= 16
    True
    """
    p = Path(path_or_name)
    if not p.exists():
        p = PROMPTS_DIR / f"{path_or_name}.txt"
        if not p.exists():
            raise SpecError(
                f"prompt file {str(path_or_name)!r} not found; give a file path or one of {builtin_prompt_sets()}"
            )
    prompts = [ln.strip() for ln in p.read_text().splitlines()]
    prompts = [ln.replace("\\n", "\n") for ln in prompts if ln and not ln.startswith("#")]
    if not prompts:
        raise SpecError(f"prompt file {str(p)!r} has no prompts")
    return prompts


@dataclass
class CompareConfig:
    """What to compare. ``chat=None``: use the chat template when the model has one."""

    model: str
    prompts: list[str]
    samplers: list[dict[str, Any]]
    temperatures: list[float] = field(default_factory=lambda: list(DEFAULT_TEMPERATURES))
    samples: int = 4
    max_new_tokens: int = 48
    seed: int = 0
    chat: bool | None = None
    judge: str | None = None
    batch_size: int = 64
    embed: bool = True
    prompt_source: str | None = None
    interventions: Any = None

    def validate(self) -> None:
        if not self.prompts:
            raise SpecError("no prompts to compare on")
        if int(self.samples) != self.samples or self.samples < 2:
            raise SpecError(f"samples must be an integer >= 2 (diversity needs several), got {self.samples!r}")
        if int(self.max_new_tokens) != self.max_new_tokens or self.max_new_tokens < 1:
            raise SpecError(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        if int(self.batch_size) != self.batch_size or self.batch_size < 1:
            raise SpecError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        if not self.samplers:
            raise SpecError("no samplers to compare")
        for s in self.samplers:
            check_sampler_spec(s)
        parse_temperatures(",".join(str(t) for t in self.temperatures))

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["interventions"] = describe_interventions(self.interventions)
        return d


# -- the pieces ------------------------------------------------------------------------------------
def sample_completions(
    h: ModelHandle,
    prompts: list[str],
    sampler: Any,
    *,
    samples: int,
    max_new_tokens: int,
    seed: int,
    chat: bool,
    batch_size: int,
    interventions: Any = None,
    score: bool = False,
    on_batch: Any = None,
) -> tuple[list[str], list[list[int]], list[float] | None]:
    """``samples`` completions per prompt (prompt-major order), batched; batch ``i`` uses ``seed + i``.

    Returns ``(texts, token_ids, nll)``. With ``score=True``, ``nll`` is each completion's mean negative
    log-likelihood under the generating model itself at temperature 1, read from the raw logits that
    ``generate`` computed anyway (:func:`nll_from_scores`); only meaningful without interventions.
    """
    flat = [p for p in prompts for _ in range(samples)]
    texts: list[str] = []
    ids: list[list[int]] = []
    nll: list[float] = []
    for i, start in enumerate(range(0, len(flat), batch_size)):
        res = generate(
            h,
            flat[start : start + batch_size],
            interventions=interventions,
            sampler=sampler,
            max_new_tokens=max_new_tokens,
            seed=seed + i,
            chat=chat,
            output_scores=score,
        )
        texts += res.texts
        ids += res.token_ids
        if score:
            nll += nll_from_scores(res)
        if on_batch is not None:
            on_batch()
    return texts, ids, (nll if score else None)


def prompt_metrics(
    texts: list[str], nll: list[float], lengths: list[int], embeddings: torch.Tensor | None
) -> dict[str, float]:
    """Metrics of the samples of one prompt."""
    finite = [x for x in nll if math.isfinite(x)]
    return {
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
        "distinct_3": distinct_n(texts, 3),
        "self_bleu": self_bleu(texts),
        "embedding_diversity": embedding_diversity(embeddings) if embeddings is not None else float("nan"),
        "judge_nll": float(np.mean(finite)) if finite else float("nan"),
        "length": float(np.mean(lengths)),
    }


def aggregate(per_prompt: list[dict[str, float]], seed: int = 0) -> dict[str, dict[str, Any]]:
    """Mean and bootstrap CI over prompts of every metric; ``judge_ppl`` = exp of the NLL statistics."""
    out = {k: mean_ci([m[k] for m in per_prompt], seed=seed) for k in per_prompt[0]}
    nll = out["judge_nll"]
    out["judge_ppl"] = {k: (math.exp(v) if k != "n" else v) for k, v in nll.items()}
    return out


# -- figures ---------------------------------------------------------------------------------------
def figure_payload(figures: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Plotly JSON of each figure (for ``data["figures"]``) and the standalone HTML files (+ plotly.js)."""
    import json

    html = {k: v for k, v in figure_files(figures).items() if not k.endswith(FIGURE_SUFFIX)}
    return {name: json.loads(fig.to_json()) for name, fig in figures.items()}, html


# -- the run ---------------------------------------------------------------------------------------
def run_compare(
    cfg: CompareConfig, out_dir: str | Path, *, progress: bool = True, handle: ModelHandle | None = None
) -> Any:
    """Run the comparison and write a ``sampling_compare`` artifact to ``out_dir``; returns it (read back)."""
    cfg.validate()
    t0 = time.time()
    h = handle if handle is not None else load(cfg.model)
    chat = bool(getattr(h.tokenizer, "chat_template", None)) if cfg.chat is None else cfg.chat
    same_judge = cfg.judge is None or cfg.judge == cfg.model
    judge = h if same_judge else load(cfg.judge)
    judge_chat = chat and bool(getattr(judge.tokenizer, "chat_template", None))
    # the same model, unsteered, judges from the logits generation computed anyway (no second forward pass)
    judge_in_place = same_judge and not describe_interventions(cfg.interventions)
    embedder = None
    if cfg.embed:
        embedder = default_embedder()

    n_batches = math.ceil(len(cfg.prompts) * cfg.samples / cfg.batch_size)
    configs = [(s, t) for s in cfg.samplers for t in cfg.temperatures]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(configs) * n_batches, desc="sampling compare", unit="batch")
    rows, per_prompt_all, samples_all = [], {}, {}
    metrics: dict[str, dict[str, float]] = {}
    flat_prompts = [p for p in cfg.prompts for _ in range(cfg.samples)]
    for spec, temp in configs:
        label = sampler_label(spec)
        key = f"{label}@T={temp:g}"
        if bar is not None:
            bar.set_postfix_str(key)
        sampler = make_sampler(spec["name"], **spec.get("params", {}), temperature=temp)
        texts, ids, own_nll = sample_completions(
            h,
            cfg.prompts,
            sampler,
            samples=cfg.samples,
            max_new_tokens=cfg.max_new_tokens,
            seed=cfg.seed,
            chat=chat,
            batch_size=cfg.batch_size,
            interventions=cfg.interventions,
            score=judge_in_place,
            on_batch=(bar.update if bar is not None else None),
        )
        if own_nll is not None:
            nll = own_nll
        else:
            nll = judge_nll(judge, flat_prompts, texts, ids if same_judge else None, chat=judge_chat)
        emb = embedder.encode(texts) if embedder is not None else None
        per_prompt = []
        for i in range(len(cfg.prompts)):
            sl_ = slice(i * cfg.samples, (i + 1) * cfg.samples)
            per_prompt.append(
                prompt_metrics(texts[sl_], nll[sl_], [len(x) for x in ids[sl_]], emb[sl_] if emb is not None else None)
            )
        agg = aggregate(per_prompt, seed=cfg.seed)
        rows.append(
            {"sampler": label, "name": spec["name"], "params": spec.get("params", {}), "temperature": temp, **agg}
        )
        metrics[key] = {k: v["mean"] for k, v in agg.items()}
        per_prompt_all[key] = per_prompt
        samples_all[key] = [
            {"prompt": p, "texts": texts[i * cfg.samples : (i + 1) * cfg.samples]} for i, p in enumerate(cfg.prompts)
        ]
    if bar is not None:
        bar.close()

    # one generation, per-step: the first top-H sampler (else the first) at the middle temperature
    spec = next((s for s in cfg.samplers if s["name"] == "top_h"), cfg.samplers[0])
    temp = sorted(cfg.temperatures)[len(cfg.temperatures) // 2]
    diag = diagnose_generation(
        h,
        cfg.prompts[0],
        make_sampler(spec["name"], **spec.get("params", {}), temperature=temp),
        max_new_tokens=cfg.max_new_tokens,
        seed=cfg.seed,
        chat=chat,
        interventions=cfg.interventions,
    )
    fig_dc = diversity_coherence_figure(rows, cfg.model)
    fig_ps = per_step_figure(diag, title=f"{sampler_label(spec)} at T={temp:g}: {cfg.prompts[0][:60]!r}")
    fig_json, fig_html = figure_payload({"diversity_vs_coherence": fig_dc, "per_step": fig_ps})
    config = cfg.to_json() | {"chat": chat, "judge": cfg.judge or cfg.model, "n_prompts": len(cfg.prompts)}
    path = write_artifact(
        out_dir,
        kind=COMPARE_KIND,
        config=config,
        metrics=metrics,
        data={
            "rows": rows,
            "metric_names": list(METRICS),
            "per_prompt": per_prompt_all,
            "samples": samples_all,
            "per_step": diag,
            "figures": fig_json,
            "elapsed_s": round(time.time() - t0, 1),
        },
        extra_files=fig_html,
    )
    return read_artifact(path)


def table_markdown(rows: list[dict[str, Any]], digits: int = 3) -> str:
    """The comparison as a markdown table (mean [95% CI] per metric)."""
    cols = [
        ("distinct_2", "distinct-2 ↑"),
        ("distinct_3", "distinct-3 ↑"),
        ("self_bleu", "self-BLEU ↓"),
        ("embedding_diversity", "emb. div. ↑"),
        ("judge_ppl", "judge PPL ↓"),
        ("length", "tokens"),
    ]
    head = "| sampler | T | " + " | ".join(c for _, c in cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 2)]

    def fmt(m: dict[str, Any], key: str) -> str:
        if not math.isfinite(m["mean"]):
            return "n/a"
        d = 1 if key in ("judge_ppl", "length") else digits
        return f"{m['mean']:.{d}f} [{m['lo']:.{d}f}, {m['hi']:.{d}f}]"

    for r in rows:
        lines.append(f"| {r['sampler']} | {r['temperature']:g} | " + " | ".join(fmt(r[k], k) for k, _ in cols) + " |")
    return "\n".join(lines)
