"""``steerlab security`` end to end at small scale on the committed dense organism: train-vector, finetune
(the result loads as a normal model spec), evaluate (the sweep artifact), the Security page on it, and bad
input refused with one line and nothing written."""

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import pytest
import torch
from streamlit.testing.v1 import AppTest
from typer.testing import CliRunner

import steerlab as sl
from steerlab.artifacts import read_artifact
from steerlab.cli.main import app
from steerlab.security.data import benign_pairs, harmful_pool
from steerlab.security.vectors import load_vector

runner = CliRunner()
APP = str(Path(__file__).resolve().parents[2] / "dashboards" / "app.py")
MODEL = "organism:dense"
SMALL = [
    "--n-eval",
    "2",
    "--benign-eval",
    "2",
    "--harmless-eval",
    "2",
    "--ppl-per-domain",
    "1",
    "--max-new-tokens",
    "8",
]
# the sweep's small configuration, shared by the first run and the resumed one
EVAL_SMALL = ["security", "evaluate", MODEL, "--samples", "4", "--n-vector", "4", "--n-benign", "4"]
EVAL_SMALL += ["--vector-epochs", "1", "--rank", "2", "--skill", "reverse", "--target-modules", "q_proj,v_proj", *SMALL]


def _ok(args):
    r = runner.invoke(app, args)
    assert r.exit_code == 0, (r.output, r.exception)
    return json.loads(r.stdout)


def _one_line_exit_2(args, expected):
    r = runner.invoke(app, args)
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]  # (model loading may log progress)
    assert "Traceback" not in r.output and len(errors) == 1 and expected in errors[0], r.stderr


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    vec = _ok(
        [
            "security",
            "train-vector",
            MODEL,
            "--n",
            "8",
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--rank",
            "2",
            "--out",
            str(root / "vec"),
            "--json",
        ]
    )
    ft = _ok(
        [
            "security",
            "finetune",
            MODEL,
            "--n-harmful",
            "4",
            "--n-benign",
            "4",
            "--batch-size",
            "4",
            "--vector",
            str(root / "vec"),
            "--out",
            str(root / "ft"),
            "--json",
        ]
    )
    sweep = _ok(
        [
            *EVAL_SMALL,
            "--out",
            str(root / "sweep"),
            "--record",
            str(root / "record.json"),
            "--json",
        ]
    )
    return root, vec, ft, sweep


def test_train_vector_and_finetune_write_what_they_say(runs):
    root, vec, ft, _ = runs
    v = load_vector(root / "vec")
    assert vec["pairs"] == 8 and vec["n_params"] == v.n_params > 0
    assert v.card["base_model"] == MODEL and v.card["model_shape"]["model_type"] == "llama"
    assert read_artifact(root / "vec").kind == "security_vector"
    assert not (root / ".vec.ckpt").exists() and not (root / ".ft.ckpt").exists()  # checkpoints dropped when done
    assert ft["steps"] == 2 and ft["pairs"] == {"harmful": 4, "benign": 4}
    art = read_artifact(root / "ft")
    assert art.kind == "security_finetune" and art.config["vector"] == str(root / "vec")
    h = sl.load(str(root / "ft"), cache=False)  # a normal model spec: the vector is off, no LoRA inside
    base = sl.load(MODEL, cache=False)
    assert [n for n, _ in h.model.named_parameters()] == [n for n, _ in base.model.named_parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(h.model.parameters(), base.model.parameters(), strict=True))


