"""The house rules (issue 11): layers point down, every module imports first, types are open."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Literal

import pytest
import torch
from pydantic import field_validator

import steerlab as sl
from steerlab.interventions import ActOp, InterventionSet, SiteIntervention, register_intervention
from steerlab.interventions.base import to_tensor

REPO = Path(__file__).resolve().parents[2]


def _modules() -> list[str]:
    out = []
    for root in ("steerlab", "dashboards"):
        for f in sorted((REPO / root).rglob("*.py")):
            rel = f.relative_to(REPO).with_suffix("")
            parts = list(rel.parts)
            if "app_pages" in parts or f.name == "app.py":  # streamlit scripts run as pages, not imports
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out.append(".".join(parts))
    return out


_CHILD = """
import importlib, multiprocessing as mp, sys
import torch, transformers, pydantic, safetensors, nnsight  # third-party only: no steerlab module yet
sys.path.insert(0, REPO)
assert not [m for m in sys.modules if m == "steerlab" or m.startswith(("steerlab.", "dashboards"))]

def first(name, q):
    try:
        importlib.import_module(name)
        q.put(None)
    except BaseException as e:
        q.put(f"{name}: {type(e).__name__}: {e}")

ctx = mp.get_context("fork")
bad = []
for n in NAMES:
    q = ctx.Queue()
    p = ctx.Process(target=first, args=(n, q))
    p.start()
    err = q.get()
    p.join()
    if err:
        bad.append(err)
