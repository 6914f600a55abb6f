"""KV-cached generation equals full recompute under every intervention, position selector and
tiny architecture.

For each case ``sl.generate(..., use_cache=True)`` and ``use_cache=False`` (the whole sequence
recomputed at every step) must give the same greedy token ids and next-token logits within
``ATOL``, on a left-padded batch (prompts of 7, 8 and 3 tokens). Each case also asserts that the
steered logits differ from the unsteered ones by far more than ``ATOL``, so the equivalence is not
vacuous. Parameter edits must leave the weights bit-identical afterwards.

``ATOL = 1e-5``: the cached and recomputed forwards do the same float32 arithmetic on differently
shaped matmuls (1 query row vs the whole sequence), so they differ by summation order only; on these
models that is measured at <= 2e-7 (logits of magnitude 0.3-1), 50x below ``ATOL``. ``EFFECT = 1e-3``
is the least change a steered run must show somewhere (100x ``ATOL``; the weakest case, forcing one
expert on in GraniteMoE, moves the logits by 4e-3), so an intervention dropped or misplaced on the
cached steps would show as a discrepancy far above ``ATOL``.

Cross products on the ``CORE`` architectures (Llama, GPT-2 with its Conv1D and learned positions,
GPT-NeoX with its parallel residual, DeepSeek-V3 with its MLA cache and sigmoid group router, Mixtral
with a softmax router) run by default; the same cases on the other architectures are marked slow.
Every architecture runs the combination of all intervention types by default.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

import steerlab as sl
from steerlab.interventions import AddVector, ExpertMask, ParamEdit, Patch, ProjectOut, ScaleUnits
from steerlab.models.tiny import MOE_ARCHITECTURES, TINY_ARCHITECTURES

PROMPTS = ["Once upon a time there was", "The dog ran to the", "Lily saw"]  # 7, 8 and 3 tokens with BOS
N_NEW = 5
ATOL = 1e-5
EFFECT = 1e-3
CORE = ("llama", "gpt2", "gpt_neox", "deepseek_v3", "mixtral")


def _arch_params(archs: tuple[str, ...]) -> list[Any]:
    return [pytest.param(a, marks=() if a in CORE else pytest.mark.slow) for a in archs]


def _gen(h, ivs, use_cache: bool):
    return sl.generate(h, PROMPTS, interventions=ivs, max_new_tokens=N_NEW, use_cache=use_cache, output_scores=True)


_PLAIN: dict[str, Any] = {}


def _plain(h):
    if h.spec not in _PLAIN:
        _PLAIN[h.spec] = _gen(h, None, True)
    return _PLAIN[h.spec]


def _weights(h) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in h.model.state_dict().items()}


def _assert_equivalent(h, ivs) -> None:
    """Cached == recomputed (ids exactly, logits within ATOL); steered != plain; weights restored."""
    enc = h.encode(PROMPTS)
    assert (enc["attention_mask"][:, 0] == 0).any(), "the batch must contain left padding"
    before = _weights(h)
    cached = _gen(h, ivs, True)
    recomputed = _gen(h, ivs, False)
    after = _weights(h)
    assert all(torch.equal(before[k], after[k]) for k in before), "weights not restored bit for bit"
    assert cached.token_ids == recomputed.token_ids
    assert torch.equal(cached.sequences, recomputed.sequences)
    assert len(cached.scores) == len(recomputed.scores)
    for step, (a, b) in enumerate(zip(cached.scores, recomputed.scores, strict=True)):
        err = (a - b).abs().max().item()
        assert err <= ATOL, f"step {step}: cached and recomputed logits differ by {err}"
    plain = _plain(h)
    n = min(len(plain.scores), len(cached.scores))
    effect = max((cached.scores[i] - plain.scores[i]).abs().max().item() for i in range(n))
    assert effect > EFFECT, f"the interventions changed the logits by only {effect}: equivalence is vacuous"


def _value_param(h) -> str:
    """Layer 1's value projection (fused QKV in GPT-2/NeoX, the K/V up-projection of DeepSeek's MLA),
    a weight whose edits reach the KV cache and move the logits by ~0.1-1 on every tiny model."""
    ends = ("v_proj.weight", "c_attn.weight", "query_key_value.weight", "kv_b_proj.weight")
    for name, _ in h.model.named_parameters():
        if ".1." in name and name.endswith(ends):
            return name
    raise AssertionError(f"no value projection in layer 1 of {h.spec}")


def _vec(h, seed: int, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(h.d_model, generator=torch.Generator().manual_seed(seed)) * scale


def _mid(h, layer: int) -> str:
    """resid_mid where the block has one; GPT-NeoX's parallel residual has none: attn_out there."""
    site = f"blocks.{layer}.resid_mid"
    return site if site in h.sites else f"blocks.{layer}.attn_out"


# ---------------------------------------------------------------------------------------------
# one case per intervention type / variant
# ---------------------------------------------------------------------------------------------
ACTIVATION_CASES: dict[str, Callable[[Any], list]] = {
    "add_vector": lambda h: [AddVector(site="blocks.1.resid_post", vector=_vec(h, 1))],
    "project_out": lambda h: [ProjectOut(site=_mid(h, 1), direction=_vec(h, 2))],
    "scale_units": lambda h: [ScaleUnits(site="blocks.1.mlp_out", units=list(range(0, h.d_model, 2)), scale=4.0)],
    "patch_d": lambda h: [Patch(site="blocks.0.resid_post", value=_vec(h, 3), positions={"last": 2})],
    "patch_pd": lambda h: [
        Patch(site="blocks.1.resid_pre", value=torch.stack([_vec(h, 4), _vec(h, 5)]), positions=[0, 2])
    ],
}


