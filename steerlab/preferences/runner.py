"""One runner per step, shared by the CLI (``steerlab prefs ...``) and the Preferences page.

Sources of pairs (:func:`load_source`): ``hh_rlhf`` or ``hh_rlhf:N`` (the first N harmless-base test pairs),
``published`` (the paper's 5,240 label-only pairs), a JSONL file, or an artifact folder holding ``pairs.jsonl``
(``preference_pairs`` / ``preference_fit``), so steps chain: annotate -> judge -> fit -> compare.

Judge specs (:func:`parse_judge`): ``loglik:MODEL`` (a local model's length-normalized log-likelihood) and
``dpo:POLICY,REFERENCE[,BETA]`` (the DPO implicit reward), each optionally named ``NAME=...``; labels already in
the data are judges too (by their name).

Example:
    >>> import tempfile
    >>> from steerlab.preferences.artifact import PREFERENCE_FIT
    >>> d = run_fit("hh_rlhf:60", tempfile.mkdtemp() + "/f", judges=["human"], method="laplace",
    ...             annotators=["lengthy", "apology"])
    >>> PREFERENCE_FIT.read(d).fits["human"]["all"].n_pairs
    60
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from steerlab.artifacts import read_artifact, write_artifact
from steerlab.errors import SteerlabError
from steerlab.preferences.annotate import RULE_NAMES, EndpointYesNo, ModelYesNo, annotate
from steerlab.preferences.artifact import (
    COMPARE_KIND,
    PAIRS_FILE,
    fit_artifact,
    pairs_artifact,
    pairs_from_artifact,
)
from steerlab.preferences.data import (
    PairSet,
    RowProblem,
    load_hh_rlhf,
    load_published,
    load_published_pairs,
    read_pairs_jsonl,
)
from steerlab.preferences.fit import Method, check_varied, cluster_order, correlation_matrix, fit, judge_similarity
from steerlab.preferences.judges import DPOJudge, Judge, LoglikJudge, agreement, judge_pairs

Progress = Callable[[str, float], None]


def load_source(source: str, *, on_error: Literal["skip", "raise"] = "raise",
                seed: int = 0) -> tuple[PairSet, list[RowProblem]]:
    """Pairs from ``source`` (see the module docstring) and the malformed lines skipped."""
    if source == "published":
        return load_published_pairs(), []
    if source == "hh_rlhf" or source.startswith("hh_rlhf:"):
        n_text = source.partition(":")[2]
        if n_text and (not n_text.isdigit() or int(n_text) < 1):
            raise SteerlabError(f"source {source!r}: expected hh_rlhf:N with N a positive integer")
        problems: list[RowProblem] = []
        ps = load_hh_rlhf(n=int(n_text) if n_text else None, seed=seed,
                          problems=problems if on_error == "skip" else None)
        return ps, problems
    path = Path(source)
    if path.is_dir():
        if not (path / PAIRS_FILE).exists():
            raise SteerlabError(f"{path} holds no {PAIRS_FILE}; expected a preference_pairs or preference_fit folder")
        run = pairs_from_artifact(read_artifact(path))
        return run.pairs, run.problems
    if not path.is_file():
        raise SteerlabError(f"pairs source {source!r} not found; expected hh_rlhf[:N], published, a JSONL file or "
                            "an artifact folder")
    return read_pairs_jsonl(path, on_error=on_error)


def _model_name(spec: str) -> str:
    return spec.rstrip("/").split("/")[-1].split(":")[-1]


def parse_judge(spec: str, *, max_prompt_tokens: int | None = None) -> Judge:
    """A judge from ``[NAME=]loglik:MODEL`` or ``[NAME=]dpo:POLICY,REFERENCE[,BETA]`` (models load here); the
    prompt keeps at most its last ``max_prompt_tokens`` tokens (default: what the context leaves)."""
    import steerlab as sl

    name = ""
    head = spec.split(":", 1)[0]
    if "=" in head:
        name, spec = spec.split("=", 1)
    kind, _, rest = spec.partition(":")
    if kind == "loglik" and rest:
        return LoglikJudge(sl.load(rest), name or f"loglik:{_model_name(rest)}", max_prompt_tokens=max_prompt_tokens)
    if kind == "dpo" and rest:
        parts = rest.split(",")
        if len(parts) not in (2, 3):
            raise SteerlabError(f"judge {spec!r}: expected dpo:POLICY,REFERENCE[,BETA]")
        try:
            beta = float(parts[2]) if len(parts) == 3 else 0.1
        except ValueError:
            raise SteerlabError(f"judge {spec!r}: BETA {parts[2]!r} is not a number") from None
        return DPOJudge(sl.load(parts[0]), sl.load(parts[1]), name or f"dpo:{_model_name(parts[0])}", beta=beta,
                        max_prompt_tokens=max_prompt_tokens)
    raise SteerlabError(f"judge spec {spec!r}: expected [NAME=]loglik:MODEL or [NAME=]dpo:POLICY,REFERENCE[,BETA]")


def _parse_questions(items: Sequence[str]) -> list[tuple[str, str]]:
    out = []
    for it in items:
        prop, sep, q = it.partition("=")
        if not sep or not prop.strip() or not q.strip():
            raise SteerlabError(f"--ask {it!r}: expected PROPERTY=QUESTION")
        out.append((prop.strip(), q.strip()))
    return out


def _needs_texts(source: str, action: str) -> None:
    if source == "published":
        raise SteerlabError(f"the published pairs carry labels only (their texts were not released), so there is "
                            f"nothing to {action}; use hh_rlhf[:N] or a JSONL file of your own pairs")


def run_annotate(source: str, out: str | Path, *, annotators: Sequence[str] = RULE_NAMES,
                 ask: Sequence[str] = (), ask_model: str | None = None, ask_endpoint: str | None = None,
                 endpoint_model: str = "", on_error: Literal["skip", "raise"] = "raise", seed: int = 0,
                 progress: Progress | None = None) -> Path:
    """Annotate the pairs of ``source`` with rule annotators (by name) and, for each ``PROPERTY=QUESTION`` in
    ``ask``, a local model's (``ask_model``) or an endpoint's (``ask_endpoint``) yes/no; write a
    ``preference_pairs`` artifact."""
    _needs_texts(source, "annotate")
    questions = _parse_questions(ask)
    if questions and not (ask_model or ask_endpoint):
        raise SteerlabError("--ask needs --ask-model MODEL or --ask-endpoint URL")
    pairs, problems = load_source(source, on_error=on_error, seed=seed)
    anns: list[Any] = list(annotators)
    if questions and ask_model:
        import steerlab as sl

        h = sl.load(ask_model)
        anns += [ModelYesNo(h, p, q) for p, q in questions]
    elif questions:
        anns += [EndpointYesNo(p, q, model=endpoint_model, base_url=ask_endpoint) for p, q in questions]
    annotated = annotate(pairs, anns, progress=progress)
    config = {"source": source, "annotators": [a if isinstance(a, str) else a.property for a in anns],
              "ask": list(ask), "ask_model": ask_model, "ask_endpoint": ask_endpoint, "on_error": on_error,
              "seed": seed}
    return write_artifact(out, **pairs_artifact(annotated, config=config, problems=problems))


def run_judge(source: str, out: str | Path, *, judges: Sequence[str | Judge],
              on_error: Literal["skip", "raise"] = "raise", seed: int = 0, max_prompt_tokens: int | None = None,
              progress: Progress | None = None) -> Path:
    """Label the pairs of ``source`` with each model judge (specs or :class:`Judge` objects); write a
    ``preference_pairs`` artifact holding the labels and every verdict's scores."""
    if not judges:
        raise SteerlabError("no judges given; expected --judge loglik:MODEL or dpo:POLICY,REFERENCE")
    _needs_texts(source, "judge")
    pairs, problems = load_source(source, on_error=on_error, seed=seed)
    parsed = [parse_judge(spec, max_prompt_tokens=max_prompt_tokens) if isinstance(spec, str) else spec
              for spec in judges]
    names = [j.name for j in parsed]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise SteerlabError(f"judge names {twice} are given twice; give each judge its own name (NAME=loglik:MODEL)")
    taken = [n for n in names if n in pairs.judges]
    if taken:  # judging would replace those labels (a human's, say) with the model's
        raise SteerlabError(f"judge names {taken} already label pairs of {source!r}; give the model judges other "
                            "names (NAME=loglik:MODEL)")
    verdicts: dict[str, list[dict[str, Any]]] = {}
    for k, j in enumerate(parsed):
        sub = None if progress is None else (lambda s, f, k=k: progress(s, (k + f) / len(judges)))
        pairs, vs = judge_pairs(pairs, j, progress=sub)
        verdicts[j.name] = [v.to_json() for v in vs]
    config = {"source": source, "judges": [s if isinstance(s, str) else s.name for s in judges],
              "judge_names": names, "on_error": on_error, "seed": seed, "max_prompt_tokens": max_prompt_tokens}
    return write_artifact(out, **pairs_artifact(pairs, config=config, problems=problems, verdicts=verdicts))


