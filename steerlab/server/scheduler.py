"""The batching scheduler: concurrent requests become batched ``sl.generate`` calls, one at a time.

One worker thread owns the model. Waiting jobs are grouped by what a batch must share: the
intervention set (:meth:`InterventionSet.digest`), the chat flag and the system message. The
oldest waiting job picks the group; up to ``max_batch`` jobs of that group run as one left-padded
``generate`` call (``max_new_tokens`` = the largest asked; each row is cut at its own limit), so a
batch's parameter edits (applied by the engine under its lock, restored exactly afterwards) only
ever touch rows that asked for them. Rows sample independently: each job's sampler draws from its
own seeded generator (:class:`RowSampler`), so a job's tokens do not depend on its batch mates.
This is dynamic batching per ``generate`` call, not iteration-level continuous batching: a job
that arrives while a batch runs waits for the next one.

Example:
    >>> import steerlab as sl
    >>> from steerlab.interventions import InterventionSet
    >>> sched = Scheduler(sl.load("shared:stories260K"), max_batch=4, queue_length=8)
    >>> job = sched.submit(Job(prompt="Once upon a time", interventions=InterventionSet(), max_new_tokens=4))
    >>> job.wait(timeout=60).text
    ', there was a'
    >>> sched.close()
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from steerlab.engines import engine_for
from steerlab.errors import SpecError, SteerlabError
from steerlab.generation import generate
from steerlab.interventions import InterventionSet
from steerlab.models.handle import ModelHandle
from steerlab.sampling import Sampler, make_sampler


class QueueFull(SteerlabError):
    """The scheduler's queue is full (answered 429)."""


class SamplerRefused(SpecError):
    """A row's sampler refused logits that held no NaN and no ``+inf``: its own setting is at fault (a tiny
    temperature that overflows float32), not the model's output (or the request's interventions)."""


class Cancelled(Exception):
    """Every row of the running batch was cancelled (clients gone or timed out): the batch stops early."""


@dataclass
class Result:
    """One job's completion: token ids (EOS and everything after it removed), text, why it stopped."""

    token_ids: list[int]
    text: str
    finish_reason: str  # "stop" (end of sequence) or "length" (max_new_tokens)
    prompt_tokens: int
    batch_size: int  # rows of the generate call that produced it


@dataclass
class Job:
    """One request: a prompt, its interventions, its sampler and seed, its limits.

    ``on_token(id)`` (optional) is called from the worker thread with each new token as it is chosen
    (until EOS or the job's own ``max_new_tokens``), ``on_done()`` once the job ends (result or
    error); ``wait`` returns the :class:`Result`.
    """

    prompt: str
    interventions: InterventionSet
    sampler: Sampler = field(default_factory=lambda: make_sampler("greedy"))
    seed: int = 0
    max_new_tokens: int = 16
    chat: bool = False
    system: str | None = None
    on_token: Callable[[int], None] | None = None
    on_done: Callable[[], None] | None = None
    digest: str = ""
    prompt_tokens: int = 0
    submitted: float = 0.0
    _done: threading.Event = field(default_factory=threading.Event, repr=False)
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _result: Result | None = field(default=None, repr=False)
    _error: BaseException | None = field(default=None, repr=False)

    @property
    def key(self) -> tuple[str, bool, str | None]:
        """What the rows of one batch share."""
        return (self.digest, self.chat, self.system)

    def cancel(self) -> None:
        """Give up on the job: dropped if still waiting; if running, its row's output is discarded
        (and the batch stops early once all its rows are cancelled)."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> Result:
        """Block until the job is done; raises ``TimeoutError`` or the generation's error."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"job not done after {timeout} s")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def _finish(self, result: Result | None = None, error: BaseException | None = None) -> None:
        self._result, self._error = result, error
        self._done.set()
        if self.on_done is not None:
            self.on_done()


