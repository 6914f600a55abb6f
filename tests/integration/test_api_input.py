"""The Python API's bad input: one-line SpecErrors before anything runs, nothing silently coerced,
truncated or split into characters (each case from a new-user review; each fails without its fix)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import steerlab as sl
from steerlab.errors import SpecError, SteerlabError
from steerlab.interventions import AddVector, ExpertMask, InterventionSet, Patch, RegionEdit
from steerlab.interventions.base import parse_intervention
from steerlab.steering.apply import ablate_everywhere
from steerlab.steering.extract import extract_directions

SITE = "blocks.1.resid_post"


def one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text and "Traceback" not in text
    return text


def test_a_whole_activation_patch_is_checked_before_anything_runs(stories):
    enc = stories.encode(["Once upon"])
    b, p = enc["input_ids"].shape
    value = torch.randn(b, p, stories.d_model)
    patch = Patch(site=SITE, value=value)
    with pytest.raises(SpecError) as e:  # generation sees one new position per step after the first
        sl.generate(stories, ["Once upon"], interventions=[patch], max_new_tokens=3)
    assert "patch value at 'blocks.1.resid_post' replaces the whole activation of one plain forward" in one_line(e)
    with pytest.raises(SpecError) as e:  # another batch shape, before the forward runs
        sl.forward(stories, ["Once upon", "The dog ran"], interventions=[patch])
    assert f"is for inputs of [batch, pos] [{b}, {p}], got [2, " in one_line(e)
    two = ["Once upon", "The dog"]
    whole = Patch(site=SITE, value=torch.zeros(*stories.encode(two)["input_ids"].shape, stories.d_model))
    with pytest.raises(SteerlabError, match="runs batches of 1; pass batch_size >= 2"):
        sl.capture(stories, two, [SITE], interventions=[whole], batch_size=1)
    assert torch.equal(sl.capture(stories, two, [SITE], interventions=[whole])[SITE], torch.zeros_like(whole.value))
    # the right shape runs, and the site then holds the value (recorded after the edit)
    _, rec = sl.forward(stories, enc, interventions=[patch], record=SITE, return_records=True)
    assert torch.equal(rec[SITE][0], value)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in stories.model.modules())


@pytest.mark.parametrize(
    ("prompts", "expected"),
    [
        (None, "prompts must be a string or a list of strings, got NoneType"),
        (5, "prompts must be a string or a list of strings, got int"),
        (b"Hi", "prompts must be a string or a list of strings, got bytes"),
        (["ok", "a\ud800b"], "prompt 1 is not valid Unicode text (surrogates not allowed at character 1)"),
    ],
)
def test_prompts_that_are_not_text(stories, prompts, expected):
    with pytest.raises(SpecError) as e:
        sl.generate(stories, prompts, max_new_tokens=2)
    assert one_line(e) == expected
    with pytest.raises(SpecError) as e:  # forward also takes token ids, and says so
        sl.forward(stories, prompts)
    assert one_line(e) == expected if isinstance(prompts, list) else one_line(e).startswith(
        "inputs must be prompts, an encoding dict or a token id tensor, got ")


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"max_new_tokens": None}, "max_new_tokens must be an integer >= 1, got None"),
        ({"max_new_tokens": 2.5}, "max_new_tokens must be an integer >= 1, got 2.5"),
        ({"seed": "x"}, "seed must be an integer in [-2**63, 2**64), got 'x'"),
        ({"seed": 1.5}, "seed must be an integer in [-2**63, 2**64), got 1.5"),  # was truncated to 1
        ({"seed": True}, "seed must be an integer in [-2**63, 2**64), got True"),
        ({"seed": 2**70}, f"seed must be an integer in [-2**63, 2**64), got {2**70}"),
    ],
)
def test_generation_numbers(stories, kwargs, expected):
    with pytest.raises(SpecError) as e:
        sl.generate(stories, ["Hi"], sampler="top_p", **{"max_new_tokens": 2, **kwargs})
    assert one_line(e) == expected


def test_numpy_integers_are_integers(stories):
    a = sl.generate(stories, ["Hi"], sampler="top_p", max_new_tokens=np.int64(3), seed=np.int64(7))
    b = sl.generate(stories, ["Hi"], sampler="top_p", max_new_tokens=3, seed=7)
    assert a.token_ids == b.token_ids and len(a.token_ids[0]) == 3


@pytest.mark.parametrize(
    ("ids", "mask", "expected"),
    [
        (torch.tensor([[5, 512]]), None, "input_ids hold token ids 5..512; expected ids in 0..511"),
        (torch.tensor([[-1, 5]]), None, "input_ids hold token ids -1..5; expected ids in 0..511"),
        (torch.tensor([[1.0, 2.0]]), None, "input_ids must be a non-empty integer tensor of shape [batch, pos], got "
         "shape (1, 2), dtype torch.float32"),
        (torch.tensor([1, 2]), None, "input_ids must be a non-empty integer tensor of shape [batch, pos], got "
         "shape (2,)"),
        (torch.tensor([[1, 2]]), torch.ones(1, 3), "attention_mask must be a tensor of the input_ids' shape (1, 2), "
         "got shape (1, 3)"),
        (torch.tensor([[1, 2]]), torch.tensor([[1, 2]]), "attention_mask must hold only 0 and 1, got values [1, 2]"),
    ],
)
def test_token_ids_for_forward(stories, ids, mask, expected):
    with pytest.raises(SpecError) as e:
        sl.forward(stories, ids, attention_mask=mask)
    assert one_line(e).startswith(expected)


def test_a_string_is_one_site_not_its_characters(stories):
    prompts = ["Once upon a time", "The dog"]
    one = sl.capture(stories, prompts, SITE)
    assert one.sites == [SITE]
    assert torch.equal(one[SITE], sl.capture(stories, prompts, [SITE])[SITE])
    out = sl.generate(stories, prompts, max_new_tokens=2, record=SITE)
    assert list(out.records) == [SITE]
    v = torch.randn(stories.d_model)
    as_str = ablate_everywhere(stories, v, components="resid_pre")
    as_list = ablate_everywhere(stories, v, components=["resid_pre"])
    assert [iv.site for iv in as_str] == [iv.site for iv in as_list] == [f"blocks.{i}.resid_pre" for i in range(5)]
    assert [iv.site for iv in ablate_everywhere(stories, v, layers=2)] == [
        "blocks.2.resid_pre", "blocks.2.resid_mid", "blocks.2.resid_post"]
    with pytest.raises(SpecError) as e:  # was skipped without a word when another layer was valid
        ablate_everywhere(stories, v, layers=[0, 5])
    assert one_line(e) == "layers [5] are not layers of shared:stories260K; expected integers in 0..4"
    with pytest.raises(SpecError, match=r"sites must be a name or a list of names, got 3 \(int\) among them"):
        sl.capture(stories, prompts, [SITE, 3])


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (lambda: AddVector(site=SITE, vector=torch.ones(4), scale=True), "add_vector.scale: Input should be a valid "
         "number (got True)"),
        (lambda: AddVector(site=SITE, vector=torch.ones(4), scale="2"), "add_vector.scale: Input should be a valid "
         "number (got '2')"),
        (lambda: AddVector(site=SITE, vector=torch.ones(4), positions=[True]), "add_vector.positions: positions must "
         "be 'all', 'prompt', 'generated', {'last': k} with k >= 1, or a non-empty list of prompt positions >= 0 "
         "(got [True])"),
        (lambda: AddVector(site=SITE, vector=torch.ones(4), positions=[]), "(got [])"),
        (lambda: AddVector(site=SITE, vector=torch.ones(4), positions={"last": "2"}), "(got {'last': '2'})"),
        (lambda: ExpertMask(layer=1, off=[0], positions=[1.5]), "expert_mask.positions: positions must be"),
        (lambda: ExpertMask(layer="1"), "expert_mask.layer: Input should be a valid integer (got '1')"),
        (lambda: RegionEdit(params=["p"], counts=[2], indices=[0.5, 3.0]), "region_edit.indices: indices must be a "
         "1-D integer tensor, got dtype torch.float32"),  # was truncated to [0, 3]
        (lambda: parse_intervention({"type": "expert_mask", "layer": 1, "scale": {"x": 0.5}}),
         "expert_mask.scale.x.[key]: Input should be a valid integer"),
    ],
)
def test_no_quiet_coercion(build, expected):
    with pytest.raises(SpecError) as e:
        build()
    text = one_line(e)
    assert expected in text and "Value error" not in text and text.count("invalid intervention") == 1


def test_python_and_json_spellings_still_parse(stories):
    iv = AddVector(site=SITE, vector=torch.ones(stories.d_model), positions=(np.int64(0), 1), scale=np.float32(2))
    assert iv.positions == [0, 1] and type(iv.positions[0]) is int and iv.scale == 2.0
    assert ExpertMask(layer=1, off=(0, 2)).off == [0, 2]
    # JSON object keys are strings: {"2": 0.5} is expert 2
    assert parse_intervention({"type": "expert_mask", "layer": 1, "scale": {"2": 0.5}}).scale == {2: 0.5}


def test_limit_must_be_positive(stories):
    for limit in (-1, 0, 1.5):
        with pytest.raises(SpecError) as e:
            extract_directions(stories, "organism-refusal", [SITE], limit=limit)
        assert one_line(e) == f"limit must be an integer >= 1 or None, got {limit!r}"
    assert extract_directions(stories, "organism-refusal", [SITE], limit=2).meta["n_behavior"] == 2


def test_a_spec_of_another_format_or_version_is_refused(stories, tmp_path):
    good = tmp_path / "s.json"
    InterventionSet([AddVector(site=SITE, vector=torch.ones(stories.d_model))]).save(good)
    spec = json.loads(good.read_text())
    for key, value, shown in (("format", "steerlab.capture", "format 'steerlab.capture' version 1"),
                              ("version", 2, "format 'steerlab.interventions' version 2")):
        bad = tmp_path / f"{key}.json"
        bad.write_text(json.dumps({**spec, key: value}))
        with pytest.raises(SpecError) as e:
            InterventionSet.load(bad)
        assert f"has {shown}; expected 'steerlab.interventions' version 1" in one_line(e)
    hand = tmp_path / "hand.json"  # hand-written JSON names neither
    hand.write_text(json.dumps({"interventions": [{"type": "add_vector", "site": SITE, "vector": [0.0] * 64}]}))
    assert len(InterventionSet.load(hand)) == 1


def test_nan_logits_are_an_error_under_greedy_decoding_too(stories):
    """A weight edit that overflows (the final norm set to 3e38) makes NaN logits: a sampler refused them, greedy
    decoding took their argmax as a token; now both raise the same one-line error."""
    from steerlab.interventions import ParamEdit

    iv = [ParamEdit(param="model.norm.weight", op="set", value=3e38)]
    assert torch.isnan(sl.forward(stories, ["Once upon"], interventions=iv)).any()
    for sampler in ("greedy", "top_p"):
        with pytest.raises(SpecError) as e:
            sl.generate(stories, ["Once upon"], interventions=iv, sampler=sampler, max_new_tokens=3)
        assert one_line(e) == "NaN in logits at batch rows [0]; expected finite or -inf logits"
    assert sl.generate(stories, ["Once upon"], max_new_tokens=3).texts == ["a time,"]  # the edit is gone
