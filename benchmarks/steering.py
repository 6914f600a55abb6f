"""Steering against the `steering-vectors` package, on the same model and vector, in its own virtualenv.

steering-vectors pins transformers < 5, so it never enters steerlab's environment: this script builds a
virtualenv (default ``/tmp/sv``: its own transformers 4.57, huggingface_hub and tokenizers, plus a read-only
``.pth`` onto steerlab's site-packages for torch and numpy; nothing is installed into steerlab's venv) and
runs a worker there that answers over a pipe. Both sides load the same HF folder (default the shared
``stories260K``).

1. **Interchange** (also with repeng: its ``ControlVector`` trained, exported with its own ``export_gguf``,
   read by :func:`steerlab.steering.interchange.import_gguf`, its ``ControlModel`` logits reproduced within
   ``1e-4``): the worker trains a steering vector with ``steering_vectors.train_steering_vector``
   (mean of paired differences at one decoder layer) and returns it with its own steered logits
   (``SteeringVector.apply(model, multiplier=M)``); steerlab imports the vector
   (:func:`steerlab.steering.interchange.from_layer_vectors`) and reproduces those logits with
   ``sl.forward`` within ``1e-4`` (real positions of a left-padded batch).
2. **Throughput**: greedy generation of ``--tokens`` tokens at batch 1 and 8 with the vector added at every
   position, steering-vectors (HF ``generate`` inside ``apply``) and steerlab (``sl.generate``) interleaved
   round by round after a warm-up (who goes first alternates); both sides must produce the same token ids
   and texts (asserted). Each side's time is its whole steered call from prompts to texts (steerlab:
   ``sl.generate``, which tokenizes, compiles the plan and decodes; steering-vectors: the tokenizer, ``apply``
   around HF ``generate``, ``batch_decode``). Reported as the median (min-max)
   of per-round ratios steerlab / steering-vectors in wall time and in the calling thread's CPU time (both
   sides run one torch thread), and the best-of-rounds wall ratio (fastest round of each side). Floor ("no
   slower"): the median CPU-time ratio <= 1.0 and the best-of-rounds wall ratio <= 1.0. On a shared machine the
   per-round wall ratios swing with other processes (0.38-1.26 in the SmolLM2 record), which neither side's work
   explains; the CPU time of the single thread doing the work and each side's fastest round do not; the median wall
   ratio is reported beside them.
3. **Extraction time per 1,000 prompts** (``--extract-rounds`` rounds per side, the order alternating; the
   token count both sides consumed asserted equal): ``extract_directions`` (diff-in-means at every ``resid_post``) on
   1,000 prompts of the ``organism-refusal`` suite (500 per label), against steering-vectors'
   ``train_steering_vector`` on the same 500 pairs at every layer, given the very texts steerlab's side runs
   (the suite asks for the chat template, so on a model that has one both sides get the templated text; the
   record's ``chat_template`` says the suite asked, ``tokens_per_prompt_mean`` what the texts came to).

Both sides generate under ``torch.inference_mode`` (steerlab's engine does; so does the worker), neither stops
at EOS and neither runs a logits processor the other does not.

Exit status 1 when the logits differ by more than 1e-4, the ids or the extraction's tokens differ, or the floor
fails.

Usage: python benchmarks/steering.py [--venv /tmp/sv] [--model PATH] [--rounds N] [--tokens N] [--json PATH|-]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from steerlab.atomic import atomic_write_text

PROMPTS = ["Once upon a time, there was a little girl who", "The old man walked slowly to the",
           "Tom and his dog went to the park and", "Lily found a shiny red ball under the",
           "One day, a big bear", "The sun was hot and the", "Sam had a red", "Mom said"]
PAIRS = [("I love the happy sun", "I hate the sad rain"), ("The dog was very kind", "The dog was very mean"),
         ("She smiled and laughed", "She cried and shouted"), ("It was a wonderful day", "It was a terrible day"),
         ("The cake was sweet and good", "The cake was bitter and bad"), ("He was glad", "He was angry")]
LAYER, MULTIPLIER = 2, 4.0
SV_PACKAGES = ["steering-vectors==0.12.2", "repeng==0.4.0", "transformers==4.57.*", "huggingface_hub<1.0",
               "tokenizers<0.23,>=0.22", "numpy==1.26.*"]

WORKER = r'''
import json, sys, time, torch
torch.set_num_threads(1)
from transformers import AutoModelForCausalLM, AutoTokenizer
from steering_vectors import SteeringVector, train_steering_vector
path, layer, mult = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
tok = AutoTokenizer.from_pretrained(path, extra_special_tokens={}); tok.padding_side = "left"  # a v5 config
if tok.pad_token is None: tok.pad_token = tok.eos_token
model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()
sv = None
def reply(obj): sys.stdout.write(json.dumps(obj) + "\n"); sys.stdout.flush()
for line in sys.stdin:
    cmd = json.loads(line)
    if cmd["op"] == "train":
        t0 = time.perf_counter()
        out = train_steering_vector(model, tok, [tuple(p) for p in cmd["pairs"]], layers=cmd.get("layers"),
                                    read_token_index=-1, show_progress=False, batch_size=cmd.get("batch_size", 1))
        secs = time.perf_counter() - t0
        if cmd.get("keep", True): sv = out
        n_tokens = sum(len(tok(a)["input_ids"]) + len(tok(b)["input_ids"]) for a, b in cmd["pairs"])
        reply({"seconds": secs, "n_tokens": n_tokens,
               "layers": {str(k): v.tolist() for k, v in out.layer_activations.items()}})
    elif cmd["op"] == "logits":  # token ids come from steerlab's side: both models see the same input
        enc = {k: torch.tensor(cmd[k]) for k in ("input_ids", "attention_mask")}
        pos = (enc["attention_mask"].cumsum(-1) - 1).masked_fill(enc["attention_mask"] == 0, 1)
        with torch.no_grad(), sv.apply(model, multiplier=mult):
            logits = model(**enc, position_ids=pos).logits
        reply({"logits": logits.tolist()})
    elif cmd["op"] == "repeng":  # repeng trains (PCA of paired differences), exports GGUF, steers
        from repeng import ControlModel, ControlVector, DatasetEntry
        cm = ControlModel(model, list(range(1, model.config.num_hidden_layers)))
        v = ControlVector.train(cm, tok, [DatasetEntry(positive=a, negative=b) for a, b in cmd["pairs"]],
                                method="pca_diff")
        v.export_gguf(cmd["gguf"])
        cm.set_control(v, cmd["coeff"])
        enc = {k: torch.tensor(cmd[k]) for k in ("input_ids", "attention_mask")}
        with torch.no_grad():
            logits = cm(**enc).logits
        cm.reset()
        cm.unwrap()
        reply({"logits": logits.tolist()})
    elif cmd["op"] == "generate":  # prompts in, texts out: tokenizing, applying and decoding timed
        n = cmd["tokens"]
        t0, c0 = time.perf_counter(), time.thread_time()
        enc = tok(cmd["prompts"], return_tensors="pt", padding=True)
        # inference mode, as steerlab's engine generates; no EOS (steerlab's side: stop_at_eos=False), so both
        # make exactly n tokens without an extra logits processor on either side
        with torch.inference_mode(), sv.apply(model, multiplier=mult):
            out = model.generate(**enc, max_new_tokens=n, do_sample=False, eos_token_id=None,
                                 pad_token_id=tok.pad_token_id)
        new = out[:, enc["input_ids"].shape[1]:]
        texts = tok.batch_decode(new, skip_special_tokens=True)
        secs, cpu = time.perf_counter() - t0, time.thread_time() - c0
        reply({"seconds": secs, "cpu_seconds": cpu, "ids": new.tolist(), "texts": texts})
'''


def ensure_venv(venv: Path) -> Path:
    """The steering-vectors virtualenv: built on first use, never touching steerlab's own environment."""
    py = venv / "bin" / "python"
    if py.exists() and subprocess.run([str(py), "-c", "import steering_vectors, repeng, transformers"],
                                      capture_output=True).returncode == 0:
        return py
    subprocess.run([str(Path(sys.base_prefix) / "bin" / "python3"), "-m", "venv", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    main_site = next(p for p in map(Path, sys.path) if p.name == "site-packages" and (p / "torch").exists())
    (site / "zz_steerlab_site_readonly.pth").write_text(str(main_site) + "\n")  # torch, numpy: read only
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-deps", *SV_PACKAGES], check=True)
    return py


class Worker:
    def __init__(self, py: Path, model: str) -> None:
        self.proc = subprocess.Popen([str(py), "-c", WORKER, model, str(LAYER), str(MULTIPLIER)], text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

    def ask(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the steering-vectors worker died (run it by hand to see why)")
        return json.loads(line)

    def close(self) -> None:
        self.proc.terminate()


def hf_folder(h: Any, spec: str) -> str:
    """A plain HF folder (float32 safetensors + tokenizer) of a loaded model spec, for the other virtualenv:
    written once under /tmp (a GGUF spec is dequantized on load; both sides then run the same weights)."""
    import re

    out = Path("/tmp") / ("steerlab-bench-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", spec))
    if not (out / "config.json").exists():
        import copy

        from transformers import AutoModelForCausalLM

        tmp = out.with_name(out.name + ".part")
        cfg = copy.deepcopy(h.model.config)
        if hasattr(cfg, "quantization_config"):  # a dequantized GGUF: plain float32 weights from here on
            del cfg.quantization_config
        plain = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        plain.load_state_dict(h.model.state_dict())
        plain.save_pretrained(tmp)
        h.tokenizer.save_pretrained(tmp)
        conf = json.loads((tmp / "config.json").read_text())
        rope = conf.get("rope_parameters") or {}
        if "rope_theta" in rope:  # transformers 4.x (the other side) reads the top-level key, else uses 10,000
            conf["rope_theta"] = rope["rope_theta"]
            (tmp / "config.json").write_text(json.dumps(conf, indent=2))
        tmp.rename(out)
    return str(out)


def _spread(xs: list[float]) -> dict[str, float]:
    return {"min": round(min(xs), 4), "median": round(statistics.median(xs), 4), "max": round(max(xs), 4)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--venv", default="/tmp/sv")
    ap.add_argument("--model", default=None, help="HF model folder or any steerlab model spec, e.g. "
                    "shared:SmolLM2-135M-Instruct-Q4_1-gguf (saved once as an HF folder under /tmp for the other "
                    "side; default: the shared stories260K)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--extract", type=int, default=1000, help="prompts for the extraction timing (0: skip)")
    ap.add_argument("--extract-rounds", type=int, default=3, help="extraction rounds per side (order alternates)")
    ap.add_argument("--json", nargs="?", const="-", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    import steerlab as sl
    from steerlab._paths import shared_dir
    from steerlab.steering.extract import extract_directions
    from steerlab.steering.interchange import as_interventions, from_layer_vectors
    from steerlab.suites import load_suite

    model = args.model or str(shared_dir() / "models" / "stories260K")
    py = ensure_venv(Path(args.venv))
    h = sl.load(model)
    folder = model if Path(model).is_dir() else hf_folder(h, model)
    w = Worker(py, folder)
    report: dict[str, Any] = {"command": shlex.join(["python", *sys.argv]),
                              "model": model, "hf_folder": folder, "layer": LAYER, "multiplier": MULTIPLIER,
                              "tokens": args.tokens, "rounds": args.rounds, "packages": SV_PACKAGES, "failures": []}
    try:
        # 1. interchange: their vector, their logits, reproduced here
        trained = w.ask(op="train", pairs=PAIRS, layers=[LAYER])
        d = from_layer_vectors({int(k): torch.tensor(v) for k, v in trained["layers"].items()},
                               {"source": "steering-vectors train_steering_vector"})
        enc = h.encode(PROMPTS)
        ids = {k: enc[k].tolist() for k in ("input_ids", "attention_mask")}
        t_logits = torch.tensor(w.ask(op="logits", **ids)["logits"])
        mask = enc["attention_mask"].bool()
        ours = sl.forward(h, dict(enc), interventions=as_interventions(d, MULTIPLIER))
        err = float((ours - t_logits).abs()[mask].max())
        effect = float((sl.forward(h, dict(enc)) - t_logits).abs()[mask].max())
        report["interchange"] = {"max_abs_logit_diff": err, "tolerance": 1e-4, "steering_effect": effect,
                                 "site": d.sites[0], "passed": err <= 1e-4 and effect > 1e-2}
        if not report["interchange"]["passed"]:
            report["failures"].append(f"logits differ by {err:.3g} (effect {effect:.3g})")
        # 1b. repeng: its control vector through its own GGUF export, its steered logits reproduced here
        import tempfile

        from steerlab.steering.interchange import import_gguf

        one = h.encode(PROMPTS[:1])  # one prompt, no padding (repeng masks the positions before position 0)
        with tempfile.TemporaryDirectory() as tmp:
            gguf = str(Path(tmp) / "repeng.gguf")
            rp = w.ask(op="repeng", pairs=PAIRS, gguf=gguf, coeff=2.0,
                       **{k: one[k].tolist() for k in ("input_ids", "attention_mask")})
            rd = import_gguf(gguf)
        r_theirs = torch.tensor(rp["logits"])
        r_ours = sl.forward(h, dict(one), interventions=as_interventions(rd, 2.0))
        r_err = float((r_ours - r_theirs).abs().max())
        r_eff = float((sl.forward(h, dict(one)) - r_theirs).abs().max())
        report["repeng_interchange"] = {"max_abs_logit_diff": r_err, "tolerance": 1e-4, "steering_effect": r_eff,
                                        "sites": rd.sites, "coeff": 2.0, "passed": r_err <= 1e-4 and r_eff > 1e-2}
        if not report["repeng_interchange"]["passed"]:
            report["failures"].append(f"repeng logits differ by {r_err:.3g} (effect {r_eff:.3g})")
        # 2. throughput, interleaved rounds after a warm-up, same ids asserted
        ivs = as_interventions(d, MULTIPLIER)
        for batch in (1, 8):
            prompts = PROMPTS[:batch]

            def ours_gen(prompts: list[str] = prompts) -> tuple[float, float, list[list[int]], list[str]]:
                t0, c0 = time.perf_counter(), time.thread_time()
                out = sl.generate(h, prompts, interventions=ivs, max_new_tokens=args.tokens, stop_at_eos=False)
                return time.perf_counter() - t0, time.thread_time() - c0, out.token_ids, out.texts

            ours_gen()
            w.ask(op="generate", tokens=args.tokens, prompts=prompts)
            ratios, cpu_ratios, ts, tt = [], [], [], []
            for i in range(args.rounds):
                if i % 2 == 0:  # alternate who goes first
                    r = w.ask(op="generate", tokens=args.tokens, prompts=prompts)
                    s, c, new_ids, texts = ours_gen()
                else:
                    s, c, new_ids, texts = ours_gen()
                    r = w.ask(op="generate", tokens=args.tokens, prompts=prompts)
                if [list(map(int, x)) for x in new_ids] != r["ids"] or texts != r["texts"]:
                    report["failures"].append(f"batch {batch}: different token ids or texts")
                ratios.append(s / r["seconds"])
                cpu_ratios.append(c / r["cpu_seconds"])
                ts.append(s)
                tt.append(r["seconds"])
            cpu_med, best = statistics.median(cpu_ratios), min(ts) / min(tt)
            report[f"generate_batch{batch}"] = {"ratio": _spread(ratios), "cpu_time_ratio": _spread(cpu_ratios),
                                                "best_of_rounds_ratio": round(best, 4),
                                                "steerlab_s": _spread(ts), "steering_vectors_s": _spread(tt),
                                                "floor": 1.0}
            if cpu_med > 1.0 or best > 1.0:
                report["failures"].append(f"batch {batch}: steerlab/steering-vectors CPU time {cpu_med:.3f} (median), "
                                          f"wall {best:.3f} (best of rounds); floor 1.0 on both")
        # 3. extraction time per 1,000 prompts
        if args.extract:
            s = load_suite("organism-refusal")
            # the very texts steerlab's side runs (through the chat template when the suite asks and the model
            # has one): both sides see the same tokens
            pos, neg = (s.model_inputs(h, label, "train")[: args.extract // 2] for label in (s.behavior, s.control))
            users = [t for label in (s.behavior, s.control) for t in s.user_texts(label, "train")[: args.extract // 2]]
            ours_tokens = int(h.encode(users, **s.chat_kwargs())["attention_mask"].sum())

            def ours_extract() -> float:
                t0 = time.perf_counter()
                extract_directions(h, s, "resid_post", limit=args.extract // 2, batch_size=32)
                return time.perf_counter() - t0

            def theirs_extract() -> float:
                r = w.ask(op="train", pairs=list(zip(pos, neg, strict=True)), layers=None, keep=False, batch_size=32)
                if r["n_tokens"] != ours_tokens:  # the same texts to the token on both sides
                    report["failures"].append(f"extraction: steering-vectors saw {r['n_tokens']} tokens, steerlab "
                                              f"{ours_tokens}")
                return r["seconds"]

            ours_t, theirs_t = [], []
            for i in range(args.extract_rounds):
                if i % 2 == 0:
                    ours_t.append(ours_extract())
                    theirs_t.append(theirs_extract())
                else:
                    theirs_t.append(theirs_extract())
                    ours_t.append(ours_extract())
            n = len(pos) + len(neg)
            report["extraction"] = {"prompts": n, "rounds": args.extract_rounds, "tokens": ours_tokens,
                                    "steerlab_s_per_1000": _spread([t * 1000 / n for t in ours_t]),
                                    "steering_vectors_s_per_1000": _spread([t * 1000 / n for t in theirs_t]),
                                    "ratio": _spread([a / b for a, b in zip(ours_t, theirs_t, strict=True)]),
                                    "sites": "every resid_post / every decoder layer",
                                    "tokens_per_prompt_mean": round(ours_tokens / n, 1),
                                    "chat_template": bool(s.chat)}
    finally:
        w.close()
    report["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    if args.json == "-":
        print(json.dumps(report, indent=2))
    else:
        if args.json:
            atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
        print(json.dumps({k: v for k, v in report.items() if k not in ("packages",)}, indent=1))
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
