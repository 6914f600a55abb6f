"""Steering directions in a model's residual basis: pure functions returning unit vectors.

Example:
    >>> import steerlab as sl
    >>> h = sl.load("shared:stories260K")
    >>> v = embedding_direction(h, " happy", " sad")
    >>> v.shape == (h.d_model,), round(float(v.norm()), 4)
    (True, 1.0)
    >>> float(random_direction(4, seed=0).norm())
    1.0
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from steerlab.errors import SpecError
from steerlab.models.handle import ModelHandle


def embedding_direction(h: ModelHandle, plus: str, minus: str = "") -> Float[Tensor, " d_model"]:
    """Unit vector ``mean(embed(plus tokens)) - mean(embed(minus tokens))`` in the residual basis
    (``minus=""``: the mean embedding of ``plus`` alone)."""
    w = h.model.get_input_embeddings().weight.detach().float().cpu()

    def mean_embedding(text: str) -> Tensor:
        ids = h.tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise SpecError(f"text {text!r} has no tokens; expected a word or phrase")
        return w[ids].mean(0)

    vec = mean_embedding(plus) - (mean_embedding(minus) if minus else 0.0)
    norm = float(vec.norm())
    if norm == 0.0:
        raise SpecError(f"embed({plus!r}) - embed({minus!r}) is zero; choose two different texts")
    return vec / norm


def random_direction(d: int, seed: int) -> Float[Tensor, " d"]:
    """A seeded random unit vector of width ``d`` (the same ``seed`` gives the same vector)."""
    if int(d) < 1:
        raise SpecError(f"width d must be >= 1, got {d!r}")
    v = torch.randn(int(d), generator=torch.Generator().manual_seed(int(seed)))
    return v / v.norm()


def activation_norm(h: ModelHandle, site: str, prompts: list[str]) -> float:
    """Mean L2 norm of the activation at ``site`` over the prompts' real tokens: the scale a steering vector's
    size is judged against."""
    from steerlab.activations import capture

    return float(capture(h, list(prompts), [site]).masked(site).norm(dim=-1).mean())
