"""Steering directions (steerlab.steering.directions) against vectors computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from steerlab.errors import SpecError
from steerlab.models.tiny import tiny_model
from steerlab.steering.directions import embedding_direction, random_direction


@pytest.fixture(scope="module")
def planted():
    """A tiny Llama whose embedding matrix is zero except three rows planted by hand; returns the handle and
    three texts, each exactly one token (the planted rows)."""
    h = tiny_model("llama")
    tok = h.tokenizer
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    single = [(tok.decode([i]), i) for i in range(3, tok.vocab_size)]
    single = [(t, i) for t, i in single if t.strip() and ids(t) == [i]]
    (a, ia), (b, ib) = single[:2]
    c, ic = next((t, i) for t, i in single[2:] if ids(f"{a} {t}") == [ia, i])  # "a c" is the two tokens
    w = h.model.get_input_embeddings().weight
    with torch.no_grad():
        w.zero_()
        w[ia, 0], w[ia, 1] = 3.0, 4.0  # a = (3, 4, 0, ...)
        w[ib, 1] = 4.0  # b = (0, 4, 0, ...)
        w[ic, 2] = 2.0  # c = (0, 0, 2, ...)
    return h, a, b, c


def _unit(d: int, **coords: float) -> torch.Tensor:
    v = torch.zeros(d)
    for k, x in coords.items():
        v[int(k[1:])] = x
    return v


def test_embedding_direction_is_the_unit_difference_of_mean_embeddings(planted):
    h, a, b, c = planted
    d = h.d_model
    torch.testing.assert_close(embedding_direction(h, a, b), _unit(d, e0=1.0))  # (3,4) - (0,4) = (3,0) -> e0
    torch.testing.assert_close(embedding_direction(h, a), _unit(d, e0=0.6, e1=0.8))  # (3,4) / 5
    # two tokens: mean((3,4,0), (0,0,2)) = (1.5, 2, 1), minus (0,4,0) = (1.5, -2, 1), norm sqrt(7.25)
    n = math.sqrt(7.25)
    torch.testing.assert_close(embedding_direction(h, f"{a} {c}", b), _unit(d, e0=1.5 / n, e1=-2 / n, e2=1 / n))


def test_embedding_direction_refuses_empty_and_equal_texts(planted):
    h, a, _, _ = planted
    with pytest.raises(SpecError, match="text '' has no tokens"):
        embedding_direction(h, "")
    with pytest.raises(SpecError, match="is zero"):
        embedding_direction(h, a, a)


def test_random_direction_is_a_seeded_unit_vector():
    v = random_direction(16, seed=3)
    assert v.shape == (16,) and float(v.norm()) == pytest.approx(1.0, abs=1e-6)
    assert torch.equal(v, random_direction(16, seed=3))
    assert not torch.allclose(v, random_direction(16, seed=4))
    with pytest.raises(SpecError, match="width d must be >= 1, got 0"):
        random_direction(0, seed=0)
