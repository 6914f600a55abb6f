"""The OpenAI-compatible HTTP API over one loaded model, with steerlab's per-request extensions.

``create_app(handle, config, presets)`` returns a FastAPI app: ``POST /v1/completions`` and
``POST /v1/chat/completions`` (streamed as server-sent events with ``"stream": true``),
``GET /v1/models`` (and ``/v1/models/{id}``), ``GET /health`` and ``GET /v1/steerlab/presets``.
A request may carry a ``steerlab`` object::

    {"interventions": [{"type": "add_vector", "site": "blocks.2.resid_post", "vector": [...], "scale": 4},
                       "my-preset"],          # inline intervention dicts or preset names, in order
     "presets": ["other-preset"],              # more preset names (applied first)
     "sampler": {"name": "top_h", "params": {"alpha": 0.4, "variant": "paper", "temperature": 1.0}},
     "seed": 0}

Without ``steerlab.sampler`` the OpenAI fields decide: ``temperature`` 0 is greedy, else ``min_p``
(an extension, as vLLM's), ``top_p`` < 1, or plain temperature sampling (OpenAI's default
``temperature`` is 1). Answers: 400 malformed JSON, 401 bad or missing key, 404 unknown model, 413
prompt or ``max_tokens`` over the server's limits, 422 a field that does not validate (``param``
names it), 429 queue full, 504 request timeout; errors have OpenAI's ``{"error": {...}}`` shape.

Example:
    >>> import steerlab as sl
    >>> from fastapi.testclient import TestClient
    >>> app = create_app(sl.load("shared:stories260K"), ServerConfig(model_name="stories"))
    >>> with TestClient(app) as c:
    ...     r = c.post("/v1/completions", json={"model": "stories", "prompt": "Once upon a time",
    ...                                        "max_tokens": 4, "temperature": 0})
    >>> r.json()["choices"][0]["text"]
    ', there was a'
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import hmac
import ipaddress
import json
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, model_validator
from sse_starlette.sse import EventSourceResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from steerlab.engines.nnsight_engine import REMOTE_TYPES, check_ndif_key
from steerlab.errors import SpecError, SteerlabError, UnknownSiteError
from steerlab.interventions import InterventionSet
from steerlab.interventions.compile import compile_plan
from steerlab.models.handle import ModelHandle
from steerlab.sampling import Sampler, make_sampler
from steerlab.server.scheduler import Job, QueueFull, SamplerRefused, Scheduler

# ---------------------------------------------------------------------------------------------
# configuration, errors, presets
# ---------------------------------------------------------------------------------------------


@dataclass
class ServerConfig:
    """Limits and identity of one server. ``api_key``: required as ``Authorization: Bearer KEY`` on
    every ``/v1`` route when set. ``max_concurrent``: requests generating at once (rows of a batch)."""

    model_name: str
    api_key: str | None = None
    max_prompt_tokens: int = 1024
    max_new_tokens: int = 512
    max_concurrent: int = 8
    queue_length: int = 64
    timeout_s: float = 120.0
    remote: bool | str = False  # True: every batch runs on NDIF; "local": nnsight's in-process simulation of it

    def __post_init__(self) -> None:
        for name in ("max_prompt_tokens", "max_new_tokens", "max_concurrent", "queue_length"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise SteerlabError(f"{name} must be an integer >= 1, got {v!r}")
        if not self.timeout_s > 0:
            raise SteerlabError(f"timeout_s must be > 0, got {self.timeout_s!r}")


class ApiError(Exception):
    """An answer other than 200, in OpenAI's error shape (``code``: OpenAI's string code where it has one, such as
    ``model_not_found``; else the status)."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.code = status, message, param, kind, code

    def response(self) -> JSONResponse:
        code = self.code if self.code is not None else self.status
        body = {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": code}}
        return JSONResponse(body, status_code=self.status)


def is_loopback(host: str) -> bool:
    """Whether ``host`` binds to this machine only.

    >>> is_loopback("127.0.0.1"), is_loopback("localhost"), is_loopback("0.0.0.0")
    (True, True, False)
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, api_key: str | None) -> str | None:
    """The warning printed when the server is reachable from the network without a key (else ``None``)."""
    if is_loopback(host) or api_key:
        return None
    return (
        f"warning: serving on {host} without an API key: anyone who can reach this address can use the model; "
        "pass --api-key-env VAR"
    )


def load_presets(folder: str | Path | None, h: ModelHandle | None = None) -> dict[str, InterventionSet]:
    """Every ``NAME.json`` intervention spec in ``folder`` (``InterventionSet.save`` format: JSON plus
    a safetensors side file; nothing else is read, pickles never), by name, validated against ``h``.

    >>> load_presets(None)
    {}
    """
    if folder is None:
        return {}
    folder = Path(folder)
    if not folder.is_dir():
        raise SteerlabError(f"presets folder {str(folder)!r} does not exist; expected a folder of NAME.json specs")
    out: dict[str, InterventionSet] = {}
    for f in sorted(folder.glob("*.json")):
        ivs = InterventionSet.load(f)
        if h is not None:
            try:
                compile_plan(h, ivs)
            except (SpecError, UnknownSiteError) as e:
                raise SteerlabError(f"preset {f.name!r} does not fit model {h.spec!r}: {e}") from None
        out[f.stem] = ivs
    return out


# ---------------------------------------------------------------------------------------------
# request bodies
# ---------------------------------------------------------------------------------------------


class SteerlabOptions(BaseModel):
    """The ``steerlab`` field of a request."""

    model_config = ConfigDict(extra="forbid")
    interventions: list[dict[str, Any] | str] = Field(default_factory=list)
    presets: list[str] = Field(default_factory=list)
    sampler: str | dict[str, Any] | None = None
    seed: StrictInt | None = Field(default=None, ge=0, le=2**63 - 1)


class StreamOptions(BaseModel):
    """The ``stream_options`` field of a streamed request (OpenAI's; no obfuscation field is ever sent)."""

    model_config = ConfigDict(extra="forbid")
    include_usage: StrictBool = False
    include_obfuscation: StrictBool = False


# OpenAI fields steerlab does not support: refused (422) when set to anything but "off", not ignored
_REFUSED = {
    "logprobs": "logprobs are not returned",
    "top_logprobs": "logprobs are not returned",
    "echo": "the prompt is not echoed",
    "tools": "tool calls are not supported",
    "tool_choice": "tool calls are not supported",
    "functions": "function calls are not supported",
    "response_format": "only plain text is generated",
    "best_of": "n > 1 is not supported",
    "stop": "stop sequences are not supported",
    "frequency_penalty": "penalties are not applied",
    "presence_penalty": "penalties are not applied",
    "logit_bias": "logit_bias is not applied",
    "suffix": "a suffix (insertion) is not supported",
}


class _Common(BaseModel):
    # OpenAI clients send fields steerlab ignores (user, ...); numbers must be finite, and a string is not a number
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    model: str
    max_tokens: StrictInt | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=100)
    top_p: float | None = Field(default=None, gt=0, le=1)
    min_p: float | None = Field(default=None, ge=0, le=1)
    seed: StrictInt | None = Field(default=None, ge=0, le=2**63 - 1)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    n: StrictInt = Field(default=1, ge=1, le=1)
    steerlab: SteerlabOptions | None = None

    @model_validator(mode="after")
    def _refuse_unsupported(self) -> _Common:
        for name, why in _REFUSED.items():
            v = (self.model_extra or {}).get(name)
            off = v in (None, False, 0, "", [], {}) or (name == "response_format" and v == {"type": "text"})
            if name == "logprobs":  # completions' 0 asks for the sampled token's logprob: only null and chat's false
                off = v is None or v is False
            if not off:
                raise ApiError(422, f"{name}: {why} by this server (got {v!r})", name)
        if self.stream_options is not None and not self.stream:
            raise ApiError(422, "stream_options: only allowed when stream is true", "stream_options")
        return self


class CompletionRequest(_Common):
    prompt: str | list[str] = Field(description="one prompt (a list of exactly one is accepted)")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]]


class ChatRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1)


_TYPE_TAGS = ("str", "int", "float", "bool", "list", "dict", "none", "literal")


def field_path(loc: tuple | list) -> str:
    """A validation error's location as the request's field path: ``steerlab.interventions[0]``, not
    ``body.steerlab.interventions.0.dict[str,any]`` (pydantic's union-member tags dropped).

    >>> field_path(("body", "messages", 0, "content", "str"))
    'messages[0].content'
    """
    out = ""
    for x in loc:
        if x == "body":
            continue
        if isinstance(x, int):
            out += f"[{x}]"
        elif str(x).split("[")[0].lower() in _TYPE_TAGS or "[" in str(x) or "function-" in str(x):
            continue
        else:
            out += ("." if out else "") + str(x)
    return out or "body"


def _text(content: str | list[dict[str, Any]], param: str) -> str:
    if isinstance(content, str):
        return content
    parts = []
    for i, part in enumerate(content):
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise ApiError(422, f"{param}[{i}] must be a text part {{'type': 'text', 'text': ...}}", f"{param}[{i}]")
        parts.append(part["text"])
    return "".join(parts)


# ---------------------------------------------------------------------------------------------
# the service
# ---------------------------------------------------------------------------------------------


class Service:
    """What the routes share: the handle, the limits, the presets, the scheduler."""

    def __init__(self, h: ModelHandle, config: ServerConfig, presets: dict[str, InterventionSet]) -> None:
        self.h, self.config, self.presets = h, config, presets
        # the worker thread tokenizes with the handle's tokenizer; the routes use their own copy (a
        # fast tokenizer must not be used from two threads while one changes its padding settings)
        self.routes_handle = dataclasses.replace(h, tokenizer=copy.deepcopy(h.tokenizer))
        self.tok = self.routes_handle.tokenizer
        self.validated: dict[str, bool] = {}
        self.scheduler: Scheduler | None = None

    def start(self) -> None:
        self.scheduler = Scheduler(self.h, max_batch=self.config.max_concurrent, queue_length=self.config.queue_length,
                                   remote=self.config.remote)

    def stop(self) -> None:
        if self.scheduler is not None:
            self.scheduler.close()

    # -- request -> job ------------------------------------------------------------------------
    def interventions(self, opts: SteerlabOptions | None) -> tuple[InterventionSet, str]:
        """The request's intervention set (presets first, then ``interventions`` in order) and its
        digest, validated against the model; a bad one is a 422 naming its field."""
        if opts is None:
            opts = SteerlabOptions()
        items: list[Any] = []
        params: list[str] = []
        named = [(f"steerlab.presets[{i}]", n) for i, n in enumerate(opts.presets)]
        named += [(f"steerlab.interventions[{i}]", x) for i, x in enumerate(opts.interventions)]
        for param, x in named:
            if isinstance(x, str):
                if x not in self.presets:
                    raise ApiError(
                        422, f"unknown preset {x!r}; expected one of {sorted(self.presets)}", param, "unknown_preset"
                    )
                items.extend(self.presets[x].items)
                params.extend([param] * len(self.presets[x]))
            else:
                try:
                    items.extend(InterventionSet([x]).items)
                except (ValueError, TypeError, RuntimeError) as e:  # SteerlabError is a ValueError
                    raise ApiError(422, f"{param}: {e}", param) from None
                params.append(param)
        ivs = InterventionSet(items)
        digest = ivs.digest()
        if digest not in self.validated:
            try:
                compile_plan(self.h, ivs)
            except (ValueError, TypeError, RuntimeError) as e:
                param = "steerlab.interventions"
                for p, iv in zip(params, items, strict=True):  # the first one that fails alone is named
                    try:
                        compile_plan(self.h, [iv])
                    except (ValueError, TypeError, RuntimeError):
                        param = p
                        break
                raise ApiError(422, f"{param}: {e}", param) from None
            if len(self.validated) > 1024:
                self.validated.clear()
            self.validated[digest] = True
        return ivs, digest

    def sampler(self, req: _Common) -> tuple[Sampler, int]:
        opts = req.steerlab
        seed = opts.seed if opts is not None and opts.seed is not None else req.seed
        if seed is None:
            seed = secrets.randbelow(2**31)
        try:
            if opts is not None and opts.sampler is not None:
                s = opts.sampler
                if isinstance(s, dict) and set(s) - {"name", "params"}:  # a typo ("param") must not mean defaults
                    raise SpecError(f"unknown keys {sorted(set(s) - {'name', 'params'})}; expected 'name' and "
                                    "optionally 'params'")
                smp = make_sampler(s) if isinstance(s, str) else make_sampler(s.get("name"), **s.get("params", {}))
                return smp, seed
        except (SpecError, TypeError, AttributeError) as e:
            raise ApiError(422, f"steerlab.sampler: {e}", "steerlab.sampler") from None
        t = 1.0 if req.temperature is None else req.temperature
        if t == 0:
            return make_sampler("greedy"), seed
        if req.min_p is not None and req.min_p > 0:
            return make_sampler("min_p", p=req.min_p, temperature=t), seed
        if req.top_p is not None and req.top_p < 1:
            return make_sampler("top_p", p=req.top_p, temperature=t), seed
        return make_sampler("temperature", temperature=t), seed

    def count_tokens(self, prompt: str, chat: bool, system: str | None) -> int:
        """Prompt tokens exactly as generation encodes them (:meth:`ModelHandle.encode`, on the routes' copy)."""
        return int(self.routes_handle.encode([prompt], chat=chat, system=system)["attention_mask"].sum())

    def job(self, req: _Common, prompt: str, chat: bool, system: str | None, max_tokens: int | None,
            prompt_param: str = "prompt", tokens_param: str = "max_tokens") -> Job:
        """The request as a scheduler job; ``prompt_param`` / ``tokens_param``: the request's own names of the
        text and of the token limit, which its errors name."""
        cfg = self.config
        if req.model != cfg.model_name:
            raise ApiError(404, f"model {req.model!r} is not served here; expected {cfg.model_name!r}", "model",
                           code="model_not_found")
        default = cfg.max_new_tokens if chat else min(16, cfg.max_new_tokens)  # OpenAI's defaults
        n_new = max_tokens if max_tokens is not None else default
        if n_new > cfg.max_new_tokens:
            raise ApiError(413, f"{tokens_param} {n_new} is over this server's limit of {cfg.max_new_tokens} "
                           "(--max-new-tokens)", tokens_param, "request_too_large")
        for text, param in ((prompt, prompt_param), (system or "", "messages[0].content")):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as e:
                raise ApiError(422, f"{param}: not valid Unicode text ({e.reason} at character {e.start})",
                               param) from None
        n_prompt = self.count_tokens(prompt, chat, system)
        if n_prompt == 0:
            raise ApiError(422, f"{prompt_param}: the prompt is empty; expected at least one token", prompt_param)
        if n_prompt > cfg.max_prompt_tokens:
            raise ApiError(413, f"the prompt has {n_prompt} tokens, over this server's limit of "
                           f"{cfg.max_prompt_tokens} (--max-prompt-tokens)", prompt_param, "request_too_large")
        ivs, digest = self.interventions(req.steerlab)
        smp, seed = self.sampler(req)
        if cfg.remote:
            self.check_remote(req, ivs, smp)
        return Job(prompt=prompt, interventions=ivs, sampler=smp, seed=seed, max_new_tokens=n_new, chat=chat,
                   system=system, prompt_tokens=n_prompt, digest=digest)

    def check_remote(self, req: _Common, ivs: InterventionSet, smp: Sampler) -> None:
        """What the remote path cannot run is a 422 before queueing (see ``docs/scale.md``): it generates
        greedily, and runs every intervention type of the registry's built-ins."""
        if not smp.greedy:
            param = _sampler_param(req)
            raise ApiError(422, f"{param}: this server runs remotely and generates greedily; send temperature 0",
                           param)
        for i, iv in enumerate(ivs):
            if iv.type not in REMOTE_TYPES:
                raise ApiError(422, f"steerlab.interventions: intervention {i} ({iv.type}) has no remote form "
                               "(docs/scale.md)", "steerlab.interventions")

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)