@pytest.mark.parametrize("case", list(ACTIVATION_CASES))
@pytest.mark.parametrize("arch", _arch_params(TINY_ARCHITECTURES))
def test_activation_edits(tiny, arch, case):
    h = tiny(arch)
    _assert_equivalent(h, ACTIVATION_CASES[case](h))


POSITIONS = ["all", "prompt", "generated", {"last": 2}, [0, 2]]


@pytest.mark.parametrize("positions", POSITIONS, ids=["all", "prompt", "generated", "last2", "list"])
@pytest.mark.parametrize("arch", _arch_params(TINY_ARCHITECTURES))
def test_position_selectors(tiny, arch, positions):
    h = tiny(arch)
    ivs = [
        AddVector(site="blocks.1.resid_post", vector=_vec(h, 6), positions=positions),
        ProjectOut(site=_mid(h, 2), direction=_vec(h, 7), positions=positions),
        ScaleUnits(site="blocks.0.mlp_out", units=[0, 1, 2, 3], scale=-2.0, positions=positions),
    ]
    _assert_equivalent(h, ivs)


MASK_CASES: dict[str, Callable[[int], ExpertMask]] = {
    "off": lambda layer: ExpertMask(layer=layer, off=[0, 2, 4, 6]),  # one per DeepSeek group of 2
    "on": lambda layer: ExpertMask(layer=layer, on=[6]),
    "scale": lambda layer: ExpertMask(layer=layer, scale={e: (0.2, 3.0)[e % 2] for e in range(8)}),
    "renormalize": lambda layer: ExpertMask(layer=layer, off=[5], scale={0: 0.1, 3: 0.1}, renormalize=True),
    "last2": lambda layer: ExpertMask(layer=layer, off=[0, 2, 4, 6], positions={"last": 2}),
    "generated": lambda layer: ExpertMask(layer=layer, on=[6], positions="generated"),
}


@pytest.mark.parametrize("case", list(MASK_CASES))
@pytest.mark.parametrize("arch", _arch_params(MOE_ARCHITECTURES))
def test_expert_masks(tiny, arch, case):
    h = tiny(arch)
    _assert_equivalent(h, [MASK_CASES[case](h.adapter.moe_layers[-1])])


def _param_cases(h) -> dict[str, list]:
    name = _value_param(h)
    p = dict(h.model.named_parameters())[name]
    g = torch.Generator().manual_seed(8)
    mask = torch.rand(p.shape, generator=g) < 0.5
    delta = torch.randn(p.shape, generator=g) * 0.5
    return {
        "zero": [ParamEdit(param=name, op="zero")],
        "scale_indices": [ParamEdit(param=name, op="scale", value=-3.0, indices=list(range(0, p.numel(), 3)))],
        "noise_mask": [ParamEdit(param=name, op="noise", value=1.0, seed=3, mask=mask)],
        "add_delta": [ParamEdit(param=name, op="add", delta=delta)],
        "add_delta_indices": [ParamEdit(param=name, op="add", delta=delta, indices=list(range(p.numel() // 2)))],
    }


@pytest.mark.parametrize("case", ["zero", "scale_indices", "noise_mask", "add_delta", "add_delta_indices"])
@pytest.mark.parametrize("arch", _arch_params(TINY_ARCHITECTURES))
def test_param_edits(tiny, arch, case):
    h = tiny(arch)
    _assert_equivalent(h, _param_cases(h)[case])


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_stacked_param_edits_restore_the_exact_weights(tiny, arch):
    """Overlapping edits of one parameter: each saves what the previous left, so only restoring in
    reverse order gives back the original; a forward-order restore would leave 2 * w at 50..99."""
    h = tiny(arch)
    name = _value_param(h)
    p = dict(h.model.named_parameters())[name]
    original = p.detach().clone()
    mask = torch.zeros(p.shape, dtype=torch.bool)
    mask.view(-1)[75:200] = True
    ivs = [
        ParamEdit(param=name, op="scale", value=2.0, indices=list(range(100))),
        ParamEdit(param=name, op="zero", indices=list(range(50, 150))),
        ParamEdit(param=name, op="noise", value=0.7, seed=1, mask=mask),
        ParamEdit(param=name, op="add", delta=torch.ones(p.shape)),
    ]
    _assert_equivalent(h, ivs)
    with sl.intervene(h, ivs):
        edited = p.detach().clone()
    # hand-computed: the edits compose in order (noise drawn as ParamEditor seeds it)
    noise = torch.randn(125, generator=torch.Generator().manual_seed(1)) * 0.7
    expect = original.clone().view(-1)
    expect[:100] *= 2.0
    expect[50:150] = 0.0
    expect[75:200] += noise
    expect += 1.0
    assert torch.equal(edited.view(-1), expect)
    assert torch.equal(p.detach(), original)  # bit for bit, not allclose


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_all_types_together(tiny, arch):
    """A steering vector + projection + patch + expert mask (MoE) + parameter edit in one run."""
    h = tiny(arch)
    ivs: list = [
        AddVector(site="blocks.0.resid_post", vector=_vec(h, 9), positions={"last": 2}),
        ProjectOut(site=_mid(h, 1), direction=_vec(h, 10), positions="generated"),
        ScaleUnits(site="blocks.2.mlp_out", units=[1, 5, 9], scale=0.0),
        Patch(site="blocks.2.resid_pre", value=_vec(h, 11), positions=[1]),
        ParamEdit(param=_value_param(h), op="noise", value=0.5, seed=2, indices=list(range(0, 400, 2))),
    ]
    if arch in MOE_ARCHITECTURES:
        ivs.append(ExpertMask(layer=h.adapter.moe_layers[0], off=[1, 4], scale={2: 0.5}))
    _assert_equivalent(h, ivs)
