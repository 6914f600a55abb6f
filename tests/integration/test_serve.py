"""The OpenAI-compatible server: routes, the ``steerlab`` field, presets, limits and bad input.

Completions are checked against a greedy loop written here from plain forwards of the Hugging Face
model (not through ``sl.generate``), and the official ``openai`` client talks to a real uvicorn
server on a free loopback port. Every bad request gets its documented status and a message naming the
field, and the server answers the next request normally.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

import steerlab as sl
from steerlab.engines import engine_for
from steerlab.errors import SteerlabError
from steerlab.interventions import AddVector, InterventionSet
from steerlab.server import ServerConfig, create_app, exposure_warning, is_loopback, load_presets, serve_in_thread

MODEL = "stories"


def greedy_by_hand(h, prompt: str, n: int, vector=None, site_layer=None) -> list[int]:
    """Greedy decoding from full forwards of ``h.model`` (optionally adding ``vector`` to the output of
    decoder layer ``site_layer`` with a forward hook): the independent reference."""
    ids = h.tokenizer(prompt, return_tensors="pt")["input_ids"]
    hook = None
    if vector is not None:
        layer = h.model.model.layers[site_layer]
        hook = layer.register_forward_hook(
            lambda m, a, out: (out[0] + vector,) + tuple(out[1:]) if isinstance(out, tuple) else out + vector
        )
    try:
        out = []
        with torch.no_grad():
            for _ in range(n):
                nxt = int(h.model(ids).logits[0, -1].argmax())
                if nxt == h.tokenizer.eos_token_id:
                    break
                out.append(nxt)
                ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
    finally:
        if hook is not None:
            hook.remove()
    return out


@pytest.fixture(scope="module")
def client(stories):
    app = create_app(stories, ServerConfig(model_name=MODEL, max_prompt_tokens=32, max_new_tokens=24))
    with TestClient(app) as c:
        yield c


def _post(c, path="/v1/completions", **body):
    body.setdefault("model", MODEL)
    return c.post(path, json=body)


def _err(r, status: int, param: str | None = None, contains: str = "") -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    err = r.json()["error"]
    # OpenAI's string code where it has one (a model not served: model_not_found), else the status
    assert err["code"] == ("model_not_found" if status == 404 and param == "model" else status), err
    if param is not None:
        assert err["param"] == param, err
    assert contains in err["message"], err
    return err


def test_completion_equals_greedy_by_hand(client, stories):
    r = _post(client, prompt="Once upon a time", max_tokens=10, temperature=0)
    assert r.status_code == 200, r.text
    body = r.json()
    want = greedy_by_hand(stories, "Once upon a time", 10)
    assert body["choices"][0]["text"] == stories.tokenizer.decode(want, skip_special_tokens=True)
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": len(want), "total_tokens": 5 + len(want)}
    assert body["choices"][0]["finish_reason"] == "length" and body["object"] == "text_completion"


def test_inline_steering_vector_matches_a_hand_hook(client, stories):
    vec = torch.randn(64, generator=torch.Generator().manual_seed(1)) * 4
    iv = {"type": "add_vector", "site": "blocks.1.resid_post", "vector": vec.tolist()}
    r = _post(client, prompt="Once upon a time", max_tokens=10, temperature=0, steerlab={"interventions": [iv]})
    assert r.status_code == 200, r.text
    want = greedy_by_hand(stories, "Once upon a time", 10, vector=vec, site_layer=1)
    assert want != greedy_by_hand(stories, "Once upon a time", 10)  # the vector changes the text
    assert r.json()["choices"][0]["text"] == stories.tokenizer.decode(want, skip_special_tokens=True)


def test_stream_concatenates_to_the_completion(client):
    body = {"prompt": "The dog", "max_tokens": 12, "temperature": 0}
    whole = _post(client, **body).json()["choices"][0]["text"]
    r = _post(client, stream=True, **body)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    datas = [line[len("data: "):] for line in r.text.splitlines() if line.startswith("data: ")]
    assert datas[-1] == "[DONE]"
    chunks = [json.loads(d) for d in datas[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole
    assert len(chunks) > 3 and chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])


def _events(r) -> list[dict]:
    datas = [line[len("data: "):] for line in r.text.splitlines() if line.startswith("data: ")]
    assert r.status_code == 200 and datas[-1] == "[DONE]", r.text
    return [json.loads(d) for d in datas[:-1]]


def test_stream_options_include_usage_ends_with_a_usage_chunk(client):
    """``stream_options: {"include_usage": true}`` was ignored; as OpenAI, the last chunk before [DONE] has no
    choices and the non-streamed answer's usage (the others ``"usage": null``); without it there is no usage at
    all. ``stream_options`` without ``stream`` or with an unknown key is a 422 naming it."""
    chat = {"messages": [{"role": "user", "content": "Tell me a story"}]}
    for path, body in (("/v1/completions", {"prompt": "The dog"}), ("/v1/chat/completions", chat)):
        body = {**body, "max_tokens": 6, "temperature": 0}
        whole = _post(client, path, **body).json()
        chunks = _events(_post(client, path, **body, stream=True, stream_options={"include_usage": True}))
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]
        assert chunks[-1]["object"] == chunks[0]["object"] and chunks[-1]["id"] == chunks[0]["id"]
        assert all(c["usage"] is None and len(c["choices"]) == 1 for c in chunks[:-1])
        for off in ({"include_usage": False}, None):
            chunks = _events(_post(client, path, **body, stream=True, stream_options=off))
            assert all("usage" not in c and len(c["choices"]) == 1 for c in chunks)
        _err(_post(client, path, **body, stream_options={"include_usage": True}), 422, "stream_options",
             "only allowed when stream is true")
        _err(_post(client, path, **body, stream=True, stream_options={"include_usage": True, "usage": 1}), 422,
             "stream_options.usage", "Extra inputs")


def test_a_stream_that_fails_before_its_first_token_keeps_the_status(client):
    """A stream's error found before any token is answered with its status and OpenAI's error body, as without
    streaming (it was a 200 event stream holding one error event, a chat one after the role chunk); the server
    then streams the plain text."""
    past = {"interventions": [{"type": "add_vector", "site": "blocks.1.resid_post", "vector": [0.5] * 64,
                               "positions": [100]}]}
    chat = {"messages": [{"role": "user", "content": "Tell me a story"}]}
    for path, body in (("/v1/completions", {"prompt": "Once upon a time"}), ("/v1/chat/completions", chat)):
        r = _post(client, path, **body, max_tokens=4, temperature=0, stream=True, steerlab=past)
        _err(r, 422, "steerlab.interventions", "position 100 in positions [100] is past the end of prompt row 0")
        _err(_post(client, path, **body, max_tokens=4, temperature=1e-300, stream=True), 422, "temperature",
             "overflow float32")
    r = _post(client, prompt="Once upon a time", max_tokens=4, temperature=0, stream=True)
    chunks = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
    assert r.status_code == 200 and "".join(c["choices"][0]["text"] for c in chunks) == ", there was a"


def test_chat_uses_the_template_and_seeded_sampling_repeats(client, stories):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me a story"}]
    a = _post(client, "/v1/chat/completions", messages=msgs, max_tokens=8, temperature=0)
    assert a.status_code == 200, a.text
    want = sl.generate(stories, ["Tell me a story"], chat=True, system="Be brief.", max_new_tokens=8).texts[0]
    assert a.json()["choices"][0]["message"] == {"role": "assistant", "content": want}
    s1, s2, s3 = (_post(client, "/v1/chat/completions", messages=msgs, max_tokens=12, seed=s,
                        steerlab={"sampler": {"name": "top_h", "params": {"alpha": 0.6, "temperature": 1.5}}})
                  .json() for s in (5, 5, 6))
    assert s1["choices"][0]["message"] == s2["choices"][0]["message"]
    assert s1["choices"][0]["message"] != s3["choices"][0]["message"]
    assert s1["steerlab"]["sampler"] == {"name": "top_h", "params": {"alpha": 0.6, "variant": "paper",
                                                                     "temperature": 1.5}}


def test_models_health_and_presets(stories, tmp_path):
    vec = torch.randn(64, generator=torch.Generator().manual_seed(2)) * 4
    InterventionSet([AddVector(site="blocks.2.resid_post", vector=vec, name="happy")]).save(tmp_path / "happy.json")
    (tmp_path / "evil.pkl").write_bytes(b"never read")
    presets = load_presets(tmp_path, stories)
    assert list(presets) == ["happy"]
    app = create_app(stories, ServerConfig(model_name=MODEL), presets)
    with TestClient(app) as c:
        assert c.get("/health").json()["status"] == "ok"
        assert [m["id"] for m in c.get("/v1/models").json()["data"]] == [MODEL]
        # GET /v1/models/{id} was a 404 for every id (the openai client's models.retrieve failed)
        assert c.get(f"/v1/models/{MODEL}").json() == c.get("/v1/models").json()["data"][0]
        for unknown in ("gpt-4", "org/model"):
            err = _err(c.get(f"/v1/models/{unknown}"), 404, "model", f"model {unknown!r} is not served here")
            assert err["type"] == "invalid_request_error" and err["code"] == "model_not_found"  # as OpenAI's
        listed = c.get("/v1/steerlab/presets").json()["data"]
        assert [p["name"] for p in listed] == ["happy"] and listed[0]["interventions"][0]["type"] == "add_vector"
        by_name = _post(c, prompt="Lily", max_tokens=8, temperature=0, steerlab={"presets": ["happy"]}).json()
        inline = {"type": "add_vector", "site": "blocks.2.resid_post", "vector": vec.tolist(), "name": "happy"}
        by_value = _post(c, prompt="Lily", max_tokens=8, temperature=0, steerlab={"interventions": [inline]}).json()
        plain = _post(c, prompt="Lily", max_tokens=8, temperature=0).json()
        assert by_name["choices"] == by_value["choices"] != plain["choices"]
        assert by_name["steerlab"]["interventions_digest"] == presets["happy"].digest()


def test_a_preset_that_does_not_fit_the_model_is_refused(stories, tmp_path):
    InterventionSet([AddVector(site="blocks.2.resid_post", vector=torch.ones(3))]).save(tmp_path / "narrow.json")
    with pytest.raises(SteerlabError, match="preset 'narrow.json' does not fit"):
        load_presets(tmp_path, stories)


def test_a_preset_reads_no_file_outside_its_folder(stories, tmp_path):
    """Claim (``load_presets``, docs/serving.md): every NAME.json with its safetensors side file; "nothing else is
    read". A spec whose ``tensors_file`` names a path (a folder up, a subfolder, an absolute path) is refused."""
    import json

    from steerlab.errors import SpecError

    presets = tmp_path / "presets"
    presets.mkdir()
    (presets / "sub").mkdir()
    saved = InterventionSet([AddVector(site="blocks.2.resid_post", vector=torch.ones(64))]).save(tmp_path / "v.json")
    side = json.loads(saved.read_text())["tensors_file"]
    (presets / "sub" / side).write_bytes((tmp_path / side).read_bytes())
    for name in (f"../{side}", f"sub/{side}", str(tmp_path / side)):
        (presets / "p.json").write_text(json.dumps({**json.loads(saved.read_text()), "tensors_file": name}))
        with pytest.raises(SpecError, match="is not a file name"):
            load_presets(presets, stories)
    (presets / "sub" / side).rename(presets / side)  # beside the spec, as save writes it: read
    (presets / "p.json").write_text(saved.read_text())
    assert torch.equal(load_presets(presets, stories)["p"].items[0].vector, torch.ones(64))


