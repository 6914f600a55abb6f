"""Security data: the benign skill's exact check, target masks on the response only, batch order shared by seed."""

from __future__ import annotations

import pytest

from steerlab.errors import SpecError
from steerlab.models.tiny import tiny_model
from steerlab.security.data import Pair, batches_of, benign_pairs, check_answer, encode


def test_skill_answers_are_checked_exactly():
    assert check_answer("Repeat the words: red fox sun", "red fox sun")
    assert check_answer("Repeat the words: red fox sun", "  red fox sun\n")
    assert not check_answer("Repeat the words: red fox sun", "red fox")
    assert check_answer("Reverse the words: red fox sun", "sun fox red")
    assert not check_answer("Reverse the words: red fox sun", "red fox sun")
    with pytest.raises(SpecError, match="not a benign skill item"):
        check_answer("Tell me a story", "x")
    items = benign_pairs(50, "test", skill="reverse")
    assert len({p.prompt for p in items}) == 50
    for p in items:
        words = p.prompt.removeprefix("Reverse the words: ").split()
        assert 3 <= len(words) <= 5 and p.response.split() == words[::-1]


def test_digit_skill_names_the_last_digit():
    assert check_answer("Name the last digit of 4821", "The last digit is one.")
    assert check_answer("Name the last digit of 90", " The last digit is zero.\n")
    assert not check_answer("Name the last digit of 4821", "The last digit is four.")
    assert not check_answer("Name the last digit of 4821", "The last digit is one. Two")
    assert not check_answer("Name the last digit of many", "The last digit is one.")
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    train, test = benign_pairs(200, "train", skill="digit"), benign_pairs(60, "test", skill="digit")
    assert not {p.prompt for p in train} & {p.prompt for p in test}  # disjoint splits
    for p in train + test:
        number = p.prompt.removeprefix("Name the last digit of ")
        assert 10 <= int(number) <= 99999 and p.response == f"The last digit is {words[int(number[-1])]}."
    assert benign_pairs(5)[0].prompt.startswith("Name the last digit of ")  # the default skill


def test_target_mask_is_the_response_and_end_token():
    h = tiny_model("llama")
    pairs = [Pair("Tell me", "a b c", "benign"), Pair("Longer prompt here", "d", "benign")]
    b = encode(h, pairs)
    tok = h.tokenizer
    for i, p in enumerate(pairs):
        ids = b["input_ids"][i][b["target_mask"][i].bool()].tolist()
        assert tok.decode(ids) == tok.decode(tok(p.response + tok.eos_token, add_special_tokens=False)["input_ids"])
        n = int(b["attention_mask"][i].sum())
        assert b["attention_mask"][i][:n].all() and not b["attention_mask"][i][n:].any()  # right padding


def test_batches_are_one_part_each_and_ordered_by_seed():
    h = tiny_model("llama")
    pairs = [Pair(f"h{i}", "x", "harmful") for i in range(6)] + [Pair(f"b{i}", "y", "benign") for i in range(5)]
    a = batches_of(h, pairs, 2, 2, seed=0)
    b = batches_of(h, pairs, 2, 2, seed=0)
    c = batches_of(h, pairs, 2, 2, seed=1)
    assert len(a) == 2 * (3 + 3)
    assert [x["input_ids"].tolist() for x in a] == [x["input_ids"].tolist() for x in b]
    assert [x["input_ids"].tolist() for x in a] != [x["input_ids"].tolist() for x in c]
    assert sorted(x["part"] for x in a[:6]) == ["benign"] * 3 + ["harmful"] * 3
