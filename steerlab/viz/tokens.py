"""Per-token probabilities of a generation: what was chosen, how likely it was, what else was likely.

:func:`token_steps` turns the raw next-token logits that :func:`steerlab.generate` returns with
``output_scores=True`` into one :class:`TokenStep` per generated token; :func:`tokens_html` renders
them as text whose tokens are shaded by probability and show the top alternatives on hover.

Example:
    >>> import steerlab as sl
    >>> from steerlab.viz.tokens import token_steps
    >>> h = sl.load("shared:stories260K")
    >>> out = sl.generate(h, ["Once upon a time"], max_new_tokens=4, output_scores=True)
    >>> steps = token_steps(h.tokenizer, out.scores, out.token_ids[0])
    >>> "".join(s.piece for s in steps) == out.texts[0]
    True
"""

from __future__ import annotations

import html
from dataclasses import asdict, dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from steerlab.errors import SteerlabError


@dataclass(frozen=True)
class TokenStep:
    """One generated token.

    ``prob`` is the model's probability ``softmax(logits)[token]`` (no temperature, no truncation);
    ``sampler_prob`` the probability the sampler actually drew it with (after temperature and
    truncation; 1.0 for greedy). ``alternatives`` are the ``top_k`` most likely tokens under the
    model, as ``(piece, prob)`` pairs, the chosen token included when it is among them.
    """

    step: int
    token_id: int
    piece: str
    prob: float
    sampler_prob: float
    alternatives: tuple[tuple[str, float], ...]

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["alternatives"] = [list(a) for a in self.alternatives]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TokenStep:
        alts = tuple((str(p), float(q)) for p, q in d["alternatives"])
        return cls(int(d["step"]), int(d["token_id"]), str(d["piece"]), float(d["prob"]),
                   float(d["sampler_prob"]), alts)


def _suffix(tokenizer: Any, prefix_ids: list[int], prefix_text: str, token_id: int) -> str:
    """The text ``token_id`` adds after ``prefix_ids`` (decoding in context keeps leading spaces)."""
    text = tokenizer.decode(prefix_ids + [token_id], skip_special_tokens=True)
    if text.startswith(prefix_text):
        return text[len(prefix_text):]
    return tokenizer.decode([token_id], skip_special_tokens=True)


def token_steps(
    tokenizer: Any,
    scores: list[Float[Tensor, "batch vocab"]],
    token_ids: list[int],
    row: int = 0,
    sampler: Any = None,
    top_k: int = 5,
) -> list[TokenStep]:
    """Per-token view of one row of a generation.

    ``scores`` is ``GenerationResult.scores`` (raw logits, one ``[batch, vocab]`` tensor per step),
    ``token_ids`` the row's completion (``GenerationResult.token_ids[row]``, cut at EOS), and
    ``sampler`` the :class:`~steerlab.sampling.Sampler` that drew it (``None``: report the model's
    probabilities as the sampler's).
    """
    if scores is None:
        raise SteerlabError("this generation has no scores; generate with output_scores=True")
    if len(token_ids) > len(scores):
        raise SteerlabError(f"{len(token_ids)} token ids but only {len(scores)} score steps; expected one per token")
    if top_k < 1:
        raise SteerlabError(f"top_k must be >= 1, got {top_k}")
    steps: list[TokenStep] = []
    prefix_text = ""
    for t, tok in enumerate(token_ids):
        logits = scores[t][row].float()
        probs = torch.softmax(logits, dim=-1)
        sampler_probs = probs if sampler is None else torch.softmax(sampler.filter_logits(logits[None]), -1)[0]
        top = probs.topk(min(top_k, probs.shape[-1]))
        prefix = token_ids[:t]
        alts = tuple(
            (_suffix(tokenizer, prefix, prefix_text, int(i)), float(p))
            for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
        )
        piece = _suffix(tokenizer, prefix, prefix_text, int(tok))
        steps.append(TokenStep(t, int(tok), piece, float(probs[tok]), float(sampler_probs[tok]), alts))
        prefix_text += piece
    return steps


def _shade(prob: float) -> str:
    """Background for a token: clear when likely, deepening orange as the probability falls."""
    alpha = 0.55 * (1.0 - max(0.0, min(1.0, prob))) ** 1.5
    return f"rgba(255, 140, 0, {alpha:.2f})"


def step_tooltip(step: TokenStep) -> str:
    """Plain-text hover: the chosen token's probabilities, then the top alternatives."""
    lines = [f"{step.piece!r}  p={step.prob:.3f}  sampler p={step.sampler_prob:.3f}"]
    lines += [f"{'>' if piece == step.piece else ' '} {piece!r}  {p:.3f}" for piece, p in step.alternatives]
    return "\n".join(lines)


TOKEN_CSS = (
    ".sl-tok{position:relative;border-radius:3px;white-space:pre-wrap;cursor:help}"
    ".sl-tok:hover{outline:1px solid #888}"
    ".sl-tok:hover::after{content:attr(data-tip);position:absolute;left:0;top:1.8em;z-index:1000;"
    "white-space:pre;background:#262730;color:#fff;font-size:12px;line-height:1.4;padding:6px 8px;"
    "border-radius:4px;pointer-events:none;box-shadow:0 2px 8px rgba(0,0,0,.35)}"
)


def tokens_html(steps: list[TokenStep]) -> str:
    """HTML of a completion, one ``<span class="sl-tok">`` per token, shaded by probability; hovering
    a token shows :func:`step_tooltip` (``data-tip``, drawn by the bundled CSS; also ``aria-label``)."""
    spans = []
    for s in steps:
        text = html.escape(s.piece).replace("\n", "&#8629;<br>")
        tip = html.escape(step_tooltip(s), quote=True).replace("\n", "&#10;")
        spans.append(f'<span class="sl-tok" data-tip="{tip}" aria-label="{tip}" '
                     f'style="background:{_shade(s.prob)}">{text}</span>')
    body = "".join(spans) or '<span class="sl-tok-empty">(empty completion)</span>'
    return (f"<style>{TOKEN_CSS}</style>"
            f'<div class="sl-tokens" style="font-family:monospace;line-height:1.8">{body}</div>')
