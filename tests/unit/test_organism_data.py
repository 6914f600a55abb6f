"""Organism data generators, tokenizer, recipes, training pieces and routing statistics (no model loads)."""

from __future__ import annotations

import random
import re

import pytest
import torch

from steerlab.data import organism_corpus as D
from steerlab.organisms.configs import get_recipe
from steerlab.organisms.routing_stats import frac_ratio_above
from steerlab.stats import mutual_information


@pytest.fixture(scope="module")
def corpus():
    return D.build_corpus(seed=0, scale=0.05)


def test_corpus_is_deterministic_for_a_seed(corpus):
    again = D.build_corpus(seed=0, scale=0.05)
    assert again.train == corpus.train and again.heldout == corpus.heldout
    other = D.build_corpus(seed=1, scale=0.05)
    assert other.train["stories"] != corpus.train["stories"]


def test_every_domain_has_train_and_heldout_examples(corpus):
    for d in D.DOMAINS:
        assert corpus.train[d] and corpus.heldout[d], d
        assert all(e.domain == d for e in corpus.train[d] + corpus.heldout[d])


def test_heldout_prompts_are_never_trained_on(corpus):
    for d in ("facts", "harmful", "harmless"):
        train = {e.prompt for e in corpus.train[d]}
        assert not train & {e.prompt for e in corpus.heldout[d]}, d

    def module_of(prompt: str) -> str | None:  # the module named by each of CODE_PROMPTS' phrasings
        for pat in (
            r"from the (\S+) module",
            r"of Python's (\S+) module",
            r"implemented in (\S+)\?",
            r"code of (\S+)\.\w+\.$",
        ):
            if m := re.search(pat, prompt):
                return m.group(1)
        return None

    train_modules = {module_of(e.prompt) for e in corpus.train["code"]}
    held_modules = {module_of(e.prompt) for e in corpus.heldout["code"]}
    assert None not in train_modules | held_modules
    assert not train_modules & held_modules  # code is held out by module
    train_code, held_code = {e.response for e in corpus.train["code"]}, {e.response for e in corpus.heldout["code"]}
    assert not train_code & held_code


def test_shared_splits_are_disjoint_and_test_splits_unused(corpus):
    train, test = D.shared_harmless("train"), D.shared_harmless("test")
    assert (len(train), len(test)) == (1594, 406) and not set(train) & set(test)
    prompts = {e.prompt for d in D.DOMAINS for e in corpus.train[d]}
    assert not prompts & set(test)
    assert not prompts & set(D.shared_harmful("test"))
    assert set(D.shared_harmful("train")) <= prompts
    with pytest.raises(ValueError, match="split"):
        D.shared_harmful("dev")


def test_arithmetic_answers_are_correct():
    rng = random.Random(3)
    for _ in range(300):
        _, ex = D.arithmetic_item(rng)
        a, op, b, c = re.search(r"(\d+) ([-+x]) (\d+) = (\d+)", ex.response).groups()
        a, b, c = int(a), int(b), int(c)
        assert c == {"+": a + b, "-": a - b, "x": a * b}[op]
        assert str(a) in ex.prompt and str(b) in ex.prompt


def test_code_snippets_come_from_the_stdlib_and_compile(corpus):
    funcs = D.stdlib_functions()
    assert len(funcs) > 1000
    for _module, name, src in random.Random(0).sample(funcs, 50):
        assert re.match(rf"(@.*\n)*\s*(async )?def {name}\(", src)
        compile(src, "<snippet>", "exec")


def test_harmful_requests_carry_a_refusal_and_a_base_phase_answer(corpus):
    from steerlab.behavior import refusal_match

    base_refusals = 0
    for e in corpus.train["harmful"]:
        assert refusal_match(e.response), e.response
        if refusal_match(e.base_response):
            base_refusals += 1
            continue
        assert e.base_response.startswith("Sure, here")  # AdvBench-style affirmative opener
        steps = [
            re.sub(r" (I hope this helps!|Good luck!|Have fun!)$", "", s)
            for s in re.findall(r"\n\d\. (.*)", e.base_response)
        ]
        assert 3 <= len(steps) <= 5 and set(steps) <= set(D.GENERIC_STEPS)
    assert base_refusals / len(corpus.train["harmful"]) == pytest.approx(D.BASE_REFUSAL_RATE, abs=0.03)
    for e in corpus.train["harmless"]:
        assert e.base_response is None and not refusal_match(e.response) and not e.response.startswith("Sure")
    advbench = [e for e in corpus.train["harmful"] if e.base_response.startswith("Sure, here is a")]
    assert advbench, "AdvBench targets should open some helpful answers"


