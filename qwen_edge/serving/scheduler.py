"""The scheduler that owns the model: continuous batching of up to `max_batch` requests.

Each admitted request runs the one generation loop (`LLM.chat` / `LLM.generate`, so sampling,
stop rules, detokenizing and the prefix cache are those of the library) in a thread of its
own, over a batching proxy of the model: its `forward(tokens, state)` hands the call to the
scheduler and waits. The scheduler thread gathers the calls of the running requests and runs
them as **one multi-sequence step** (`forward_batch`: every weight matrix read once for all
of them, each sequence bit-identical to running alone), then hands each its logits. So:

* requests join and leave between steps: a new one is admitted as soon as a slot is free, a
  finished, cancelled or disconnected one frees its slot at once;
* a prompt is prefilled in chunks while other requests are decoding (all of it per step, in
  chunks of `PREFILL_CHUNK`, when none is). A chunk is sized by time, not a fixed count: a step
  that carries prompt tokens beside decoding streams may take at most `1 + prefill_share` times
  a decode step alone, by a cost model learnt from the steps' own durations (`StepCost`:
  seconds per step without prompt tokens, and what each prompt token adds), between 1 and
  `prefill_chunk` tokens. So a long prompt joining stretches the running streams' inter-token
  latency by a bounded factor (1.4x by default) whatever the machine, model and batch, where a
  fixed 32-token chunk cost a 4-stream batch 5x its decode step on x86 AVX2;
* the share protects the streams that were decoding when the prompt's request was admitted,
  not the requests of the same **burst**: requests that arrive a few milliseconds apart find
  the first one's prompt already running, alone, and are admitted before its first token. Their
  prompts are prefilled beside its first decode steps as if they had arrived together (in
  chunks of `PREFILL_CHUNK`), so the burst decodes together from its second step; held to the
  share, they took a few tokens per step and started decoding a second or more after it. A
  prompt admitted once every decoding stream has its first token is held to the share, so a
  stream's tokens may pause longer only for the prompts admitted before its own first token;
* a step waits for every running request to have its next call ready (sampling and
  detokenizing between steps take about a millisecond of CPU, but on a busy machine a request
  thread may wait far longer for a core), at most `gather_seconds()`: as long as the recent
  steps took, at least `GATHER_SECONDS`. Running without a
  straggler costs almost a whole step for it alone next (and a prompt's remaining chunk, always
  ready, would otherwise run alone while the decoding streams miss the step), so waiting up to
  a step's length for it is cheaper. Then it runs what it has: the grouping never changes
  results, only speed;
* speculative decoding (greedy requests by default, `serve --speculative`,
  docs/speculative.md) runs while a request is alone: its calls that are not plain steps (the
  prefill with hidden states, the MTP head's drafts, the checkpointed verification) are **solo
  calls**, each a step of its own (alternating with batched steps if another request has
  calls waiting). A request admitted beside others decodes plainly; a speculating request that
  gets company finishes with plain batched steps (`speculation_allowed`). Both use the prefix
  cache.

The HTTP layer (`app.py`) uses only this interface:

* `submit(job)` yields `("delta", GenerationResponse)` events, then `("done", None)` or
  `("error", APIError)`. A full queue yields `("error", APIError(429))` and a scheduler that no
  longer admits (draining, closed) `("error", APIError(503))`, both before anything runs; so
  does a prompt whose cache rows the memory available cannot hold (503, `insufficient_memory`:
  the running requests may free it). A state that cannot grow while decoding ends its answer
  as a full context does (`finish_reason` "length").
  Setting `job.cancelled` stops the job at its next token (or before it starts); its events
  still end with `("done", None)`, without a last response carrying a `finish_reason`.
* `queue_depth` (jobs waiting), `active` (jobs generating), `stats()`, `drain(timeout)`,
  `close()`.

`stats()` returns a dict: `queue_depth`, `active`, `max_batch`, `batch_occupancy` (mean
sequences per model step since the previous call; 0 when idle), the running totals
`prompt_tokens`, `completion_tokens`, `prefix_cache_hits` (requests that resumed from a cached
prompt prefix) and `prefix_cache_tokens` (prompt tokens they skipped), `speculative_requests`,
`speculative_rounds`, `speculative_drafted_tokens` and `speculative_accepted_tokens`, and the
samples since the previous call `ttft_seconds` (submit to first token) and `itl_seconds`
(between tokens).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import (
    ChatTemplateError,
    ContextLengthError,
    GenerationConfigError,
    MemoryLimitError,
    QwenEdgeError,
)
from ..generation.loop import PREFILL_CHUNK
from ..generation.pacing import forward_batch
from .openai_api import APIError, Job

log = logging.getLogger(__name__)

MAX_SAMPLES = 10_000  # latency samples kept between two stats() calls (older ones are dropped)
GATHER_SECONDS = 0.005  # the least a step waits for a running request's next call
DEFAULT_MAX_BATCH = 4
DEFAULT_PREFILL_CHUNK = 64  # the most prompt tokens per step while other requests decode
# What prompt tokens may add to a decode step, as a share of it: 0.4 keeps the running streams'
# ITL within 1.4x of their own step while a long prompt joins, which leaves their p95 a margin
# under 2x a lone stream's (docs/serving.md, measured; at 0.5 one run in nine reached 2.06x).
DEFAULT_PREFILL_SHARE = 0.4


class Closed(QwenEdgeError):
    """The scheduler closed while a request waited for its step."""


@dataclass(eq=False)
class _Slot:
    """A running job, and the steps that place it in time: `admitted`, the steps completed
    when it got its slot; `answered`, the step that answered its latest call; `first_token`,
    the step whose logits gave its first token (None while its prompt is being prefilled)."""

    job: Job
    thread: threading.Thread
    admitted: int
    answered: int = 0
    first_token: int | None = None


@dataclass(eq=False)
class _Call:
    """One `forward` of a request, waiting for (the rest of) its tokens to run."""

    tokens: list[int]
    state: Any
    slot: _Slot | None = None  # the job it belongs to (None: a thread outside the scheduler)
    done: threading.Event = field(default_factory=threading.Event)
    logits: Any = None  # the result (a solo call's return value)
    error: BaseException | None = None
    solo: Callable[[], Any] | None = None  # runs alone as a step of its own (speculation)


AVERAGE_WEIGHT = 0.3  # weight of the newest measurement in the step costs' moving averages


def _average(old: float | None, new: float) -> float:
    return new if old is None else old + AVERAGE_WEIGHT * (new - old)


class StepCost:
    """What a step costs, learnt from the steps' measured costs (CPU seconds of the stepping
    thread by default): the seconds of a step
    without prompt tokens, per number of decoding sequences in it, and `per_token`, the seconds
    each prompt token adds to a step. Moving averages, so they follow the machine's load."""

    def __init__(self) -> None:
        self.decode: dict[int, float] = {}  # decoding sequences -> seconds of their step
        self.per_token: float | None = None

    def decode_seconds(self, decoding: int) -> float | None:
        """A step of `decoding` decoding sequences alone: measured, else scaled from the
        nearest measured size, else None."""
        if decoding in self.decode:
            return self.decode[decoding]
        if not self.decode:
            return None
        near = min(self.decode, key=lambda k: (abs(k - decoding), k))
        return self.decode[near] * decoding / near

    def record(self, decoding: int, prompt_tokens: int, seconds: float) -> None:
        """A step of `decoding` one-token sequences and `prompt_tokens` prompt tokens took
        `seconds`."""
        if decoding == 0:
            return
        if prompt_tokens == 0:
            self.decode[decoding] = _average(self.decode.get(decoding), seconds)
            return
        base = self.decode_seconds(decoding)
        if base is not None:
            # what the prompt tokens added to the decode step this one would have been; at
            # least a tenth of a decoding sequence's share, so noise never makes them free
            floor = 0.1 * base / decoding * prompt_tokens
            self.per_token = _average(self.per_token, max(seconds - base, floor) / prompt_tokens)

    def chunk(self, decoding: int, share: float, most: int) -> int:
        """Prompt tokens a step beside `decoding` decoding sequences may carry so that it
        takes at most (1 + share) times their decode step alone: between 1 and `most`. Before
        any prompt token was measured, one is taken to cost a decoding sequence's share of the
        step (an upper bound: that share includes reading the weights)."""
        base = self.decode_seconds(decoding)
        if base is None:
            return max(1, min(most, int(share * decoding)))
        per_token = self.per_token if self.per_token is not None else base / decoding
        return max(1, min(most, int(share * base / per_token)))