ZERO_VECTOR = {"type": "add_vector", "site": "blocks.1.resid_post", "vector": [0.0] * 64}


BAD = [
    # (id, body changes, status, param, message fragment)
    ("unknown preset", {"steerlab": {"presets": ["nope"]}}, 422, "steerlab.presets[0]", "unknown preset 'nope'"),
    ("preset in list", {"steerlab": {"interventions": ["nope"]}}, 422, "steerlab.interventions[0]", "unknown preset"),
    ("wrong width", {"steerlab": {"interventions": [
        {"type": "add_vector", "site": "blocks.0.resid_post", "vector": [1.0, 2.0]}]}},
     422, "steerlab.interventions[0]", "vector width 2 does not match"),
    ("unknown site", {"steerlab": {"interventions": [
        {"type": "add_vector", "site": "blocks.99.resid_post", "vector": [0.0] * 64}]}},
     422, "steerlab.interventions[0]", "blocks.99"),
    ("unknown type", {"steerlab": {"interventions": [{"type": "nope"}]}}, 422, "steerlab.interventions[0]",
     "unknown intervention type 'nope'"),
    ("nan", {"steerlab": {"interventions": [
        {"type": "add_vector", "site": "blocks.0.resid_post", "vector": [float("nan")] * 64}]}},
     422, "steerlab.interventions[0]", "expected finite numbers"),  # Python's JSON reads NaN
    ("unknown steerlab field", {"steerlab": {"intervention": []}}, 422, "steerlab.intervention", "Extra inputs"),
    ("bad sampler", {"steerlab": {"sampler": "nope"}}, 422, "steerlab.sampler", "unknown sampler 'nope'"),
    ("bad sampler param", {"steerlab": {"sampler": {"name": "top_h", "params": {"alpha": 7}}}}, 422,
     "steerlab.sampler", "alpha"),
    # were ignored (the sampler's defaults ran) / read as the number 5
    ("sampler key typo", {"steerlab": {"sampler": {"name": "top_h", "param": {"alpha": 0.1}}}}, 422,
     "steerlab.sampler", "unknown keys ['param']; expected 'name' and optionally 'params'"),
    ("steerlab seed as a string", {"steerlab": {"seed": "5"}}, 422, "steerlab.seed", "valid integer"),
    ("negative max_tokens", {"max_tokens": 0}, 422, "max_tokens", "greater than or equal to 1"),
    ("temperature", {"temperature": -1}, 422, "temperature", "greater than or equal to 0"),
    ("n", {"n": 2}, 422, "n", "less than or equal to 1"),
    ("stop", {"stop": ["\n"]}, 422, "stop", "stop: stop sequences are not supported by this server (got ['\\n'])"),
    # sampling fields that were accepted and silently ignored
    ("frequency_penalty", {"frequency_penalty": 1.5}, 422, "frequency_penalty", "penalties are not applied"),
    ("presence_penalty", {"presence_penalty": -1}, 422, "presence_penalty", "penalties are not applied"),
    ("logit_bias", {"logit_bias": {"5": 100}}, 422, "logit_bias", "logit_bias is not applied"),
    ("suffix", {"suffix": "The end."}, 422, "suffix", "a suffix (insertion) is not supported"),
    ("two prompts", {"prompt": ["a", "b"]}, 422, "prompt", "expected one prompt"),
    ("missing prompt", {"prompt": None}, 422, "prompt", ""),
    ("max_tokens over limit", {"max_tokens": 25}, 413, "max_tokens", "limit of 24"),
    ("prompt over limit", {"prompt": "Once upon a time " * 10}, 413, "prompt", "over this server's limit of 32"),
    ("unknown model", {"model": "gpt-4"}, 404, "model", "'gpt-4' is not served here"),
    ("scale beyond float32", {"steerlab": {"interventions": [
        {"type": "expert_mask", "layer": 0, "scale": {"5": 1e308}}]}}, 422, "steerlab.interventions[0]", "fit float32"),
    ("not an intervention", {"steerlab": {"interventions": [5]}}, 422, "steerlab.interventions[0]", ""),
    ("lone surrogate", {"prompt": "a\ud800b"}, 422, "prompt", "not valid Unicode text"),
    ("logprobs", {"logprobs": 2}, 422, "logprobs", "logprobs are not returned"),
    # OpenAI's logprobs 0 is the sampled token's logprob, not "off": was accepted and no logprobs returned
    ("logprobs 0", {"logprobs": 0}, 422, "logprobs", "logprobs: logprobs are not returned by this server (got 0)"),
    ("echo", {"echo": True}, 422, "echo", "not echoed"),
    ("tools", {"tools": [{"type": "function"}]}, 422, "tools", "not supported"),
    ("stream as a string", {"stream": "yes"}, 422, "stream", "valid boolean"),
    ("max_tokens as a string", {"max_tokens": "4"}, 422, "max_tokens", "valid integer"),
    ("max_tokens as a boolean", {"max_tokens": True}, 422, "max_tokens", "valid integer"),
    ("temperature NaN", {"temperature": float("nan")}, 422, "temperature", "finite number"),
    # a noise seed torch.Generator.manual_seed cannot take: was a 500 from the worker
    ("param_edit seed", {"steerlab": {"interventions": [
        {"type": "param_edit", "param": "model.norm.weight", "op": "noise", "value": 0.1, "seed": 2**64}]}},
     422, "steerlab.interventions[0]", "less than 18446744073709551616"),
    ("region_edit seed", {"steerlab": {"interventions": [
        {"type": "region_edit", "params": ["model.norm.weight", "model.layers.0.input_layernorm.weight"],
         "counts": [1, 1], "indices": [0, 1], "op": "noise", "value": 0.1, "seed": 2**64 - 1}]}},
     422, "steerlab.interventions[0]", "seed 18446744073709551615 + 1 (one more per param) is over 2**64 - 1"),
    # logits / 1e-300 overflow float32: was a 500 from torch.multinomial; the field that chose the sampler is named,
    # also next to interventions (they were named: the logits were finite, the temperature overflowed them)
    ("temperature tiny", {"temperature": 1e-300}, 422, "temperature", "a tiny temperature can overflow float32"),
    ("sampler temperature tiny", {"steerlab": {"sampler": {"name": "top_p", "params": {"temperature": 1e-300}}}},
     422, "steerlab.sampler", "a tiny temperature can overflow float32"),
    ("temperature tiny with interventions", {"temperature": 1e-300, "steerlab": {"interventions": [ZERO_VECTOR]}},
     422, "temperature", "temperature: +inf in logits / temperature"),
    ("sampler temperature tiny with interventions", {"steerlab": {
        "interventions": [ZERO_VECTOR], "sampler": {"name": "top_h", "params": {"temperature": 1e-300}}}},
     422, "steerlab.sampler", "steerlab.sampler: +inf in logits / temperature"),
]


