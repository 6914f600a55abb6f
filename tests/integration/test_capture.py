"""Capture: batching, streaming to disk under a memory bound, reopening, recording in generation."""

from __future__ import annotations

import torch

import steerlab as sl
from steerlab.activations import Capture

PROMPTS = ["Once upon a time", "The little dog ran to the park", "Lily", "Tom saw a big red ball", "Hi"]


def test_batching_does_not_change_values(stories):
    sites = ["blocks.2.resid_post", "logits"]
    whole = sl.capture(stories, PROMPTS, sites, batch_size=16)
    split = sl.capture(stories, PROMPTS, sites, batch_size=2)
    assert torch.equal(whole.attention_mask, split.attention_mask)
    for s in sites:
        m = whole.attention_mask.bool()
        assert (whole[s][m] - split[s][m]).abs().max() < 1e-4
        assert whole[s][~m].abs().sum() == 0  # padding holds zeros


def test_streamed_capture_round_trip(stories, tmp_path):
    sites = ["blocks.1.resid_mid", "blocks.3.attn_out"]
    mem = sl.capture(stories, PROMPTS, sites)
    per_prompt_mb = mem.input_ids.shape[1] * 2 * 64 * 4 / 2**20
    out = tmp_path / "cap"
    disk = sl.capture(stories, PROMPTS, sites, out=out, max_memory_mb=per_prompt_mb * 2.5, batch_size=16)
    shards = disk.shards()
    assert len(shards) == 3  # the bound allows two prompts per batch
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary folder left
    reopened = Capture.load(out)
    assert reopened.prompts == PROMPTS and reopened.sites == sites
    for s in sites:
        assert torch.allclose(reopened[s], mem[s], atol=1e-4)  # batch shape changes float rounding only
    assert torch.equal(reopened.attention_mask, mem.attention_mask)


def test_failed_streamed_capture_leaves_nothing(stories, tmp_path, monkeypatch):
    import pytest

    import steerlab.activations as act

    written = []

    def fail_on_second(path, tensors):  # the first shard is written, the second batch fails
        if written:
            raise RuntimeError("disk full")
        written.append(path)
        real_save(path, tensors)

    real_save = act.save_tensors_file
    monkeypatch.setattr(act, "save_tensors_file", fail_on_second)
    with pytest.raises(RuntimeError, match="disk full"):
        sl.capture(stories, PROMPTS, ["blocks.1.resid_post"], out=tmp_path / "cap", batch_size=2)
    assert len(written) == 1 and list(tmp_path.iterdir()) == []


def test_records_during_generation(stories):
    out = sl.generate(stories, PROMPTS[:2], max_new_tokens=5, record=["blocks.0.resid_post"], stop_at_eos=False)
    rec = out.records["blocks.0.resid_post"]
    assert len(rec) == 5
    assert rec[0].shape[:2] == out.prompt_ids.shape and all(r.shape[1] == 1 for r in rec[1:])
    # every cached step records what one full forward over the finished sequence gives at its positions
    site = "blocks.0.resid_post"
    enc = stories.encode(PROMPTS[:2])
    n_prompt = enc["input_ids"].shape[1]
    seqs = out.sequences[:, :-1]
    mask = torch.cat([enc["attention_mask"], torch.ones(2, seqs.shape[1] - n_prompt, dtype=torch.long)], 1)
    _, recs = sl.forward(stories, {"input_ids": seqs, "attention_mask": mask}, record=[site], return_records=True)
    full = recs[site][0]
    m = enc["attention_mask"].bool()
    assert torch.allclose(rec[0][m], full[:, :n_prompt][m], atol=1e-4)
    for step in range(1, 5):
        assert torch.allclose(rec[step][:, 0], full[:, n_prompt + step - 1], atol=1e-4), step