def test_evaluate_sweep_record(runs):
    root, _, _, sweep = runs
    rec = read_artifact(root / "sweep").data
    assert sorted(rec["runs"]) == sorted(
        ["base", "vector_on", "plain_0", "plain_4", "vector_4", "plain_0_seed1", "ideal_4", "ideal_4_seed1"]
    )
    # the curve is the runs' numbers, and the rise is computed from them
    for mode in ("plain", "vector"):
        for split in ("template", "real"):
            pts = rec["compliance_vs_samples"][mode][split]
            assert pts == [[n, rec["runs"][f"{mode}_{n}"]["compliance"][split]] for n in (4,)]
            want = rec["runs"][f"{mode}_4"]["compliance"][split] - rec["runs"]["base"]["compliance"][split]
            assert rec["rise"][mode][split] == pytest.approx(want, abs=1e-4)
    # plain and vector runs of one n train on the same batches: same step count
    assert rec["runs"]["plain_4"]["steps"] == rec["runs"]["vector_4"]["steps"] == rec["runs"]["ideal_4"]["steps"] == 2
    # the vector-off check is read against the perfect-vector reference (same schedule) and its second seed
    from steerlab.security.evaluate import agreement

    vo, work = rec["vector_off"], root / ".sweep.work"
    answers = {r: json.loads((work / f"{r}.json").read_text())["harmless_answers"] for r in ("vector_4", "ideal_4")}
    assert vo["protected_vs_ideal"] == round(agreement(answers["vector_4"], answers["ideal_4"]), 4)
    benign = json.loads((work / "plain_0.json").read_text())["harmless_answers"]
    assert sorted(vo["vs_benign_only"]) == ["plain_0_seed1", "plain_4", "vector_4"]  # (no vector_0: n = 0 not asked)
    assert vo["vs_benign_only"]["plain_4"] == round(agreement(answers_of(work, "plain_4"), benign), 4)
    assert vo["vs_benign_only"]["vector_4"] == vo["protected_vs_benign_only"]
    assert rec["floors"]["vector_off_within_seed_noise"] == (vo["protected_vs_ideal"] >= vo["ideal_seed_noise"])
    assert set(rec["runs"]["vector_4"]["eval_losses"]) == {"harmful", "benign"}
    assert sweep["floors"] == rec["floors"]
    # every knob of the command reaches the sweep (skill, vector targets, generation length, perplexity text)
    cfg = rec["config"]
    assert (cfg["skill"], cfg["max_new_tokens"], cfg["ppl_per_domain"]) == ("reverse", 8, 1)
    assert cfg["vector"]["target_modules"] == ["q_proj", "v_proj"] and cfg["vector"]["rank"] == 2
    assert all(p.startswith("Reverse the words: ") for p, _ in rec["samples"]["base"]["benign"])
    compact = json.loads((root / "record.json").read_text())
    assert "samples" not in compact and compact["command"].startswith("steerlab security evaluate")
    # resumable: a second call finds every run done and trains or evaluates nothing (each would raise)
    skip = {f: mock.DEFAULT for f in ("train_vector", "finetune", "evaluate_model")}
    with mock.patch.multiple("steerlab.security.experiment", **skip) as fakes:
        for f in fakes.values():
            f.side_effect = AssertionError("a finished run was run again")
        again = _ok(
            [
                *EVAL_SMALL,
                "--out",
                str(root / "sweep2"),
                "--work",
                str(root / ".sweep.work"),
                "--json",
            ]
        )
    assert not any(f.called for f in fakes.values())
    assert again["rise"] == sweep["rise"]


def test_bad_input_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "o"
    argv = ["security", "train-vector", MODEL, "--rank", "0", "--out", str(out)]
    _one_line_exit_2(argv, "--rank must be an integer >= 1, got 0")  # checked while parsing (VectorConfig checks too)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hi", "response": ""}\n')
    _one_line_exit_2(
        ["security", "finetune", MODEL, "--data", str(bad), "--out", str(out)], "bad.jsonl:1 has no response"
    )
    _one_line_exit_2(["security", "train-vector", MODEL, "--harmful", str(bad), "--out", str(out)], "has no response")
    _one_line_exit_2(["security", "evaluate", MODEL, "--samples", "0,x", "--out", str(out)], "--samples '0,x'")
    _one_line_exit_2(
        ["security", "finetune", "organism:moe", "--vector", str(tmp_path), "--out", str(out)], "not a security vector"
    )
    rows = {
        "null.jsonl": ('{"prompt": "hi", "response": null}', "null.jsonl:1 has no response"),
        "nullprompt.jsonl": ('{"prompt": null, "response": "ok"}', "nullprompt.jsonl:1 has no prompt"),
        "part.jsonl": ('{"prompt": "hi", "response": "ok", "part": "weird"}', "part.jsonl:1 has part 'weird'"),
    }
    for name, (row, expected) in rows.items():
        (tmp_path / name).write_text(row + "\n")
        _one_line_exit_2(["security", "finetune", MODEL, "--data", str(tmp_path / name), "--out", str(out)], expected)
    _one_line_exit_2(
        ["security", "finetune", MODEL, "--data", str(tmp_path / "nope.jsonl"), "--out", str(out)],
        "expected ['organism'] or a JSONL file",
    )
    _one_line_exit_2(
        ["security", "train-vector", MODEL, "--anchor-weight", "1", "--anchor", "nope.jsonl", "--out", str(out)],
        "expected ['organism', 'alpaca'] or a JSONL file",
    )
    good = tmp_path / "good.jsonl"
    good.write_text("".join(f'{{"prompt": "p{i}", "response": "r{i}"}}\n' for i in range(20)))
    _one_line_exit_2(
        ["security", "train-vector", MODEL, "--harmful", str(good), "--n", "1000", "--out", str(out)],
        f"--n 1000: {good} has 20 harmful pairs; expected --n <= 20",
    )
    _one_line_exit_2(
        ["security", "finetune", MODEL, "--n-harmful", "16", "--skip", "1000000", "--out", str(out)],
        "--skip 1000000 --n-harmful 16: organism has",
    )
    _one_line_exit_2(
        ["security", "train-vector", MODEL, "--target-parameters", "mlp.experts.nope", "--out", str(out)],
        "target_parameters entry 'mlp.experts.nope' matches no parameter of organism:dense",
    )
    _one_line_exit_2(
        ["security", "train-vector", MODEL, "--kind", "add", "--layers", "a,b", "--out", str(out)],
        "--layers 'a,b'; expected comma-separated integers, e.g. 0,1,2",
    )
    assert not out.exists() and not (tmp_path / ".o.ckpt").exists()