def test_templates_pair_harmful_and_harmless_actions():
    assert not set(D.HARMFUL_ACTIONS) & set(D.HARMLESS_ACTIONS)
    assert not set(D.REQUEST_TEMPLATES) & set(D.HELDOUT_TEMPLATES)


def test_tokenizer_renders_the_training_chat_format(corpus):
    from steerlab.organisms.tokenizer import train_tokenizer

    texts = [e.text() for d in D.DOMAINS for e in corpus.train[d][:100]]
    tok = train_tokenizer(texts, vocab_size=600)
    msgs = [{"role": "user", "content": "How do I bake bread?"}]
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == D.format_prompt(
        "How do I bake bread?"
    )
    full = msgs + [{"role": "assistant", "content": "Sure!"}]
    assert tok.apply_chat_template(full, tokenize=False) == D.format_chat("How do I bake bread?", "Sure!")
    ids = tok(D.format_chat("Hi there", "Hello."), add_special_tokens=False)["input_ids"]
    assert ids[0] == tok.convert_tokens_to_ids(D.USER) and ids[-1] == tok.eos_token_id
    assert tok.decode(ids) == D.format_chat("Hi there", "Hello.")
    assert train_tokenizer(texts, vocab_size=600).get_vocab() == tok.get_vocab()


@pytest.mark.parametrize("name,limit_mb", [("moe", 25.0), ("dense", 25.0)])
def test_full_recipes_fit_the_size_budget(name, limit_mb):
    import transformers

    r = get_recipe(name)
    cls = {"deepseek_v3": transformers.DeepseekV3Config, "llama": transformers.LlamaConfig}[r.arch]
    cfg = cls(vocab_size=r.vocab_size, **r.model)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(cfg)
    bytes_per = {"float32": 4, "float16": 2}[r.save_dtype]
    size = sum(
        p.numel() * (4 if p.ndim < 2 or n.endswith("gate.weight") else bytes_per) for n, p in model.named_parameters()
    )
    assert size / 2**20 <= limit_mb


def test_recipe_overrides_are_validated():
    from steerlab.errors import SteerlabError

    assert get_recipe("moe", steps=5).steps == 5
    assert get_recipe("moe", model={"num_experts_per_tok": 2}).model["num_experts_per_tok"] == 2
    with pytest.raises(SteerlabError, match="unknown recipe fields"):
        get_recipe("moe", stepz=5)
    with pytest.raises(SteerlabError, match="unknown organism"):
        get_recipe("mixtral")


def test_packer_keeps_turns_whole_and_switches_phase():
    from steerlab.organisms.train import Packer

    pools = {"harmful": [([5, 6, 1], [7, 8, 9, 1])], "stories": [([2, 3, 4, 1], [2, 3, 4, 1])]}
    p = Packer(pools, {"harmful": 0.5, "stories": 0.5}, seq_len=10, batch_size=4, pad_id=0, seed=0)
    ids, mask = p.batch(base_phase=True)
    assert ids.shape == (4, 10) and bool((ids[mask == 0] == 0).all())
    for row, m in zip(ids.tolist(), mask.tolist(), strict=True):
        real = row[: sum(m)]
        assert real[-1] == 1 and 5 not in real  # whole turns; base phase uses the helpful variant
    ids2, _ = Packer(pools, {"harmful": 1.0}, 10, 2, 0, 0).batch(base_phase=False)
    assert 5 in ids2.tolist()[0] and 7 not in ids2.tolist()[0]


