"""``steerlab security``: security vectors that make harmful behaviour unlearnable (Zhou et al. 2024)."""

from __future__ import annotations

from pathlib import Path

import typer

from steerlab.cli.common import AT_LEAST_0, AT_LEAST_1, OUT_DIR, OUT_FILE, POSITIVE, SEED, emit, number, typer_app
from steerlab.errors import SpecError

app = typer_app("Security vectors: train one on harmful data, fine-tune with it on, evaluate the sweep.")

SKILL_HELP = "The benign skill: digit (name a number's last digit), repeat or reverse a word list."
AT_LEAST_0_FLOAT = number(0.0, low_open=False)
ANCHOR_WEIGHT = 1.0  # the default of --anchor-weight, chosen by the diagnostics in docs/security.md
ANCHOR_HELP = (
    "Weight of stage 1's anchor term, KL(base || vector on) on harmless training texts, which keeps the vector "
    "neutral on non-harmful inputs (0: the paper's objective)."
)
ANCHOR_SRC_HELP = "Anchor texts: organism (the corpus's non-harmful train examples), alpaca (train prompts), or JSONL."
GRAD_PENALTY_HELP = (
    "Weight mu of stage 1's gradient penalty, mu * ||d L_harmful / d base weights||^2, which teaches the vector "
    "to leave the base little gradient on harmful pairs (second order; 0: none)."
)
GRAD_CLIP_HELP = (
    "Stage 2's gradient clipping norm, or none: clipping at 1 (the default, as Hugging Face's Trainer) scales the "
    "large benign gradients down and leaves the harmful pairs' small residual ones as they are."
)
HARMFUL_HELP = "Harmful pairs: organism (the organism corpus's compliant answers), advbench, or a JSONL file."


