"""Where one forward pass sits in a sequence, and the position masks of each selector.

Every row is measured in its own coordinates: position 0 is its first real token (left padding
excluded). A forward covers ``seq`` tokens starting ``offset`` tokens into the padded sequence
(``offset`` is the KV-cache length; 0 without a cache). With ``prompt_len`` the padded prompt
length, a forward at generation step ``s`` has ``offset = prompt_len + s - seq``, so selectors mean
the same thing with and without the KV cache.

A site may hold fewer positions than its forward: during generation the logits are computed for the
last position only (``logits_to_keep``). :meth:`StepState.window` is the forward seen from such a site
(its columns are the forward's last ones), so a selector there acts on exactly the positions it names.

Example:
    >>> import torch
    >>> st = StepState.start(torch.tensor([[0, 1, 1], [1, 1, 1]]), prompt_len=3)
    >>> st.at_step(0, seq=3).mask({"last": 1}, torch.device("cpu")).tolist()
    [[False, False, True], [False, False, True]]
    >>> st.window(1).offset, st.window(1).mask("prompt", torch.device("cpu"))  # the logits of position 2
    (2, None)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from steerlab.errors import SpecError
from steerlab.interventions.base import LastK

MaskOrAll = Bool[Tensor, "batch seq"] | None | bool  # None: every position; False: none


@dataclass
class StepState:
    """Position bookkeeping for one forward: built once per run, advanced per step."""

    pad_lens: Int[Tensor, " batch"]
    prompt_len: int
    batch: int
    step: int = 0
    seq: int = 0
    offset: int = 0
    memo: dict[Any, Any] = field(default_factory=dict)  # what lasts across the run's forwards (shared by windows)
    _cache: dict[str, MaskOrAll] = field(default_factory=dict)
    _windows: dict[int, StepState] = field(default_factory=dict)

    @classmethod
    def start(cls, attention_mask: Tensor | None, prompt_len: int, batch: int | None = None) -> StepState:
        if attention_mask is not None:
            pad = (attention_mask.cumsum(-1) == 0).sum(-1).cpu()
            batch = attention_mask.shape[0]
        else:
            batch = int(batch or 1)
            pad = torch.zeros(batch, dtype=torch.long)
        return cls(pad_lens=pad, prompt_len=int(prompt_len), batch=int(batch))

    def at_step(self, step: int, seq: int) -> StepState:
        """Move to generation step ``step`` whose forward covers ``seq`` tokens."""
        if step != self.step or seq != self.seq or not self._cache:
            self.step, self.seq = step, seq
            self.offset = max(self.prompt_len + step - seq, 0)
            self._cache, self._windows = {}, {}
        return self

    def window(self, seq: int) -> StepState:
        """This forward seen from a site holding only its last ``seq`` positions (the logits during
        generation): same step and run memo, the offset moved so that each column keeps its position."""
        if seq == self.seq:
            return self
        if seq > self.seq:
            raise ValueError(f"a site of {seq} positions in a forward of {self.seq}")
        if seq not in self._windows:
            self._windows[seq] = StepState(self.pad_lens, self.prompt_len, self.batch, self.step, seq,
                                           self.offset + self.seq - seq, self.memo)
        return self._windows[seq]

    def mask(self, positions: Any, device: torch.device) -> MaskOrAll:
        """``None`` (every position), ``False`` (none in this forward) or a ``[batch, seq]`` mask."""
        if positions == "all":
            return None
        if isinstance(positions, dict):
            positions = LastK(**positions)
        key = repr(positions)
        if key in self._cache:
            return self._cache[key]
        pad = self.pad_lens.to(device)
        cols = self.offset + torch.arange(self.seq, device=device)
        pos = cols.unsqueeze(0) - pad.unsqueeze(1)  # [batch, seq] in each row's own coordinates
        prompt_real = (self.prompt_len - pad).unsqueeze(1)
        if positions == "prompt":
            m = (pos >= 0) & (pos < prompt_real)
        elif positions == "generated":
            m = pos >= prompt_real
        elif isinstance(positions, LastK):
            m = (pos >= prompt_real - positions.last) & (pos < prompt_real)
        else:
            wanted = torch.tensor(list(positions), device=device, dtype=torch.long)
            m = torch.isin(pos, wanted) & (pos < prompt_real)
        out: MaskOrAll
        if bool(m.all()):
            out = None
        elif not bool(m.any()):
            out = False
        else:
            out = m
        self._cache[key] = out
        return out


def check_positions(selectors: list[Any], attention_mask: Int[Tensor, "batch pos"]) -> None:
    """Raise :class:`SpecError` where a selector reaches past a row's prompt.

    Explicit positions and ``{"last": k}`` count within each row's own prompt (padding excluded),
    so ``positions=[100]`` on a 7-token prompt, or ``{"last": 1000}``, is an error naming the row
    and its length rather than a silent no-op or a silent ``"prompt"``.

    Example:
        >>> check_positions([[0, 2]], torch.tensor([[0, 1, 1, 1]]))
        >>> check_positions([{"last": 4}], torch.tensor([[0, 1, 1, 1]]))
        Traceback (most recent call last):
        ...
        steerlab.errors.SpecError: positions {'last': 4} ask for the last 4 prompt tokens, but prompt row 0 has 3 tokens
    """
    if not selectors:
        return
    lengths = attention_mask.long().sum(-1).tolist()
    shortest = min(range(len(lengths)), key=lengths.__getitem__)
    n = lengths[shortest]
    for sel in selectors:
        if isinstance(sel, (dict, LastK)):
            k = (sel if isinstance(sel, LastK) else LastK(**sel)).last
            if k > n:
                raise SpecError(
                    f"positions {{'last': {k}}} ask for the last {k} prompt tokens, "
                    f"but prompt row {shortest} has {n} tokens"
                )
        elif isinstance(sel, (list, tuple)) and sel and max(sel) >= n:
            raise SpecError(
                f"position {max(sel)} in positions {list(sel)} is past the end of prompt row {shortest}, "
                f"which has {n} tokens (positions count from 0 within each row's prompt)"
            )
