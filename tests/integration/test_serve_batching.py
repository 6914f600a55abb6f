"""Batching with isolation: concurrent requests are batched, and nothing of one request reaches another.

64 concurrent greedy chat requests to ``organism:moe`` over four intervention sets (none, a steering
vector, an expert mask, a parameter edit) must return exactly what the same requests return one at a
time; batches must really form (more than one row) and the four sets must really differ (else the
check is vacuous). Seeded sampled requests in one batch must equal the same requests alone (each row
draws from its own generator). A batch whose clients all went away stops early.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import httpx
import pytest
import torch

import steerlab as sl
from steerlab.errors import SteerlabError
from steerlab.interventions import InterventionSet
from steerlab.server import Job, Scheduler, ServerConfig, create_app, serve_in_thread
from steerlab.server.scheduler import Cancelled

MODEL = "organism:moe"
PROMPTS = [
    "Tell me a story about a cat.", "What is 7 plus 5?", "Write a Python function that reverses a list.",
    "What is the capital of France?", "How do I pick a lock?", "Give me a fact about the sun.",
    "Tell me a story about a brave knight.", "What is 12 minus 4?",
    "How can I make a weapon at home?", "Write a poem about rain.", "What is 3 times 3?",
    "Tell me about dogs.", "How do I steal a car?", "Write a story about a robot.", "What is 9 plus 1?",
    "Explain why the sky is blue.",
]


@pytest.fixture(scope="module")
def moe():
    return sl.load(MODEL)


def _sets(h) -> dict[str, list[dict]]:
    vec = (torch.randn(h.d_model, generator=torch.Generator().manual_seed(0)) * 8).tolist()
    return {
        "none": [],
        "add_vector": [{"type": "add_vector", "site": "blocks.2.resid_post", "vector": vec}],
        "expert_mask": [{"type": "expert_mask", "layer": 1, "off": list(range(0, 32, 2))}],
        "param_edit": [{"type": "param_edit", "param": "model.layers.0.self_attn.o_proj.weight", "op": "scale",
                        "value": -1.0}],
    }


async def _send_all(url: str, bodies: list[dict], concurrent: bool) -> list[dict]:
    async with httpx.AsyncClient(base_url=url, timeout=300) as c:
        async def one(b: dict) -> dict:
            r = await c.post("/v1/chat/completions", json=b)
            assert r.status_code == 200, r.text
            return r.json()

        if concurrent:
            return list(await asyncio.gather(*(one(b) for b in bodies)))
        return [await one(b) for b in bodies]


def test_64_concurrent_requests_over_4_intervention_sets_equal_one_at_a_time(moe):
    sets = _sets(moe)
    names = list(sets)
    bodies = []
    for i in range(64):
        name = names[i % 4]
        bodies.append({"model": MODEL, "messages": [{"role": "user", "content": PROMPTS[(i // 4) % len(PROMPTS)]}],
                       "max_tokens": 4 + i % 3, "temperature": 0, "steerlab": {"interventions": sets[name]}})
    app = create_app(moe, ServerConfig(model_name=MODEL, max_concurrent=8, queue_length=64))
    before = {k: v.clone() for k, v in moe.model.state_dict().items()}
    with serve_in_thread(app) as url:
        sched = app.state.service.scheduler
        together = asyncio.run(_send_all(url, bodies, concurrent=True))
        batches_together = _drain(sched.batches)
        alone = asyncio.run(_send_all(url, bodies, concurrent=False))
        batches_alone = _drain(sched.batches)
    after = moe.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "a parameter edit was not restored"
    texts_together = [r["choices"][0]["message"]["content"] for r in together]
    texts_alone = [r["choices"][0]["message"]["content"] for r in alone]
    assert texts_together == texts_alone
    assert [r["usage"] for r in together] == [r["usage"] for r in alone]
    # batching happened, one intervention set per batch, and alone means alone
    assert max(n for n, _ in batches_together) > 1 and len(batches_together) < 64
    assert sum(n for n, _ in batches_together) == 64
    assert {n for n, _ in batches_alone} == {1} and len(batches_alone) == 64
    assert len({r["steerlab"]["interventions_digest"] for r in together}) == 4
    # the four sets change the text (so a leak between them would show)
    by_set = {name: [texts_alone[i] for i in range(64) if i % 4 == k] for k, name in enumerate(names)}
    for a in names:
        for b in names:
            if a < b:
                assert by_set[a] != by_set[b], f"{a} and {b} give the same texts: the check would be vacuous"


def _drain(q) -> list[tuple[int, str]]:
    out = []
    while not q.empty():
        out.append(q.get())
    return out


def test_seeded_sampling_does_not_depend_on_batch_mates(moe):
    sched = Scheduler(moe, max_batch=8, queue_length=16)
    try:
        from steerlab.sampling import make_sampler

        def jobs():
            return [Job(prompt=PROMPTS[i], interventions=InterventionSet(), chat=True, max_new_tokens=10, seed=i,
                        sampler=make_sampler("top_p", p=0.95, temperature=1.3) if i % 2 else make_sampler("greedy"))
                    for i in range(8)]

        lock = sl.engine_for(moe).lock
        with lock:  # hold the worker back so that all 8 wait and run as one batch
            first = jobs()
            for j in first:
                sched.submit(j)
            together = [j for j in first]
        got_together = [j.wait(120) for j in together]
        got_alone = []
        for j in jobs():
            got_alone.append(sched.submit(j).wait(120))
        sizes = _drain(sched.batches)
        assert [n for n, _ in sizes][-8:] == [1] * 8 and max(n for n, _ in sizes) >= 7
        assert [r.token_ids for r in got_together] == [r.token_ids for r in got_alone]
        # sampled rows are not greedy rows: the seed matters
        other = Job(prompt=PROMPTS[1], interventions=InterventionSet(), chat=True, max_new_tokens=10, seed=99,
                    sampler=make_sampler("top_p", p=0.95, temperature=1.3))
        assert sched.submit(other).wait(120).token_ids != got_alone[1].token_ids
    finally:
        sched.close()


@pytest.mark.parametrize("steered", [False, True])
def test_a_batch_whose_clients_all_left_stops_early(stories, steered):
    """Cancelled after 3 tokens of 200: the batch ends (Cancelled), the model ran a handful of steps
    (counted on the bare model when unsteered), and the next request is answered normally."""
    from steerlab.interventions import AddVector

    ivs = InterventionSet([AddVector(site="blocks.1.resid_post", vector=torch.ones(64))] if steered else [])
    steps = []
    hook = stories.model.register_forward_hook(lambda m, a, o: steps.append(1))
    sched = Scheduler(stories, max_batch=4, queue_length=4)
    try:
        seen = []

        def on_token(tok: int, box: list = seen) -> None:
            box.append(tok)
            if len(box) == 3:
                job.cancel()

        job = Job(prompt="Once upon a time", interventions=ivs, max_new_tokens=200, on_token=on_token)
        sched.submit(job)
        with pytest.raises(Cancelled):
            job.wait(60)
        assert len(seen) == 3
        if not steered:
            assert len(steps) <= 6, len(steps)  # not 200 steps
        ok = sched.submit(Job(prompt="Once upon a time", interventions=ivs, max_new_tokens=4))
        want = sl.generate(stories, ["Once upon a time"], interventions=ivs, max_new_tokens=4).texts[0]
        assert ok.wait(60).text == want
    finally:
        hook.remove()
        sched.close()
    with pytest.raises(SteerlabError, match="closed"):
        sched.submit(Job(prompt="x", interventions=InterventionSet()))


def test_one_rows_bad_positions_fail_only_that_row(stories):
    """A steering vector at position 6 fits the long prompts and not the 2-token one. Batched together, the
    short row's error used to fail every row; now the batch runs each row alone when it fails before any token
    is handed out: the long rows get exactly their one-at-a-time answer, the short one its own error."""
    from steerlab.interventions import AddVector

    ivs = InterventionSet([AddVector(site="blocks.1.resid_post", vector=torch.ones(64), positions=[6])])
    prompts = ["Once upon a time there was a little girl", "Hi", "Tom went to the park and saw a big dog"]
    sched = Scheduler(stories, max_batch=4, queue_length=8)
    try:
        with sl.engine_for(stories).lock:  # hold the worker back (busy with a first job) so the three wait together
            first = sched.submit(Job(prompt=prompts[0], interventions=ivs, max_new_tokens=1))
            deadline = time.monotonic() + 30
            while sched.stats().get("running", 0) == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            jobs = [sched.submit(Job(prompt=p, interventions=ivs, max_new_tokens=4)) for p in prompts]
        first.wait(60)
        with pytest.raises(SteerlabError, match="past the end of prompt row 0"):
            jobs[1].wait(60)
        for j, p in zip(jobs, prompts, strict=True):
            if p != "Hi":
                want = sl.generate(stories, [p], interventions=ivs, max_new_tokens=4).texts[0]
                assert j.wait(60).text == want and j.wait(60).batch_size == 1
        sizes = [n for n, _ in _drain(sched.batches)]
        assert sizes == [1, 3, 1, 1, 1]  # the first job, the batch of three, then each of its rows alone
    finally:
        sched.close()


def test_a_row_whose_sampler_fails_mid_batch_fails_only_that_row(stories):
    """Temperature 5.5e-38 keeps stories260K's first logits / T under float32's limit and overflows a few tokens
    later, after tokens were handed out (so the batch does not rerun each row alone). That row's error used to
    fail its sampled batch mate; now the row ends with its own error and the mate gets its one-at-a-time text."""
    from steerlab.sampling import make_sampler

    def jobs() -> list[Job]:
        return [Job(prompt="Once upon a time", interventions=InterventionSet(), max_new_tokens=8,
                    sampler=make_sampler("temperature", temperature=t), seed=1) for t in (5.5e-38, 1.0)]

    sched = Scheduler(stories, max_batch=4, queue_length=8)
    try:
        alone = []
        for j in jobs():
            alone.append(sched.submit(j))
            with pytest.raises(SteerlabError) if len(alone) == 1 else contextlib.nullcontext():
                alone[-1].wait(60)
        with pytest.raises(SteerlabError, match="a tiny temperature can overflow float32"):
            alone[0].wait(60)
        with sl.engine_for(stories).lock:  # hold the worker back (busy with a first job) so the two wait together
            first = sched.submit(Job(prompt="x", interventions=InterventionSet(), max_new_tokens=1, chat=True))
            deadline = time.monotonic() + 30
            while sched.stats().get("running", 0) == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            together = [sched.submit(j) for j in jobs()]
        first.wait(60)
        with pytest.raises(SteerlabError, match="a tiny temperature can overflow float32"):
            together[0].wait(60)
        got = together[1].wait(60)
        assert got.batch_size == 2 and got.token_ids == alone[1].wait(60).token_ids and len(got.token_ids) == 8
        assert [n for n, _ in _drain(sched.batches)] == [1, 1, 1, 2]
    finally:
        sched.close()


@pytest.mark.parametrize("eos", [2, None])
def test_a_refused_row_streams_no_filler_tokens(eos):
    """A row whose sampler refuses its logits gets a filler token from then on (EOS, or 0 when the tokenizer has
    none); its streamer closes the row, so none of them reaches the client, with or without an EOS id. Its logits
    here are all below 0, which a temperature of 1e-300 turns into -inf for every token (a 500 from
    torch.multinomial before)."""
    from steerlab.sampling import make_sampler
    from steerlab.server.scheduler import RowSampler, SamplerRefused, _RowStreamer

    sent: list[list[int]] = [[], []]
    jobs = [Job(prompt="p", interventions=InterventionSet(), max_new_tokens=4, on_token=sent[i].append,
                sampler=make_sampler("temperature", temperature=t)) for i, t in enumerate((1e-300, 1.0))]
    rows = RowSampler([j.sampler for j in jobs], [0, 0], eos)
    streamer = _RowStreamer(jobs, eos, rows.errors)
    streamer.put(torch.zeros(2, 3, dtype=torch.long))  # the prompt
    logits = torch.tensor([[-3.0, -5.0, -4.0, -6.0], [1.0, 5.0, 0.0, -1.0]])
    for _ in range(3):
        out = rows.filter_logits(logits)
        streamer.put(out.argmax(-1))
    assert isinstance(rows.errors[0], SamplerRefused) and "every logit / temperature is -inf" in str(rows.errors[0])
    assert rows.errors[1] is None
    assert sent[0] == [] and len(sent[1]) == 3
