"""The CLI: `info --json`, `generate --json` with an intervention file and a sampler, clean errors."""

from __future__ import annotations

import json

import torch
from typer.testing import CliRunner

from steerlab.cli.main import app
from steerlab.interventions import AddVector, InterventionSet

runner = CliRunner()


def _json(result):
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_info_json_dense_and_moe(tiny):
    info = _json(runner.invoke(app, ["info", "shared:stories260K", "--json"]))
    assert {"architecture", "n_layers", "d_model", "vocab_size", "sites", "moe"} <= set(info)
    assert info["architecture"] == "LlamaForCausalLM" and info["n_layers"] == 5 and info["moe"] is None
    assert "blocks.4.resid_post" in info["sites"]


def test_info_json_moe(tmp_path, tiny):
    h = tiny("qwen2_moe")
    h.model.save_pretrained(tmp_path / "m")
    h.tokenizer.save_pretrained(tmp_path / "m")
    info = _json(runner.invoke(app, ["info", str(tmp_path / "m"), "--json"]))
    assert info["moe"]["n_experts"] == 8 and info["moe"]["top_k"] == 2 and info["moe"]["layers"] == [0, 1, 2]
    assert "blocks.1.moe.topk_indices" in info["sites"]


def test_generate_json_with_intervention_and_sampler(tmp_path):
    spec = InterventionSet([AddVector(site="blocks.2.resid_post", vector=torch.ones(64), scale=3.0)])
    path = spec.save(tmp_path / "steer.json")
    args = ["generate", "shared:stories260K", "-p", "Once upon a time", "-p", "The dog", "-n", "8", "--json"]
    plain = _json(runner.invoke(app, args))
    steered = _json(runner.invoke(app, args + ["--intervention", str(path)]))
    assert len(plain["completions"]) == 2
    assert plain["completions"][0]["text"] == ", there was a little girl"
    assert steered["completions"][0]["text"] != plain["completions"][0]["text"]
    assert steered["settings"]["interventions"][0]["type"] == "add_vector"
    sampled = _json(
        runner.invoke(
            app, args + ["--sampler", "top_p", "--param", "p=0.9", "--param", "temperature=1.5", "--seed", "3"]
        )
    )
    again = _json(
        runner.invoke(
            app, args + ["--sampler", "top_p", "--param", "p=0.9", "--param", "temperature=1.5", "--seed", "3"]
        )
    )
    assert sampled == again
    assert sampled["settings"]["sampler"] == {"name": "top_p", "params": {"p": 0.9, "temperature": 1.5}}


def test_cli_errors_are_one_line(tmp_path):
    r = runner.invoke(app, ["info", "/no/such/model"])
    assert r.exit_code == 2 and "model path '/no/such/model' does not exist" in r.output
    assert "Traceback" not in r.output
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    r = runner.invoke(app, ["generate", "shared:stories260K", "-p", "Hi", "--intervention", str(bad)])
    assert r.exit_code == 2 and "is not valid JSON" in r.output
    r = runner.invoke(app, ["generate", "shared:stories260K", "-p", "Hi", "--param", "p"])
    assert r.exit_code == 2 and "--param: 'p' is not of the form key=value" in r.output