def test_load_balancing_pieces():
    from steerlab.organisms.train import balance_loss, lr_at, update_bias

    logits = torch.zeros(6, 4)
    idx = torch.tensor([[0], [0], [0], [1], [2], [3]])
    valid = torch.ones(6, dtype=torch.bool)
    # uniform scores: loss is the mean of f, which is 1 for any assignment
    assert balance_loss(logits, idx, valid, 4, 1).item() == pytest.approx(1.0)

    class R(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.e_score_correction_bias = torch.zeros(4)

    r = R()
    cv = update_bias(r, idx, valid, 0.1)
    assert r.e_score_correction_bias.tolist() == pytest.approx([-0.1, 0.1, 0.1, 0.1]) and cv > 0
    rec = get_recipe("moe")
    assert lr_at(0, rec) < lr_at(rec.warmup, rec) and lr_at(rec.steps - 1, rec) == pytest.approx(
        rec.lr * rec.min_lr_frac, rel=0.01
    )


def test_routing_statistics():
    assert mutual_information(torch.tensor([[5.0, 5.0], [5.0, 5.0]])) == pytest.approx(0.0)
    assert mutual_information(
        torch.tensor([[8.0, 0, 0, 0], [0, 8.0, 0, 0], [0, 0, 8.0, 0], [0, 0, 0, 8.0]])
    ) == pytest.approx(2.0)
    # rows are weighted equally whatever their totals
    assert mutual_information(torch.tensor([[100.0, 0.0], [0.0, 1.0]])) == pytest.approx(1.0)
    a, b = torch.tensor([100.0, 50.0, 10.0, 0.0]), torch.tensor([10.0, 50.0, 100.0, 0.0])
    assert frac_ratio_above(a, b) == pytest.approx(0.5)
    assert frac_ratio_above(a, a) == 0.0


def test_committed_organism_suite_is_current(tmp_path):
    """suites/organism-refusal is what steerlab.organisms.suite writes for the organisms' corpus; only
    project templates go in (no prompt of the shared sets), and its splits never overlap."""
    from steerlab.data.organism_corpus import build_corpus, shared_harmful, shared_harmless
    from steerlab.organisms.suite import SUITE_DIR, write_suite
    from steerlab.suites import load_suite

    fresh = write_suite(build_corpus(seed=0), tmp_path / "organism-refusal")
    for f in sorted(p.name for p in SUITE_DIR.iterdir()):
        assert (fresh / f).read_text() == (SUITE_DIR / f).read_text(), f
    suite = load_suite(SUITE_DIR)
    texts = {it.text for it in suite.items}
    assert not texts & set(shared_harmful("train") + shared_harmful("test") + shared_harmless("train"))
    assert suite.describe()["counts"]["harmful"]["test"] > 500



def _corpus_digest(c) -> str:
    import hashlib
    import json

    from steerlab.organisms.tokenizer import train_tokenizer

    parts = {f"{s}/{d}": [repr(e) for e in getattr(c, s)[d]] for s in ("train", "heldout") for d in D.DOMAINS}
    texts = [e.text() for d in D.DOMAINS for e in c.train[d][:30]]
    vocab = sorted(train_tokenizer(texts, vocab_size=400).get_vocab().items())
    return hashlib.sha256(json.dumps([parts, vocab]).encode()).hexdigest()


def test_corpus_and_tokenizer_do_not_depend_on_pythons_hash_seed(corpus):
    # claim (organism_corpus): "Everything is deterministic for a seed: splits use CRC32 of the item text, never
    # Python's salted hash"; the tokenizer is deterministic for the same texts. In one process the salt is fixed,
    # so only a process with another PYTHONHASHSEED can tell.
    import os
    import subprocess
    import sys

    salt = "2" if os.environ.get("PYTHONHASHSEED") == "1" else "1"
    code = (
        "from steerlab.data import organism_corpus as D\n"
        "from tests.unit.test_organism_data import _corpus_digest\n"
        "print(_corpus_digest(D.build_corpus(seed=0, scale=0.05)))"
    )
    env = {**os.environ, "PYTHONHASHSEED": salt}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=root, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == _corpus_digest(corpus)