@pytest.mark.parametrize(("case", "change", "status", "param", "fragment"), BAD, ids=[b[0] for b in BAD])
def test_bad_requests_get_their_answer_and_the_server_keeps_serving(client, case, change, status, param, fragment):
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 4, "temperature": 0, **change}
    body = {k: v for k, v in body.items() if v is not None}
    raw = json.dumps(body, allow_nan=True).encode()
    r = client.post("/v1/completions", content=raw, headers={"content-type": "application/json"})
    _err(r, status, param, fragment)
    ok = _post(client, prompt="Once upon a time", max_tokens=4, temperature=0)
    assert ok.status_code == 200 and ok.json()["choices"][0]["text"] == ", there was a"


def test_unsupported_openai_fields_left_at_their_defaults_are_accepted(client):
    """Clients that send every field with its default value are served (the refused fields are refused only when
    they would change the answer)."""
    defaults = {"stop": [], "frequency_penalty": 0, "presence_penalty": 0.0, "logit_bias": {}, "suffix": "",
                "logprobs": None, "n": 1, "user": "someone"}
    r = _post(client, prompt="Once upon a time", max_tokens=4, temperature=0, **defaults)
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == ", there was a", r.text
    chat = {"messages": [{"role": "user", "content": "Tell me a story"}], "max_tokens": 2, "temperature": 0}
    assert _post(client, "/v1/chat/completions", **chat, logprobs=False, top_logprobs=0).status_code == 200
    _err(_post(client, "/v1/chat/completions", **chat, logprobs=True), 422, "logprobs", "logprobs are not returned")