class RowSampler(Sampler):
    """Each row sampled by its own sampler from its own seeded generator, as a logits processor.

    The output is one-hot (0 at the drawn token, ``-inf`` elsewhere), so Hugging Face's own draw is
    certain and a row's tokens depend only on its logits, its sampler and its seed, not on the batch.
    A row whose sampler refuses its logits (a :class:`SteerlabError`, e.g. a tiny temperature that
    overflows float32 at some step) keeps the error in ``errors[i]`` and ends: its streamer closes the row,
    and the filler token it is given from then on (``eos``, or 0 without one) is never sent; its batch mates go on.
    The error is a :class:`SamplerRefused` when the logits held no NaN or ``+inf``.
    """

    name = "per_row"

    def __init__(self, samplers: list[Sampler], seeds: list[int], eos: int | None = None) -> None:
        self.temperature = 1.0
        self.samplers = samplers
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.eos = eos
        self.errors: list[SteerlabError | None] = [None] * len(samplers)

    def filter_logits(self, logits: Tensor) -> Tensor:
        out = torch.full(logits.shape, float("-inf"), dtype=torch.float32)
        for i, (smp, gen) in enumerate(zip(self.samplers, self.generators, strict=True)):
            tok = self.eos or 0
            if self.errors[i] is None:
                row = logits[i : i + 1].float().cpu()
                try:
                    tok = int(smp.sample(row, generator=gen))
                except SteerlabError as e:  # this row's own input: the row ends with its error
                    fine = not (torch.isnan(row) | torch.isposinf(row)).any() and bool(torch.isfinite(row).any())
                    self.errors[i] = SamplerRefused(str(e)) if fine else e
            out[i, tok] = 0.0
        return out.to(logits.device)

    def params(self) -> dict[str, Any]:
        return {"rows": [s.config() for s in self.samplers]}


class _RowStreamer:
    """A transformers streamer (``put``/``end``) that hands each row's new token to its job."""

    def __init__(self, jobs: list[Job], eos: int | None, errors: list[Any] | None = None) -> None:
        self.jobs, self.eos = jobs, eos
        self.errors = errors  # a RowSampler's: a row whose sampler refused is closed, its filler tokens unsent
        self.n = [0] * len(jobs)
        self.open = [True] * len(jobs)
        self.prompt_seen = False

    def put(self, value: Tensor) -> None:
        if not self.prompt_seen:  # the first put is the prompt
            self.prompt_seen = True
            return
        if all(j.cancelled for j in self.jobs):
            raise Cancelled()
        for i, tok in enumerate(value.reshape(len(self.jobs), -1)[:, -1].tolist()):
            job = self.jobs[i]
            if not self.open[i]:
                continue
            if self.errors is not None and self.errors[i] is not None:
                self.open[i] = False
                continue
            if (self.eos is not None and tok == self.eos) or self.n[i] >= job.max_new_tokens:
                self.open[i] = False
                continue
            self.n[i] += 1
            if job.on_token is not None and not job.cancelled:
                job.on_token(tok)

    def end(self) -> None:
        pass


