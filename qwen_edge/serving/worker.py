"""The worker that owns the model: a bounded queue of `Job`s, run one at a time.

The HTTP layer only uses the interface below, which the continuous-batching scheduler keeps:

* `submit(job)` yields `("delta", GenerationResponse)` events, then `("done", None)` or
  `("error", APIError)`. A full queue yields `("error", APIError(429))` and a worker that no
  longer admits (draining, closed) `("error", APIError(503))`, both before anything runs.
  Setting `job.cancelled` stops the job at its next token (or before it starts); its events
  still end with `("done", None)`, without a last response carrying a `finish_reason`.
* `queue_depth` (jobs waiting), `active` (jobs generating), `stats()`, `drain(timeout)`,
  `close()`.

`stats()` returns a dict: `queue_depth`, `active`, `max_batch`, `batch_occupancy` (mean
sequences per model step since the previous call; 0 when idle), the running totals
`prompt_tokens`, `completion_tokens`, `prefix_cache_hits` (requests that resumed from a cached
prompt prefix) and `prefix_cache_tokens` (prompt tokens they skipped), and the samples since
the previous call `ttft_seconds` (submit to first token) and `itl_seconds` (between tokens).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

from ..errors import ChatTemplateError, ContextLengthError, GenerationConfigError, QwenEdgeError
from .openai_api import APIError, Job

log = logging.getLogger(__name__)

MAX_SAMPLES = 10_000  # latency samples kept between two stats() calls (older ones are dropped)


class Worker:
    """Owns the model; runs jobs one at a time, in order, and streams their events back.

    Args:
        llm: the loaded `LLM`.
        max_queue: jobs that may wait while one runs; more are answered 429.
    """

    max_batch = 1

    def __init__(self, llm: Any, max_queue: int = 16):
        self.llm = llm
        self.max_queue = max_queue
        self.cancelled_jobs = 0  # generations stopped because their job was cancelled
        self._cond = threading.Condition()
        self._queue: deque[Job] = deque()
        self._running: Job | None = None
        self._admitting = True
        self._closed = False
        self._totals = {
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "prefix_cache_hits": 0,
            "prefix_cache_tokens": 0,
        }
        self._ttft: deque[float] = deque(maxlen=MAX_SAMPLES)
        self._itl: deque[float] = deque(maxlen=MAX_SAMPLES)
        self._steps = 0  # model steps (tokens) since the last stats()
        self._thread = threading.Thread(target=self._loop, name="qwen-edge-worker", daemon=True)
        self._thread.start()

    # --- the interface ---
    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def active(self) -> int:
        return int(self._running is not None)

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
            occupancy = 1.0 if self._steps else 0.0  # one sequence per step, when any ran
            self._steps = 0
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
            while self._queue or self._running is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self) -> None:
        """Ends every job (queued ones are answered 503, the running one is cancelled) and
        joins the worker thread, so no model call outlives it."""
        with self._cond:
            self._admitting = False
            self._closed = True
            for job in self._queue:
                job.events.put(("error", APIError(503, "the server is shutting down")))
            self._queue.clear()
            if self._running is not None:
                self._running.cancelled.set()
            self._cond.notify_all()
        self._thread.join()

    # --- the loop ---
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                job = self._running = self._queue.popleft()
            try:
                self._run(job)
            except (ContextLengthError, ChatTemplateError, GenerationConfigError, ValueError) as e:
                code = "context_length_exceeded" if isinstance(e, ContextLengthError) else None
                job.events.put(("error", APIError(400, str(e), code=code)))
            except QwenEdgeError as e:
                job.events.put(("error", APIError(500, str(e))))
            except Exception as e:  # the worker must survive anything one request does
                log.exception("generation failed")
                job.events.put(("error", APIError(500, f"internal error: {type(e).__name__}")))
            finally:
                with self._cond:
                    self._running = None
                    self._cond.notify_all()

    def _run(self, job: Job) -> None:
        if job.cancelled.is_set():  # cancelled while it waited
            job.events.put(("done", None))
            return
        if job.kind == "chat":
            stream = self.llm.chat(
                job.prompt, stream=True, tools=job.tools, enable_thinking=job.enable_thinking,
                **job.overrides,
            )  # fmt: skip
        else:
            stream = self.llm.generate(job.prompt, stream=True, **job.overrides)
        last_time, last, tokens = job.submitted, None, 0
        try:
            for response in stream:
                if job.cancelled.is_set():
                    self.cancelled_jobs += 1
                    break
                if response.token is not None:
                    now = time.perf_counter()
                    with self._cond:
                        (self._itl if tokens else self._ttft).append(now - last_time)
                        self._steps += 1
                    last_time, tokens = now, tokens + 1
                last = response
                job.events.put(("delta", response))
        finally:
            stream.close()  # stops the model at once if the job was cancelled
        if last is not None:
            s = last.stats
            with self._cond:
                self._totals["prompt_tokens"] += s.num_prompt_tokens
                self._totals["completion_tokens"] += s.num_generated_tokens
                if s.num_cached_tokens:
                    self._totals["prefix_cache_hits"] += 1
                    self._totals["prefix_cache_tokens"] += s.num_cached_tokens
        job.events.put(("done", None))  # always, so a consumer draining the events returns
