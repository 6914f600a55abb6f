"""Per-language text for importance scoring and held-out perplexity, read in place from the shared data.

A *language* is a code: an NTREX-128 code (``deu``, ``zho-CN``, ..., the same 1,997 news sentences in
every language, so perplexities compare), ``wikitext`` (WikiText-2), ``python`` (Python standard-library
source), or any code the user maps to a text file of their own (``{"tlh": "klingon.txt"}``: one
passage per non-empty line). Each language has two disjoint parts: ``score`` (importance) and ``eval``
(held-out perplexity).

Example:
    >>> texts = corpus_texts("deu", "eval", n=2)
    >>> len(texts), texts[0] != corpus_texts("deu", "score", n=1)[0]
    (2, True)
"""

from __future__ import annotations

import sysconfig
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Literal

import torch

from steerlab._paths import shared_dir
from steerlab.errors import SpecError
from steerlab.models.handle import ModelHandle
from steerlab.values import check_count

Part = Literal["score", "eval"]
# NTREX-128 files present in the shared data (newstest2019-ref.CODE.txt; English is the source side)
NTREX = ("arb", "deu", "eng", "fra", "hin", "ita", "jpn", "kor", "por", "rus", "spa", "zho-CN")
SPECIAL = ("wikitext", "python")
EVAL_LINES = 64  # the last 64 NTREX sentences are held out for perplexity; importance reads from the start
# standard-library modules: importance reads the first group, perplexity the second
PY_SCORE = ("collections/__init__.py", "argparse.py", "textwrap.py", "difflib.py", "json/decoder.py", "csv.py")
PY_EVAL = ("fractions.py", "shlex.py", "string.py", "bisect.py")


def languages() -> tuple[str, ...]:
    """The built-in language codes."""
    return NTREX + SPECIAL


def _ntrex_file(code: str) -> Path:
    d = shared_dir() / "data" / "ntrex128"
    return d / ("newstest2019-src.eng.txt" if code == "eng" else f"newstest2019-ref.{code}.txt")


def _python_chunks(files: tuple[str, ...], chars: int = 400) -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    out: list[str] = []
    for rel in files:
        lines = (root / rel).read_text(encoding="utf-8").splitlines(keepends=True)
        cur = ""
        for ln in lines:
            cur += ln
            if len(cur) >= chars:
                out.append(cur)
                cur = ""
        if cur.strip():
            out.append(cur)
    return out


def _lines(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def corpus_texts(
    lang: str, part: Part, n: int | None = None, files: Mapping[str, str | Path] | None = None
) -> list[str]:
    """The passages of ``lang`` in ``part`` (``score`` or ``eval``, disjoint), the first ``n`` if given.

    ``files`` maps user language codes to text files (one passage per non-empty line; the last tenth,
    at least one line, is the ``eval`` part). Raises :class:`SpecError` for an unknown code, a missing
    file or an empty corpus.
    """
    if part not in ("score", "eval"):
        raise SpecError(f"corpus part {part!r} is not one of ['score', 'eval']")
    check_count("n_eval" if part == "eval" else "n", n, 1, none_ok=True)  # texts[:-60] would drop passages
    files = dict(files or {})
    if lang in files:
        path = Path(files[lang])
        if not path.is_file():
            raise SpecError(f"text file {str(path)!r} for language {lang!r} does not exist")
        lines = _lines(path)
        if not lines:
            raise SpecError(f"text file {str(path)!r} for language {lang!r} is empty; expected one passage per line")
        cut = len(lines) - max(1, len(lines) // 10) if len(lines) > 1 else 1
        texts = lines[:cut] if part == "score" else (lines[cut:] or lines)
    elif lang in NTREX:
        lines = _lines(_ntrex_file(lang))
        texts = lines[:-EVAL_LINES] if part == "score" else lines[-EVAL_LINES:]
    elif lang == "wikitext":
        name = "wiki.valid.tokens.txt" if part == "score" else "wiki.test.tokens.txt"
        raw = _lines(shared_dir() / "data" / "wikitext2" / name)
        texts = [p for p in raw if len(p) >= 60 and not p.startswith("=")]
    elif lang == "python":
        texts = _python_chunks(PY_SCORE if part == "score" else PY_EVAL)
    else:
        raise SpecError(
            f"unknown language {lang!r}; expected one of {list(languages())} or a code given a text file (CODE=FILE)"
        )
    texts = texts[:n] if n is not None else texts
    if not texts:
        raise SpecError(f"the {part} corpus of language {lang!r} is empty")
    return texts


def token_batches(
    h: ModelHandle, texts: list[str], *, token_budget: int, batch_size: int, max_len: int
) -> Iterator[dict[str, torch.Tensor]]:
    """Right-padded batches of ``batch_size`` passages (each cut to ``max_len`` tokens, BOS as the model
    adds it), tokenized lazily, until ``token_budget`` real tokens have been yielded (the last batch is
    cut to fit). Raises :class:`SpecError` if the texts hold no tokens."""
    check_count("token_budget", token_budget, 1)
    check_count("batch_size", batch_size, 1)
    check_count("max_len", max_len, 2)
    pad = h.tokenizer.pad_token_id if h.tokenizer.pad_token_id is not None else 0
    left, produced = token_budget, False
    for start in range(0, len(texts), batch_size):
        if left <= 0:
            break
        rows: list[list[int]] = []
        for t in texts[start : start + batch_size]:
            ids = h.tokenizer(t, truncation=True, max_length=max_len)["input_ids"][:left]
            if len(ids) >= 2:
                rows.append(ids)
                left -= len(ids)
            if left <= 0:
                break
        if not rows:
            continue
        width = max(len(r) for r in rows)
        ids_t = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids_t)
        for i, r in enumerate(rows):
            ids_t[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        produced = True
        yield {"input_ids": ids_t.to(h.device), "attention_mask": mask.to(h.device)}
    if not produced:
        raise SpecError("the corpus holds no passage of at least 2 tokens; expected non-empty text")
