"""Bad values on the command line: one line naming the value, exit status 2, no traceback, nothing written.

Every numeric option of every command has a row (``test_every_numeric_option_has_a_row`` walks the
command tree). Rows whose model is ``/no/such/model`` also show that the value is checked before any
model loads: loading that spec fails with its own message, so seeing the option's message instead
means the option was checked first (and, without a model, it takes far less than a second).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import typing
from pathlib import Path

import pytest
import torch
from typer.main import get_command
from typer.testing import CliRunner

import steerlab.decoding.compare  # noqa: F401  (imported here so that timings below measure no import)
import steerlab.experts.artifact
import steerlab.experts.evaluate
import steerlab.organisms.build
import steerlab.organisms.evaluate
from steerlab.cli.main import app
from steerlab.errors import SpecError
from steerlab.experts.ftri import RoutingCounts, image, image_suite, permutation_pvalues
from steerlab.sampling import make_sampler

runner = CliRunner()
NO = "/no/such/model"  # loading it fails with "model path '/no/such/model' does not exist"


def _spec_files(d: Path) -> None:
    vec = [1.0] * 64
    files = {
        "scale_keys": [{"type": "expert_mask", "layer": 0, "off": [], "scale": {"a": 0.5}}],
        "mask": [{"type": "param_edit", "param": "model.norm.weight", "op": "zero", "mask": "abc"}],
        "corrupt": {
            "interventions": [{"type": "add_vector", "site": "blocks.1.resid_post", "vector": {"$tensor": "t0"}}],
            "tensors_file": "corrupt.safetensors",
        },
        "positions": [{"type": "add_vector", "site": "blocks.1.resid_post", "vector": vec, "positions": [100]}],
    }
    for name, data in files.items():
        (d / f"{name}.json").write_text(json.dumps(data))
    (d / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json, not tensors")
    nan = json.dumps([{"type": "add_vector", "site": "blocks.1.resid_post", "vector": vec}]).replace("1.0]", "NaN]")
    (d / "nan.json").write_text(nan)


GEN = ["generate", NO, "-p", "Hi"]
CMP = ["sampling", "compare", NO, "--out", "{out}"]
DIAG = ["sampling", "diagnose", NO, "-p", "Hi"]
IMG = ["experts", "image", NO, "--out", "{out}"]
EVAL = ["experts", "evaluate", NO, "--out", "{out}"]
BUILD = ["organisms", "build", "moe", "--out", "{out}"]
OEVAL = ["organisms", "eval", NO]
ONE = [1.0] * 64

# (id, argv, text the one error line must contain: the value and what was expected)
CASES = [
    ("generate -n 0", GEN + ["-n", "0"], "--max-new-tokens must be an integer >= 1, got 0"),
    ("generate -n abc", GEN + ["-n", "abc"], "'--max-new-tokens' / '-n': Input should be a valid integer"),
    ("generate --seed -1", GEN + ["--seed", "-1"], "--seed must be an integer in 0..4294967295, got -1"),
    ("generate --seed 2**64", GEN + ["--seed", str(2**64)], f"--seed must be an integer in 0..4294967295, got {2**64}"),
    ("generate k=abc", GEN + ["--sampler", "top_k", "--param", "k=abc"], "top_k k must be an integer >= 1, got 'abc'"),
    ("generate k=0", GEN + ["--sampler", "top_k", "--param", "k=0"], "top_k k must be an integer >= 1, got 0"),
    ("generate k=2.5", GEN + ["--sampler", "top_k", "--param", "k=2.5"], "top_k k must be an integer >= 1, got 2.5"),
    (
        "generate temperature=abc",
        GEN + ["--sampler", "top_p", "--param", "temperature=abc"],
        "temperature must be a finite number > 0 when sampling, got 'abc'",
    ),
    (
        "generate temperature=true",
        GEN + ["--sampler", "temperature", "--param", "temperature=true"],
        "temperature must be a finite number > 0 when sampling, got True",
    ),
    (
        "generate p=abc",
        GEN + ["--sampler", "top_p", "--param", "p=abc"],
        "top_p p must be a number in (0, 1], got 'abc'",
    ),
    ("generate alpha=abc", GEN + ["--sampler", "top_h", "--param", "alpha=abc"], "{'alpha': 'abc'}"),
    ("dashboard --port 0", ["dashboard", "--model", NO, "--port", "0"], "--port must be in 1..65535, got 0"),
    ("dashboard --port abc", ["dashboard", "--port", "abc"], "'--port' / '-p': Input should be a valid integer"),
    ("serve --port 0", ["serve", NO, "--port", "0"], "--port must be an integer in 1..65535, got 0"),
    *[
        (f"serve {o} 0", ["serve", NO, o, "0"], f"{o} must be an integer >= 1, got 0")
        for o in ("--max-prompt-tokens", "--max-new-tokens", "--max-concurrent")
    ],
    ("serve --queue-length 0", ["serve", NO, "--queue-length", "0"], "--queue-length must be an integer >= 1, got 0"),
    ("serve --timeout 0", ["serve", NO, "--timeout", "0"], "--timeout must be a number of seconds > 0, got 0.0"),
    ("compare --samples 1", CMP + ["--samples", "1"], "--samples must be an integer >= 2, got 1"),
    ("compare -n 0", CMP + ["-n", "0"], "--max-new-tokens must be an integer >= 1, got 0"),
    ("compare --n-prompts -1", CMP + ["--n-prompts", "-1"], "--n-prompts must be an integer >= 0, got -1"),
    ("compare --seed -1", CMP + ["--seed", "-1"], "--seed must be an integer in 0..4294967295, got -1"),
    ("compare --batch-size 0", CMP + ["--batch-size", "0"], "--batch-size must be an integer >= 1, got 0"),
    ("compare --temperatures abc", CMP + ["--temperatures", "1,abc"], "comma-separated numbers, got '1,abc'"),
    ("compare --temperatures 0", CMP + ["--temperatures", "1,0"], "finite numbers > 0, got '1,0'"),
    ("compare --samplers k=abc", CMP + ["--samplers", "top_k:k=abc"], "top_k k must be an integer >= 1, got 'abc'"),
    ("diagnose -n 0", DIAG + ["-n", "0"], "--max-new-tokens must be an integer >= 1, got 0"),
    ("diagnose --seed -1", DIAG + ["--seed", "-1"], "--seed must be an integer in 0..4294967295, got -1"),
    ("diagnose --top-p 0", DIAG + ["--top-p", "0"], "top_p p must be in (0, 1], got 0.0"),
    ("diagnose --top-p abc", DIAG + ["--top-p", "abc"], "'--top-p': Input should be a valid number"),
    ("diagnose --min-p 1.5", DIAG + ["--min-p", "1.5"], "min_p p must be in [0, 1], got 1.5"),
    ("diagnose k=abc", DIAG + ["--sampler", "top_k", "--param", "k=abc"], "top_k k must be an integer >= 1, got 'abc'"),
    ("image --permutations -5", IMG + ["--permutations", "-5"], "--permutations must be an integer >= 0, got -5"),
    ("image --limit -1", IMG + ["--limit", "-1"], "--limit must be an integer >= 0, got -1"),
    ("image --top 0", IMG + ["--top", "0"], "--top must be an integer >= 1, got 0"),
    ("evaluate --k 0", EVAL + ["--k", "0"], "--k must be an integer >= 1, got 0"),
    ("evaluate --controls 0", EVAL + ["--controls", "0"], "--controls must be an integer >= 1, got 0"),
    ("evaluate --candidates 0", EVAL + ["--candidates", "0"], "--candidates must be an integer >= 1, got 0"),
    (
        "evaluate --max-new-tokens 0",
        EVAL + ["--max-new-tokens", "0"],
        "--max-new-tokens must be an integer >= 1, got 0",
    ),
    ("evaluate --limit -1", EVAL + ["--limit", "-1"], "--limit must be an integer >= 0, got -1"),
    ("evaluate --seed -1", EVAL + ["--seed", "-1"], "--seed must be an integer in 0..4294967295, got -1"),
    ("build --threads 0", BUILD + ["--threads", "0"], "--threads must be an integer >= 1, got 0"),
    ("build --jobs 0", BUILD + ["--jobs", "0"], "--jobs must be an integer >= 1, got 0"),
    ("build --eval-limit 0", BUILD + ["--eval-limit", "0"], "--eval-limit must be an integer >= 1, got 0"),
    ("build --seed -1", BUILD + ["--seed", "-1"], "--seed must be an integer in 0..4294967295, got -1"),
    ("organisms eval --limit -3", OEVAL + ["--limit", "-3"], "--limit must be an integer >= 1, got -3"),
    # the analyses' commands (regions, security, preferences, steering)
    (
        "prefs annotate --seed -1",
        ["prefs", "annotate", NO, "--out", "{out}", "--seed", "-1"],
        "--seed must be an integer in 0..4294967295, got -1",
    ),
    (
        "prefs fit --chains -1",
        ["prefs", "fit", NO, "--out", "{out}", "--chains", "-1"],
        "--chains must be an integer >= 1, got -1",
    ),
    (
        "prefs fit --level -1",
        ["prefs", "fit", NO, "--out", "{out}", "--level", "-1"],
        "--level must be a number in (0, 0.999], got -1.0",
    ),
    (
        "prefs fit --min-pairs -1",
        ["prefs", "fit", NO, "--out", "{out}", "--min-pairs", "-1"],
        "--min-pairs must be an integer >= 1, got -1",
    ),
    (
        "prefs fit --prior-scale -1",
        ["prefs", "fit", NO, "--out", "{out}", "--prior-scale", "-1"],
        "--prior-scale must be a finite number > 0, got -1.0",
    ),
    (
        "prefs fit --samples -1",
        ["prefs", "fit", NO, "--out", "{out}", "--samples", "-1"],
        "--samples must be an integer >= 2, got -1",
    ),
    (
        "prefs fit --seed -1",
        ["prefs", "fit", NO, "--out", "{out}", "--seed", "-1"],
        "--seed must be an integer in 0..4294967295, got -1",
    ),
    (
        "prefs fit --warmup -1",
        ["prefs", "fit", NO, "--out", "{out}", "--warmup", "-1"],
        "--warmup must be an integer >= 1, got -1",
    ),
    (
        "prefs judge --max-prompt-tokens -1",
        ["prefs", "judge", NO, "--out", "{out}", "--judge", "x", "--max-prompt-tokens", "-1"],
        "--max-prompt-tokens must be an integer >= 1, got -1",
    ),
    (
        "prefs judge --seed -1",
        ["prefs", "judge", NO, "--out", "{out}", "--judge", "x", "--seed", "-1"],
        "--seed must be an integer in 0..4294967295, got -1",
    ),
    (
        "regions dims --candidates -1",
        ["regions", "dims", NO, "--out", "{out}", "--candidates", "-1"],
        "--candidates must be an integer >= 1, got -1",
    ),
    (
        "regions dims --n-eval -1",
        ["regions", "dims", NO, "--out", "{out}", "--n-eval", "-1"],
        "--n-eval must be an integer >= 1, got -1",
    ),
    (
        "regions dims --random -1",
        ["regions", "dims", NO, "--out", "{out}", "--random", "-1"],
        "--random must be an integer >= 1, got -1",
    ),
    (
        "regions dims --seed -1",
        ["regions", "dims", NO, "--out", "{out}", "--seed", "-1"],
        "--seed must be an integer in 0..4294967295, got -1",
    ),
    (
        "regions dims --value nan",
        ["regions", "dims", NO, "--out", "{out}", "--value", "nan"],
        "--value must be a finite number, got nan",
    ),
    (
        "regions find --fraction -1",
        ["regions", "find", NO, "--out", "{out}", "--fraction", "-1"],
        "--fraction must be a number in (0, 0.5], got -1.0",
    ),
    (
        "regions find --seeds -1",
        ["regions", "find", NO, "--out", "{out}", "--seeds", "-1"],
        "--seeds must be an integer >= 1, got -1",
    ),
    (
        "regions freeze-train --batch-size -1",
        ["regions", "freeze-train", NO, "--out", "{out}", "--batch-size", "-1"],
        "--batch-size must be an integer >= 1, got -1",
    ),
    (
        "regions freeze-train --eval-every -1",
        ["regions", "freeze-train", NO, "--out", "{out}", "--eval-every", "-1"],
        "--eval-every must be an integer >= 1, got -1",
    ),
    (
        "regions freeze-train --fraction -1",
        ["regions", "freeze-train", NO, "--out", "{out}", "--fraction", "-1"],
        "--fraction must be a number in (0, 0.5], got -1.0",
    ),
    (
        "regions freeze-train --lr -1",
        ["regions", "freeze-train", NO, "--out", "{out}", "--lr", "-1"],
        "--lr must be a finite number > 0, got -1.0",
    ),
    (
        "regions freeze-train --n-eval -1",
        ["regions", "freeze-train", NO, "--out", "{out}", "--n-eval", "-1"],
        "--n-eval must be an integer >= 1, got -1",
    ),
    (
        "regions freeze-train --random-seed -1",
        ["regions", "freeze-train", NO, "--out", "{out}", "--random-seed", "-1"],
        "--random-seed must be an integer in 0..4294967295, got -1",
    ),
    (
        "regions freeze-train --seed -1",
        ["regions", "freeze-train", NO, "--out", "{out}", "--seed", "-1"],
        "--seed must be an integer in 0..4294967295, got -1",
    ),
    (
        "regions freeze-train --steps -1",
        ["regions", "freeze-train", NO, "--out", "{out}", "--steps", "-1"],
        "--steps must be an integer >= 1, got -1",
    ),
    (
        "regions perturb --fraction -1",
        ["regions", "perturb", NO, "--out", "{out}", "--fraction", "-1"],
        "--fraction must be a number in (0, 0.5], got -1.0",
    ),
    (
        "regions perturb --n-eval -1",
        ["regions", "perturb", NO, "--out", "{out}", "--n-eval", "-1"],
        "--n-eval must be an integer >= 1, got -1",
    ),
    (
        "regions perturb --seed -1",
        ["regions", "perturb", NO, "--out", "{out}", "--seed", "-1"],
        "--seed must be an integer in 0..4294967295, got -1",
    ),
    (
        "regions perturb --value nan",
        ["regions", "perturb", NO, "--out", "{out}", "--value", "nan"],
        "--value must be a finite number, got nan",
    ),
    (
        "regions score --batch-size -1",
        ["regions", "score", NO, "--out", "{out}", "--batch-size", "-1"],
        "--batch-size must be an integer >= 1, got -1",
    ),
    (
        "regions score --budget -1",
        ["regions", "score", NO, "--out", "{out}", "--budget", "-1"],
        "--budget must be an integer >= 1, got -1",
    ),
    (
        "regions score --keep -1",
        ["regions", "score", NO, "--out", "{out}", "--keep", "-1"],
        "--keep must be a number in (0, 0.5], got -1.0",
    ),
    (
        "regions score --max-len -1",
        ["regions", "score", NO, "--out", "{out}", "--max-len", "-1"],
        "--max-len must be an integer >= 2, got -1",
    ),
    (
        "security evaluate --anchor-weight -1",
        ["security", "evaluate", NO, "--out", "{out}", "--anchor-weight", "-1"],
        "--anchor-weight must be a finite number >= 0, got -1.0",
    ),
    (
        "security evaluate --n-anchor 0",
        ["security", "evaluate", NO, "--out", "{out}", "--n-anchor", "0"],
        "--n-anchor must be an integer >= 1, got 0",
    ),
    (
        "security train-vector --anchor-weight nan",
        ["security", "train-vector", NO, "--out", "{out}", "--anchor-weight", "nan"],
        "--anchor-weight must be a finite number >= 0, got nan",
    ),
    (
        "security evaluate --grad-penalty inf",
        ["security", "evaluate", NO, "--out", "{out}", "--grad-penalty", "inf"],
        "--grad-penalty must be a finite number >= 0, got inf",
    ),
    (
        "security train-vector --grad-penalty -0.5",
        ["security", "train-vector", NO, "--out", "{out}", "--grad-penalty", "-0.5"],
        "--grad-penalty must be a finite number >= 0, got -0.5",
    ),
    (
        "security evaluate --grad-clip 0",
        ["security", "evaluate", NO, "--out", "{out}", "--grad-clip", "0"],
        "--grad-clip '0'; expected a finite number > 0, or none (no clipping)",
    ),
    (
        "security finetune --grad-clip abc",
        ["security", "finetune", NO, "--out", "{out}", "--grad-clip", "abc"],
        "--grad-clip 'abc'; expected a number > 0, or none (no clipping)",
    ),
    (
        "security train-vector --n-anchor 0",
        ["security", "train-vector", NO, "--out", "{out}", "--n-anchor", "0"],
        "--n-anchor must be an integer >= 1, got 0",
    ),
    (
        "security evaluate --alpha -1",
        ["security", "evaluate", NO, "--out", "{out}", "--alpha", "-1"],
        "--alpha must be a finite number > 0, got -1.0",
    ),
    (
        "security evaluate --benign-eval -1",
        ["security", "evaluate", NO, "--out", "{out}", "--benign-eval", "-1"],
        "--benign-eval must be an integer >= 1, got -1",
    ),
    (
        "security evaluate --epochs -1",
        ["security", "evaluate", NO, "--out", "{out}", "--epochs", "-1"],
        "--epochs must be an integer >= 1, got -1",
    ),
    (
        "security evaluate --harmless-eval -1",
        ["security", "evaluate", NO, "--out", "{out}", "--harmless-eval", "-1"],
        "--harmless-eval must be an integer >= 1, got -1",
    ),
    (
        "security evaluate --lr -1",
        ["security", "evaluate", NO, "--out", "{out}", "--lr", "-1"],
        "--lr must be a finite number > 0, got -1.0",
    ),
    (
        "security evaluate --max-new-tokens -1",
        ["security", "evaluate", NO, "--out", "{out}", "--max-new-tokens", "-1"],
        "--max-new-tokens must be an integer >= 1, got -1",
    ),
    (
        "security evaluate --n-benign -1",
        ["security", "evaluate", NO, "--out", "{out}", "--n-benign", "-1"],
        "--n-benign must be an integer >= 1, got -1",
    ),
    (
        "security evaluate --n-eval -1",
        ["security", "evaluate", NO, "--out", "{out}", "--n-eval", "-1"],
        "--n-eval must be an integer >= 1, got -1",
    ),
    (
        "security evaluate --n-vector -1",
        ["security", "evaluate", NO, "--out", "{out}", "--n-vector", "-1"],
        "--n-vector must be an integer >= 1, got -1",
    ),
    (
        "security evaluate --ppl-per-domain -1",
        ["security", "evaluate", NO, "--out", "{out}", "--ppl-per-domain", "-1"],
        "--ppl-per-domain must be an integer >= 1, got -1",
    ),
    (
        "security evaluate --rank -1",
        ["security", "evaluate", NO, "--out", "{out}", "--rank", "-1"],
        "--rank must be an integer >= 1, got -1",
    ),
    (
        "security evaluate --seed -1",
        ["security", "evaluate", NO, "--out", "{out}", "--seed", "-1"],
        "--seed must be an integer in 0..4294967295, got -1",
    ),
    (
        "security evaluate --vector-epochs -1",
        ["security", "evaluate", NO, "--out", "{out}", "--vector-epochs", "-1"],
        "--vector-epochs must be an integer >= 1, got -1",
    ),
    (
        "security evaluate --vector-lr -1",
        ["security", "evaluate", NO, "--out", "{out}", "--vector-lr", "-1"],
        "--vector-lr must be a finite number > 0, got -1.0",
    ),
    (
        "security finetune --batch-size -1",
        ["security", "finetune", NO, "--out", "{out}", "--batch-size", "-1"],
        "--batch-size must be an integer >= 1, got -1",
    ),
    (
        "security finetune --epochs -1",
        ["security", "finetune", NO, "--out", "{out}", "--epochs", "-1"],
        "--epochs must be an integer >= 1, got -1",
    ),
    (
        "security finetune --lr -1",
        ["security", "finetune", NO, "--out", "{out}", "--lr", "-1"],
        "--lr must be a finite number > 0, got -1.0",
    ),
    (
        "security finetune --n-benign -1",
        ["security", "finetune", NO, "--out", "{out}", "--n-benign", "-1"],
        "--n-benign must be an integer >= 0, got -1",
    ),
    (
        "security finetune --n-harmful -1",
        ["security", "finetune", NO, "--out", "{out}", "--n-harmful", "-1"],
        "--n-harmful must be an integer >= 0, got -1",
    ),
    (
        "security finetune --seed -1",
        ["security", "finetune", NO, "--out", "{out}", "--seed", "-1"],
        "--seed must be an integer in 0..4294967295, got -1",
    ),
    (
        "security finetune --skip -1",
        ["security", "finetune", NO, "--out", "{out}", "--skip", "-1"],
        "--skip must be an integer >= 0, got -1",
    ),
    (
        "security train-vector --alpha -1",
        ["security", "train-vector", NO, "--out", "{out}", "--alpha", "-1"],
        "--alpha must be a finite number > 0, got -1.0",
    ),
    (
        "security train-vector --batch-size -1",
        ["security", "train-vector", NO, "--out", "{out}", "--batch-size", "-1"],
        "--batch-size must be an integer >= 1, got -1",
    ),
    (
        "security train-vector --epochs -1",
        ["security", "train-vector", NO, "--out", "{out}", "--epochs", "-1"],
        "--epochs must be an integer >= 1, got -1",
    ),
    (
        "security train-vector --lr -1",
        ["security", "train-vector", NO, "--out", "{out}", "--lr", "-1"],
        "--lr must be a finite number > 0, got -1.0",
    ),
    (
        "security train-vector --n -1",
        ["security", "train-vector", NO, "--out", "{out}", "--n", "-1"],
        "--n must be an integer >= 1, got -1",
    ),
    (
        "security train-vector --rank -1",
        ["security", "train-vector", NO, "--out", "{out}", "--rank", "-1"],
        "--rank must be an integer >= 1, got -1",
    ),
    (
        "security train-vector --seed -1",
        ["security", "train-vector", NO, "--out", "{out}", "--seed", "-1"],
        "--seed must be an integer in 0..4294967295, got -1",
    ),
    (
        "steer extract --limit -1",
        ["steer", "extract", "--out", "{out}", "--limit", "-1"],
        "--limit must be an integer >= 0, got -1",
    ),
    (
        "steer extract --name ../x",
        ["steer", "extract", "--out", "{out}", "--name", "../x"],
        "--name '../x' is not a file name; expected the name of a file beside the others in the directions folder",
    ),
    (
        "steer probe --limit -1",
        ["steer", "probe", "--out", "{out}", "--limit", "-1"],
        "--limit must be an integer >= 0, got -1",
    ),
    (
        "steer probe --seed -1",
        ["steer", "probe", "--out", "{out}", "--seed", "-1"],
        "--seed must be an integer in 0..4294967295, got -1",
    ),
    (
        "steer refusal --controls -1",
        ["steer", "refusal", "--out", "{out}", "--controls", "-1"],
        "--controls must be an integer >= 1, got -1",
    ),
    (
        "steer refusal --limit -1",
        ["steer", "refusal", "--out", "{out}", "--limit", "-1"],
        "--limit must be an integer >= 0, got -1",
    ),
    (
        "steer refusal --max-new-tokens -1",
        ["steer", "refusal", "--out", "{out}", "--max-new-tokens", "-1"],
        "--max-new-tokens must be an integer >= 1, got -1",
    ),
    (
        "steer refusal --max-rank -1",
        ["steer", "refusal", "--out", "{out}", "--max-rank", "-1"],
        "--max-rank must be an integer >= 1, got -1",
    ),
    (
        "steer refusal --n-test -1",
        ["steer", "refusal", "--out", "{out}", "--n-test", "-1"],
        "--n-test must be an integer >= 0, got -1",
    ),
    (
        "steer refusal --pool -1",
        ["steer", "refusal", "--out", "{out}", "--pool", "-1"],
        "--pool must be an integer >= 1, got -1",
    ),
    (
        "steer refusal --positions -1",
        ["steer", "refusal", "--out", "{out}", "--positions", "-1"],
        "--positions must be an integer >= 1, got -1",
    ),
    (
        "steer refusal --seed -1",
        ["steer", "refusal", "--out", "{out}", "--seed", "-1"],
        "--seed must be an integer in 0..4294967295, got -1",
    ),
    (
        "steer refusal --select -1",
        ["steer", "refusal", "--out", "{out}", "--select", "-1"],
        "--select must be an integer >= 1, got -1",
    ),
    (
        "steer refusal --select-tokens -1",
        ["steer", "refusal", "--out", "{out}", "--select-tokens", "-1"],
        "--select-tokens must be an integer >= 1, got -1",
    ),
    (
        "steer sentiment --max-new-tokens -1",
        ["steer", "sentiment", "--site", "x", "--out", "{out}", "--max-new-tokens", "-1"],
        "--max-new-tokens must be an integer >= 1, got -1",
    ),
    (
        "steer sweep --max-new-tokens -1",
        ["steer", "sweep", "--direction", "x", "--out", "{out}", "--max-new-tokens", "-1"],
        "--max-new-tokens must be an integer >= 1, got -1",
    ),
    (
        "steer sweep --n -1",
        ["steer", "sweep", "--direction", "x", "--out", "{out}", "--n", "-1"],
        "--n must be an integer >= 1, got -1",
    ),
    (
        "regions freeze-train --lr nan",
        ["regions", "freeze-train", NO, "--out", "{out}", "--lr", "nan"],
        "--lr must be a finite number > 0, got nan",
    ),
    (
        "prefs fit --level 1",
        ["prefs", "fit", NO, "--out", "{out}", "--level", "1"],
        "--level must be a number in (0, 0.999], got 1.0",
    ),
    (
        "security train-vector --alpha inf",
        ["security", "train-vector", NO, "--out", "{out}", "--alpha", "inf"],
        "--alpha must be a finite number > 0, got inf",
    ),
    # spec files beside the command: checked before the model loads too
    ("spec scale key", GEN + ["-i", "{specs}/scale_keys.json"], "scale.a.[key]: Input should be a valid integer"),
    ("spec NaN", GEN + ["-i", "{specs}/nan.json"], "NaN"),
    ("spec corrupt safetensors", GEN + ["-i", "{specs}/corrupt.json"], "corrupt.safetensors"),
    pytest.param(
        "spec mask not a list",
        GEN + ["-i", "{specs}/mask.json"],
        "mask",
        id="spec mask not a list",
    ),
    # needs the model: the prompt's length decides
    pytest.param(
        "spec positions beyond the prompt",
        ["generate", "shared:stories260K", "-p", "Hi", "-n", "2", "-i", "{specs}/positions.json"],
        "100",
        id="spec positions beyond the prompt",
    ),
]


CASES = [c if isinstance(c, type(CASES[-1])) else pytest.param(*c, id=c[0]) for c in CASES]


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    ("case", "argv", "expected"), CASES, ids=[c[0] if isinstance(c, tuple) else c.id for c in CASES]
)
def test_bad_value_is_one_line_exit_2_nothing_written(tmp_path, case, argv, expected):
    (tmp_path / "specs").mkdir()
    _spec_files(tmp_path / "specs")
    before = _tree(tmp_path)
    argv = [a.format(out=tmp_path / "out", specs=tmp_path / "specs") for a in argv]
    t0 = time.perf_counter()
    r = runner.invoke(app, argv)
    elapsed = time.perf_counter() - t0
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    assert isinstance(r.exception, SystemExit)  # not an exception escaping the command
    assert "Traceback" not in r.output
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0] == r.stderr.rstrip("\n").splitlines()[-1], r.stderr
    assert expected in errors[0], errors[0]
    assert r.stdout == ""
    assert not (tmp_path / "out").exists() and _tree(tmp_path) == before
    if NO in argv:  # checked before the model: its own error never shows, and no model time is spent
        assert "does not exist" not in errors[0]
        assert elapsed < 1.0, f"{case}: {elapsed:.2f} s"


def _numeric_options() -> set[tuple[str, str]]:
    """(command path, longest option name) of every int/float option of every command."""
    found = set()

    def walk(cmd, path: str) -> None:
        if getattr(cmd, "commands", None):
            for name, sub in cmd.commands.items():
                walk(sub, f"{path} {name}".strip())
            return
        hints = typing.get_type_hints(cmd.callback)
        for p in cmd.params:
            hint = hints.get(p.name)
            if p.opts[0].startswith("-") and set(typing.get_args(hint) or (hint,)) - {type(None)} <= {int, float}:
                found.add((path, max(p.opts, key=len)))

    walk(get_command(app), "")
    return found


def test_every_numeric_option_has_a_row():
    assert ("experts image", "--permutations") in _numeric_options()  # the walk sees options at all
    covered = set()
    for c in CASES:
        argv = c.values[1]
        path = argv[0] if argv[0] in ("generate", "dashboard", "serve") else " ".join(argv[:2])
        covered |= {(path, "--max-new-tokens" if a == "-n" else a) for a in argv if a.startswith("-")}
    missing = _numeric_options() - covered
    assert not missing, f"numeric options without a bad-value row: {sorted(missing)}"


def test_console_script_prints_one_line_without_traceback(tmp_path):
    """The installed entry point, not only the test runner: stderr is exactly the one line."""
    argv = ["experts", "image", NO, "--permutations", "-5", "--out", str(tmp_path / "out")]
    cmd = [sys.executable, "-c", "from steerlab.cli.main import main; main()", *argv]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr == "error: --permutations must be an integer >= 0, got -5\n" and p.stdout == ""
    assert not (tmp_path / "out").exists()


# -- the library functions behind the options check the same values themselves --------------------


def _counts(sel: list[list[float]], tokens: list[float]) -> RoutingCounts:
    s = torch.tensor(sel).view(len(sel), 1, -1)
    return RoutingCounts(s, s.clone(), torch.tensor(tokens), None)


def test_permutation_count_is_checked_by_the_statistics():
    a, b = _counts([[1, 0], [1, 0]], [1, 1]), _counts([[0, 1], [0, 1]], [1, 1])
    with pytest.raises(SpecError, match="n_permutations must be an integer >= 0, got -5"):
        permutation_pvalues(a, b, -5)  # was (1 + 0) / (1 - 5) = -0.25
    with pytest.raises(SpecError, match="n_permutations must be an integer >= 0, got 2.5"):
        permutation_pvalues(a, b, 2.5)
    assert permutation_pvalues(a, b, 0).tolist() == [[1.0, 1.0]]  # none: (1 + 0) / (1 + 0)


def test_image_checks_permutations_and_limit_before_routing(stories):
    # stories260K has no experts: routing would fail with "no routed experts"; the count is checked first
    with pytest.raises(SpecError, match="n_permutations must be an integer >= 0, got -1"):
        image(stories, ["a"], ["b"], n_permutations=-1)
    with pytest.raises(SpecError, match="limit must be an integer >= 1 or None, got -2"):
        image_suite(stories, "refusal", limit=-2)  # was: the last two prompts dropped


def test_evaluate_checks_limit_and_candidates(tiny):
    h = tiny("mixtral")
    with pytest.raises(SpecError, match="limit must be an integer >= 1 or None, got -1"):
        steerlab.experts.evaluate.evaluate_experts(h, "refusal", k=1, limit=-1)
    with pytest.raises(SpecError, match="n_candidates must be an integer >= 1, got 0"):
        steerlab.experts.evaluate.evaluate_experts(h, "refusal", k=1, n_candidates=0)


def test_organism_build_checks_threads_before_writing(tmp_path):
    with pytest.raises(SpecError, match="threads must be an integer >= 1 or None, got 0"):
        steerlab.organisms.build.build_organism("moe", out_dir=tmp_path / "o", threads=0, reduced=True)
    assert not (tmp_path / "o").exists() and torch.get_num_threads() >= 1
    with pytest.raises(SpecError, match="limit must be an integer >= 1 or None, got -1"):
        steerlab.organisms.evaluate.eval_prompts(None, limit=-1)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("top_k", {"k": "abc"}, "top_k k must be an integer >= 1, got 'abc'"),
        ("top_k", {"k": float("inf")}, "top_k k must be an integer >= 1, got inf"),
        ("top_k", {"k": True}, "top_k k must be an integer >= 1, got True"),
        ("top_p", {"temperature": "abc"}, "temperature must be a finite number > 0 when sampling, got 'abc'"),
        ("min_p", {"p": [0.1]}, r"min_p p must be a number in \[0, 1\], got \[0.1\]"),
        ("top_h", {"alpha": "abc"}, r"bad parameters \{'alpha': 'abc'\} for sampler 'top_h'"),
    ],
)
def test_sampler_parameters_that_are_not_numbers(name, params, message):
    with pytest.raises(SpecError, match=message):
        make_sampler(name, **params)


def test_sampler_numbers_still_accepted():
    assert make_sampler("top_k", k=3.0, temperature=2).params() == {"k": 3, "temperature": 2.0}


def test_one_place_maps_errors_for_any_command():
    """A command with no error handling of its own still exits 2 with one line (the group does it)."""
    from steerlab.cli.common import typer_app

    t = typer_app("t")

    @t.command("boom")
    def boom(n: int = 1) -> None:
        raise SpecError(f"n={n} is bad;\n expected something else")

    @t.command("other")
    def other() -> None:
        raise RuntimeError("a bug, not bad input")

    r = runner.invoke(t, ["boom", "--n", "7"])
    assert r.exit_code == 2 and r.stderr == "error: n=7 is bad; expected something else\n"
    r = runner.invoke(t, ["other"])  # real bugs are not disguised as input errors
    assert r.exit_code == 1 and isinstance(r.exception, RuntimeError)


# -- output paths: every --out / --record / --work is checked while parsing, before any work -------------

_NOT_CHECKED = {("steer import-gguf", "--out")}  # a prefix (PATH.json + PATH.safetensors), not a path itself


def _output_options() -> dict[tuple[str, str], tuple[list[str], bool]]:
    """(command path, option) -> (argv with every other required parameter filled, whether a folder is
    expected), for every output-path option of every command."""
    found: dict[tuple[str, str], tuple[list[str], bool]] = {}

    def walk(cmd, path: str) -> None:
        if getattr(cmd, "commands", None):
            for name, sub in cmd.commands.items():
                walk(sub, f"{path} {name}".strip())
            return
        for p in cmd.params:
            opt = max(p.opts, key=len)
            if p.name not in ("out", "record", "work") or (path, opt) in _NOT_CHECKED:
                continue
            argv = path.split()
            for q in cmd.params:
                if q.required and q is not p and q.name != "out":
                    argv += [NO] if q.param_type_name == "argument" else [max(q.opts, key=len), "x"]
            folder = p.name != "record" and "GGUF" not in (p.help or "")
            found[(path, opt)] = (argv, folder)

    walk(get_command(app), "")
    return found


OUTPUT_OPTIONS = _output_options()
assert ("security evaluate", "--work") in OUTPUT_OPTIONS and len(OUTPUT_OPTIONS) > 20  # the walk sees them at all


@pytest.mark.parametrize("key", sorted(OUTPUT_OPTIONS), ids=[" ".join(k) for k in sorted(OUTPUT_OPTIONS)])
def test_an_output_path_that_cannot_be_written_is_one_line_exit_2(tmp_path, key):
    """Under an existing file, or on a file where a folder goes (a folder where a file goes): one line naming
    the path, exit status 2, before any model loads, and the user's file untouched (not moved, not replaced)."""
    path, opt = key
    argv, folder = OUTPUT_OPTIONS[key]
    mine = tmp_path / "mine.txt"
    mine.write_text("the user's file")
    other = tmp_path / "out"  # the command's own --out when the option under test is another one
    cases = [(mine / "x", f"{mine} is a file; expected a folder there to write {mine / 'x'}")]
    if folder:
        cases.append((mine, f"{mine} is a file; expected a folder (or nothing) there"))
    else:
        cases.append((tmp_path, f"{tmp_path} is a folder; expected a file (or nothing) there"))
    for value, expected in cases:
        extra = [] if opt == "--out" else ["--out", str(other)]
        t0 = time.perf_counter()
        r = runner.invoke(app, [*argv, *extra, opt, str(value)])
        elapsed = time.perf_counter() - t0
        assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
        errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
        assert errors == r.stderr.splitlines() and len(errors) == 1, r.stderr
        assert errors[0] == f"error: {opt} {value}: {expected}", errors[0]
        assert elapsed < 1.0, f"{path} {opt}: {elapsed:.2f} s"
        assert mine.read_text() == "the user's file" and sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]