def run_fit(source: str, out: str | Path, *, judges: Sequence[str] | None = None, groups: Sequence[str] = ("all",),
            properties: Sequence[str] | None = None, annotators: Sequence[str] = (), method: Method = "nuts",
            prior_scale: float = 0.1, level: float = 0.9, chains: int = 2, warmup: int = 300, samples: int = 500,
            seed: int = 0, min_pairs: int = 10, on_error: Literal["skip", "raise"] = "raise",
            progress: Progress | None = None, progress_bar: bool = False) -> Path:
    """Fit every judge (default: all labelled) in every group on the pairs of ``source`` (annotated first with
    ``annotators`` when given); write a ``preference_fit`` artifact with the judge-similarity matrix."""
    pairs, problems = load_source(source, on_error=on_error, seed=seed)
    if annotators:
        pairs = annotate(pairs, list(annotators))
    props = list(properties) if properties else pairs.properties
    unknown = [p for p in props if p not in pairs.properties]
    if unknown:
        raise SteerlabError(f"properties {unknown} are not annotated on the pairs of {source!r}; annotated: "
                            f"{pairs.properties}")
    if not props:
        raise SteerlabError(f"the pairs of {source!r} carry no property annotations; run `steerlab prefs annotate` "
                            "first or pass --annotator")
    js = list(judges) if judges else pairs.judges
    if not js:
        raise SteerlabError(f"the pairs of {source!r} carry no labels; run `steerlab prefs judge` first")
    missing = [j for j in js if j not in pairs.judges]
    if missing:
        raise SteerlabError(f"judges {missing} label no pair; labelled: {pairs.judges}")
    bad_groups = [g for g in groups if g not in pairs.groups]
    if bad_groups:
        raise SteerlabError(f"groups {bad_groups} hold no pairs; expected some of {pairs.groups}")
    fits: dict[str, dict[str, Any]] = {}
    jobs = [(j, g) for j in js for g in groups]
    for k, (j, g) in enumerate(jobs):
        sub = pairs.subset(g, judge=j)
        if len(sub) < min_pairs:
            raise SteerlabError(f"judge {j!r} labels {len(sub)} pairs in group {g!r}; expected >= {min_pairs}")
        cb = None if progress is None else (lambda s, f, k=k, j=j, g=g: progress(f"{j} / {g}: {s}",
                                                                                 (k + f) / len(jobs)))
        fits.setdefault(j, {})[g] = fit(sub.features(props), sub.labels(j), props, method=method,
                                        prior_scale=prior_scale, level=level, chains=chains, warmup=warmup,
                                        samples=samples, seed=seed, progress=cb, progress_bar=progress_bar)
    w = torch.stack([torch.stack([fits[j][g].mean for j in js]) for g in groups])
    sim = judge_similarity(w) if len(js) > 1 else torch.ones(1, 1, dtype=torch.float64)
    config = {"source": source, "judges": js, "groups": list(groups), "properties": props,
              "annotators": list(annotators), "method": method, "prior_scale": prior_scale, "level": level,
              "chains": chains, "warmup": warmup, "samples": samples, "seed": seed, "min_pairs": min_pairs}
    kw = fit_artifact(fits, pairs, similarity=sim, order=cluster_order(sim), config=config, problems=problems)
    kw["data"]["agreement"] = {f"{a} vs {b}": agreement(pairs, a, b) for i, a in enumerate(js) for b in js[i + 1:]}
    kw["data"]["label_share_a"] = {j: float(pairs.subset(judge=j).labels(j).mean()) for j in js}
    return write_artifact(out, **kw)


