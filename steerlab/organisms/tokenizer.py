"""The organisms' byte-level BPE tokenizer, trained with the ``tokenizers`` package.

Special tokens: ``<|pad|>`` (0), ``<|end|>`` (1, end of turn and EOS, so generation stops),
``<|user|>``, ``<|assistant|>``, ``<|system|>``. The chat template renders exactly
:func:`steerlab.data.organism_corpus.format_chat`, so ``h.format_chat()`` and
``sl.generate(..., chat=True)`` see what training saw.

Example:
    >>> from steerlab.organisms.tokenizer import train_tokenizer
    >>> tok = train_tokenizer(["Once upon a time there was a cat."] * 50, vocab_size=300)
    >>> tok.decode(tok("a cat")["input_ids"])
    'a cat'
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from steerlab.data.organism_corpus import CHAT_TEMPLATE, DOMAINS, END, PAD, SPECIAL_TOKENS, SYSTEM, USER, Corpus


def tokenizer_texts(corpus: Corpus) -> list[str]:
    """What the tokenizer is trained on: every train example as chat text, plus the base-phase answers
    of the harmful requests (both phases' texts must tokenize well)."""
    return [e.text() for d in DOMAINS for e in corpus.train[d]] + [e.text(base=True) for e in corpus.train["harmful"]]


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2) -> Any:
    """Train a byte-level BPE on ``texts`` and wrap it as a ``PreTrainedTokenizerFast``.

    Deterministic for the same texts in the same order (the BPE trainer breaks ties by byte order).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token=END,
        pad_token=PAD,
        additional_special_tokens=[USER, "<|assistant|>", SYSTEM],
        clean_up_tokenization_spaces=False,
        model_max_length=1024,
    )
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "left"
    return tok