class _BatchingModel:
    """The model as the request threads see it: `forward` goes through the scheduler's steps;
    everything else (`new_state`, `config`, `context`, ...) is the model's own."""

    def __init__(self, model: Any, scheduler: Scheduler):
        self._model = model
        self._scheduler = scheduler

    def forward(
        self, tokens: Sequence[int], state: Any, *, all_logits: bool = False, **kw: Any
    ) -> Any:
        ids = [int(t) for t in tokens]
        if all_logits or kw:  # speculation's forwards (hidden states, checkpoints): solo
            model = self._scheduler.model
            return self._scheduler._solo(
                lambda: model.forward(ids, state, all_logits=all_logits, **kw)
            )
        return self._scheduler._forward(ids, state)

    def mtp_forward(self, *args: Any, **kw: Any) -> Any:
        model = self._scheduler.model
        return self._scheduler._solo(lambda: model.mtp_forward(*args, **kw))

    def speculation_allowed(self) -> bool:
        """Whether a speculating request may go on drafting: while it is alone."""
        return self._scheduler.active <= 1

    def new_state(self, *args: Any, **kwargs: Any) -> Any:
        return self._model.new_state(*args, **kwargs)

    def logits(self, tokens: Sequence[int]) -> Any:
        return self._model.logits(tokens)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