# ---------------------------------------------------------------------------------------------
# the app
# ---------------------------------------------------------------------------------------------


def create_app(
    h: ModelHandle, config: ServerConfig, presets: dict[str, InterventionSet] | None = None
) -> FastAPI:
    """The FastAPI app serving ``h`` (see the module docstring). The scheduler's worker thread starts
    with the app's lifespan (``TestClient`` as a context manager, uvicorn) and stops with it. ``remote=True``
    without an NDIF key is a one-line :class:`SteerlabError` here, before anything is served."""
    if config.remote is True:
        check_ndif_key()
    svc = Service(h, config, dict(presets or {}))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        svc.start()
        try:
            yield
        finally:
            svc.stop()

    app = FastAPI(title="steerlab", lifespan=lifespan)
    app.state.service = svc

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errs = exc.errors()
        bad_json = [e for e in errs if e.get("type") == "json_invalid"]
        if bad_json:
            msg = f"the request body is not valid JSON ({bad_json[0].get('ctx', {}).get('error', 'parse error')})"
            return ApiError(400, msg, None).response()
        e = errs[0]
        param = field_path(e.get("loc", ()))
        got = e.get("input")
        shown = f" (got {got!r})" if not isinstance(got, (dict, list)) and len(repr(got)) < 80 else ""
        return ApiError(422, f"{param}: {e.get('msg')}{shown}", param).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        msg = f"{request.method} {request.url.path}: {exc.detail}"
        return ApiError(exc.status_code, msg, None, kind).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:  # a bug of ours: still OpenAI's shape
        return ApiError(500, f"internal error: {type(exc).__name__}: {exc}", None, "server_error").response()

    def key_ok(request: Request) -> bool:
        auth = request.headers.get("authorization", "")
        token = auth[7:] if auth.lower().startswith("bearer ") else ""
        return hmac.compare_digest(token.encode(), (config.api_key or "").encode())

    @app.middleware("http")
    async def _key_first(request: Request, call_next: Any) -> Any:
        """With a key, every ``/v1`` route checks it before anything of the request is read."""
        if config.api_key and request.url.path.startswith("/v1") and not key_ok(request):
            return ApiError(401, "missing or wrong API key; expected 'Authorization: Bearer KEY'", None,
                            "authentication_error").response()
        return await call_next(request)


    @app.get("/health")
    async def health() -> dict[str, Any]:
        stats = svc.scheduler.stats() if svc.scheduler else {}
        return {"status": "ok", "model": config.model_name, **stats}

    served = {"id": config.model_name, "object": "model", "created": 0, "owned_by": "steerlab"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [served]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict[str, Any]:
        if model_id != config.model_name:
            raise ApiError(404, f"model {model_id!r} is not served here; expected {config.model_name!r}", "model",
                           code="model_not_found")
        return served

    @app.get("/v1/steerlab/presets")
    async def list_presets() -> dict[str, Any]:
        data = [
            {"name": name, "digest": ivs.digest(), "interventions": [
                {"type": iv.type, "name": iv.name, "where": iv.where(), "describe": iv.describe()} for iv in ivs]}
            for name, ivs in sorted(svc.presets.items())
        ]
        return {"object": "list", "data": data}

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest) -> Any:
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if len(prompts) != 1:
            raise ApiError(422, f"prompt: expected one prompt, got a list of {len(prompts)}", "prompt")
        job = svc.job(req, prompts[0], chat=False, system=None, max_tokens=req.max_tokens)
        return await _answer(svc, job, req, "completion")

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest) -> Any:
        msgs = req.messages
        system = None
        if msgs[0].role in ("system", "developer"):
            system = _text(msgs[0].content, "messages[0].content")
            msgs = msgs[1:]
        if len(msgs) != 1 or msgs[0].role != "user":
            raise ApiError(422, "messages: expected an optional system message and one user message "
                           f"(multi-turn conversations are not supported), got roles {[m.role for m in req.messages]}",
                           "messages")
        where = f"messages[{len(req.messages) - 1}].content"
        prompt = _text(msgs[0].content, where)
        limit = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        job = svc.job(req, prompt, chat=True, system=system, max_tokens=max_tokens, prompt_param="messages",
                      tokens_param=limit)
        return await _answer(svc, job, req, "chat")

    return app