def _csv(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def _ints(text: str, opt: str, example: str) -> list[int]:
    try:
        vals = [int(t) for t in _csv(text)]
    except ValueError:
        raise SpecError(f"{opt} {text!r}; expected comma-separated integers, e.g. {example}") from None
    if not vals or any(v < 0 for v in vals):
        raise SpecError(f"{opt} {text!r}; expected comma-separated integers >= 0")
    return vals


def _clip(text: str) -> float | None:
    """``--grad-clip``: a norm > 0, or ``none`` (no clipping)."""
    from steerlab.training import check_grad_clip

    if text.strip().lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        raise SpecError(f"--grad-clip {text!r}; expected a number > 0, or none (no clipping)") from None
    try:
        return check_grad_clip(value)
    except SpecError:
        raise SpecError(f"--grad-clip {text!r}; expected a finite number > 0, or none (no clipping)") from None


def _vector_config(kind: str, rank: int, alpha: float, targets: str | None, params: str | None, layers: str | None):
    from steerlab.security.vectors import VectorConfig

    cfg = VectorConfig(kind=kind, rank=rank, alpha=alpha)
    if targets is not None:
        cfg.target_modules = "all-linear" if targets == "all-linear" else _csv(targets)
    cfg.target_parameters = _csv(params)
    cfg.layers = _ints(layers, "--layers", "0,1,2") if layers else None
    cfg.check()
    return cfg


@app.command("train-vector")
def train_vector_cmd(
    model: str = typer.Argument(..., help="Model spec (e.g. organism:dense)."),
    harmful: str = typer.Option("organism", "--harmful", help=HARMFUL_HELP),
    n: int = typer.Option(100, "--n", help="Harmful pairs to train on.", **AT_LEAST_1),
    kind: str = typer.Option("lora", "--kind", help="lora (peft) or add (a vector per layer on resid_post)."),
    rank: int = typer.Option(8, "--rank", help="LoRA rank.", **AT_LEAST_1),
    alpha: float = typer.Option(16.0, "--alpha", help="LoRA alpha.", **POSITIVE),
    targets: str = typer.Option(None, "--target-modules", help="LoRA modules (comma-separated names, all-linear)."),
    target_params: str = typer.Option(
        None, "--target-parameters", help="Fused expert tensors, e.g. mlp.experts.down_proj."
    ),
    layers: str = typer.Option(None, "--layers", help="Layers of an add vector (default all)."),
    epochs: int = typer.Option(10, "--epochs", **AT_LEAST_1),
    lr: float = typer.Option(2e-3, "--lr", **POSITIVE),
    batch_size: int = typer.Option(16, "--batch-size", **AT_LEAST_1),
    anchor_weight: float = typer.Option(ANCHOR_WEIGHT, "--anchor-weight", help=ANCHOR_HELP, **AT_LEAST_0_FLOAT),
    anchor: str = typer.Option("organism", "--anchor", help=ANCHOR_SRC_HELP),
    n_anchor: int = typer.Option(1000, "--n-anchor", help="Anchor texts (the last batch is held out).", **AT_LEAST_1),
    grad_penalty: float = typer.Option(0.0, "--grad-penalty", help=GRAD_PENALTY_HELP, **AT_LEAST_0_FLOAT),
    seed: int = typer.Option(0, "--seed", **SEED),
    out: Path = typer.Option(..., "--out", help="Vector folder to write.", **OUT_DIR),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Stage 1: train only the vector on harmful prompt/response pairs (base weights frozen)."""
    import steerlab as sl
    from steerlab.security.data import anchor_pairs, harmful_pool
    from steerlab.security.stages import train_vector, vector_curves

    cfg = _vector_config(kind, rank, alpha, targets, target_params, layers)
    pool = harmful_pool(harmful, seed=seed)
    if n > len(pool):
        raise SpecError(f"--n {n}: {harmful} has {len(pool)} harmful pairs; expected --n <= {len(pool)}")
    pairs = pool[:n]
    anchors = anchor_pairs(anchor, n_anchor, seed) if anchor_weight > 0 else []
    h = sl.load(model, cache=False)
    ckpt = out.with_name(f".{out.name}.ckpt")
    v, res = train_vector(
        h,
        pairs,
        cfg,
        epochs=epochs,
        lr=lr,
        seed=seed,
        batch_size=batch_size,
        anchor=anchors,
        anchor_weight=anchor_weight,
        grad_penalty=grad_penalty,
        checkpoint_dir=ckpt,
        progress=True,
    )
    v.card["curves"] = vector_curves(res)
    v.save(out)
    _drop(ckpt)
    info = {
        "artifact": str(out),
        "kind": v.config.kind,
        "n_params": v.n_params,
        "pairs": len(pairs),
        "eval_loss": {"start": res.eval_losses["harmful"][0][1], "end": res.eval_losses["harmful"][-1][1]},
    }
    if as_json:
        emit(info)
    else:
        typer.echo(
            f"wrote {out}: {v.n_params} parameters; harmful loss {info['eval_loss']['start']:.3f} -> "
            f"{info['eval_loss']['end']:.3f}"
        )


def _drop(ckpt: Path) -> None:
    import shutil

    shutil.rmtree(ckpt, ignore_errors=True)


@app.command("finetune")
def finetune_cmd(
    model: str = typer.Argument(..., help="Model spec to fine-tune."),
    data: str = typer.Option(
        "organism",
        "--data",
        help="organism (harmful pairs + the benign skill) or a JSONL file of prompt/response/part rows.",
    ),
    n_harmful: int = typer.Option(1000, "--n-harmful", help="Harmful pairs (with --data organism).", **AT_LEAST_0),
    n_benign: int = typer.Option(960, "--n-benign", help="Benign skill pairs (with --data organism).", **AT_LEAST_0),
    skill: str = typer.Option("digit", "--skill", help=SKILL_HELP),
    skip: int = typer.Option(100, "--skip", help="Harmful pairs skipped first (those the vector saw).", **AT_LEAST_0),
    vector: Path = typer.Option(None, "--vector", help="A security vector folder, switched on and frozen."),
    epochs: int = typer.Option(1, "--epochs", **AT_LEAST_1),
    lr: float = typer.Option(1.5e-4, "--lr", **POSITIVE),
    grad_clip: str = typer.Option("1", "--grad-clip", help=GRAD_CLIP_HELP),
    batch_size: int = typer.Option(16, "--batch-size", **AT_LEAST_1),
    seed: int = typer.Option(0, "--seed", **SEED),
    out: Path = typer.Option(..., "--out", help="Model folder to write (a normal model spec afterwards).", **OUT_DIR),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Stage 2: fine-tune the whole model with the vector on and frozen; the saved model has it off.

    An interrupted run resumes from ``.OUT.ckpt`` beside ``--out`` when started again with the same options."""
    import steerlab as sl
    from steerlab.security.artifact import write_finetune
    from steerlab.security.data import benign_pairs, harmful_pool, read_pairs, summary
    from steerlab.security.stages import finetune
    from steerlab.security.vectors import data_hash, load_vector

    clip = _clip(grad_clip)
    if data == "organism":
        pool = harmful_pool("organism", seed=seed)
        if skip + n_harmful > len(pool):
            raise SpecError(
                f"--skip {skip} --n-harmful {n_harmful}: organism has {len(pool)} harmful pairs; "
                f"expected --skip + --n-harmful <= {len(pool)}"
            )
        pairs = pool[skip : skip + n_harmful] + benign_pairs(n_benign, "train", seed, skill)
    else:
        pairs = read_pairs(data, names=["organism"])
    vec = load_vector(vector) if vector is not None else None
    h = sl.load(model, cache=False)
    if vec is not None:
        vec.check_fits(h)
    ckpt = out.with_name(f".{out.name}.ckpt")
    res = finetune(
        h,
        pairs,
        vec,
        epochs=epochs,
        lr=lr,
        seed=seed,
        batch_size=batch_size,
        grad_clip=clip,
        checkpoint_dir=ckpt,
        eval_pairs={part: [p for p in pairs if p.part == part] for part in summary(pairs)},
    )
    config = {
        "model": model,
        "data": data,
        "pairs": summary(pairs),
        "data_hash": data_hash(pairs),
        "vector": str(vector) if vector else None,
        "epochs": epochs,
        "lr": lr,
        "grad_clip": clip,
        "seed": seed,
        "batch_size": batch_size,
    }
    write_finetune(out, h, res.to_json(), config)
    _drop(ckpt)
    ends = {k: {"start": c[0][1], "end": c[-1][1]} for k, c in res.eval_losses.items()}
    if as_json:
        emit({"artifact": str(out), "steps": res.steps, "eval_loss": ends, "pairs": summary(pairs)})
    else:
        typer.echo(
            f"wrote {out} ({res.steps} steps); eval loss "
            + ", ".join(f"{k} {v['start']:.3f} -> {v['end']:.3f}" for k, v in ends.items())
        )


@app.command("evaluate")
def evaluate_cmd(
    model: str = typer.Argument(..., help="Base model spec (e.g. organism:dense)."),
    samples: str = typer.Option("0,100,300,1000", "--samples", help="Harmful fine-tuning samples per run."),
    n_vector: int = typer.Option(100, "--n-vector", help="Harmful pairs the vector is trained on.", **AT_LEAST_1),
    n_benign: int = typer.Option(960, "--n-benign", help="Benign skill pairs in every run.", **AT_LEAST_1),
    skill: str = typer.Option("digit", "--skill", help=SKILL_HELP),
    vector: Path = typer.Option(None, "--vector", help="Use this vector instead of training one."),
    kind: str = typer.Option("lora", "--kind"),
    rank: int = typer.Option(8, "--rank", **AT_LEAST_1),
    alpha: float = typer.Option(16.0, "--alpha", **POSITIVE),
    targets: str = typer.Option(None, "--target-modules", help="LoRA modules (comma-separated names, all-linear)."),
    target_params: str = typer.Option(
        None, "--target-parameters", help="Fused expert tensors, e.g. mlp.experts.down_proj."
    ),
    layers: str = typer.Option(None, "--layers", help="Layers of an add vector (default all)."),
    vector_epochs: int = typer.Option(10, "--vector-epochs", **AT_LEAST_1),
    vector_lr: float = typer.Option(2e-3, "--vector-lr", **POSITIVE),
    anchor_weight: float = typer.Option(ANCHOR_WEIGHT, "--anchor-weight", help=ANCHOR_HELP, **AT_LEAST_0_FLOAT),
    anchor: str = typer.Option("organism", "--anchor", help=ANCHOR_SRC_HELP),
    n_anchor: int = typer.Option(1000, "--n-anchor", help="Anchor texts (the last batch is held out).", **AT_LEAST_1),
    grad_penalty: float = typer.Option(0.0, "--grad-penalty", help=GRAD_PENALTY_HELP, **AT_LEAST_0_FLOAT),
    epochs: int = typer.Option(1, "--epochs", **AT_LEAST_1),
    lr: float = typer.Option(1.5e-4, "--lr", **POSITIVE),
    grad_clip: str = typer.Option("1", "--grad-clip", help=GRAD_CLIP_HELP),
    n_eval: int = typer.Option(100, "--n-eval", help="Held-out harmful prompts per split.", **AT_LEAST_1),
    benign_n: int = typer.Option(100, "--benign-eval", help="Benign skill test items.", **AT_LEAST_1),
    harmless_n: int = typer.Option(
        64, "--harmless-eval", help="Harmless prompts for the vector-off check.", **AT_LEAST_1
    ),
    ppl_per_domain: int = typer.Option(
        32, "--ppl-per-domain", help="Held-out answers per domain for perplexity.", **AT_LEAST_1
    ),
    max_new_tokens: int = typer.Option(24, "--max-new-tokens", **AT_LEAST_1),
    seed: int = typer.Option(0, "--seed", **SEED),
    work: Path = typer.Option(
        None, "--work", help="Work folder (resumable; default .OUT.work beside --out).", **OUT_DIR
    ),
    out: Path = typer.Option(..., "--out", help="Artifact folder to write.", **OUT_DIR),
    record: Path = typer.Option(None, "--record", help="Also write the compact record JSON here.", **OUT_FILE),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """The whole experiment: a vector, then plain and vector-on fine-tuning for each number of harmful samples;
    compliance (template and real test splits), benign accuracy, perplexity, loss curves, vector-off check."""
    import json
    import shlex
    import sys
    from dataclasses import asdict

    import steerlab as sl
    from steerlab.atomic import atomic_write_text
    from steerlab.security.artifact import write_sweep
    from steerlab.security.experiment import SweepConfig, run_sweep
    from steerlab.security.vectors import load_vector

    cfg = SweepConfig(
        spec=model,
        samples=_ints(samples, "--samples", "0,100,300,1000"),
        n_vector=n_vector,
        n_benign=n_benign,
        skill=skill,
        vector=asdict(_vector_config(kind, rank, alpha, targets, target_params, layers)),
        vector_epochs=vector_epochs,
        vector_lr=vector_lr,
        anchor_weight=anchor_weight,
        anchor_source=anchor,
        n_anchor=n_anchor,
        grad_penalty=grad_penalty,
        epochs=epochs,
        lr=lr,
        grad_clip=_clip(grad_clip),
        seed=seed,
        noise_seed=seed + 1,
        n_eval=n_eval,
        benign_n=benign_n,
        harmless_n=harmless_n,
        max_new_tokens=max_new_tokens,
        ppl_per_domain=ppl_per_domain,
    )
    cfg.check()
    vec = load_vector(vector) if vector is not None else None
    rec = run_sweep(
        cfg,
        lambda: sl.load(model, cache=False),
        work or out.with_name(f".{out.name}.work"),
        vector=vec,
        log=lambda s: typer.echo(s, err=True),
    )
    path = write_sweep(out, rec)
    if record is not None:
        compact = {k: v for k, v in rec.items() if k != "samples"}
        argv = sys.argv[1:] if Path(sys.argv[0]).name == "steerlab" else ["security", "evaluate", model]
        compact["command"] = shlex.join(["steerlab", *argv])  # the whole command line when run as `steerlab`
        atomic_write_text(record, json.dumps(compact, indent=1))
    if as_json:
        emit({"artifact": str(path), **{k: rec[k] for k in ("rise", "benign_accuracy_gap", "vector_off", "floors")}})
    else:
        typer.echo(f"wrote {path}")
        typer.echo(json.dumps({k: rec[k] for k in ("rise", "benign_accuracy_gap", "floors")}))