def test_malformed_json_and_chat_shapes(client):
    r = client.post("/v1/completions", content=b'{"model": "stories", "prompt": ', headers={"content-type":
                                                                                          "application/json"})
    _err(r, 400, None, "not valid JSON")
    two_turns = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                 {"role": "user", "content": "c"}]
    _err(_post(client, "/v1/chat/completions", messages=two_turns), 422, "messages", "multi-turn")
    _err(_post(client, "/v1/chat/completions", messages=[{"role": "user", "content": [{"type": "image_url"}]}]),
         422, "messages[0].content[0]", "text part")
    _err(_post(client, "/v1/chat/completions", messages=[]), 422, "messages", "at least 1")
    # a chat request's errors name its own fields (it has no `prompt`)
    chat = {"messages": [{"role": "user", "content": "Tell me a story"}]}
    _err(_post(client, "/v1/chat/completions", **chat, max_completion_tokens=25), 413, "max_completion_tokens",
         "max_completion_tokens 25 is over")
    long = [{"role": "user", "content": "Once upon a time " * 10}]
    _err(_post(client, "/v1/chat/completions", messages=long), 413, "messages", "over this server's limit")
    _err(_post(client, "/v1/chat/completions", messages=[{"role": "user", "content": 7}]), 422, "messages[0].content")
    # routes and methods that do not exist answer in OpenAI's shape too
    _err(client.get("/v1/nope"), 404, None, "GET /v1/nope: Not Found")
    _err(client.get("/v1/completions"), 405, None, "Method Not Allowed")
    parts = [{"role": "user", "content": [{"type": "text", "text": "Tell me "}, {"type": "text", "text": "a story"}]}]
    assert _post(client, "/v1/chat/completions", messages=parts, max_tokens=3, temperature=0).status_code == 200