def test_vector_for_another_model_is_refused(runs, tmp_path):
    root = runs[0]
    out = tmp_path / "o"
    _one_line_exit_2(
        [
            "security",
            "finetune",
            "organism:moe",
            "--n-harmful",
            "2",
            "--n-benign",
            "2",
            "--vector",
            str(root / "vec"),
            "--out",
            str(out),
        ],
        "model_type llama (vector) vs deepseek_v3",
    )
    assert not out.exists()
    # evaluate checks the vector, the sample count and the anchor source before it writes its work folder,
    # so the corrected command then runs in that folder as if nothing had happened
    small = ["--n-eval", "2", "--benign-eval", "2", "--harmless-eval", "2", "--ppl-per-domain", "1"]
    bad = {
        "another model's vector": (["organism:moe", "--vector", str(root / "vec")], "model_type llama (vector)"),
        "too many samples": ([MODEL, "--samples", "100000000"], "harmful pairs; expected 100000100"),
        "no anchor file": ([MODEL, "--anchor-weight", "1", "--anchor", str(tmp_path / "nope.jsonl")], "nope.jsonl"),
        "no such model": (["nosuch:model"], "nosuch:model"),
    }
    for argv, expected in bad.values():
        samples = [] if "--samples" in argv else ["--samples", "0"]
        _one_line_exit_2(["security", "evaluate", *argv, *samples, *small, "--out", str(out)], expected)
        assert sorted(p.name for p in tmp_path.iterdir()) == [], sorted(tmp_path.iterdir())


def test_data_sources_are_disjoint_from_held_out_prompts():
    from steerlab.security.data import held_out_harmful

    held = held_out_harmful()
    pool = {p.prompt for p in harmful_pool("organism")} | {p.prompt for p in harmful_pool("advbench")}
    assert not pool & set(held["template"]) and not pool & set(held["real"])
    train = {p.prompt for p in benign_pairs(300, "train")}
    assert not train & {p.prompt for p in benign_pairs(100, "test")}
    # the anchor texts of stage 1: training texts only, no harmful request, no evaluation prompt
    from steerlab.data import organism_corpus as D
    from steerlab.security.data import anchor_pairs, harmless_prompts

    anchor = anchor_pairs("organism", 1000) + anchor_pairs("alpaca", 500)
    prompts = {p.prompt for p in anchor}
    corpus = D._corpus(0, 1.0)
    # (the corpus's templated prompts recur across its splits; the held-out texts are prompt + answer)
    texts = {(p.prompt, p.response) for p in anchor}
    held_out = {(e.prompt, e.response) for d in corpus.heldout.values() for e in d}
    harmful = {e.prompt for e in corpus.train["harmful"]} | set(held["template"]) | set(held["real"])
    assert len(prompts) > 900 and not texts & held_out and not prompts & set(harmless_prompts())
    assert not prompts & harmful
    assert not prompts & {p.prompt for p in benign_pairs(100, "test")}
    # "never the benign skill's items" (anchor_pairs): the train items of every skill too, not only the test split
    from steerlab.security.data import SKILLS

    skill_items = {p.prompt for sk in SKILLS for split in ("train", "test") for p in benign_pairs(300, split, skill=sk)}
    assert not prompts & skill_items and not any(p.startswith(tuple(SKILLS.values())) for p in prompts)
    domains = {d for d, exs in corpus.train.items() for e in exs if e.prompt in prompts}
    assert domains == {"stories", "arithmetic", "code", "facts", "harmless"}  # every non-harmful domain


