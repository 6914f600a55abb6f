"""Organisms end to end: a reduced rebuild (data -> tokenizer -> training -> folder -> eval -> card),
determinism, and the committed organisms reproducing their cards."""

from __future__ import annotations

import json

import pytest
import torch

import steerlab as sl
from steerlab.organisms.build import WEIGHTS_DIR, build_organism, read_record
from steerlab.organisms.configs import get_recipe
from steerlab.organisms.data import DOMAINS

SUBSET = 64  # one evaluation batch: the same batch composition as the build, so greedy outputs are identical


@pytest.fixture(scope="module")
def reduced_moe(tmp_path_factory):
    out = tmp_path_factory.mktemp("organisms") / "moe"
    return build_organism("moe", reduced=True, out_dir=out, progress=False, eval_limit=16)


def test_reduced_build_writes_a_complete_hf_folder(reduced_moe):
    names = {p.name for p in reduced_moe.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md", "eval.json"} <= names
    assert not [p for p in reduced_moe.parent.iterdir() if p.name.endswith(".tmp")]
    rec = read_record(reduced_moe)
    m = rec["metrics"]
    for key in (
        "refusal_harmful",
        "refusal_harmless",
        "compliance_harmful",
        "compliance_harmless",
        "refusal_harmful_test",
        "refusal_harmless_test",
        "refusal_benign_jbb",
    ):
        assert 0.0 <= m[key] <= 1.0, key
    assert set(m["ppl"]) == set(DOMAINS)
    assert all(v > 1.0 for v in m["ppl"].values())
    assert (
        len(rec["training"]["train_loss"]) >= 2 and rec["training"]["train_loss"][-1] < rec["training"]["train_loss"][0]
    )
    r = rec["routing"]
    assert len(r["prompt"]["mi_bits"]) == len(r["layers"]) == rec["recipe"]["model"]["num_hidden_layers"]
    assert {row["setting"] for row in rec["localization"]["rows"]} >= {"none", "top-1 refusal"}
    card = (reduced_moe / "README.md").read_text()
    assert f"| harmful | 16 | {m['refusal_harmful']:.3f} |" in card and "DeepseekV3ForCausalLM" in card


def test_reduced_organism_loads_and_chats_with_an_expert_mask(reduced_moe):
    from steerlab.interventions import ExpertMask

    h = sl.load(str(reduced_moe), cache=False)
    assert h.info()["moe"]["n_experts"] == 8 and h.info()["chat_template"] and h.dtype == torch.float32
    assert h.format_chat("Hi") == "<|user|>Hi<|end|><|assistant|>"
    prompts = ["How do I bake a cake?", "What is 2 + 3?"]
    mask = [ExpertMask(layer=1, off=list(range(7)))]
    out = sl.generate(h, prompts, max_new_tokens=12, chat=True)
    masked = sl.generate(h, prompts, max_new_tokens=12, chat=True, interventions=mask)
    assert len(out.texts) == len(masked.texts) == 2
    assert all(h.tokenizer.eos_token_id not in ids for ids in out.token_ids)  # cut at EOS
    logits = sl.forward(h, prompts, chat=True)
    assert not torch.allclose(logits, sl.forward(h, prompts, chat=True, interventions=mask))


def test_same_seed_gives_identical_weights():
    from steerlab.organisms.data import build_corpus
    from steerlab.organisms.tokenizer import tokenizer_texts, train_tokenizer
    from steerlab.organisms.train import train_organism

    recipe = get_recipe("moe", reduced=True, steps=12)
    states = []
    for seed in (0, 0, 1):
        corpus = build_corpus(seed, scale=recipe.data_scale)
        tok = train_tokenizer(tokenizer_texts(corpus), recipe.vocab_size)
        model, _ = train_organism(recipe, corpus, tok, seed=seed, progress=False)
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not all(
        torch.equal(states[0][k], states[2][k]) for k in states[0] if states[0][k].shape == states[2][k].shape
    )


def test_dense_reduced_build(tmp_path):
    out = build_organism("dense", reduced=True, out_dir=tmp_path / "dense", progress=False, eval_limit=8)
    rec = read_record(out)
    assert rec["architecture"]["architecture"] == "LlamaForCausalLM" and "routing" not in rec
    assert sl.load(str(out), cache=False).info()["moe"] is None


@pytest.mark.parametrize("name", ["moe", "dense"])
def test_committed_organism_reproduces_its_card(name):
    from steerlab.organisms.evaluate import behavior_on

    path = WEIGHTS_DIR / name
    rec = read_record(path)
    assert (path / "model.safetensors").stat().st_size <= 25 * 2**20
    h = sl.load(f"organism:{name}")
    assert h.dtype == torch.float32 and h.info()["architecture"] == rec["architecture"]["architecture"]
    m = rec["metrics"]
    assert m["refusal_harmful"] >= 0.95 and m["refusal_harmless"] <= 0.05
    for split in ("harmful", "harmless"):
        stored = rec["behavior"][split]
        res = behavior_on(h, stored["prompts"][:SUBSET])
        assert res["texts"] == stored["texts"][:SUBSET]
        assert res["labels"] == stored["labels"][:SUBSET]


def test_cli_list_and_eval(tmp_path):
    from typer.testing import CliRunner

    from steerlab.cli.organisms import app

    runner = CliRunner()
    res = runner.invoke(app, ["list", "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.output)["organisms"]}
    assert rows["moe"]["built"] and rows["moe"]["arch"] == "deepseek_v3"
    res = runner.invoke(app, ["eval", "dense", "--limit", "4", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["n_harmful"] == 4 and {"refusal_harmful", "compliance_harmless", "ppl"} <= set(out)
    res = runner.invoke(app, ["build", "mixtral"])
    assert res.exit_code == 2 and "unknown organism" in res.output


def test_expert_specialised_safety_tuning_freezes_all_but_the_chosen_experts():
    from steerlab.organisms.data import build_corpus
    from steerlab.organisms.tokenizer import tokenizer_texts, train_tokenizer
    from steerlab.organisms.train import make_model, restrict_to_refusal_experts

    recipe = get_recipe("moe", reduced=True)
    corpus = build_corpus(0, scale=recipe.data_scale)
    tok = train_tokenizer(tokenizer_texts(corpus), recipe.vocab_size)
    model = make_model(recipe, tok, seed=0)
    chosen, trainable, hooks = restrict_to_refusal_experts(model, tok, corpus, n_experts=3, seed=0, n_prompts=32)
    assert len(chosen) == 3 and all(p.requires_grad for p in trainable)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(trainable, lr=1e-2, weight_decay=0.0)
    ids = tok([e.text() for e in corpus.train["harmful"][:4]], return_tensors="pt", padding=True)["input_ids"]
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    for h in hooks:
        h.remove()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".mlp.experts." in k for k in changed)
    for k in changed:
        layer = int(k.split(".")[2])
        moved = {e for e in range(before[k].shape[0]) if not torch.equal(before[k][e], after[k][e])}
        assert moved <= {e for lay, e in chosen if lay == layer}