def test_bearer_key(stories):
    app = create_app(stories, ServerConfig(model_name=MODEL, api_key="s3cret"))
    with TestClient(app) as c:
        assert c.get("/health").status_code == 200  # health stays open
        _err(c.get("/v1/models"), 401, None, "API key")
        # checked before the body is read: a malformed or invalid body without the key is still a 401
        _err(c.post("/v1/completions", content=b"{not json", headers={"content-type": "application/json"}), 401)
        _err(c.post("/v1/completions", json={"model": MODEL, "max_tokens": "x"}), 401)
        _err(_post(c, prompt="x", max_tokens=2), 401, None, "API key")
        bad = c.post("/v1/completions", json={"model": MODEL, "prompt": "x"}, headers={"Authorization": "Bearer no"})
        _err(bad, 401)
        ok = c.post("/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 2},
                    headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200


def test_full_queue_is_429_and_timeout_is_504(stories):
    """The engine's lock is held from here, so the first request sits in a running batch: with one
    concurrent row and a queue of one, the third request is refused; with a short timeout, 504."""
    app = create_app(stories, ServerConfig(model_name=MODEL, max_concurrent=1, queue_length=1, timeout_s=3.0))
    lock = engine_for(stories).lock
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 3, "temperature": 0}
    with TestClient(app) as c:
        results: dict[int, httpx.Response] = {}
        svc = app.state.service
        lock.acquire()
        try:
            threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, c.post("/v1/completions", json=body)))
                       for i in range(2)]
            threads[0].start()
            _until(lambda: svc.scheduler.stats()["running"] == 1)
            threads[1].start()
            _until(lambda: svc.scheduler.stats()["waiting"] == 1)
            _err(c.post("/v1/completions", json=body), 429, None, "queue is full")
            for t in threads:
                t.join(10)
        finally:
            lock.release()
        assert [results[i].status_code for i in (0, 1)] == [504, 504]
        assert "did not finish within 3 s" in results[0].json()["error"]["message"]
        _until(lambda: svc.scheduler.stats() == {"waiting": 0, "running": 0})
        ok = c.post("/v1/completions", json=body)
        assert ok.status_code == 200 and ok.json()["choices"][0]["text"] == ", there was"


