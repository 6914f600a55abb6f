"""Claim (``steerlab/generation.py``, ``generate``): "Deterministic for a ``seed`` (the global RNG is left
untouched)"."""

from __future__ import annotations

import torch

import steerlab as sl


def _queued_cuda_seeds() -> list:
    # where torch.manual_seed queues a seed for an uninitialized CUDA (it lands when CUDA starts)
    tracker = getattr(torch.cuda, "_lazy_seed_tracker", None)
    return [c for c in tracker.get_calls() if c] if tracker is not None else []


def test_sampled_generate_leaves_the_global_generators_untouched(stories):
    torch.manual_seed(123)
    before_cpu = torch.get_rng_state()
    before_queue = [c[0] for c in _queued_cuda_seeds()]
    cuda = torch.cuda.is_available()
    before_cuda = torch.cuda.get_rng_state_all() if cuda else None
    a = sl.generate(stories, ["Once upon a time"], sampler="top_p", max_new_tokens=6, seed=7)
    assert torch.equal(torch.get_rng_state(), before_cpu)
    assert [c[0] for c in _queued_cuda_seeds()] == before_queue  # no seed left waiting for CUDA to start
    if cuda:
        assert all(torch.equal(x, y) for x, y in zip(torch.cuda.get_rng_state_all(), before_cuda, strict=True))
    torch.rand(5)  # whatever the caller draws in between does not change the seeded run
    b = sl.generate(stories, ["Once upon a time"], sampler="top_p", max_new_tokens=6, seed=7)
    assert a.token_ids == b.token_ids
