"""`steerlab regions score|find|perturb`: artifacts that read back with their kinds' readers and reopen in the
Regions page; perturbation numbers checked against weights zeroed by hand and a from-scratch NLL; bad input
is one line, exit 2, nothing written."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from streamlit.testing.v1 import AppTest
from typer.testing import CliRunner

from steerlab.artifacts import kind_of
from steerlab.cli.main import app
from steerlab.regions.corpus import corpus_texts

runner = CliRunner()
APP = str(Path(__file__).resolve().parents[2] / "dashboards" / "app.py")
STORIES = "shared:stories260K"


def _ok(args):
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout[res.stdout.index("{") :])


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    _ok(["regions", "score", STORIES, "--lang", "eng,python", "--budget", "256", "--keep", "0.05",
         "--out", str(root / "imp"), "--no-progress", "--json"])  # fmt: skip
    _ok(["regions", "find", str(root / "imp"), "--fraction", "0.01", "--seeds", "2", "--out", str(root / "find"),
         "--json"])  # fmt: skip
    _ok(["regions", "perturb", str(root / "imp"), "--lang", "eng,deu", "--seeds", "0,1", "--n-eval", "4",
         "--record", str(root / "rec.json"), "--out", str(root / "pert"), "--no-progress", "--json"])  # fmt: skip
    return root


def _nll_by_hand(h, texts):
    total = n = 0
    for t in texts:  # BOS + the text, as the eval feeds it: an empty prompt, then the text's own tokens
        ids = torch.tensor([[h.tokenizer.bos_token_id] + h.tokenizer(t, add_special_tokens=False)["input_ids"]])
        logits = h.model(input_ids=ids).logits[0, :-1].float()
        total += float(F.cross_entropy(logits, ids[0, 1:], reduction="sum"))
        n += ids.shape[1] - 1
    return total / n


def test_artifacts_read_back_and_core_ratio_matches_weights_zeroed_by_hand(made, stories):
    imp = kind_of("regions_importance").read(made / "imp")
    assert imp.languages == ["eng", "python"] and imp.keep == 0.05
    find = kind_of("regions_find").read(made / "find")
    assert {"core.safetensors", "bottom.safetensors", "random1.safetensors", "mono_eng.safetensors"} <= set(find.files)
    pert = kind_of("regions_perturb").read(made / "pert")
    rows = pert.data["full_rows"]
    assert [(r["kind"], r["seed"]) for r in rows] == [("core", None), ("bottom", None), ("random", 0), ("random", 1)]
    rec = json.loads((made / "rec.json").read_text())
    assert rec["command"].startswith("steerlab regions perturb") and rec["summary"]["layers"]["core"] > 0
    # zero the core by hand: the first round(0.01 * numel) stored top indices of every parameter inside the layers
    texts = corpus_texts("deu", "eval", n=4)
    with torch.no_grad():
        base = _nll_by_hand(stories, texts)
        saved = {}
        for name, p in stories.model.named_parameters():
            if ".layers." in name:
                k = max(1, round(0.01 * p.numel()))
                idx = imp.top[name][:k].long()
                saved[name] = (idx, p.view(-1)[idx].clone())
                p.view(-1)[idx] = 0.0
        try:
            zeroed = _nll_by_hand(stories, texts)
        finally:
            for name, p in stories.model.named_parameters():
                if name in saved:
                    p.view(-1)[saved[name][0]] = saved[name][1]
    core = rows[0]
    assert core["size"] == sum(v[0].numel() for v in saved.values())
    assert core["ratio"]["deu"] == pytest.approx(math.exp(zeroed - base), rel=1e-3)
    assert pert.data["base_nll"]["deu"] == pytest.approx(base, rel=1e-4)


@pytest.mark.parametrize(
    "args,msg",
    [
        (["score", STORIES, "--lang", "klingon"], "unknown language 'klingon'"),
        (["score", STORIES, "--keep", "0.7"], "--keep must be a number in (0, 0.5], got 0.7"),
        (["perturb", "IMP", "--fraction", "0"], "--fraction must be a number in (0, 0.5], got 0.0"),
        (["perturb", "IMP", "--fraction", "0.06"], "exceeds the 0.05"),
        (["perturb", "IMP", "--lang", "xx"], "unknown language 'xx'"),
        (["perturb", "IMP", "--model", "organism:dense", "--lang", "eng"], "was made for 'shared:stories260K'"),
        (["find", "IMP", "--scope", "some"], "scope 'some' is not one of"),
        (["perturb", "IMP", "--lang", "eng", "--control-scopes", "bogus"], "control scopes ['bogus'] must be a subset"),
        (["perturb", "IMP", "--lang", "eng", "--text", "foo=/no/such.txt"], "/no/such.txt is not a file"),
        (["perturb", "IMP", "--lang", "eng", "--op", "noise", "--value", "-1"], "--value -1.0 with --op noise"),
        (["dims", "IMP", "--lang", "eng", "--op", "noise", "--value", "-1"], "--value -1.0 with --op noise"),
    ],
)
def test_bad_input_one_line_exit_2_nothing_written(made, tmp_path, args, msg):
    args = [str(made / "imp") if a == "IMP" else a for a in args]
    out = tmp_path / "out"
    res = runner.invoke(app, ["regions", *args, "--out", str(out)])
    assert res.exit_code == 2, res.output
    err = res.stderr.strip().splitlines()[-1]  # above it at most the model loader's progress bar
    assert err.startswith("error: ") and msg in err and "Traceback" not in res.stderr, res.stderr
    assert not out.exists()


def test_perturb_run_reopens_in_the_regions_page(made, monkeypatch):
    monkeypatch.setenv("STEERLAB_DASHBOARD_MODEL", STORIES)
    monkeypatch.setenv("STEERLAB_RUNS", str(made))
    at = AppTest.from_file(APP, default_timeout=180)
    at.switch_page("app_pages/regions.py")
    at.query_params["run"] = "pert"
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.exception] + [e.value for e in at.error]
    assert at.title[0].value == "Regions"
    table = at.dataframe[0].value
    rows = kind_of("regions_perturb").read(made / "pert").data["full_rows"]
    assert list(table["median ppl ratio"]) == [r["median_ratio"] for r in rows]
    assert len(at.get("plotly_chart")) == 3  # ratio bars (one scope), overlap heatmap, layer x matrix map


def test_dims_candidates_effects_by_hand(made, stories, tmp_path):
    _ok(["regions", "dims", str(made / "imp"), "--lang", "eng", "--candidates", "2", "--random", "3", "--n-eval", "3",
         "--out", str(tmp_path / "dims"), "--no-progress", "--json"])  # fmt: skip
    art = kind_of("regions_dims").read(tmp_path / "dims")
    imp = kind_of("regions_importance").read(made / "imp")
    cands, rand = art.data["full_candidates"], art.data["random"]
    assert len(cands) == 2 and len(rand) == 3 and len({r["index"] for r in rand}) == 3
    # candidates: the matrices with the largest single importance, each its top entry
    by_max = sorted((n for n in imp.top if ".layers." in n and len(imp.shapes[n]) == 2),
                    key=lambda n: -imp.summary["all"][n]["max"])  # fmt: skip
    assert [c["param"] for c in cands] == by_max[:2] and cands[0]["index"] == int(imp.top[by_max[0]][0])
    c = cands[0]
    assert (c["row"], c["col"]) == divmod(c["index"], imp.shapes[c["param"]][1])
    texts = corpus_texts("eng", "eval", n=3)
    p = dict(stories.model.named_parameters())[c["param"]]
    with torch.no_grad():
        base = _nll_by_hand(stories, texts)
        old = p.view(-1)[c["index"]].item()
        p.view(-1)[c["index"]] = 0.0
        try:
            zeroed = _nll_by_hand(stories, texts)
        finally:
            p.view(-1)[c["index"]] = old
    assert c["ratio"]["eng"] == pytest.approx(math.exp(zeroed - base), rel=1e-3)
    assert art.data["massive"] and all({"layer", "dim", "max_abs"} <= set(m) for m in art.data["massive"])


def test_freeze_train_curves_start_from_the_same_loss_and_weights_come_back(made, stories, tmp_path):
    before = {n: p.detach().clone() for n, p in stories.model.named_parameters()}
    _ok(["regions", "freeze-train", str(made / "imp"), "--train-lang", "deu", "--lang", "eng", "--steps", "2",
         "--eval-every", "1", "--n-eval", "3", "--batch-size", "2", "--lr", "0.01", "--out", str(tmp_path / "fr"),
         "--no-progress", "--json"])  # fmt: skip
    assert all(torch.equal(p, before[n]) for n, p in stories.model.named_parameters())
    art = kind_of("regions_freeze").read(tmp_path / "fr")
    curves = art.data["curves"]
    assert set(curves) == {"core-frozen", "unfrozen", "random-frozen"}
    # step 0: the untrained model's mean next-token NLL on each held-out batch, computed here text by text
    for lang in ("deu", "eng"):
        total = n = 0
        with torch.no_grad():
            for t in corpus_texts(lang, "eval", n=3):
                ids = torch.tensor([stories.tokenizer(t, truncation=True, max_length=64)["input_ids"]])
                logits = stories.model(input_ids=ids).logits[0, :-1].float()
                total += float(F.cross_entropy(logits, ids[0, 1:], reduction="sum"))
                n += ids.shape[1] - 1
        for v in curves:
            assert [s for s, _ in curves[v][lang]] == [0, 1, 2]
            assert curves[v][lang][0][1] == pytest.approx(total / n, rel=1e-4)
    assert curves["unfrozen"]["deu"][-1][1] != curves["unfrozen"]["deu"][0][1]  # it trained


def test_freeze_mask_holds_exactly_the_region(stories):
    from steerlab.regions.freeze import _mask
    from steerlab.regions.select import Region

    region = Region("r", {"model.norm.weight": torch.tensor([1, 5])}, {"model.norm.weight": [64]}, "s")
    m = _mask(stories, region)["model.norm.weight"]
    assert m.shape == (64,) and (~m).nonzero().flatten().tolist() == [1, 5]
