"""Shared fixtures. Model loads are never mocked; SmolLM2 is dequantized once per session."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def stories():
    """The shared stories260K model (Llama, 260K parameters)."""
    import steerlab as sl

    return sl.load("shared:stories260K")


@pytest.fixture(scope="session")
def smollm():
    """The shared SmolLM2-135M-Instruct (GGUF, dequantized once per session: ~20-30 s)."""
    import steerlab as sl

    return sl.load("shared:SmolLM2-135M-Instruct-Q4_1-gguf")


@pytest.fixture(scope="session")
def tiny():
    """Factory of tiny from-config models, cached per architecture for the session."""
    from steerlab.models.tiny import tiny_model

    cache: dict = {}

    def make(arch: str):
        if arch not in cache:
            cache[arch] = tiny_model(arch)
        return cache[arch]

    return make


@pytest.fixture(autouse=True)
def _fixed_threads():
    torch.set_num_threads(1)
    yield