def _until(cond, timeout: float = 10.0) -> None:
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, "condition not reached"
        time.sleep(0.01)


def test_exposure_warning():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.org")
    assert exposure_warning("127.0.0.1", None) is None
    assert exposure_warning("0.0.0.0", "key") is None
    assert "without an API key" in exposure_warning("0.0.0.0", None)


# ---------------------------------------------------------------------------------------------
# a real server on a loopback port: the openai client, a client that goes away mid-stream
# ---------------------------------------------------------------------------------------------
def test_serve_in_thread_starts_answers_and_stops(stories):
    """``serve_in_thread``: the URL it yields answers on the port the server bound; on exit the port is
    closed; a port already taken is one line (``SteerlabError``), not a hang or a traceback from a thread."""
    app = create_app(stories, ServerConfig(model_name=MODEL))
    with serve_in_thread(app) as url:
        port = int(url.rsplit(":", 1)[1])
        assert port > 0 and httpx.get(url + "/health").status_code == 200
        with socket.socket() as s:  # the port is really taken while it runs
            with pytest.raises(OSError):
                s.bind(("127.0.0.1", port))
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/health")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        with pytest.raises(SteerlabError, match=rf"the server did not start on 127.0.0.1:{busy} \(port taken"):
            with serve_in_thread(create_app(stories, ServerConfig(model_name=MODEL)), port=busy):
                pass


def test_openai_client_unchanged(stories):
    import openai

    app = create_app(stories, ServerConfig(model_name=MODEL, api_key="k"))
    with serve_in_thread(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
        assert [m.id for m in client.models.list()] == [MODEL]
        assert client.models.retrieve(MODEL) == client.models.list().data[0]
        with pytest.raises(openai.NotFoundError, match="'gpt-4' is not served here"):
            client.models.retrieve("gpt-4")
        c = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=10, temperature=0)
        want = stories.tokenizer.decode(greedy_by_hand(stories, "Once upon a time", 10))
        assert c.choices[0].text == want and c.usage.completion_tokens == 10
        streamed = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=10, temperature=0,
                                             stream=True)
        assert "".join(ch.choices[0].text for ch in streamed) == want
        *_, last = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=10, temperature=0,
                                             stream=True, stream_options={"include_usage": True})
        assert last.choices == [] and last.usage == c.usage
        chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=6,
                                              temperature=0, extra_body={"steerlab": {"interventions": [
                                                  {"type": "scale_units", "site": "blocks.0.mlp_out",
                                                   "units": [0, 1, 2], "scale": 0.0}]}})
        assert chat.choices[0].message.role == "assistant" and chat.choices[0].message.content
        parts = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                               max_tokens=6, temperature=0, stream=True)
        pieces = [p.choices[0].delta.content or "" for p in parts]
        plain = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                               max_tokens=6, temperature=0)
        assert "".join(pieces) == plain.choices[0].message.content
        *_, last = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                                  max_tokens=6, temperature=0, stream=True,
                                                  stream_options={"include_usage": True})
        assert last.choices == [] and last.usage == plain.usage
        with pytest.raises(openai.UnprocessableEntityError, match="unknown preset"):
            client.completions.create(model=MODEL, prompt="x", extra_body={"steerlab": {"presets": ["nope"]}})
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()