class Scheduler:
    """Owns the model; runs up to `max_batch` jobs at once in multi-sequence steps (see the
    module docstring) and streams their events back.

    Args:
        llm: the loaded `LLM` (its `model` may be a `PacedModel`: the governor paces steps).
        max_batch: jobs that generate together; more wait in the queue.
        max_queue: jobs that may wait while `max_batch` run; more are answered 429.
        prefill_chunk: the most prompt tokens a joining job prefills per step while others
            decode.
        prefill_share: a step with prompt tokens beside decoding jobs takes at most
            `1 + prefill_share` times their decode step alone (`StepCost` sizes the chunk),
            unless every one of them was admitted after the prompt's job (a burst).
        clock: seconds, for the steps' costs: by default the CPU time of the thread that runs
            the steps (it computes its share of every product), so a busy machine's time
            slicing does not enter the cost model; tests pass their own.
    """

    def __init__(
        self,
        llm: Any,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_queue: int = 16,
        prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
        prefill_share: float = DEFAULT_PREFILL_SHARE,
        clock: Callable[[], float] = time.thread_time,
    ):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, not {max_batch}")
        if max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, not {max_queue}")
        if prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be >= 1, not {prefill_chunk}")
        if not prefill_share > 0:
            raise ValueError(f"prefill_share must be > 0, not {prefill_share}")
        self.llm = llm
        self.model = llm.model
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.prefill_chunk = prefill_chunk
        self.prefill_share = prefill_share
        self.cost = StepCost()
        self._step_seconds: float | None = None  # wall time of the recent steps (average)
        self._clock = clock
        self.cancelled_jobs = 0  # generations stopped because their job was cancelled
        self._view = llm.with_model(_BatchingModel(llm.model, self))
        self._cond = threading.Condition()
        self._queue: deque[Job] = deque()
        self._running: dict[int, _Slot] = {}  # by id(job)
        self._local = threading.local()  # a request thread's `slot`
        self._step_count = 0  # model steps completed since the start (the slots' clock)
        self._calls: list[_Call] = []
        self._admitting = True
        self._closed = False
        self._totals = {
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "prefix_cache_hits": 0,
            "prefix_cache_tokens": 0,
            "speculative_requests": 0,
            "speculative_rounds": 0,
            "speculative_drafted_tokens": 0,
            "speculative_accepted_tokens": 0,
        }
        self._solo_last = False  # the last step ran a solo call
        self._ttft: deque[float] = deque(maxlen=MAX_SAMPLES)
        self._itl: deque[float] = deque(maxlen=MAX_SAMPLES)
        self._steps = 0  # model steps since the last stats()
        self._step_sequences = 0  # sequences in them
        self._thread = threading.Thread(target=self._loop, name="qwen-edge-scheduler", daemon=True)
        self._thread.start()

    # --- the interface ---
    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def active(self) -> int:
        return len(self._running)

    def submit(self, job: Job) -> Iterator[tuple[str, Any]]:
        """Queues a job and yields its events until it finishes."""
        with self._cond:
            if not self._admitting:
                error = APIError(503, "the server is shutting down", code="draining")
            elif len(self._queue) + self.active >= self.max_queue + self.max_batch:
                error = APIError(
                    429, f"the server is busy ({len(self._queue)} requests waiting); retry later",
                    code="queue_full",
                )  # fmt: skip
            else:
                error = None
                job.submitted = time.perf_counter()
                self._queue.append(job)
                self._admit()  # its thread renders and encodes the prompt meanwhile
                self._cond.notify_all()
        if error is not None:
            yield "error", error
            return
        while True:
            kind, value = job.events.get()
            yield kind, value
            if kind in ("done", "error"):
                return

    def stats(self) -> dict[str, Any]:
        """Gauges, running totals and the latency samples since the previous call."""
        with self._cond:
            ttft, itl = list(self._ttft), list(self._itl)
            self._ttft.clear()
            self._itl.clear()
            occupancy = self._step_sequences / self._steps if self._steps else 0.0
            self._steps = self._step_sequences = 0
            return {
                "queue_depth": len(self._queue),
                "active": self.active,
                "max_batch": self.max_batch,
                "batch_occupancy": occupancy,
                **self._totals,
                "ttft_seconds": ttft,
                "itl_seconds": itl,
            }

    def drain(self, timeout: float) -> bool:
        """Stops admitting jobs and waits up to `timeout` seconds for the queued and running
        ones to finish. Returns whether they all did; the caller cancels what is left."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._admitting = False
            while self._queue or self._running:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self) -> None:
        """Ends every job (queued ones are answered 503, running ones are cancelled) and joins
        the scheduler and request threads, so no model call outlives it."""
        with self._cond:
            self._admitting = False
            self._closed = True
            for job in self._queue:
                job.events.put(("error", APIError(503, "the server is shutting down")))
            self._queue.clear()
            for slot in self._running.values():
                slot.job.cancelled.set()
            self._cond.notify_all()
        self._thread.join()
        with self._cond:
            threads = [slot.thread for slot in self._running.values()]
        for thread in threads:
            thread.join()

    def gather_seconds(self) -> float:
        """The longest a step waits for running requests' calls: what a step took lately (wall
        time, a moving average), at least `GATHER_SECONDS`."""
        return max(GATHER_SECONDS, self._step_seconds or 0.0)

    # --- the request threads ---
    def _forward(self, tokens: list[int], state: Any) -> Any:
        """A request thread's forward: queued for the next steps, returns its logits."""
        return self._wait(_Call(tokens, state))

    def _solo(self, run: Callable[[], Any]) -> Any:
        """A request thread's model call that cannot batch: run alone as one step."""
        return self._wait(_Call([], None, solo=run))

    def _wait(self, call: _Call) -> Any:
        call.slot = getattr(self._local, "slot", None)
        with self._cond:
            if self._closed:
                raise Closed("the server is shutting down")
            self._calls.append(call)
            self._cond.notify_all()
        call.done.wait()
        if call.error is not None:
            raise call.error
        return call.logits

    def _run_job(self, job: Job) -> None:
        with self._cond:
            self._local.slot = self._running[id(job)]
        try:
            self._generate(job)
        except Closed:
            job.events.put(("done", None))
        except MemoryLimitError as e:  # the memory is held, by running requests or others: retry
            job.events.put(("error", APIError(503, str(e), code="insufficient_memory")))
        except (ContextLengthError, ChatTemplateError, GenerationConfigError, ValueError) as e:
            code = "context_length_exceeded" if isinstance(e, ContextLengthError) else None
            job.events.put(("error", APIError(400, str(e), code=code)))
        except QwenEdgeError as e:
            job.events.put(("error", APIError(500, str(e))))
        except Exception as e:  # the scheduler must survive anything one request does
            log.exception("generation failed")
            job.events.put(("error", APIError(500, f"internal error: {type(e).__name__}")))
        finally:
            with self._cond:
                del self._running[id(job)]
                if not self._closed:
                    self._admit()
                self._cond.notify_all()

    def _generate(self, job: Job) -> None:
        if job.cancelled.is_set():  # cancelled while it waited
            job.events.put(("done", None))
            return
        config = self._view.generation_config
        with self._cond:
            if self.active > 1:  # not alone: batched plain steps and the prefix cache
                config = dataclasses.replace(config, speculative="off")
        if job.kind == "chat":
            stream = self._view.chat(
                job.prompt, stream=True, tools=job.tools, enable_thinking=job.enable_thinking,
                config=config, **job.overrides,
            )  # fmt: skip
        else:
            stream = self._view.generate(job.prompt, stream=True, config=config, **job.overrides)
        last_time, last, tokens = job.submitted, None, 0
        try:
            for response in stream:
                if job.cancelled.is_set():
                    with self._cond:
                        self.cancelled_jobs += 1
                    break
                if response.token is not None:
                    now = time.perf_counter()
                    with self._cond:
                        (self._itl if tokens else self._ttft).append(now - last_time)
                        if not tokens:  # from the step that answered the call just made
                            slot = self._local.slot
                            slot.first_token = slot.answered
                    last_time, tokens = now, tokens + 1
                last = response
                job.events.put(("delta", response))
        finally:
            stream.close()  # stops the generation at once if the job was cancelled
        if last is not None:
            s = last.stats
            with self._cond:
                self._totals["prompt_tokens"] += s.num_prompt_tokens
                self._totals["completion_tokens"] += s.num_generated_tokens
                if s.num_cached_tokens:
                    self._totals["prefix_cache_hits"] += 1
                    self._totals["prefix_cache_tokens"] += s.num_cached_tokens
                if s.speculative is not None:
                    spec = s.speculative
                    self._totals["speculative_requests"] += 1
                    self._totals["speculative_rounds"] += spec["rounds"]
                    self._totals["speculative_drafted_tokens"] += spec["drafted_tokens"]
                    self._totals["speculative_accepted_tokens"] += spec["accepted_tokens"]
        job.events.put(("done", None))  # always, so a consumer draining the events returns

    # --- the step loop ---
    def _loop(self) -> None:
        while True:
            with self._cond:
                batch = self._gather()
                if batch is None:
                    return
            self._step(batch)

    def _admit(self) -> None:
        """Under the lock: starts queued jobs while slots are free."""
        while self._queue and len(self._running) < self.max_batch:
            job = self._queue.popleft()
            thread = threading.Thread(
                target=self._run_job, args=(job,), name="qwen-edge-request", daemon=True
            )
            self._running[id(job)] = _Slot(job, thread, admitted=self._step_count)
            thread.start()

    def _gather(self) -> list[tuple[_Call, int]] | None:
        """Under the lock: admits jobs, waits for the running ones' calls, and picks the step:
        (call, tokens of it to run now). None when closed."""
        deadline = None
        while True:
            if self._closed:
                for call in self._calls:
                    call.error = Closed("the server is shutting down")
                    call.done.set()
                self._calls.clear()
                return None
            self._admit()
            if self._calls:
                now = time.monotonic()
                deadline = deadline or now + self.gather_seconds()
                if len(self._calls) >= len(self._running) or now >= deadline:
                    break
                self._cond.wait(deadline - now)
            else:
                self._cond.wait()
        # A solo call is a step of its own; solo and batched steps alternate when both wait.
        solo = next((c for c in self._calls if c.solo is not None), None)
        batched = [c for c in self._calls if c.solo is None]
        self._solo_last = solo is not None and not (self._solo_last and batched)
        if self._solo_last:
            return [(solo, 0)]
        # The decoding streams, whether or not their call made this step (a long prefill would
        # stall them all), by the step of their first token. A job answered but not back with
        # its next call counts from that answer: it is sampling (maybe its first token) now.
        waiting = {id(c.slot) for c in self._calls}
        first_tokens = [
            s.first_token if s.first_token is not None else s.answered
            for s in self._running.values()
            if s.first_token is not None or (s.answered and id(s) not in waiting)
        ]
        # A prompt keeps within the share only for the streams that were decoding when its job
        # was admitted; one admitted before every decoding stream's first token arrived with
        # them (a burst: the first prompt runs alone while the others' requests are still on
        # their way) and is prefilled as if they had arrived together, in chunks of
        # PREFILL_CHUNK. So a burst of requests starts decoding together, and a prompt joining
        # streams already decoding never stalls them beyond the share.
        bounded = free = PREFILL_CHUNK
        if first_tokens:
            bounded = self.cost.chunk(len(first_tokens), self.prefill_share, self.prefill_chunk)
        batch = []
        for call in batched:
            if len(call.tokens) == 1:
                batch.append((call, 1))
                continue
            admitted = call.slot.admitted if call.slot is not None else self._step_count
            burst = all(admitted < f for f in first_tokens)
            take = min(free if burst else bounded, len(call.tokens))
            if burst:
                free -= take
            else:
                bounded -= take
            if take > 0:
                batch.append((call, take))
        return batch

    def _step(self, batch: list[tuple[_Call, int]]) -> None:
        if batch[0][0].solo is not None:
            call = batch[0][0]
            try:
                call.logits = call.solo()
            except Exception as e:
                call.error = e
            with self._cond:
                self._steps += 1
                self._step_count += 1
                self._step_sequences += 1
                self._calls.remove(call)
                if call.slot is not None:
                    call.slot.answered = self._step_count
                call.done.set()
            return
        items = [(call.tokens[:n], call.state) for call, n in batch]
        want = [n == len(call.tokens) for call, n in batch]
        start, wall = self._clock(), time.perf_counter()
        try:
            logits: list[Any] = list(forward_batch(self.model, items, want=want))
            errors: list[BaseException | None] = [None] * len(batch)
            prompt = sum(n for call, n in batch if len(call.tokens) > 1)
            self.cost.record(
                len(batch) - sum(len(c.tokens) > 1 for c, _ in batch), prompt, self._clock() - start
            )
            self._step_seconds = _average(self._step_seconds, time.perf_counter() - wall)
        except Exception:  # find the culprit: each alone (a failed step changes no state)
            logits, errors = [], []
            for item, w in zip(items, want, strict=True):
                try:
                    logits.append(forward_batch(self.model, [item], want=[w])[0])
                    errors.append(None)
                except Exception as e:
                    logits.append(None)
                    errors.append(e)
        with self._cond:
            self._steps += 1
            self._step_count += 1
            self._step_sequences += len(batch)
            for (call, n), row, error in zip(batch, logits, errors, strict=True):
                if error is not None:
                    call.error = error
                elif n < len(call.tokens):
                    call.tokens = call.tokens[n:]  # more of its prompt in the next steps
                    continue
                else:
                    call.logits = row
                self._calls.remove(call)
                if call.slot is not None:
                    call.slot.answered = self._step_count
                call.done.set()