async def _answer(svc: Service, job: Job, req: _Common, kind: str) -> Any:
    """Submit ``job`` and answer: one JSON body, or an SSE stream of chunks when ``req.stream``."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
    job.on_token = lambda tok: loop.call_soon_threadsafe(events.put_nowait, ("tok", tok))
    job.on_done = lambda: loop.call_soon_threadsafe(events.put_nowait, ("done", 0))
    assert svc.scheduler is not None
    try:
        svc.scheduler.submit(job)
    except QueueFull as e:
        raise ApiError(429, str(e), None, "rate_limit_exceeded") from None
    deadline = time.monotonic() + svc.config.timeout_s
    rid = ("cmpl-" if kind == "completion" else "chatcmpl-") + secrets.token_hex(12)
    created = int(time.time())
    model = svc.config.model_name

    async def next_event() -> tuple[str, int]:
        return await asyncio.wait_for(events.get(), max(deadline - time.monotonic(), 0.001))

    async def event_before_answering() -> tuple[str, int]:
        """``next_event`` while nothing has been sent: a timeout is a 504, a client gone cancels the job."""
        try:
            return await next_event()
        except TimeoutError:
            job.cancel()
            raise ApiError(504, f"the request did not finish within {svc.config.timeout_s:g} s (--timeout)", None,
                           "timeout") from None
        except asyncio.CancelledError:
            job.cancel()
            raise

    def meta(res: Any) -> dict[str, Any]:
        return {"seed": job.seed, "sampler": job.sampler.config(), "interventions_digest": job.digest,
                "batch_size": res.batch_size}

    def usage(res: Any) -> dict[str, int]:
        return {"prompt_tokens": res.prompt_tokens, "completion_tokens": len(res.token_ids),
                "total_tokens": res.prompt_tokens + len(res.token_ids)}

    if not req.stream:
        while (await event_before_answering())[0] != "done":
            pass
        res = _result(job, req)
        if kind == "completion":
            choice = {"index": 0, "text": res.text, "finish_reason": res.finish_reason, "logprobs": None}
            obj = "text_completion"
        else:
            choice = {"index": 0, "message": {"role": "assistant", "content": res.text},
                      "finish_reason": res.finish_reason, "logprobs": None}
            obj = "chat.completion"
        return {"id": rid, "object": obj, "created": created, "model": model, "choices": [choice], "usage": usage(res),
                "steerlab": meta(res)}

    # with stream_options.include_usage, OpenAI's last chunk before [DONE] has no choices and the usage; the
    # others carry "usage": null
    with_usage = req.stream_options is not None and req.stream_options.include_usage
    chunk_obj = "text_completion" if kind == "completion" else "chat.completion.chunk"

    def event(choices: list[dict[str, Any]], use: dict[str, int] | None = None) -> dict[str, str]:
        body = {"id": rid, "object": chunk_obj, "created": created, "model": model, "choices": choices}
        return {"data": json.dumps({**body, "usage": use} if with_usage else body)}

    def chunk(delta: str, finish: str | None, first: bool = False) -> dict[str, str]:
        if kind == "completion":
            choice: dict[str, Any] = {"index": 0, "text": delta, "finish_reason": finish, "logprobs": None}
        else:
            d: dict[str, Any] = {"role": "assistant", "content": delta} if first else {"content": delta}
            choice = {"index": 0, "delta": d if (delta or first) else {}, "finish_reason": finish, "logprobs": None}
        return event([choice])

    # the stream starts with the first token: an error found before it (e.g. a position past the prompt) is
    # answered with its status, as without streaming, not a 200 stream holding one error event
    pending = [await event_before_answering()]
    if pending[0][0] == "done":
        _result(job, req)  # raises the job's error, if it has one

    async def stream() -> AsyncIterator[dict[str, str]]:
        ids: list[int] = []
        sent = ""
        try:
            if kind == "chat":
                yield chunk("", None, first=True)
            while True:
                ev, tok = pending.pop() if pending else await next_event()
                if ev == "tok":
                    ids.append(tok)
                    text = svc.decode(ids)
                    if text.endswith("\ufffd") or not text.startswith(sent):
                        continue  # half a character so far
                    if len(text) > len(sent):
                        yield chunk(text[len(sent):], None)
                        sent = text
                    continue
                try:
                    res = _result(job, req)
                except ApiError as e:
                    yield {"data": json.dumps({"error": {"message": e.message, "code": e.status}})}
                    return
                rest = res.text[len(sent):] if res.text.startswith(sent) else ""
                yield chunk(rest, res.finish_reason)
                if with_usage:
                    yield event([], usage(res))
                yield {"data": "[DONE]"}
                return
        except TimeoutError:
            msg = f"the request did not finish within {svc.config.timeout_s:g} s (--timeout)"
            yield {"data": json.dumps({"error": {"message": msg, "code": 504}})}
        finally:
            if not job.done:
                job.cancel()  # the client went away (or timed out): its row is dropped

    return EventSourceResponse(stream())


def _sampler_param(req: _Common) -> str:
    """The field that chose the request's sampler."""
    return "steerlab.sampler" if req.steerlab and req.steerlab.sampler is not None else "temperature"


def _result(job: Job, req: _Common) -> Any:
    try:
        return job.wait(0)
    except SamplerRefused as e:  # finite logits the sampler's own setting refused (a tiny temperature)
        raise ApiError(422, f"{_sampler_param(req)}: {e}", _sampler_param(req)) from None
    except SteerlabError as e:  # the request's input, found while generating: its interventions when it has any
        param = "steerlab.interventions" if len(job.interventions) else None
        raise ApiError(422, f"{param}: {e}" if param else str(e), param) from None
    except Exception as e:  # noqa: BLE001 - a generation that failed is the server's fault
        raise ApiError(500, f"generation failed: {type(e).__name__}: {e}", None, "server_error") from None
