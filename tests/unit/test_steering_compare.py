"""Side-by-side comparisons: building, metrics, artifact round trip, figure (steerlab.steering)."""

from __future__ import annotations

import pytest
import torch

import steerlab as sl
from steerlab.artifacts import read_artifact, write_artifact
from steerlab.errors import SteerlabError
from steerlab.interventions import AddVector, InterventionSet
from steerlab.steering.artifact import comparison_payload, read_comparison
from steerlab.steering.compare import Comparison, first_divergence
from steerlab.steering.figures import token_prob_figure
from steerlab.viz.tokens import TokenStep


@pytest.fixture(scope="module")
def comparison(stories):
    ivs = InterventionSet([AddVector(site="blocks.2.resid_post", vector=torch.randn(64, generator=torch.Generator()
                                     .manual_seed(0)), scale=12.0, name="push")])
    prompts = ["Once upon a time", "The dog"]
    base = sl.generate(stories, prompts, max_new_tokens=10, output_scores=True)
    steered = sl.generate(stories, prompts, interventions=ivs, max_new_tokens=10, output_scores=True)
    return Comparison.from_results(stories.tokenizer, {"baseline": base, "steered": steered}, interventions=ivs), base


def _step(i: int, tok: int) -> TokenStep:
    return TokenStep(i, tok, str(tok), 0.5, 0.5, ())


def test_first_divergence():
    a = [_step(0, 1), _step(1, 2), _step(2, 3)]
    assert first_divergence(a, a) is None
    assert first_divergence(a, a[:2] + [_step(2, 9)]) == 2
    assert first_divergence(a, a[:2]) == 2  # one stopped early


def test_texts_and_metrics(comparison):
    cmp, base = comparison
    assert cmp.labels == ["baseline", "steered"]
    assert cmp.texts("baseline") == base.texts
    m = cmp.metrics()
    assert m["n_prompts"] == 2
    changed = [a != b for a, b in zip(cmp.texts("baseline"), cmp.texts("steered"), strict=True)]
    assert any(changed) and m["changed_fraction"] == sum(changed) / 2  # the push changed something
    # the model's probability of each chosen token, from the raw logits of the baseline run
    probs = [
        torch.softmax(base.scores[t][row], -1)[tok].item()
        for row, ids in enumerate(base.token_ids)
        for t, tok in enumerate(ids)
    ]
    assert m["baseline_mean_token_prob"] == pytest.approx(sum(probs) / len(probs), rel=1e-6)


def test_artifact_round_trip_keeps_steps_settings_and_interventions(comparison, tmp_path):
    cmp, _ = comparison
    path = write_artifact(tmp_path / "run", **comparison_payload(cmp))
    art = read_artifact(path)
    assert art.kind == "generation_compare"
    assert art.config["model"] == "shared:stories260K"
    back = read_comparison(art)
    assert back.prompts == cmp.prompts and back.labels == cmp.labels
    assert back.steps == cmp.steps
    assert back.settings["steered"]["interventions"][0]["type"] == "add_vector"
    iv = back.interventions.items[0]
    assert torch.equal(iv.vector, cmp.interventions.items[0].vector) and iv.scale == 12.0


def test_from_artifact_rejects_other_kinds(tmp_path):
    art = read_artifact(write_artifact(tmp_path / "x", kind="capture", config={}))
    with pytest.raises(SteerlabError, match="expected 'generation_compare'"):
        read_comparison(art)


def test_mismatched_prompts_are_refused(stories):
    a = sl.generate(stories, ["Once"], max_new_tokens=2, output_scores=True)
    b = sl.generate(stories, ["Twice"], max_new_tokens=2, output_scores=True)
    with pytest.raises(SteerlabError, match="different prompts"):
        Comparison.from_results(stories.tokenizer, {"a": a, "b": b})


def test_figure_has_one_trace_per_run_with_the_token_probabilities(comparison):
    cmp, _ = comparison
    fig = token_prob_figure({lab: cmp.steps[lab][0] for lab in cmp.labels})
    assert [t.name for t in fig.data] == ["baseline", "steered"]
    assert list(fig.data[1].y) == [s.prob for s in cmp.steps["steered"][0]]
    tag = token_prob_figure({"x": [TokenStep(0, 1, "<s>", 0.5, 0.5, (("<s>", 0.5),))]})
    assert "&lt;s&gt;" in tag.data[0].text[0] and "<s>" not in tag.data[0].text[0]  # plotly reads hover as HTML