print("\\n".join(bad))
sys.exit(1 if bad else 0)
"""


def test_every_module_imports_first_in_a_fresh_interpreter():
    """Each module imported first, before any other steerlab module (a forked child of a process
    that has loaded only third-party packages), so an import cycle cannot hide behind import order."""
    names = _modules()
    assert len(names) > 60
    code = f"REPO = {str(REPO)!r}\nNAMES = {names!r}\n" + _CHILD
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    return subprocess.run(
        [str(exe), "--no-cache"], capture_output=True, text=True, cwd=root, env={"PYTHONPATH": str(root)}, timeout=300
    )


def test_engines_name_no_architecture():
    """Claim (``steerlab/engines/base.py``): "the library never names an architecture here". No string or name in
    the engines' code (docstrings and comments aside) is an architecture, a model type or a layout's module name:
    engines reach modules through the adapter's sites."""
    import ast
    import re

    import steerlab.engines as engines

    arch = re.compile(
        r"(?i)(llama|mistral|mixtral|qwen|deepseek|olmoe|granite|gpt2|gpt_neox|neox|phi|gemma|falcon)"
        r"|\b(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj|c_attn|c_fc|self_attn|embed_tokens|"
        r"model\.layers|transformer\.h|block_sparse_moe|shared_experts?|e_score_correction_bias)\b"
    )
    files = sorted(Path(engines.__file__).parent.glob("*.py"))
    assert len(files) >= 3
    for f in files:
        tree = ast.parse(f.read_text())
        docs = {id(n.body[0].value) for n in ast.walk(tree)
                if isinstance(n, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
                and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for n in ast.walk(tree):
            text = (n.value if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs
                    else n.id if isinstance(n, ast.Name) else n.attr if isinstance(n, ast.Attribute) else None)
            assert text is None or not arch.search(text), f"{f.name}:{n.lineno}: {text!r}"


def test_the_documented_layers_are_the_contracts():
    """Claim (docs/architecture.md): "Each line is a layer of the contract, top to bottom, exactly as
    ``pyproject.toml`` writes it"."""
    import re
    import tomllib

    contract = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layers = next(c["layers"] for c in contract if c["type"] == "layers")
    text = (REPO / "docs" / "architecture.md").read_text()
    block = text[text.index("```\nshells") + 4 : text.index("```", text.index("```\nshells") + 4)]
    documented = []
    for line in block.strip("\n").splitlines():
        names = re.sub(r"\(.*\)", "", line[14:]).replace("dashboards/", "dashboards").split("|")
        documented.append(" | ".join(n.strip() for n in names))
    assert documented == [" | ".join(n.strip() for n in layer.split("|")) for layer in layers]


def test_contract_passes_here_and_fails_on_an_upward_import(tmp_path):
    copy = tmp_path / "repo"
    copy.mkdir()
    shutil.copy(REPO / "pyproject.toml", copy / "pyproject.toml")
    for pkg in ("steerlab", "dashboards"):
        shutil.copytree(REPO / pkg, copy / pkg, ignore=shutil.ignore_patterns("weights", "__pycache__"))
    ok = _lint_imports(copy)
    assert ok.returncode == 0, ok.stdout[-3000:]
    load = copy / "steerlab" / "models" / "load.py"
    load.write_text(load.read_text() + "\n\ndef _planted():\n    from steerlab.cli import main  # noqa: F401\n")
    bad = _lint_imports(copy)
    assert bad.returncode != 0
    assert "steerlab.models.load -> steerlab.cli" in bad.stdout


# -- an intervention type from outside steerlab ----------------------------------------------------
@register_intervention
class ClampNorm(SiteIntervention):
    """Test type: rescale each selected position's activation to at most ``max_norm`` along ``axis``
    (a registry entry only; nothing in steerlab names it)."""

    type: Literal["test_clamp_norm"] = "test_clamp_norm"
    axis: torch.Tensor
    max_norm: float = 1.0

    @field_validator("axis", mode="before")
    @classmethod
    def _axis(cls, v):
        return to_tensor(v, "axis")

    def compile_op(self, h, ref, width):
        u = (self.axis / self.axis.norm()).to(h.device, h.dtype)
        cap = self.max_norm

        def fn(x, m, s):
            coef = x @ u
            new = x - (coef - coef.clamp(-cap, cap)).unsqueeze(-1) * u
            return new if m is None else torch.where(m.unsqueeze(-1), new, x)

        return ActOp(fn, self.positions)

    def describe(self) -> str:
        return f"clamp |x.u| <= {self.max_norm:g}"


def test_a_type_registered_outside_steerlab_works_everywhere(stories, tmp_path):
    prompts = ["Once upon a time", "The dog ran to the"]
    axis = sl.capture(stories, prompts, ["blocks.2.resid_post"]).last("blocks.2.resid_post").mean(0)
    data = {"type": "test_clamp_norm", "site": "blocks.2.resid_post", "axis": axis.tolist(), "max_norm": 0.05}
    ivs = InterventionSet([data])  # validates through the registry
    with pytest.raises(Exception, match="finite"):
        InterventionSet([{**data, "max_norm": float("nan")}])
    back = InterventionSet.load(ivs.save(tmp_path / "clamp.json"))  # serializes (the tensor to safetensors)
    assert isinstance(back.items[0], ClampNorm) and torch.equal(back.items[0].axis, ivs.items[0].axis)
    assert back.digest() == ivs.digest()
    plain = sl.generate(stories, prompts, max_new_tokens=6)
    cached = sl.generate(stories, prompts, interventions=back, max_new_tokens=6)
    recomputed = sl.generate(stories, prompts, interventions=back, max_new_tokens=6, use_cache=False)
    assert cached.token_ids == recomputed.token_ids  # batched, left-padded, KV cache = recompute
    assert cached.token_ids != plain.token_ids  # and it acts
    from dashboards.lib.interventions import stack_table

    row = stack_table(back)[0]
    assert row["type"] == "test_clamp_norm" and row["detail"] == "clamp |x.u| <= 0.05"
    assert row["where"] == "blocks.2.resid_post"


def test_digest_is_canonical_and_sensitive():
    a = InterventionSet([{"type": "scale_units", "site": "blocks.0.mlp_out", "units": [1], "scale": 0.5, "name": "x"}])
    b = InterventionSet([{"name": "x", "scale": 0.5, "units": [1], "site": "blocks.0.mlp_out", "type": "scale_units"}])
    assert a.digest() == b.digest()
    v = torch.zeros(8)
    c1 = InterventionSet([{"type": "add_vector", "site": "blocks.0.resid_post", "vector": v}])
    v2 = v.clone()
    v2[3] = 1e-7
    c2 = InterventionSet([{"type": "add_vector", "site": "blocks.0.resid_post", "vector": v2}])
    assert c1.digest() != c2.digest()
    assert (a + c1).digest() != (c1 + a).digest()  # the order of interventions is part of the meaning


def test_weight_edits_are_taken_under_the_engines_lock(stories):
    """Another thread's run during an ``intervene`` block waits for the block to end, so it never
    sees the edited weights."""
    from steerlab.interventions import ParamEdit

    prompts = ["Once upon a time"]
    clean = sl.forward(stories, prompts)
    seen: dict = {}

    def other() -> None:
        seen["logits"] = sl.forward(stories, prompts)

    with sl.intervene(stories, [ParamEdit(param="model.norm.weight", op="zero")]) as run:
        assert not torch.equal(run.forward(prompts), clean)
        t = threading.Thread(target=other)
        t.start()
        time.sleep(0.5)
        assert "logits" not in seen  # waiting on the lock
    t.join(timeout=30)
    assert torch.equal(seen["logits"], clean)


def test_generate_passes_a_streamer_through(stories):
    from transformers.generation.streamers import BaseStreamer

    class Collect(BaseStreamer):
        def __init__(self):
            self.chunks, self.ended = [], False

        def put(self, value):
            self.chunks.append(value.reshape(-1).tolist())

        def end(self):
            self.ended = True

    from steerlab.interventions import AddVector

    steer = [AddVector(site="blocks.1.resid_post", vector=torch.ones(64), scale=2.0)]
    for ivs in (None, steer):
        s = Collect()
        out = sl.generate(stories, ["Once upon a time"], interventions=ivs, max_new_tokens=5, streamer=s)
        streamed = [t for chunk in s.chunks[1:] for t in chunk]  # the first put is the prompt
        assert s.ended and streamed == out.token_ids[0]


def test_modules_injected_after_load_are_seen():
    """A peft LoRA injected into the model after load: the unsteered run, a steered run (the
    nnsight twin) and a capture all see the LoRA weights (checked against hooks on the model)."""
    from peft import LoraConfig, inject_adapter_in_model

    from steerlab.engines import position_ids
    from steerlab.interventions import AddVector
    from steerlab.models.tiny import tiny_model

    h = tiny_model("llama")
    prompts = ["a b c d", "e f"]
    enc = h.tokenize(prompts)
    before = sl.forward(h, prompts)
    ident = [AddVector(site="blocks.1.resid_post", vector=torch.ones(h.d_model), scale=0.0)]
    assert torch.equal(sl.forward(h, prompts, interventions=ident), before)  # the twin exists now
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj", "lm_head"], init_lora_weights=False)
    inject_adapter_in_model(lora, h.model)
    assert any("lora_A" in n for n, _ in h.model.named_parameters())
    pos = position_ids(enc["attention_mask"])
    with torch.no_grad():
        direct = h.model(**enc, position_ids=pos).logits
    assert not torch.allclose(direct, before, atol=1e-4)  # the LoRA changes the model
    assert torch.equal(sl.forward(h, prompts), direct)
    assert torch.allclose(sl.forward(h, prompts, interventions=ident), direct, atol=1e-6)
    seen = {}
    layer = h.model.model.layers[1]
    hook = layer.register_forward_hook(lambda m, a, o: seen.__setitem__("x", o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        h.model(**enc, position_ids=pos)
    hook.remove()
    cap = sl.capture(h, prompts, ["blocks.1.resid_post"])
    mask = cap.attention_mask.bool()
    assert torch.allclose(cap["blocks.1.resid_post"][mask], seen["x"][mask], atol=1e-5)
    logits = sl.capture(h, prompts, ["logits"])["logits"]  # a site whose module the LoRA replaced
    assert torch.allclose(logits[mask], direct[mask], atol=1e-5)


def test_replaced_tensors_and_swapped_modules_are_seen_by_steered_runs():
    """Claim (``ModelHandle.tensors_key``): replacing a tensor or swapping a module in makes the engines rebuild
    their twin, "so a steered run never uses stale weights"; also a module without parameters (an activation)."""
    from torch import nn

    from steerlab.engines import position_ids
    from steerlab.interventions import AddVector
    from steerlab.models.tiny import tiny_model

    h = tiny_model("llama")
    prompts = ["a b c d", "e f"]
    enc = h.tokenize(prompts)
    ident = [AddVector(site="blocks.1.resid_post", vector=torch.ones(h.d_model), scale=0.0)]

    def direct() -> torch.Tensor:
        with torch.no_grad():
            return h.model(**enc, position_ids=position_ids(enc["attention_mask"])).logits

    assert torch.allclose(sl.forward(h, prompts, interventions=ident), direct(), atol=1e-6)  # the twin exists now
    changes = [
        lambda: setattr(h.model.model.norm, "weight", nn.Parameter(h.model.model.norm.weight.detach() * 2)),
        lambda: setattr(h.model.model.rotary_emb, "inv_freq", h.model.model.rotary_emb.inv_freq * 2),  # a buffer
        lambda: [setattr(layer.mlp, "act_fn", nn.GELU()) for layer in h.model.model.layers],  # no parameters
    ]
    for change in changes:
        old = direct()
        change()
        new = direct()
        assert not torch.allclose(new, old, atol=1e-4)  # the change changes the model
        assert torch.allclose(sl.forward(h, prompts, interventions=ident), new, atol=1e-6)


def test_runs_leave_the_handles_model_plain():
    """Claim (``ModelHandle``): runs never rewrite or hook ``h.model``. After steered generations (records too),
    captures, forwards and an ``intervene`` block with activation edits, expert masks and a parameter edit, every
    module is the same object, in the same mode, with no forward of its own and no hook; weights are unchanged."""
    from steerlab.interventions import AddVector, ExpertMask, ParamEdit
    from steerlab.models.tiny import tiny_model

    h = tiny_model("qwen2_moe")

    def snap():
        return [(n, id(m), m.training, "forward" in m.__dict__, len(m._forward_hooks), len(m._forward_pre_hooks),
                 len(m._backward_hooks)) for n, m in h.model.named_modules()]

    before, weights = snap(), {n: p.detach().clone() for n, p in h.model.named_parameters()}
    layer = h.adapter.moe_layers[-1]
    ivs = [AddVector(site="blocks.1.resid_post", vector=torch.ones(h.d_model), scale=2.0),
           ExpertMask(layer=layer, off=[0], scale={1: 0.5}),
           ParamEdit(param="model.norm.weight", op="scale", value=0.5)]
    plain = sl.forward(h, ["a b"])
    sl.generate(h, ["a b c"], interventions=ivs, max_new_tokens=3, record=["blocks.0.resid_post"])
    sl.capture(h, ["a b"], ["blocks.0.resid_post", f"blocks.{layer}.moe.topk_indices"], interventions=ivs)
    assert not torch.allclose(sl.forward(h, ["a b"], interventions=ivs), plain)
    with sl.intervene(h, ivs) as run:
        run.forward(["a"])
        run.generate(["a"], max_new_tokens=2)
    assert snap() == before
    assert all(torch.equal(p, weights[n]) for n, p in h.model.named_parameters())
    assert torch.equal(sl.forward(h, ["a b"]), plain)


def test_gradients_on_request_match_finite_differences_and_do_not_leak():
    from steerlab.models.tiny import tiny_model
    from steerlab.scoring import gradients, sequence_nll

    h = tiny_model("llama")
    enc = h.tokenize(["a b c d e", "f g"])
    name = "model.norm.weight"
    w = dict(h.model.named_parameters())[name]
    with gradients(h, [name]) as ps:
        loss = sequence_nll(h, enc)
        loss.backward()
        g = ps[name].grad[5].item()
        assert sl.forward(h, ["a b"]).grad_fn is None  # inference stays gradient-free inside the block
    assert not w.requires_grad and w.grad is None
    assert all(not p.requires_grad for p in h.model.parameters())
    eps = 1e-3
    with torch.no_grad():
        base = w[5].item()
        w[5] = base + eps
        up = sequence_nll(h, enc).item()
        w[5] = base - eps
        down = sequence_nll(h, enc).item()
        w[5] = base
    assert abs(g - (up - down) / (2 * eps)) < 1e-2 * max(1.0, abs(g))


def test_gradients_block_starts_clean_and_gives_back_a_gradient_that_was_there():
    """Claim (``scoring.gradients``): on exit every parameter is back to what it was and the block's gradients are
    dropped, also on error; a ``.grad`` left by the caller's own training neither leaks into the block's gradient
    nor is lost."""
    from steerlab.models.tiny import tiny_model
    from steerlab.scoring import gradients, sequence_nll

    h = tiny_model("llama")
    enc = h.tokenize(["a b c d e", "f g"])
    w, other = h.model.model.norm.weight, h.model.lm_head.weight
    with gradients(h, ["model.norm.weight"]) as ps:
        sequence_nll(h, enc).backward()
        ref = ps["model.norm.weight"].grad.clone()
    old_w, old_other = torch.full_like(w, 7.0), torch.full_like(other, -3.0)
    w.grad, other.grad = old_w.clone(), old_other.clone()
    for fail in (False, True):
        try:
            with gradients(h, ["model.norm.weight"]) as ps:
                assert w.grad is None and other.grad is None
                sequence_nll(h, enc).backward()
                assert torch.equal(ps["model.norm.weight"].grad, ref)  # the block's own gradient
                if fail:
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            assert fail
        assert torch.equal(w.grad, old_w) and torch.equal(other.grad, old_other)
        assert not w.requires_grad and not other.requires_grad


def test_scoring_takes_empty_input():
    from steerlab.models.tiny import tiny_model
    from steerlab.scoring import judge_nll, response_nll

    h = tiny_model("llama")
    assert response_nll(h, [], []) == [] and judge_nll(h, [], [], chat=False) == []
    (s, n), (s0, n0) = response_nll(h, ["a b", "c"], ["d e", "  "], chat=False)
    assert n > 0 and s > 0 and (s0, n0) == (0.0, 0)
