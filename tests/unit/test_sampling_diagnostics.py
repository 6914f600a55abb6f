"""Per-step diagnostics: consistent with the samplers, JSON-able, plotted."""

from __future__ import annotations

import json

import pytest
import torch

from steerlab.decoding.diagnostics import entropy, step_diagnostics, truncation_stats
from steerlab.decoding.figures import per_step_figure
from steerlab.errors import SpecError
from steerlab.sampling import make_sampler


def _logits(seed: int = 0, batch: int = 6, vocab: int = 400) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, vocab, generator=g) * torch.linspace(0.3, 4.0, batch)[:, None]
    x[0, 10:20] = float("-inf")
    return x


@pytest.mark.parametrize("variant", ["paper", "hf", "reference"])
@pytest.mark.parametrize("temperature", [0.7, 1.0, 2.5])
def test_step_diagnostics_agree_with_the_samplers(variant, temperature):
    x = _logits()
    d = step_diagnostics(x, temperature=temperature, alpha=0.4, variant=variant, top_p=0.9, min_p=0.1)
    json.dumps(d)  # plain JSON
    assert d["units"] == "nats" and d["temperature"] == temperature
    tempered = x / temperature
    p = torch.softmax(tempered, -1)
    assert d["entropy"] == pytest.approx(torch.special.entr(p).sum(-1).tolist(), abs=1e-5)
    for key, sampler in (
        ("top_h", make_sampler("top_h", alpha=0.4, variant=variant, temperature=temperature)),
        ("top_p", make_sampler("top_p", p=0.9, temperature=temperature)),
        ("min_p", make_sampler("min_p", p=0.1, temperature=temperature)),
    ):
        kept = torch.isfinite(sampler.filter_logits(x))
        assert d[key]["kept"] == kept.sum(-1).tolist()
        mass = (p * kept).sum(-1)
        assert d[key]["kept_mass"] == pytest.approx(mass.tolist(), abs=1e-5)
        q = p * kept / mass[:, None]
        assert d[key]["kept_entropy"] == pytest.approx(torch.special.entr(q).sum(-1).tolist(), abs=1e-4)
    assert all(m >= 0.9 - 1e-6 for m in d["top_p"]["kept_mass"])
    if variant == "paper":
        budget = [0.4 * h for h in d["entropy"]]
        assert d["top_h"]["budget"] == pytest.approx(budget, rel=1e-5, abs=1e-5)
        assert all(hq <= b + 1e-4 for hq, b in zip(d["top_h"]["kept_entropy"], budget, strict=True))


def test_truncation_stats_and_entropy():
    t = torch.tensor([[0.0, 0.0, 0.0, 0.0]])
    cut = torch.tensor([[0.0, 0.0, float("-inf"), float("-inf")]])
    s = truncation_stats(t, cut)
    assert s["kept"].tolist() == [2]
    assert s["kept_mass"].item() == pytest.approx(0.5)
    assert s["kept_entropy"].item() == pytest.approx(torch.log(torch.tensor(2.0)).item())
    assert entropy(t).item() == pytest.approx(torch.log(torch.tensor(4.0)).item())


def test_step_diagnostics_validates():
    with pytest.raises(SpecError, match="alpha"):
        step_diagnostics(_logits(), alpha=0.0)
    with pytest.raises(SpecError, match="temperature"):
        step_diagnostics(_logits(), temperature=0.0)
    x = _logits()
    x[2, 5] = float("nan")
    with pytest.raises(SpecError, match="NaN"):
        step_diagnostics(x)
    d = step_diagnostics(_logits()[0])  # one row given as a vector: the diagnostics of that row
    p = torch.softmax(_logits()[0], -1)
    assert d["entropy"] == pytest.approx([float(torch.special.entr(p).sum())], abs=1e-5)


def test_per_step_figure():
    d = step_diagnostics(_logits(batch=5), temperature=1.5)
    d["token_texts"] = ["a", "b", "c", "d", "e"]
    fig = per_step_figure(d, title="t")
    names = [tr.name for tr in fig.data]
    assert names[:3] == ["top-H (alpha=0.4, paper)", "top-p (p=0.9)", "min-p (p=0.1)"]
    assert "H(p)" in names and "top-H budget" in names
    assert list(fig.data[0].y) == d["top_h"]["kept"]
