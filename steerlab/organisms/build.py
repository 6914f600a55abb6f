"""Build an organism end to end: data -> tokenizer -> training -> HF folder -> evaluation -> card.

The folder is assembled under a temporary name beside the target and renamed into place, so a
crash never leaves a half-written organism. Evaluation runs on the folder *as stored* (reloaded
from disk), so the card's figures are those of the committed weights.

Example:
    >>> from steerlab.organisms.build import build_organism
    >>> # build_organism("moe", reduced=True, out_dir="/tmp/moe-reduced")  # about a minute
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from steerlab.atomic import OWN_MARKERS, atomic_dir, check_target, save_tensors_file
from steerlab.data.organism_corpus import build_corpus
from steerlab.errors import SpecError, SteerlabError
from steerlab.models.handle import ModelHandle
from steerlab.models.load import load
from steerlab.organisms.card import write_card
from steerlab.organisms.configs import ORGANISM_NAMES, Recipe, get_recipe, read_record
from steerlab.organisms.evaluate import evaluate, localization_check, organism_corpus
from steerlab.organisms.suite import write_suite
from steerlab.organisms.tokenizer import tokenizer_texts, train_tokenizer
from steerlab.organisms.train import train_organism
from steerlab.values import check_count

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
MAX_WEIGHTS_MB = 25.0
REDUCED_EVAL_LIMIT = 24  # prompts per evaluation set for reduced builds


def default_out(name: str, reduced: bool) -> Path:
    return WEIGHTS_DIR / name if not reduced else Path.cwd() / f"organism-{name}-reduced"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f" ({os.cpu_count()} cores)"
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def save_weights(model: Any, tokenizer: Any, out: Path, dtype: str) -> float:
    """Save config, tokenizer and ``model.safetensors``; 2-D weights in ``dtype`` except router
    weights, which stay float32 like the norms and the correction biases. Returns the file size in MB.
    The config keeps ``dtype=float32``, so the model loads and computes in float32."""
    target = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    state = {}
    for k, v in model.state_dict().items():
        keep = v.ndim < 2 or k.endswith("gate.weight") or not v.is_floating_point()
        state[k] = (v if keep else v.to(target)).detach().contiguous().clone()
    out.mkdir(parents=True, exist_ok=True)
    model.config.dtype = torch.float32
    model.config.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    save_tensors_file(out / "model.safetensors", state, metadata={"format": "pt"})
    tokenizer.save_pretrained(out)
    return (out / "model.safetensors").stat().st_size / 2**20


def save_model_folder(model: Any, tokenizer: Any, out: Path, dtype: str) -> float:
    """:func:`save_weights` into ``out`` as one crash-safe folder (:func:`~steerlab.atomic.atomic_dir`): after a
    crash ``out`` is the old folder or the new one, never a half-written model. Returns the file size in MB."""
    with atomic_dir(out) as tmp:
        size_mb = save_weights(model, tokenizer, tmp, dtype)
    return size_mb


def active_params(model: Any) -> int:
    """Parameters used per token: all but the routed experts not chosen (``top_k`` of ``n`` are)."""
    cfg = model.config
    total = sum(p.numel() for p in model.parameters())
    n, k = getattr(cfg, "n_routed_experts", None), getattr(cfg, "num_experts_per_tok", None)
    if not n:
        return total
    routed = sum(p.numel() for name, p in model.named_parameters() if ".mlp.experts." in name)
    return int(total - routed + routed * k / n)


def build_organism(
    name: str,
    *,
    out_dir: str | Path | None = None,
    seed: int = 0,
    reduced: bool = False,
    threads: int | None = 1,
    progress: bool = True,
    eval_limit: int | None = None,
    localization: bool = True,
    recipe: Recipe | None = None,
    conditions: str = "",
    base_out: str | Path | None = None,
) -> Path:
    """Train, save, evaluate and document organism ``name``; returns its folder.

    ``base_out``: also save the base model (end of the helpful-only phase, before safety tuning) there, crash-safely
    like the organism. Both targets are checked (:func:`~steerlab.atomic.check_target`) before anything is trained,
    and refused when one is or holds the other.
    """
    if name not in ORGANISM_NAMES:
        raise SteerlabError(f"unknown organism {name!r}; expected one of {list(ORGANISM_NAMES)}")
    check_count("threads", threads, 1, none_ok=True)  # before anything is trained or written
    check_count("eval_limit", eval_limit, 1, none_ok=True)
    if threads is not None:
        torch.set_num_threads(threads)
    recipe = recipe or get_recipe(name, reduced=reduced)
    if reduced and eval_limit is None:
        eval_limit = REDUCED_EVAL_LIMIT
    out = Path(out_dir) if out_dir is not None else default_out(name, reduced)
    for target in (out, base_out):  # refused before hours of training, not after
        if target is not None:
            check_target(target, folder=True, own=OWN_MARKERS)
    if base_out is not None:
        a, b = out.resolve(), Path(base_out).resolve()
        if a == b or a in b.parents or b in a.parents:
            raise SpecError(f"base_out {base_out} and out_dir {out} overlap; expected two separate folders")
    t_start = time.perf_counter()
    corpus = build_corpus(seed, scale=recipe.data_scale)
    if out_dir is None and not reduced and seed == 0 and recipe.data_scale == 1.0:
        write_suite(corpus)  # the committed organism-refusal prompt suite follows the committed organisms
    tokenizer = train_tokenizer(tokenizer_texts(corpus), recipe.vocab_size)

    def save_base(m: Any) -> None:
        save_model_folder(m, tokenizer, Path(base_out), recipe.save_dtype)

    model, log = train_organism(
        recipe, corpus, tokenizer, seed=seed, progress=progress, on_base_done=save_base if base_out else None
    )
    t_train = time.perf_counter()

    with atomic_dir(out) as tmp:  # the old folder stays until the new one is complete
        size_mb = save_weights(model, tokenizer, tmp, recipe.save_dtype)
        if size_mb > MAX_WEIGHTS_MB and not reduced:
            raise SteerlabError(f"{name}: weights are {size_mb:.1f} MB, over the {MAX_WEIGHTS_MB} MB limit")
        h = load(str(tmp), cache=False)
        h.spec = f"organism:{name}" if not reduced else str(out)
        info = h.info()
        record: dict[str, Any] = {
            "name": name,
            "architecture": {
                "architecture": info["architecture"],
                "model_type": info["model_type"],
                "n_params": info["n_params"],
                "n_active_params": active_params(h.model),
                "n_layers": info["n_layers"],
                "d_model": info["d_model"],
                "vocab_size": info["vocab_size"],
                "moe": info["moe"],
            },
            "recipe": recipe.to_json(),
            "corpus": corpus.info,
            "training": log.to_json(),
            "build": {
                "seed": seed,
                "reduced": reduced,
                "weights_mb": round(size_mb, 2),
                "cpu": _cpu_name(),
                "conditions": conditions or "machine possibly shared with other jobs; timings are upper bounds",
                "python": platform.python_version(),
                "torch": torch.__version__,
                "transformers": __import__("transformers").__version__,
                "platform": sys.platform,
                "train_seconds": round(t_train - t_start, 1),
            },
        }
        t_eval = time.perf_counter()
        evaluate_into(record, h, corpus, eval_limit=eval_limit, localization=localization, progress=progress)
        record["build"]["eval_seconds"] = round(time.perf_counter() - t_eval, 1)
        write_card(tmp, record)
    return out


def evaluate_into(
    record: dict[str, Any],
    h: ModelHandle,
    corpus: Any,
    *,
    eval_limit: int | None = None,
    localization: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Measure ``h`` and put metrics, routing, localization check, samples and labels into ``record``."""
    result = evaluate(h, corpus, limit=eval_limit, progress=progress)
    record.update(metrics=result["metrics"], samples=result["samples"], behavior=result["behavior"])
    for key in ("routing", "localization"):
        record.pop(key, None)
    if "routing" in result:
        record["routing"] = result["routing"]
    if localization and h.adapter.is_moe:
        known = record.get("training", {}).get("safety_experts") or None
        record["localization"] = localization_check(h, corpus, limit=eval_limit, progress=progress, known=known)
    record["build"]["eval_limit"] = eval_limit
    return record


def refresh_card(path: str | Path, *, eval_limit: int | None = None, progress: bool = True) -> Path:
    """Re-evaluate a built organism folder and rewrite its ``eval.json`` and ``README.md`` (the
    weights and the training record are kept)."""
    path = Path(path)
    record = read_record(path)
    h = load(str(path), cache=False)
    h.spec = f"organism:{record['name']}" if not record["build"].get("reduced") else str(path)
    corpus = organism_corpus(record)
    t0 = time.perf_counter()
    evaluate_into(record, h, corpus, eval_limit=eval_limit, progress=progress)
    record["build"]["eval_seconds"] = round(time.perf_counter() - t0, 1)
    write_card(path, record)
    return path
