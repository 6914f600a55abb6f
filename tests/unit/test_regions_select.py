"""Regions from importance (steerlab.regions.select) on hand-made importance: prefixes per matrix, controls
with identical counts, monolingual set differences, Jaccard overlaps, region files and their model check."""

from __future__ import annotations

import pytest
import torch

from steerlab.errors import SpecError
from steerlab.models.tiny import tiny_model
from steerlab.regions.importance import Importance
from steerlab.regions.select import (
    bottom_region,
    core_region,
    in_scope,
    jaccard,
    language_overlaps,
    load_region,
    monolingual_region,
    random_region,
    save_region,
)

W = "model.layers.0.mlp.up_proj.weight"  # 10 x 20 = 200 entries: 1% = 2, 5% = 10
N = "model.layers.0.input_layernorm.weight"  # 100 entries: 1% = 1
E = "model.embed_tokens.weight"  # 50 x 10 = 500 entries


def _t(*xs):
    return torch.tensor(xs, dtype=torch.int32)


def _imp() -> Importance:
    shapes = {W: [10, 20], N: [100], E: [50, 10]}
    top = {W: _t(7, 3, 9, 11, 0, 1, 2, 4, 5, 6), N: _t(42, 1, 2, 3, 4), E: _t(*range(499, 474, -1))}
    bottom = {W: _t(199, 198, 197, 196, 195, 194, 193, 192, 191, 190), N: _t(0, 5, 6, 7, 8), E: _t(*range(25))}
    lang_top = {
        "aa": {W: _t(7, 3, 9, 11, 12, 13, 14, 15, 16, 17), N: _t(42, 1, 2, 3, 4), E: _t(*range(25))},
        "bb": {W: _t(3, 8, 9, 20, 21, 22, 23, 24, 25, 26), N: _t(41, 1, 2, 3, 4), E: _t(*range(25))},
        "cc": {W: _t(11, 30, 31, 32, 33, 34, 35, 36, 37, 38), N: _t(40, 1, 2, 3, 4), E: _t(*range(25))},
    }
    return Importance("demo", "sig", "taylor", 0.05, ["aa", "bb", "cc"], shapes, top, bottom, lang_top, {}, {})


def test_scopes():
    assert in_scope(W, [10, 20], "matrices") and not in_scope(N, [100], "matrices")
    assert in_scope(N, [100], "layers") and not in_scope(E, [50, 10], "layers") and in_scope(E, [50, 10], "all")
    assert in_scope("transformer.h.3.attn.c_attn.weight", [4, 4], "matrices")
    with pytest.raises(SpecError, match="scope 'everything' is not one of"):
        in_scope(W, [1], "everything")


def test_layer_scope_by_name_is_the_adapters_decoder_layers_on_every_tiny_architecture():
    # the regions' scopes read parameter names (the adapter docstring says where names are read instead of the
    # adapter): on every architecture steerlab builds tiny, "layers" holds exactly the parameters of the adapter's
    # decoder layers, and "matrices" exactly their 2-D ones
    from steerlab.models.tiny import TINY_CONFIGS

    for arch in TINY_CONFIGS:
        h = tiny_model(arch)
        inside = {id(p) for layer in h.adapter.layers for p in layer.layer.parameters()}
        for name, p in h.model.named_parameters():
            assert in_scope(name, list(p.shape), "layers") == (id(p) in inside), (arch, name)
            assert in_scope(name, list(p.shape), "matrices") == (id(p) in inside and p.ndim >= 2), (arch, name)


def test_core_bottom_are_per_matrix_prefixes():
    imp = _imp()
    core = core_region(imp, 0.01, "layers")
    assert {n: t.tolist() for n, t in core.indices.items()} == {W: [7, 3], N: [42]}
    core5 = core_region(imp, 0.05, "all")
    assert core5.counts() == {W: 10, N: 5, E: 25}
    assert bottom_region(imp, 0.01, "matrices").indices[W].tolist() == [199, 198]
    for bad, msg in [(0.0, "got 0.0"), (0.51, "got 0.51"), (-1, "got -1"), (0.1, "exceeds the 0.05")]:
        with pytest.raises(SpecError, match=msg.replace("(", r"\(")):
            core_region(imp, bad)


