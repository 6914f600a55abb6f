"""Preference data model and loaders: the published weights equal values read by hand from the files; HH-RLHF
pairs split at the last assistant turn; malformed JSONL lines are reported with their line number and
skipped or rejected."""

from __future__ import annotations

import json

import pytest
import torch

from steerlab._paths import shared_dir
from steerlab.errors import SteerlabError
from steerlab.preferences.data import (
    PAPER_PROPERTIES,
    Pair,
    PairSet,
    load_hh_rlhf,
    load_published,
    load_published_pairs,
    read_pairs_jsonl,
    split_dialogue,
)


def test_published_weights_equal_values_read_by_hand():
    pw = load_published()
    assert len(pw.groups) == 16 and len(pw.judges) == 33 and len(pw.properties) == 29
    # read by hand (sed/grep) from fitted_paras_comparison/*.jsonl
    assert pw.weight("Advice", "human", "contain rich info") == 0.597716674208641
    assert pw.weight("Advice", "human", "lengthy") == 0.47602521181106566
    assert pw.weight("Advice", "human", "harmless") == -0.0036970627261325717
    assert pw.weight("Code", "gpt-4-1106-preview", "harmless") == 0.007911690708715469
    assert pw.weight("Code", "gpt-4-1106-preview", "friendly") == 0.08331532403826714
    assert pw.weight("w_stances", "llama-2-13b", "friendly") == 0.27759623527526855
    assert pw.weight("Unsafe Queries", "human", "well formatted") == 0.12072815895080566
    assert pw.weight("Unsafe Queries", "human", "correct mistakes") == -0.06987933237105608
    assert pw.weight("Unsafe Queries", "human", "lengthy") == 0.08804781846702099
    t = pw.tensor()
    assert t.shape == (16, 33, 29) and t[pw.groups.index("Advice"), 0, 19].item() == 0.597716674208641
    with pytest.raises(SteerlabError, match="unknown judge 'nobody'"):
        pw.weight("Advice", "nobody", "lengthy")
    with pytest.raises(SteerlabError, match="unknown property 'tall'"):
        pw.weight("Advice", "human", "tall")


def test_published_pairs_labels_and_groups():
    ps = load_published_pairs()
    assert len(ps) == 5240
    y = ps.labels("human")
    assert int(y.sum()) == 2609  # 2,609 "A" per PROVENANCE.md
    assert [p.labels["human"] for p in ps.pairs[:10]] == list("BBBBBBBBBA")  # first labels, read by hand
    assert len(ps.subset("Advice")) == 400 and len(ps.subset("Others")) == 820
    assert len(ps.subset("w_constraints")) == 1418 and len(ps.subset("express_feeling")) == 121
    assert len(ps.subset("all")) == 5240


def test_hh_rlhf_pairs_split_at_last_turn():
    ctx, last = split_dialogue("\n\nHuman: hi\n\nAssistant: yo\n\nHuman: why\n\nAssistant: because")
    assert ctx == "Human: hi\n\nAssistant: yo\n\nHuman: why" and last == "because"
    ps = load_hh_rlhf(n=40)
    assert len(ps) == 40
    with open(shared_dir() / "data/hh_rlhf/harmless-base_test.jsonl") as f:
        rows = [json.loads(next(f)) for _ in range(40)]
    for p, row in zip(ps.pairs, rows, strict=True):
        chosen = p.response_a if p.labels["human"] == "A" else p.response_b
        rejected = p.response_b if p.labels["human"] == "A" else p.response_a
        assert row["chosen"].endswith(chosen) and row["rejected"].endswith(rejected)
        assert row["chosen"].startswith("\n\n" + p.prompt)
    n_a = sum(p.labels["human"] == "A" for p in ps.pairs)
    assert 0 < n_a < 40  # order alternates


def test_features_are_signs_of_score_differences():
    ps = PairSet([Pair("1", annotations={"x": (3, 1), "y": (0, 0)}, labels={"j": "A"}),
                  Pair("2", annotations={"x": (0, 2.5)}, labels={"j": "B"})])
    assert ps.features(["x", "y", "z"]).tolist() == [[1, 0, 0], [-1, 0, 0]]
    assert ps.labels("j").tolist() == [1.0, 0.0]
    assert torch.equal(ps.features(), ps.features(["x", "y"]))


GOOD = {"prompt": "q", "response_a": "x", "response_b": "y", "labels": {"human": "A"},
        "annotations": {"lengthy": [3, 1]}, "scenario": "Advice"}


def _write(tmp_path, rows):
    f = tmp_path / "pairs.jsonl"
    f.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return f


def test_malformed_rows_reported_with_line_numbers(tmp_path):
    rows = [GOOD,
            {**GOOD, "response_b": ""},                       # 2: missing response
            {**GOOD, "labels": {"human": "tie"}},             # 3: label outside the set
            {**GOOD, "annotations": {"tallness": [1, 0]}},    # 4: unknown property
            "{not json",                                      # 5
            "",                                               # 6: blank, ignored
            {**GOOD, "id": "z"}]                              # 7: good
    f = _write(tmp_path, rows)
    ps, problems = read_pairs_jsonl(f, on_error="skip", properties=PAPER_PROPERTIES)
    assert [p.id for p in ps.pairs] == ["line-1", "z"]
    assert [p.line for p in problems] == [2, 3, 4, 5]
    assert "response_b" in problems[0].message and "'tie'" in problems[1].message
    assert "unknown property 'tallness'" in problems[2].message and "not valid JSON" in problems[3].message
    assert ps.pairs[0].annotations == {"lengthy": (3.0, 1.0)} and ps.pairs[0].scenario == "Advice"
    with pytest.raises(SteerlabError, match=r"line 2: missing or empty 'response_b'"):
        read_pairs_jsonl(f)  # rejects by default
    # without a property list, any property name is accepted
    ps2, problems2 = read_pairs_jsonl(f, on_error="skip")
    assert [p.line for p in problems2] == [2, 3, 5] and len(ps2) == 3


def test_jsonl_round_trip(tmp_path):
    ps = PairSet([Pair("a", "q", "x", "y", {"h": "B"}, "S", ("c",), {"p": (1.0, 2.0)})])
    back, problems = read_pairs_jsonl(ps.write_jsonl(tmp_path / "o.jsonl"))
    assert problems == [] and back.pairs == ps.pairs


def test_hh_rlhf_lines_with_an_empty_turn_are_reported(tmp_path):
    f = tmp_path / "hh.jsonl"
    rows = [{"chosen": "\n\nHuman: a\n\nAssistant: yes", "rejected": "\n\nHuman: a\n\nAssistant: no"},
            {"chosen": "\n\nHuman: b\n\nAssistant:", "rejected": "\n\nHuman: b\n\nAssistant: no"},
            {"chosen": "\n\nHuman: c\n\nAssistant: ok", "rejected": "\n\nHuman: x\n\nAssistant: no"}]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(SteerlabError, match="hh.jsonl:2: the chosen final turn is empty"):
        load_hh_rlhf(f)
    problems = []
    ps = load_hh_rlhf(f, problems=problems)
    assert [p.id for p in ps.pairs] == ["hh-1"] and [(p.line, p.message[:20]) for p in problems] == [
        (2, "the chosen final tur"), (3, "chosen and rejected ")]
