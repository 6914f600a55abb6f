"""Every registered artifact kind has a CLI producer (``--out``) and a dashboard page that reopens it; the
producers of ``generation_compare`` and ``sampling_diagnostics`` write artifacts that read back with
their kind's reader and reopen in their page, and refuse bad input with one line, writing nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest
from typer.main import get_command
from typer.testing import CliRunner

import steerlab as sl
from dashboards.lib import registry
from steerlab.artifacts import kind_of, read_artifact
from steerlab.cli.main import app
from steerlab.interventions import AddVector, InterventionSet

runner = CliRunner()
APP = str(Path(__file__).resolve().parents[2] / "dashboards" / "app.py")
PROMPTS = ["Once upon a time", "The dog"]
# kind -> the test below (or elsewhere) that runs its producer and reopens what it wrote
PRODUCER_TESTS = {
    "generation_compare": "test_generate_compare_out_reads_back_and_reopens_in_generate",
    "sampling_diagnostics": "test_sampling_diagnose_out_reads_back_and_reopens_in_sampling",
    "sampling_compare": "tests/integration/test_sampling_compare.py",
    "experts_image": "tests/integration/test_experts.py -k cli",
    "experts_evaluate": "tests/integration/test_experts.py -k cli",
    "regions_importance": "tests/integration/test_regions_cli.py",
    "regions_find": "tests/integration/test_regions_cli.py",
    "regions_perturb": "tests/integration/test_regions_cli.py",
    "preference_pairs": "tests/integration/test_preferences_cli.py",
    "preference_fit": "tests/unit/test_dashboard_preferences.py",
    "preference_compare": "tests/integration/test_preferences_cli.py",
    "regions_dims": "tests/integration/test_regions_cli.py",
    "regions_freeze": "tests/integration/test_regions_cli.py",
    **{k: "tests/integration/test_steer_cli.py" for k in ("steering_directions", "steering_probes", "steering_sweep",
                                                          "steering_refusal")},
    "security_vector": "tests/integration/test_security.py", "security_finetune": "tests/integration/test_security.py",
    "security_sweep": "tests/integration/test_security.py",
}


def _command(path: str):
    cmd = get_command(app)
    for part in path.split():
        cmd = cmd.commands[part]  # KeyError: the producer names no command
    return cmd


def test_every_kind_has_a_cli_producer_and_a_page():
    kinds = {k.name: k for k in sl.artifact_kinds()}
    assert set(kinds) == set(PRODUCER_TESTS)  # a new kind needs a producer test here
    for name, kind in kinds.items():
        opts = {o for p in _command(kind.producer).params for o in getattr(p, "opts", [])}
        assert "--out" in opts, f"{name}: `steerlab {kind.producer}` has no --out"
        page = registry.page_for_kind(name)
        assert page is not None and name in page.kinds, f"no dashboard page reopens {name}"
        assert kind.owner == page.analysis and kind.summary
    reopened = [k for p in registry.PAGES for k in p.kinds]
    assert sorted(reopened) == sorted(kinds)  # each kind reopens in exactly one page


def test_kinds_command_lists_the_registry():
    r = runner.invoke(app, ["kinds", "--json"])
    assert r.exit_code == 0, r.output
    assert "steerlab generate --out DIR" in r.stdout and "sampling_diagnostics" in r.stdout


def _one_line_exit_2(r, expected: str) -> None:
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    assert r.stdout == "" and "Traceback" not in r.output
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ") and expected in r.stderr, r.stderr


@pytest.fixture
def steer_file(tmp_path):
    ivs = InterventionSet([AddVector(site="blocks.2.resid_post", vector=torch.ones(64), scale=4.0, name="push")])
    return ivs, ivs.save(tmp_path / "steer.json")


def _reopen(monkeypatch, root: Path, name: str, page: str) -> AppTest:
    monkeypatch.setenv("STEERLAB_DASHBOARD_MODEL", "shared:stories260K")
    monkeypatch.setenv("STEERLAB_RUNS", str(root))
    at = AppTest.from_file(APP, default_timeout=180)
    at.query_params["run"] = name
    at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert any(f"Showing saved run `{name}`" in i.value for i in at.info)
    return at


def test_generate_compare_out_reads_back_and_reopens_in_generate(tmp_path, monkeypatch, steer_file, stories):
    ivs, spec = steer_file
    out = tmp_path / "runs" / "gen"
    argv = ["generate", "shared:stories260K", "-n", "6", "--seed", "3", "-i", str(spec), "--compare",
            "--out", str(out)]
    for p in PROMPTS:
        argv += ["-p", p]
    r = runner.invoke(app, argv)
    assert r.exit_code == 0, r.output
    assert f"artifact: {out}" in r.stdout
    cmp = kind_of("generation_compare").read(out)
    assert cmp.prompts == PROMPTS and cmp.labels == ["baseline", "steered"]
    base = sl.generate(stories, PROMPTS, max_new_tokens=6, seed=3)
    steered = sl.generate(stories, PROMPTS, interventions=ivs, max_new_tokens=6, seed=3)
    assert [[s.token_id for s in row] for row in cmp.steps["baseline"]] == base.token_ids
    assert [[s.token_id for s in row] for row in cmp.steps["steered"]] == steered.token_ids
    assert base.token_ids != steered.token_ids  # the push changes the completions
    assert torch.equal(cmp.interventions.items[0].vector, torch.ones(64))
    assert cmp.settings["steered"]["seed"] == 3 and cmp.settings["baseline"]["interventions"] == []

    at = _reopen(monkeypatch, tmp_path / "runs", "gen", "app_pages/generate.py")
    assert at.text_area(key="generate.prompts").value == "\n".join(PROMPTS)
    assert at.number_input(key="generate.max_new").value == 6 and at.number_input(key="generate.seed").value == 3
    assert at.radio(key="generate.iv_source").value == "Saved run"
    assert sum('class="sl-tokens"' in m.value for m in at.markdown) == 4  # two prompts x two runs


def test_generate_out_without_interventions_saves_the_baseline(tmp_path):
    out = tmp_path / "base"
    r = runner.invoke(app, ["generate", "shared:stories260K", "-p", "Once upon a time", "-n", "4", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert kind_of("generation_compare").read(out).labels == ["baseline"]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--compare"], "--compare needs --intervention"),
        (["-i", "{tmp}/missing.json"], "missing.json"),
        (["--sampler", "nope"], "nope"),
    ],
)
def test_generate_out_bad_input_is_one_line_and_writes_nothing(tmp_path, extra, expected):
    out = tmp_path / "out"
    argv = ["generate", "shared:stories260K", "-p", "Hi", "--out", str(out)] + [a.format(tmp=tmp_path) for a in extra]
    _one_line_exit_2(runner.invoke(app, argv), expected)
    assert not out.exists()


def test_sampling_diagnose_out_reads_back_and_reopens_in_sampling(tmp_path, monkeypatch, stories):
    out = tmp_path / "runs" / "diag"
    argv = ["sampling", "diagnose", "shared:stories260K", "-p", "Once upon a time", "--param", "alpha=0.4",
            "--param", "temperature=1.5", "-n", "7", "--seed", "2", "--top-p", "0.8", "--out", str(out)]
    r = runner.invoke(app, argv)
    assert r.exit_code == 0, r.output
    assert f"artifact: {out}" in r.stdout
    diag, top = kind_of("sampling_diagnostics").read(out)
    assert diag["prompt"] == "Once upon a time" and diag["top_p"]["p"] == 0.8 and diag["top_h"]["alpha"] == 0.4
    # the same generation, independently: the top probabilities of each step under softmax(logits / 1.5)
    res = sl.generate(stories, ["Once upon a time"], sampler=sl.make_sampler("top_h", alpha=0.4, temperature=1.5),
                      max_new_tokens=7, seed=2, output_scores=True)
    assert diag["tokens"][: len(res.token_ids[0])] == res.token_ids[0]
    assert top.probs.shape[0] == diag["steps"]
    first = torch.softmax(res.scores[0][0] / 1.5, -1)
    torch.testing.assert_close(top.probs[0, :5], first.topk(5).values)
    art = read_artifact(out)
    assert art.config["max_new_tokens"] == 7 and art.config["seed"] == 2 and art.config["model"] == "shared:stories260K"

    at = _reopen(monkeypatch, tmp_path / "runs", "diag", "app_pages/sampling.py")
    assert at.text_input(key="sampling.prompt").value == "Once upon a time"
    assert at.number_input(key="sampling.max_new").value == 7 and at.number_input(key="sampling.seed").value == 2
    assert at.number_input(key="sampling.cmp_top_p").value == 0.8
    assert len(at.get("plotly_chart")) == 2  # the saved diagnostics, drawn without generating again




@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--sampler", "nope"], "nope"),
        (["--top-p", "1.5"], "1.5"),
        (["--param", "alpha"], "alpha"),
    ],
)
def test_sampling_diagnose_out_bad_input_is_one_line_and_writes_nothing(tmp_path, extra, expected):
    out = tmp_path / "out"
    argv = ["sampling", "diagnose", "shared:stories260K", "-p", "Hi", "--out", str(out), *extra]
    _one_line_exit_2(runner.invoke(app, argv), expected)
    assert not out.exists()