def test_random_controls_have_identical_counts_and_differ_by_seed():
    imp = _imp()
    core = core_region(imp, 0.05, "all")
    regs = [random_region(imp, 0.05, seed=s, scope="all") for s in range(3)]
    for r in regs:
        assert r.counts() == core.counts()
        for n, idx in r.indices.items():
            numel = int(torch.tensor(imp.shapes[n]).prod())
            assert idx.unique().numel() == idx.numel() and int(idx.min()) >= 0 and int(idx.max()) < numel
    assert not torch.equal(regs[0].indices[E], regs[1].indices[E])
    assert torch.equal(random_region(imp, 0.05, seed=1, scope="all").indices[E], regs[1].indices[E])
    # it depends on the counts per matrix and the seed only: other importance values, other languages, the same
    # random region (what lets docs/regions.md reuse a cheaper importance artifact for more seeds)
    other = _imp()
    other.top = {n: t.flip(0) + 1 for n, t in other.top.items()}
    other.lang_top, other.languages = {}, []
    again = random_region(other, 0.05, seed=2, scope="all")
    assert all(torch.equal(again.indices[n], regs[2].indices[n]) for n in regs[2].indices)


def test_random_region_takes_a_huge_seed_and_keeps_small_seeds_results():
    """The per-matrix seed ``seed * 1_000_003 + j`` overflowed torch's seed range for a huge seed; now reduced
    modulo 2**64 there, and unchanged where it was valid (a small seed's region is the one it always was)."""
    from steerlab.regions.select import sample_indices

    imp = _imp()
    huge = random_region(imp, 0.05, seed=2**62, scope="all")
    assert huge.counts() == core_region(imp, 0.05, "all").counts()
    small = random_region(imp, 0.05, seed=2, scope="all")
    for j, n in enumerate(small.indices):
        gen = torch.Generator().manual_seed(2 * 1_000_003 + j)
        numel = int(torch.tensor(imp.shapes[n]).prod())
        assert torch.equal(small.indices[n], sample_indices(numel, len(small.indices[n]), gen))


def test_monolingual_is_set_difference_and_jaccard_by_hand():
    imp = _imp()
    mono = monolingual_region(imp, "aa", 0.05, "matrices")  # aa: 7 3 9 11 12..17; bb has 3 9; cc has 11
    assert sorted(mono.indices[W].tolist()) == [7, 12, 13, 14, 15, 16, 17]
    # aa vs bb at 5% in "layers": W {7,3,9,11,12..17} & {3,8,9,20..26} = {3,9}; N {42,1..4} & {41,1..4} = 4
    # union: W 10 + 10 - 2 = 18, N 5 + 5 - 4 = 6 -> 6 / 24
    ov = language_overlaps(imp, 0.05, "layers")
    assert ov[0][1] == pytest.approx(6 / 24) and ov[1][0] == ov[0][1] and ov[2][2] == 1.0
    assert jaccard(core_region(imp, 0.05), core_region(imp, 0.05)) == 1.0
    with pytest.raises(SpecError, match="unknown language 'zz'"):
        monolingual_region(imp, "zz")


def test_region_file_round_trip_and_other_model_refused(tmp_path):
    h = tiny_model("llama")
    from steerlab.interventions.regions import model_signature

    imp = _imp()
    imp.signature = model_signature(h)
    core = core_region(imp, 0.05, "all")
    p = save_region(tmp_path / "core.safetensors", core)
    back = load_region(p, h)
    assert back.counts() == core.counts() and back.meta == core.meta
    assert all(torch.equal(back.indices[n], core.indices[n].long()) for n in core.indices)
    other = tiny_model("gpt2")
    with pytest.raises(SpecError, match="was made for 'demo'.*expected a region of this model"):
        load_region(p, other)
    with pytest.raises(SpecError, match="does not exist"):
        load_region(tmp_path / "nope.safetensors")
