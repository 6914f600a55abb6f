"""Standard samplers: greedy, temperature, top-k, top-p (nucleus), min-p."""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from steerlab.errors import SpecError
from steerlab.sampling.base import Sampler, check_logits, check_real, register_sampler


def _in_unit(name: str, value: float, *, closed_left: bool = False) -> float:
    interval = "[0, 1]" if closed_left else "(0, 1]"
    v = check_real(name, value, f"a number in {interval}")
    if not ((0.0 <= v <= 1.0) if closed_left else (0.0 < v <= 1.0)):
        raise SpecError(f"{name} must be in {interval}, got {value!r}")
    return v


@register_sampler
class Greedy(Sampler):
    """Argmax decoding (ties go to the lowest token id).

    >>> import torch
    >>> Greedy().sample(torch.tensor([[0.0, 2.0, 1.0]])).tolist()
    [1]
    """

    name = "greedy"
    greedy = True

    def __init__(self) -> None:
        self.temperature = 1.0

    def filter_logits(self, logits: Float[Tensor, "batch vocab"]) -> Float[Tensor, "batch vocab"]:
        check_logits(logits)
        out = torch.full_like(logits, float("-inf"), dtype=torch.float32)
        idx = logits.argmax(-1, keepdim=True)
        return out.scatter(-1, idx, 0.0)

    def sample(self, logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
        check_logits(logits)
        return logits.argmax(-1)

    def params(self) -> dict[str, Any]:
        return {}


@register_sampler
class Temperature(Sampler):
    """Pure temperature sampling from ``softmax(logits / T)``."""

    name = "temperature"


@register_sampler
class TopK(Sampler):
    """Keep the ``k`` most likely tokens."""

    name = "top_k"

    def __init__(self, k: int = 50, temperature: float = 1.0) -> None:
        super().__init__(temperature)
        if not check_real("top_k k", k, "an integer >= 1").is_integer() or k < 1:
            raise SpecError(f"top_k k must be an integer >= 1, got {k!r}")
        self.k = int(k)

    def truncate(self, logits: Tensor) -> Tensor:
        k = min(self.k, logits.shape[-1])
        kth = torch.topk(logits, k, dim=-1).values[..., -1:]
        return logits.masked_fill(logits < kth, float("-inf"))

    def params(self) -> dict[str, Any]:
        return {"k": self.k, "temperature": self.temperature}


@register_sampler
class TopP(Sampler):
    """Nucleus sampling: the smallest descending prefix with mass >= ``p`` (Holtzman et al. 2020)."""

    name = "top_p"

    def __init__(self, p: float = 0.9, temperature: float = 1.0) -> None:
        super().__init__(temperature)
        self.p = _in_unit("top_p p", p)

    def truncate(self, logits: Tensor) -> Tensor:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        mass_before = torch.cumsum(probs, dim=-1) - probs
        remove_sorted = mass_before >= self.p
        remove_sorted[..., 0] = False
        remove = remove_sorted.scatter(-1, order, remove_sorted)
        return logits.masked_fill(remove, float("-inf"))

    def params(self) -> dict[str, Any]:
        return {"p": self.p, "temperature": self.temperature}


@register_sampler
class MinP(Sampler):
    """Keep tokens with probability >= ``p`` x the top probability (Nguyen et al. 2024)."""

    name = "min_p"

    def __init__(self, p: float = 0.1, temperature: float = 1.0) -> None:
        super().__init__(temperature)
        self.p = _in_unit("min_p p", p, closed_left=True)

    def truncate(self, logits: Tensor) -> Tensor:
        probs = torch.softmax(logits, dim=-1)
        threshold = probs.max(dim=-1, keepdim=True).values * self.p
        return logits.masked_fill(probs < threshold, float("-inf"))

    def params(self) -> dict[str, Any]:
        return {"p": self.p, "temperature": self.temperature}