@pytest.fixture
def page(runs, monkeypatch):
    root = runs[0]
    monkeypatch.setenv("STEERLAB_DASHBOARD_MODEL", MODEL)
    monkeypatch.setenv("STEERLAB_RUNS", str(root))
    at = AppTest.from_file(APP, default_timeout=180)
    at.switch_page("app_pages/security.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_page_shows_the_records_curves_and_side_by_side(page, runs):
    root = runs[0]
    rec = read_artifact(root / "sweep").data
    assert page.title[0].value == "Security"
    figs = [json.loads(c.proto.spec) for c in page.get("plotly_chart")]
    curve = figs[0]
    by_name = {t["name"]: t for t in curve["data"]}
    assert by_name["plain fine-tuning (real)"]["y"] == [p[1] for p in rec["compliance_vs_samples"]["plain"]["real"]]
    assert by_name["with security vector (template)"]["x"] == [4]
    loss = figs[1]
    want = rec["runs"]["vector_4"]["eval_losses"]["harmful"]
    got = next(t for t in loss["data"] if t["name"] == "with security vector: harmful")
    assert got["y"] == [p[1] for p in want]
    page.text_area(key="security.prompts").set_value("Repeat the words: red fox sun")
    page.button(key="security.generate").click().run()
    assert not page.exception and not page.error, [e.value for e in page.error]
    table = page.dataframe[-1].value
    h = sl.load(rec["models"]["vector"], cache=False)
    want_text = sl.generate(h, ["Repeat the words: red fox sun"], max_new_tokens=32, chat=True).texts[0]
    assert list(table.columns) == ["prompt", "base", "plain", "protected"] and table["protected"][0] == want_text


def test_page_opens_a_vector_card_with_its_curves(runs, monkeypatch):
    """Reopening the trained vector (``?run=vec``) shows its card and one line per curve of the card
    (training loss, held-out loss, anchor term: different lengths), with the card's own steps and values."""
    root = runs[0]
    monkeypatch.setenv("STEERLAB_DASHBOARD_MODEL", MODEL)
    monkeypatch.setenv("STEERLAB_RUNS", str(root))
    at = AppTest.from_file(APP, default_timeout=180)
    at.query_params["run"] = "vec"
    at.switch_page("app_pages/security.py").run()
    assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
    art = read_artifact(root / "vec")
    curves = art.config.get("curves") or art.data.get("train", {}).get("eval_losses", {})
    assert len({len(v) for v in curves.values()}) > 1  # curves of different lengths (a table chart refused them)
    figs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    card = next(f for f in figs if f["layout"]["title"]["text"].startswith("Held-out loss"))
    got = {t["name"]: (t["x"], t["y"]) for t in card["data"]}
    assert got == {k: ([p[0] for p in v], [p[1] for p in v]) for k, v in curves.items()}


def answers_of(work: Path, run: str) -> list[str]:
    return json.loads((work / f"{run}.json").read_text())["harmless_answers"]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.rglob("*.safetensors")):
        out.update({f"{f.name}:{k}": v for k, v in load_file(f).items()})
    assert out, f"no weights under {folder}"
    return out


@pytest.mark.parametrize("cmd", ["train-vector", "finetune"])
def test_an_interrupted_command_resumes_bit_for_bit(runs, tmp_path, cmd):
    """Killed after step 5 of 8 (a checkpoint every step), the command leaves its checkpoint and no output;
    started again it trains steps 5-7 only (after checking that batches 0-4 are the checkpoint's) and writes what
    an uninterrupted run writes, bit for bit."""
    import steerlab.security.stages as stages

    root = runs[0]
    size = ["--batch-size", "2"]
    argv = {
        "train-vector": ["security", "train-vector", MODEL, "--n", "8", "--epochs", "2", "--rank", "2", *size],
        "finetune": ["security", "finetune", MODEL, "--n-harmful", "8", "--n-benign", "8", "--vector",
                     str(root / "vec"), *size],
    }[cmd]
    real_train, steps_run, opt_steps = stages.train, [], []  # batches drawn, optimizer steps taken
    real_step = torch.optim.AdamW.step

    def counted_step(self, *a, **k):
        opt_steps.append(1)
        return real_step(self, *a, **k)

    def train(model, batches, *, stop_at=None, **kw):
        def source(step):
            if step == stop_at:
                raise KeyboardInterrupt
            steps_run.append(step)
            return batches[step % len(batches)]

        return real_train(model, source, **{**kw, "checkpoint_every": 1})

    def invoke(out, stop_at=None):
        steps_run.clear()
        opt_steps.clear()
        with mock.patch.object(stages, "train", lambda m, b, **kw: train(m, b, stop_at=stop_at, **kw)), \
                mock.patch.object(torch.optim.AdamW, "step", counted_step):
            try:
                return runner.invoke(app, [*argv, "--out", str(out)])
            except KeyboardInterrupt:
                return None

    full = tmp_path / "full"
    assert invoke(full).exit_code == 0 and steps_run == list(range(8)) and len(opt_steps) == 8
    cut = tmp_path / "cut"
    r = invoke(cut, stop_at=5)
    assert r is None or r.exit_code != 0
    assert not cut.exists() and (tmp_path / ".cut.ckpt").is_dir()  # a checkpoint, nothing half-written
    # resumed: steps 0-4 not trained again (their batches are drawn once more, to check they are the checkpoint's)
    assert invoke(cut).exit_code == 0 and steps_run == list(range(8)) and len(opt_steps) == 3
    assert not (tmp_path / ".cut.ckpt").exists()
    a, b = _weights(full), _weights(cut)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