def test_client_gone_mid_stream(stories):
    app = create_app(stories, ServerConfig(model_name=MODEL, max_new_tokens=200))
    svc = app.state.service
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 200, "temperature": 0, "stream": True}
    with serve_in_thread(app) as url:
        with httpx.Client(base_url=url, timeout=30) as c:
            with c.stream("POST", "/v1/completions", json=body) as r:
                assert r.status_code == 200
                first = next(line for line in r.iter_lines() if line.startswith("data: "))
                assert json.loads(first[6:])["choices"][0]["text"]
            # the connection is closed: the job is cancelled and its batch stops early
            _until(lambda: svc.scheduler.stats() == {"waiting": 0, "running": 0}, 20)
            ok = c.post("/v1/completions", json={**body, "stream": False, "max_tokens": 4})
            assert ok.status_code == 200 and ok.json()["choices"][0]["text"] == ", there was a"


def test_serve_command_dry_run(tmp_path, monkeypatch):
    """``steerlab serve``: exposed without a key warns; a missing key variable, a bad --remote and a
    missing presets folder are one line and exit status 2."""
    from typer.testing import CliRunner

    from steerlab.cli.main import app

    runner = CliRunner()
    r = runner.invoke(app, ["serve", "shared:stories260K", "--host", "0.0.0.0", "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "warning: serving on 0.0.0.0 without an API key" in r.stderr
    monkeypatch.setenv("STEERLAB_TEST_KEY", "k")
    r = runner.invoke(app, ["serve", "shared:stories260K", "--host", "0.0.0.0", "--api-key-env", "STEERLAB_TEST_KEY",
                            "--dry-run"])
    assert r.exit_code == 0 and "warning" not in r.stderr and "key required" in r.stderr
    import nnsight

    monkeypatch.setattr(nnsight.CONFIG.API, "APIKEY", None)
    for argv, msg in [
        (["--remote", "ndif"], "remote=True runs on NDIF and needs an API key, and nnsight's config has none"),
        (["--api-key-env", "STEERLAB_NO_SUCH_VAR"], "--api-key-env STEERLAB_NO_SUCH_VAR: the environment variable is"),
        (["--remote", "cloud"], "--remote must be 'ndif' or 'local', got 'cloud'"),
        (["--presets", str(tmp_path / "nope")], "presets folder"),
    ]:
        r = runner.invoke(app, ["serve", "shared:stories260K", *argv, "--dry-run"])
        assert r.exit_code == 2 and r.stderr.startswith("error: ") and msg in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


STREAM_AFTER_STEERING = r"""
import json, sys, httpx, steerlab as sl
from steerlab.server import ServerConfig, create_app, serve_in_thread
app = create_app(sl.load("shared:stories260K"), ServerConfig(model_name="stories"))
body = {"model": "stories", "prompt": "Once upon a time", "max_tokens": 4, "temperature": 0}
steer = {"interventions": [{"type": "add_vector", "site": "blocks.1.resid_post", "vector": [0.5] * 64}]}
with serve_in_thread(app) as url:
    first = httpx.post(url + "/v1/completions", json={**body, "steerlab": steer}, timeout=60)
    streamed = httpx.post(url + "/v1/completions", json={**body, "stream": True}, timeout=60)
    plain = httpx.post(url + "/v1/completions", json=body, timeout=60)
print(json.dumps([first.status_code, streamed.status_code, streamed.text, plain.json()["choices"][0]["text"]]))
"""


@pytest.mark.parametrize("nnsight_first", [False, True])
def test_a_stream_after_a_steered_request_in_a_fresh_process(nnsight_first):
    """The first stream of a process that has already run an activation intervention (so nnsight is imported
    and has mounted ``.save`` on every object) streams the plain text, also when the user imported nnsight
    before steerlab; run in a fresh interpreter, since in this one anyio's classes were defined long ago. It
    failed with a plain-text 500 for every stream."""
    import subprocess
    import sys

    code = ("import nnsight\n" if nnsight_first else "") + STREAM_AFTER_STEERING
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    first, streamed, events, plain = json.loads(p.stdout.strip().splitlines()[-1])
    assert (first, streamed) == (200, 200), events
    chunks = [json.loads(line[6:]) for line in events.splitlines() if line.startswith("data: {")]
    assert "".join(c["choices"][0]["text"] for c in chunks) == plain == ", there was a"


def test_an_empty_prompt_is_422_where_it_has_no_tokens():
    """organism:dense's tokenizer adds no BOS: an empty completion prompt is zero tokens, a 422 naming
    ``prompt`` (it was a 500 from a reshape; stories260K's BOS makes the same prompt one token, and valid)."""
    h = sl.load("organism:dense")
    with TestClient(create_app(h, ServerConfig(model_name="dense"))) as c:
        _err(c.post("/v1/completions", json={"model": "dense", "prompt": "", "max_tokens": 2}), 422, "prompt",
             "the prompt is empty")
        ok = c.post("/v1/completions", json={"model": "dense", "prompt": "Hi", "max_tokens": 2, "temperature": 0})
        assert ok.status_code == 200


def test_a_bug_of_ours_is_a_json_500_and_the_server_keeps_serving(stories, monkeypatch):
    from steerlab.server.app import Service

    app = create_app(stories, ServerConfig(model_name=MODEL))
    real = Service.count_tokens
    monkeypatch.setattr(Service, "count_tokens", lambda self, *a: 1 / 0 if a[0] == "boom" else real(self, *a))
    with TestClient(app, raise_server_exceptions=False) as c:
        err = _err(_post(c, prompt="boom", max_tokens=2), 500, None, "internal error: ZeroDivisionError")
        assert err["type"] == "server_error"
        assert _post(c, prompt="Once upon a time", max_tokens=4, temperature=0).json()["choices"][0]["text"] == (
            ", there was a"
        )


def test_nan_logits_are_a_422_greedy_or_sampled(client):
    """An edit that makes NaN logits (the final norm set to 3e38) was a 200 with empty text under greedy decoding
    and a 422 when sampling; both are the 422 now, and the next request is unsteered."""
    iv = [{"type": "param_edit", "param": "model.norm.weight", "op": "set", "value": 3e38}]
    for temperature in (0, 1):
        r = _post(client, prompt="Once upon", max_tokens=3, temperature=temperature, steerlab={"interventions": iv})
        _err(r, 422, "steerlab.interventions", "NaN in logits")
    assert _post(client, prompt="Once upon", max_tokens=3, temperature=0).json()["choices"][0]["text"] == "a time,"