class Scheduler:
    """Runs submitted :class:`Job` s in batches on one worker thread (see the module docstring).

    ``max_batch``: rows per ``generate`` call (requests generating at once); ``queue_length``: jobs
    that may wait beyond those; :meth:`submit` raises :class:`QueueFull` past it. ``remote``: run each
    batch through nnsight's remote path instead (``True``: NDIF, ``"local"``: its in-process simulation;
    :meth:`NNsightEngine.generate_remote`): greedy only, tokens handed out when the batch ends.
    """

    def __init__(self, handle: ModelHandle, max_batch: int = 8, queue_length: int = 64,
                 remote: bool | str = False) -> None:
        self.handle, self.remote = handle, remote
        self.max_batch, self.queue_length = int(max_batch), int(queue_length)
        self._pending: deque[Job] = deque()
        self._cv = threading.Condition()
        self._running = 0
        self._closed = False
        self.batches: queue.SimpleQueue[tuple[int, str]] = queue.SimpleQueue()  # (size, digest) per batch run
        self._thread = threading.Thread(target=self._loop, name="steerlab-scheduler", daemon=True)
        self._thread.start()

    # -- the public side -----------------------------------------------------------------------
    def submit(self, job: Job) -> Job:
        """Queue ``job`` (its ``digest`` filled in if empty); raises :class:`QueueFull`."""
        if not job.digest:
            job.digest = job.interventions.digest()
        job.submitted = time.monotonic()
        with self._cv:
            if self._closed:
                raise SteerlabError("the scheduler is closed")
            waiting = sum(1 for j in self._pending if not j.cancelled)
            if waiting >= self.queue_length:
                raise QueueFull(
                    f"the queue is full ({waiting} requests waiting, queue length {self.queue_length}); retry later"
                )
            self._pending.append(job)
            self._cv.notify()
        return job

    def stats(self) -> dict[str, int]:
        """Jobs waiting and rows running now."""
        with self._cv:
            return {"waiting": sum(1 for j in self._pending if not j.cancelled), "running": self._running}

    def close(self, timeout: float = 30.0) -> None:
        """Stop the worker after the batch it is running; waiting jobs fail."""
        with self._cv:
            self._closed = True
            left = list(self._pending)
            self._pending.clear()
            self._cv.notify_all()
        for j in left:
            j._finish(error=SteerlabError("the server is shutting down"))
        self._thread.join(timeout)

    # -- the worker ----------------------------------------------------------------------------
    def _take(self) -> list[Job] | None:
        with self._cv:
            while True:
                while self._pending and self._pending[0].cancelled:
                    self._pending.popleft()._finish(error=Cancelled())
                if self._pending or self._closed:
                    break
                self._cv.wait()
            if self._closed:
                return None
            key = self._pending[0].key
            batch = [j for j in self._pending if j.key == key and not j.cancelled][: self.max_batch]
            taken = {id(j) for j in batch}
            self._pending = deque(j for j in self._pending if id(j) not in taken)
            self._running = len(batch)
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            try:
                self._run(batch)
            except BaseException as e:  # noqa: BLE001 - every job of the batch gets the error, the worker lives on
                for j in batch:
                    if not j.done:
                        j._finish(error=e)
            finally:
                with self._cv:
                    self._running = 0

    def _run(self, jobs: list[Job]) -> None:
        h = self.handle
        first = jobs[0]
        greedy = all(j.sampler.greedy for j in jobs)
        eos = h.tokenizer.eos_token_id
        rows = None if greedy else RowSampler([j.sampler for j in jobs], [j.seed for j in jobs], eos)
        sampler: Sampler | str = rows if rows is not None else "greedy"
        self.batches.put((len(jobs), first.digest))
        if self.remote:
            self._run_remote(jobs)
            return
        streamer = _RowStreamer(jobs, eos, rows.errors if rows is not None else None)
        try:
            out = generate(
                h,
                [j.prompt for j in jobs],
                interventions=first.interventions,
                sampler=sampler,
                max_new_tokens=max(j.max_new_tokens for j in jobs),
                chat=first.chat,
                system=first.system,
                streamer=streamer,
            )
        except Cancelled:
            for j in jobs:
                j._finish(error=Cancelled())
            return
        except SteerlabError:
            if len(jobs) == 1 or any(streamer.n):
                raise
            # bad input of one row (e.g. a position past its own prompt) failed the batch before any token was
            # handed out: each row runs alone, so only the row at fault gets the error
            for j in jobs:
                try:
                    self._run([j])
                except BaseException as e:  # noqa: BLE001 - that row's own error
                    if not j.done:
                        j._finish(error=e)
            return
        prompt_len = out.prompt_ids.shape[1]
        for i, j in enumerate(jobs):
            if rows is not None and rows.errors[i] is not None:
                j._finish(error=rows.errors[i])
                continue
            row = out.sequences[i, prompt_len:].tolist()[: j.max_new_tokens]
            reason = "length"
            if eos is not None and eos in row:
                row, reason = row[: row.index(eos)], "stop"
            text = h.tokenizer.decode(row, skip_special_tokens=True)
            j._finish(Result(row, text, reason, j.prompt_tokens, len(jobs)))

    def _run_remote(self, jobs: list[Job]) -> None:
        h, first = self.handle, jobs[0]
        if not all(j.sampler.greedy for j in jobs):
            raise SteerlabError("the remote engine generates greedily; expected the greedy sampler")
        enc = h.encode([j.prompt for j in jobs], chat=first.chat, system=first.system)
        seqs = engine_for(h).generate_remote(enc, first.interventions, remote=self.remote,
                                             max_new_tokens=max(j.max_new_tokens for j in jobs))
        eos = h.tokenizer.eos_token_id
        for i, j in enumerate(jobs):
            row = seqs[i, enc["input_ids"].shape[1]:].tolist()[: j.max_new_tokens]
            reason = "length"
            if eos is not None and eos in row:
                row, reason = row[: row.index(eos)], "stop"
            if j.on_token is not None and not j.cancelled:
                for tok in row:
                    j.on_token(tok)
            j._finish(Result(row, h.tokenizer.decode(row, skip_special_tokens=True), reason, j.prompt_tokens,
                             len(jobs)))
