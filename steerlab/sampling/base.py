"""The sampler interface: one small class per decoding rule.

A sampler turns next-token logits ``[batch, vocab]`` into token ids ``[batch]``. The order of
operations is fixed and documented: **temperature first** (``logits / T``), then the rule's
truncation on ``softmax(logits / T)``, then a draw from the renormalized kept set. Every
sampler is also usable as a Hugging Face ``LogitsProcessor`` (``sampler.as_logits_processor()``)
that returns the tempered, truncated logits (removed tokens at ``-inf``); pass it with
``do_sample=True`` and *no* other HF temperature/top-k/top-p, since the processor already
applied them.

Example:
    >>> import torch
    >>> from steerlab.sampling import make_sampler
    >>> s = make_sampler("top_p", p=0.9, temperature=0.7)
    >>> s.sample(torch.randn(2, 50), generator=torch.Generator().manual_seed(0)).shape
    torch.Size([2])
"""

from __future__ import annotations

import math
import numbers
from typing import Any, ClassVar

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformers import LogitsProcessor

from steerlab.errors import SpecError

_REGISTRY: dict[str, type[Sampler]] = {}


def register_sampler(cls: type[Sampler]) -> type[Sampler]:
    """Class decorator adding a sampler to the registry under ``cls.name``."""
    _REGISTRY[cls.name] = cls
    return cls


def available_samplers() -> list[str]:
    """Names accepted by :func:`make_sampler`."""
    return sorted(_REGISTRY)


def make_sampler(name: str, **params: Any) -> Sampler:
    """Build a sampler by name, e.g. ``make_sampler("min_p", p=0.1, temperature=1.5)``."""
    if name not in _REGISTRY:
        raise SpecError(f"unknown sampler {name!r}; expected one of {available_samplers()}")
    try:
        return _REGISTRY[name](**params)
    except SpecError:
        raise
    except (TypeError, ValueError) as e:  # an unknown parameter, or a value a rule's check could not convert
        raise SpecError(f"bad parameters {params!r} for sampler {name!r}: {e}") from e


def check_real(name: str, value: Any, expected: str) -> float:
    """``value`` as a float if it is a real number (not a bool, not a string), else a SpecError naming it.

    >>> check_real("top_p p", 0.5, "a number in (0, 1]")
    0.5
    """
    if not _is_real(value):
        raise SpecError(f"{name} must be {expected}, got {value!r}")
    return float(value)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_temperature(temperature: float) -> float:
    t = float(temperature) if _is_real(temperature) else math.nan
    if not math.isfinite(t) or t <= 0:
        raise SpecError(
            f"temperature must be a finite number > 0 when sampling, got {temperature!r}; "
            "use the 'greedy' sampler for deterministic argmax decoding"
        )
    return t


def check_logits(logits: Tensor) -> None:
    if logits.ndim != 2:
        raise SpecError(f"logits must have shape [batch, vocab], got {tuple(logits.shape)}")
    if torch.isnan(logits).any():
        rows = torch.isnan(logits).any(-1).nonzero().flatten().tolist()
        raise SpecError(f"NaN in logits at batch rows {rows}; expected finite or -inf logits")


def _refuse_non_finite(logits: Tensor, scaled: Tensor, temperature: float) -> None:
    """The one-line error for logits whose tempered rows are not all usable (the slow path of a failed check)."""
    for bad, what in (
        (torch.isposinf(logits).any(-1), "+inf in logits"),
        (torch.isposinf(scaled).any(-1), "+inf in logits / temperature"),
        (torch.isnan(scaled).any(-1), "NaN in logits / temperature"),  # 0 / a temperature that is 0 in float32
        (torch.isneginf(logits).all(-1), "every logit is -inf"),
        (torch.isneginf(scaled).all(-1), "every logit / temperature is -inf"),
    ):
        if bool(bad.any()):
            rows = bad.nonzero().flatten().tolist()
            tiny = "/ temperature" in what
            raise SpecError(
                f"{what} at batch rows {rows}; expected finite or -inf logits, at least one finite per row"
                + (f" (a tiny temperature can overflow float32, got temperature={temperature!r})" if tiny else "")
            )
    raise SpecError(f"logits / temperature are not finite; expected finite or -inf logits (T={temperature!r})")


class Sampler:
    """Base class. Subclasses set ``name`` and implement :meth:`truncate`."""

    name: ClassVar[str] = "base"
    greedy: ClassVar[bool] = False

    def __init__(self, temperature: float = 1.0) -> None:
        self.temperature = check_temperature(temperature)

    # -- the rule -----------------------------------------------------------------------------
    def truncate(self, logits: Float[Tensor, "batch vocab"]) -> Float[Tensor, "batch vocab"]:
        """Given tempered logits, return them with removed tokens set to ``-inf``."""
        return logits

    # -- shared machinery ---------------------------------------------------------------------
    def filter_logits(self, logits: Float[Tensor, "batch vocab"]) -> Float[Tensor, "batch vocab"]:
        """Temperature, then truncation. Output is float32 with ``-inf`` for removed tokens."""
        if logits.ndim != 2:
            check_logits(logits)  # the shape's error
        scaled = logits.float() / self.temperature
        # one reduction per step: a row's max is finite unless the row holds NaN or +inf, or nothing but -inf
        # (what a finite row becomes when a tiny temperature turns every logit below 0 into -inf)
        top = scaled.amax(-1) if scaled.shape[-1] else scaled.new_zeros(scaled.shape[0])
        if not bool(torch.isfinite(top).all()):
            check_logits(logits)  # NaN in the logits themselves: that error
            _refuse_non_finite(logits, scaled, self.temperature)
        return self.truncate(scaled)

    def sample(
        self, logits: Float[Tensor, "batch vocab"], generator: torch.Generator | None = None
    ) -> Int[Tensor, " batch"]:
        """Draw one token id per row."""
        filtered = self.filter_logits(logits)
        probs = torch.softmax(filtered, dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)

    def params(self) -> dict[str, Any]:
        """Constructor parameters (JSON-serializable), for artifacts and reproducibility."""
        return {"temperature": self.temperature}

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "params": self.params()}

    def as_logits_processor(self) -> SamplerLogitsProcessor:
        """Wrap as a Hugging Face ``LogitsProcessor`` (tempered, truncated logits out)."""
        return SamplerLogitsProcessor(self)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


class SamplerLogitsProcessor(LogitsProcessor):
    """Any :class:`Sampler` as a ``transformers.LogitsProcessor`` (returns tempered, truncated logits)."""

    def __init__(self, sampler: Sampler) -> None:
        self.sampler = sampler

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        return self.sampler.filter_logits(scores).to(scores.dtype)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.sampler!r})"