def weights_from(source: str) -> tuple[dict[str, dict[str, list[float]]], list[str]]:
    """``weights[group][judge]`` and the property names from ``published`` or a ``preference_fit`` folder."""
    if source == "published":
        pw = load_published()
        return pw.weights, list(pw.properties)
    art = read_artifact(source)
    if art.kind != "preference_fit":
        raise SteerlabError(f"{source} is a {art.kind!r} artifact; expected a preference_fit folder or 'published'")
    out: dict[str, dict[str, list[float]]] = {}
    for j, per in art.data["fits"].items():
        for g, f in per.items():
            out.setdefault(g, {})[j] = f["mean"]
    return out, art.data["properties"]


def run_compare(sources: Sequence[str], out: str | Path, *, groups: Sequence[str] | None = None,
                judges: Sequence[str] | None = None, method: Literal["pearson", "spearman"] = "pearson") -> Path:
    """Compare judges from ``sources`` (``published`` and/or fit folders; judges of later sources are named
    ``SOURCE:judge`` on a name clash) by the correlation of their weights in each shared group, averaged;
    write a ``preference_compare`` artifact."""
    if not sources:
        raise SteerlabError("no sources given; expected 'published' and/or preference_fit folders")
    twice = sorted({s for s in sources if list(sources).count(s) > 1})
    if twice:
        raise SteerlabError(f"sources {twice} are given twice; a judge compared with itself says nothing")
    merged: dict[str, dict[str, list[float]]] = {}
    props: list[str] | None = None
    for s in sources:
        w, p = weights_from(s)
        if props is not None and p != props:
            raise SteerlabError(f"{s} fits properties {p}; expected the same properties as the first source {props}")
        props = p
        # a judge of this source is renamed SOURCE:judge when an earlier source has a judge of that name (the
        # same judge in several groups of one source is one judge, not a clash)
        earlier = {j for per in merged.values() for j in per}
        for g, per in w.items():
            for j, v in per.items():
                merged.setdefault(g, {})[j if j not in earlier else f"{Path(s).name}:{j}"] = v
    all_judges = list(dict.fromkeys(j for per in merged.values() for j in per))
    js = list(judges) if judges else all_judges
    unknown = [j for j in js if j not in all_judges]
    if unknown:
        raise SteerlabError(f"unknown judges {unknown}; expected some of {all_judges}")
    common = [g for g in merged if all(j in merged[g] for j in js)]
    gs = list(groups) if groups else common
    bad = [g for g in gs if g not in common]
    if bad or not gs:
        raise SteerlabError(f"groups {bad or gs} are not fitted for every judge; expected some of {common}")
    if len(js) < 2:
        raise SteerlabError(f"{len(js)} judge(s) to compare; expected at least 2")
    w = torch.tensor([[merged[g][j] for j in js] for g in gs], dtype=torch.float64)
    check_varied(w, js, gs)
    per_group = {g: correlation_matrix(w[i], method).tolist() for i, g in enumerate(gs)}
    sim = judge_similarity(w, method)
    order = cluster_order(sim)
    data = {"judges": js, "groups": gs, "properties": props, "similarity": sim.tolist(), "order": order,
            "per_group": per_group, "weights": {g: {j: merged[g][j] for j in js} for g in gs}}
    off = sim[~torch.eye(len(js), dtype=torch.bool)]
    metrics = {"judges": len(js), "groups": len(gs), "mean_similarity": float(off.mean())}
    config = {"sources": list(sources), "groups": list(groups or []), "judges": list(judges or []), "method": method}
    return write_artifact(out, kind=COMPARE_KIND, config=config, metrics=metrics, data=data)


def summary(path: str | Path) -> dict[str, Any]:
    """What the CLI prints with ``--json``: the artifact's kind, path, config and metrics (and, for fits, the
    weight table of each judge and group)."""
    art = read_artifact(path)
    out: dict[str, Any] = {"kind": art.kind, "path": str(art.path), "config": art.config, "metrics": art.metrics}
    if art.kind == "preference_fit":
        from steerlab.preferences.fit import FitResult

        out["fits"] = {j: {g: FitResult.from_json(f).table() for g, f in per.items()}
                       for j, per in art.data["fits"].items()}
    for key in ("agreement", "label_share_a"):
        if key in art.data:
            out[key] = art.data[key]
    if art.data.get("problems"):
        out["problems"] = art.data["problems"]
    return json.loads(json.dumps(out))
