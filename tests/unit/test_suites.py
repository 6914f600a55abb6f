"""Prompt suites: the committed refusal suite and the loader's validation."""

from __future__ import annotations

import json

import pytest

from steerlab._paths import shared_dir
from steerlab.errors import SpecError
from steerlab.suites import list_suites, load_suite, suite_from_dict


def _suite(**over):
    base = {
        "format": "steerlab.suites",
        "name": "t",
        "labels": {"a": "x", "b": "y"},
        "behavior": "a",
        "control": "b",
        "splits": ["train", "test"],
        "sources": [
            {"label": "a", "split": "train", "prompts": ["a1", "a2"]},
            {"label": "a", "split": "test", "prompts": ["a3"]},
            {"label": "b", "prompts": ["b1", "b2", "b3", "b4"], "split_sizes": {"train": 2, "test": 2}, "seed": 1},
        ],
    }
    base.update(over)
    return base


def test_refusal_suite_splits_never_overlap():
    s = load_suite("refusal")
    assert "refusal" in list_suites()
    assert (s.behavior, s.control) == ("harmful", "harmless")
    for label in s.labels:
        seen = [set(s.prompts(label, sp)) for sp in s.splits]
        for i in range(len(seen)):
            assert seen[i], (label, s.splits[i])
            for j in range(i + 1, len(seen)):
                assert not seen[i] & seen[j]
    assert not set(s.prompts("harmful")) & set(s.prompts("harmless"))
    assert len(s.prompts("harmful", "train")) == 260
    # the harmless split is the organisms' training split: test rows have noinput_index % 5 == 0
    rows = [
        json.loads(x)
        for x in (shared_dir() / "data/alpaca/harmless_instructions_2000.jsonl").read_text().split("\n")
        if x
    ]
    test_ids = {r["instruction"].strip() for r in rows if r["noinput_index"] % 5 == 0}
    assert set(s.prompts("harmless", "test")) == test_ids
    # deterministic partition: loading twice gives the same harmless train split
    assert load_suite("refusal").prompts("harmless", "train") == s.prompts("harmless", "train")


def test_chat_hook_uses_the_model_template(stories):
    s = load_suite("refusal")
    texts = s.model_inputs(stories, "harmless", "test")
    assert texts == s.prompts("harmless", "test")  # stories260K has no chat template: plain text

    class Templated:
        def format_chat(self, text, system=None):
            return f"<user>{text}</user>"

    assert s.model_inputs(Templated(), "harmful", "test")[0] == f"<user>{s.prompts('harmful', 'test')[0]}</user>"


def test_partition_is_seeded_and_complete():
    s = suite_from_dict(_suite())
    assert sorted(s.prompts("b")) == ["b1", "b2", "b3", "b4"]
    assert len(s.prompts("b", "train")) == 2
    assert suite_from_dict(_suite()).prompts("b", "train") == s.prompts("b", "train")
    many = _suite()
    many["sources"][2] = {
        "label": "b",
        "prompts": [f"b{i}" for i in range(40)],
        "split_sizes": {"train": 20, "test": 20},
    }
    seeded = [
        suite_from_dict({**many, "sources": many["sources"][:2] + [{**many["sources"][2], "seed": k}]}) for k in (1, 2)
    ]
    assert seeded[0].prompts("b", "train") != seeded[1].prompts("b", "train")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"sources": []}, "is empty"),
        ({"format": "other"}, "not a prompt suite"),
        ({"behavior": "c"}, "behavior label 'c' is not among the labels"),
        ({"sources": [{"split": "train", "prompts": ["x"]}]}, "unlabeled"),
        ({"sources": [{"label": "z", "split": "train", "prompts": ["x"]}]}, "label 'z', which is not declared"),
        (
            {
                "sources": [
                    {"label": "a", "split": "train", "prompts": ["x"]},
                    {"label": "a", "split": "test", "prompts": ["x"]},
                ]
            },
            "is in both the 'train' and 'test' splits",
        ),
        (
            {
                "sources": [
                    {"label": "a", "split": "train", "prompts": ["x"]},
                    {"label": "b", "split": "train", "prompts": ["x"]},
                ]
            },
            "has two labels",
        ),
        ({"sources": [{"label": "a", "split": "train", "prompts": ["x"]}]}, "label 'a' has no prompts in split 'test'"),
        ({"sources": [{"label": "a", "split": "dev", "prompts": ["x"]}]}, "split 'dev'"),
        ({"sources": [{"label": "a", "prompts": ["x"], "split_sizes": {"train": 5}}]}, "ask for 5 prompts"),
        ({"sources": [{"label": "a", "split": "train", "path": "missing.txt"}]}, "does not exist"),
    ],
)
def test_bad_suites_get_clear_errors(change, message):
    with pytest.raises(SpecError, match=message):
        suite_from_dict(_suite(**change))


def test_split_by_id():
    rows = [{"id": i, "q": f"q{i}"} for i in range(10)]
    meta = _suite()
    meta["sources"][2] = {
        "label": "b",
        "path": "rows.json",
        "field": "q",
        "split_by_id": {"field": "id", "modulo": 5, "splits": {"test": [0], "train": [1, 2, 3, 4]}},
    }
    import tempfile
    from pathlib import Path

    d = Path(tempfile.mkdtemp())
    (d / "rows.json").write_text(json.dumps(rows))
    s = suite_from_dict(meta, base_dir=d)
    assert s.prompts("b", "test") == ["q0", "q5"] and len(s.prompts("b", "train")) == 8
    meta["sources"][2]["split_by_id"] = {"field": "id", "modulo": 5}
    with pytest.raises(SpecError, match="split_by_id needs"):
        suite_from_dict(meta, base_dir=d)


def test_load_errors(tmp_path):
    with pytest.raises(SpecError, match="not found"):
        load_suite("no-such-suite")
    (tmp_path / "suite.json").write_text("{not json")
    with pytest.raises(SpecError, match="not valid JSON"):
        load_suite(tmp_path)
    (tmp_path / "suite.json").write_text(json.dumps(_suite()))
    s = load_suite(tmp_path)
    with pytest.raises(SpecError, match="no label 'c'"):
        s.prompts("c")
    with pytest.raises(SpecError, match="no split 'dev'"):
        s.prompts("a", "dev")
