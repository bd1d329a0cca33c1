"""The gateway's behaviour, apart from any HTTP library: routes, authentication, admission,
draining, OpenAI-shaped answers, metrics and the per-request log line.

A transport (`server.py`, on the standard library) reads a request's head, asks `check` whether
to go on before it reads the body, then calls `handle` and writes the `Response` it gets: a
JSON body, or a status and a stream of server-sent-event chunks. The transport calls
`Request.disconnect()` when the client goes away, which cancels its generation.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..generation.chat_output import ChatOutputParser
from .metrics import Metrics
from .openai_api import APIError, Job, parse_chat, parse_completion, parse_json

log = logging.getLogger("qwen_edge.serving.access")

PARSERS = {"/v1/chat/completions": parse_chat, "/v1/completions": parse_completion}
ROUTES = {
    "/health": "GET",  # liveness: the process answers
    "/health/ready": "GET",  # readiness: admitting requests
    "/metrics": "GET",
    "/v1/models": "GET",
    **{path: "POST" for path in PARSERS},
}
OPEN_ROUTES = ("/health", "/health/ready")  # answered without the API key (probes)
CLIENT_CLOSED = 499  # the status logged when the client went away first (nginx's convention)
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


@dataclass
class Request:
    """One HTTP request as the transport read it.

    Attributes:
        method, path: from the request line (`path` may carry a query string).
        headers: header names in lower case.
        body: the body (empty until the transport has read it).
        client: the peer's address, for the log.
        start: `time.perf_counter()` when the request arrived.
    """

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes = b""
    client: str = ""
    start: float = field(default_factory=time.perf_counter)
    gone: threading.Event = field(default_factory=threading.Event)
    counted: bool = False  # in the app's in-flight count (it passed `check`)
    _hooks: list[Callable[[], None]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def route(self) -> str:
        return self.path.split("?", 1)[0]

    def disconnect(self) -> None:
        """The client went away: runs the hooks (they cancel its generation)."""
        with self._lock:
            self.gone.set()
            hooks, self._hooks = self._hooks, []
        for hook in hooks:
            hook()

    def on_disconnect(self, hook: Callable[[], None]) -> None:
        with self._lock:
            if not self.gone.is_set():
                self._hooks.append(hook)
                return
        hook()


@dataclass
class Response:
    """What to answer: a status, headers and a JSON body, or SSE chunks to stream."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    stream: Iterator[bytes] | None = None


@dataclass
class _Flight:
    """A generation request between admission and its last byte."""

    job: Job
    request: Request
    cut: bool = False  # ended by the drain timeout, not by its own finish or its client


class App:
    """The OpenAI-compatible gateway over the continuous-batching scheduler.

    Args:
        worker: has `submit(job)`, `queue_depth`, `active`, `stats()`, `drain(timeout)`,
            `close()` (see `scheduler.py`).
        llm: the loaded `LLM` (its tokenizer names logprob tokens; its defaults cap answers).
        model_name: the model id clients see.
        api_key: when set, every route but the health probes needs `Authorization: Bearer KEY`.
        max_tokens_cap: the most tokens one request may ask for (also the default when the
            model's own default is larger).
    """

    def __init__(
        self,
        worker: Any,
        llm: Any,
        model_name: str,
        *,
        api_key: str | None = None,
        max_tokens_cap: int = 4096,
    ):
        self.worker = worker
        self.llm = llm
        self.model_name = model_name
        self.max_tokens_cap = max_tokens_cap
        self.metrics = Metrics()
        self.draining = False
        self._key_digest = hashlib.sha256(api_key.encode()).digest() if api_key else None
        self._lock = threading.Lock()
        self._flights: list[_Flight] = []
        self._in_flight = 0
        self._idle = threading.Condition(self._lock)

    # --- admission -------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return not self.draining

    def check(self, request: Request) -> Response | None:
        """What to answer before the body is read (auth, route, method), or None to go on."""
        with self._lock:
            self._in_flight += 1
        request.counted = True
        route, method = request.route, request.method
        if route not in OPEN_ROUTES and not self._authorized(request.headers):
            error = APIError(401, "a valid API key is required (Authorization: Bearer KEY)",
                             code="invalid_api_key")  # fmt: skip
            return self._error(request, error, {"WWW-Authenticate": "Bearer"})
        if route not in ROUTES:
            return self._error(request, APIError(404, f"no route {route}", code="not_found"))
        allowed = ROUTES[route]
        if method != allowed and not (method == "HEAD" and allowed == "GET"):
            error = APIError(
                405, f"{route} takes {allowed}, not {method}", code="method_not_allowed"
            )
            return self._error(request, error, {"Allow": allowed})
        if route in PARSERS and self.draining:
            return self._error(
                request, APIError(503, "the server is shutting down", code="draining")
            )
        return None

    def _authorized(self, headers: Mapping[str, str]) -> bool:
        if self._key_digest is None:
            return True
        scheme, _, token = headers.get("authorization", "").partition(" ")
        given = hashlib.sha256(token.strip().encode()).digest()
        # Digests have one length, so the comparison time says nothing about the key.
        return scheme.lower() == "bearer" and hmac.compare_digest(given, self._key_digest)

    def handle(self, request: Request) -> Response:
        """The answer to a request that passed `check` (its body read)."""
        route = request.route
        if route == "/health":
            return self._json(request, 200, {"status": "draining" if self.draining else "ok"})
        if route == "/health/ready":
            status = 200 if self.ready else 503
            return self._json(request, status, {"status": "ready" if self.ready else "draining"})
        if route == "/metrics":
            text = self.metrics.render(self.worker.stats(), self._in_flight, self.ready)
            headers = {"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
            return self._finish(request, Response(200, text.encode(), headers))
        if route == "/v1/models":
            model = {
                "id": self.model_name,
                "object": "model",
                "created": 0,
                "owned_by": "qwen-edge",
            }
            return self._json(request, 200, {"object": "list", "data": [model]})
        try:
            job = PARSERS[route](parse_json(request.body), self.max_tokens_cap)
        except APIError as e:
            return self._error(request, e)
        default = self.llm.generation_config.max_tokens
        if "max_tokens" not in job.overrides and default > self.max_tokens_cap:
            job.overrides["max_tokens"] = self.max_tokens_cap
        return self._generate(request, job)

    def error(self, request: Request, error: APIError) -> Response:
        """The answer to a request the transport could not read (size, timeout, framing)."""
        return self._error(request, error)

    # --- draining --------------------------------------------------------------------------------
    def drain(self, timeout: float, grace: float = 5.0) -> bool:
        """Stops admitting; lets the admitted requests finish for up to `timeout` seconds, then
        ends the rest (streams with a finish_reason and [DONE]); waits up to `grace` more for
        their answers to be written. Returns whether every request finished on its own."""
        self.draining = True
        clean = self.worker.drain(timeout)
        with self._lock:
            flights = list(self._flights)
        for flight in flights:
            flight.cut = True
            flight.job.cancelled.set()
        deadline = time.monotonic() + grace
        with self._idle:
            while self._flights and (left := deadline - time.monotonic()) > 0:
                self._idle.wait(left)
        return clean

    # --- generation ------------------------------------------------------------------------------
    def _generate(self, request: Request, job: Job) -> Response:
        flight = _Flight(job, request)
        with self._lock:
            self._flights.append(flight)
        request.on_disconnect(job.cancelled.set)
        events = self.worker.submit(job)
        try:
            kind, value = next(events)
        except BaseException:
            self._land(flight)
            raise
        if kind == "error":
            self._land(flight)
            return self._error(request, value)
        if kind == "done":  # ended before its first token: cancelled by the drain or the client
            self._land(flight)
            if flight.cut:
                return self._error(request, APIError(503, "the server is shutting down"))
            return self._finish(request, Response(CLIENT_CLOSED))
        answer = _Answer(self, job, _request_id(request, job))
        if job.stream:
            chunks = self._stream(flight, answer, value, events)
            next(chunks)  # started: from now on closing it runs its clean-up
            headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                       "X-Request-Id": answer.id}  # fmt: skip
            return Response(200, headers=headers, stream=chunks)
        try:
            error = answer.collect(value, events)
        finally:
            self._land(flight)
        if error is not None:
            return self._error(request, error)
        if request.gone.is_set():
            return self._finish(request, Response(CLIENT_CLOSED), answer)
        headers = {"X-Request-Id": answer.id}
        return self._json(request, 200, answer.body(), headers, answer)

    def _stream(
        self, flight: _Flight, answer: _Answer, first: Any, events: Iterator[tuple[str, Any]]
    ) -> Iterator[bytes]:
        status = 200
        try:
            yield b""
            yield from answer.chunks(first, events)
        except GeneratorExit:  # the transport could not write: the client went away
            status = CLIENT_CLOSED
            flight.job.cancelled.set()
            for _ in events:  # the worker ends it at its next token; never leave it blocked
                pass
            raise
        finally:
            self._land(flight)
            if flight.request.gone.is_set():
                status = CLIENT_CLOSED
            self._finish(flight.request, Response(status), answer)

    def _land(self, flight: _Flight) -> None:
        with self._idle:
            if flight in self._flights:
                self._flights.remove(flight)
                self._idle.notify_all()

    # --- answers and accounting ------------------------------------------------------------------
    def _json(
        self,
        request: Request,
        status: int,
        body: dict[str, Any],
        headers: dict[str, str] | None = None,
        answer: _Answer | None = None,
    ) -> Response:
        headers = {"Content-Type": "application/json", **(headers or {})}
        response = Response(status, json.dumps(body).encode(), headers)
        return self._finish(request, response, answer)

    def _error(
        self, request: Request, error: APIError, headers: dict[str, str] | None = None
    ) -> Response:
        headers = dict(headers or {})
        if error.status in (429, 503):
            headers["Retry-After"] = str(self._retry_after())
        return self._json(request, error.status, error.body(), headers)

    def _retry_after(self) -> int:
        """About one request's time (when a queue slot frees up), in whole seconds."""
        d = self.metrics.duration
        mean = d.sum / max(sum(d.counts), 1)
        return max(1, min(60, math.ceil(mean)))

    def _finish(
        self, request: Request, response: Response, answer: _Answer | None = None
    ) -> Response:
        """Counts the request in the metrics and writes its log line."""
        seconds = time.perf_counter() - request.start
        route = request.route if request.route in ROUTES else "other"
        self.metrics.count_request(route, response.status, seconds)
        if request.counted:
            request.counted = False
            with self._lock:
                self._in_flight -= 1
        record: dict[str, Any] = {
            "time": round(time.time(), 3),
            "client": request.client,
            "method": request.method,
            "path": route,
            "status": response.status,
            "duration_s": round(seconds, 4),
        }
        if answer is not None:
            record.update(answer.log_fields())
        probe = route in OPEN_ROUTES or route == "/metrics"
        log.log(logging.DEBUG if probe else logging.INFO, json.dumps(record))
        return response


def _request_id(request: Request, job: Job) -> str:
    """The load balancer's X-Request-Id when it is sane, else a new one."""
    given = request.headers.get("x-request-id", "")
    if _REQUEST_ID.fullmatch(given):
        return given
    prefix = "chatcmpl" if job.kind == "chat" else "cmpl"
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


class _Answer:
    """One generation's answer in the OpenAI shapes, complete or as SSE chunks. Both come from
    the same `ChatOutputParser`, so a streamed and a complete answer carry the same text."""

    def __init__(self, app: App, job: Job, request_id: str):
        self.app = app
        self.job = job
        self.id = request_id
        self.created = int(time.time())
        self.chat = job.kind == "chat"
        self.parser = ChatOutputParser(bool(job.enable_thinking), bool(job.tools))
        self.fields: dict[str, str] = {}
        self.logprobs: list[dict[str, Any]] = []
        self.calls: list[dict[str, Any]] = []
        self.last: Any = None  # the last GenerationResponse
        self.first_token: float | None = None

    # pieces
    def _feed(self, response: Any) -> list[tuple[str, str]]:
        self.last = response
        if self.first_token is None and response.token is not None:
            self.first_token = time.perf_counter()
        pieces = self.parser.feed(response.text) if self.chat else [("content", response.text)]
        return [p for p in pieces if p[1]]

    def _logprob(self, response: Any) -> dict[str, Any] | None:
        if response.token is None or response.logprob is None:
            return None
        tokenizer = self.app.llm.tokenizer
        if tokenizer is None:
            return {"token": str(response.token), "logprob": response.logprob, "bytes": None}
        raw = tokenizer.token_bytes(response.token)
        text = raw.decode("utf-8", "replace")
        return {"token": text, "logprob": response.logprob, "bytes": list(raw)}

    def _end(self) -> tuple[list[tuple[str, str]], str]:
        """The held-back pieces and the finish reason: "length" for a cut generation."""
        pieces: list[tuple[str, str]] = []
        if self.chat:
            pieces, self.calls = self.parser.finish()
        finish = (self.last.finish_reason if self.last is not None else None) or "length"
        return pieces, "tool_calls" if self.calls else finish

    # complete
    def collect(self, first: Any, events: Iterator[tuple[str, Any]]) -> APIError | None:
        """Reads the whole answer; an error from the worker is returned."""
        kind, value = "delta", first
        while True:
            if kind == "error":
                return value  # type: ignore[no-any-return]
            if kind == "done":
                return None
            for name, piece in self._feed(value):
                self.fields[name] = self.fields.get(name, "") + piece
            if (lp := self._logprob(value)) is not None:
                self.logprobs.append(lp)
            kind, value = next(events)

    def body(self) -> dict[str, Any]:
        pieces, finish = self._end()
        for name, piece in pieces:
            self.fields[name] = self.fields.get(name, "") + piece
        base = {"id": self.id, "created": self.created, "model": self.app.model_name,
                "usage": self.usage()}  # fmt: skip
        if not self.chat:
            choice: dict[str, Any] = {"index": 0, "text": self.fields.get("content", ""),
                                      "finish_reason": finish, "logprobs": None}  # fmt: skip
            if self.logprobs:
                choice["logprobs"] = _completion_logprobs(self.logprobs)
            return {**base, "object": "text_completion", "choices": [choice]}
        message: dict[str, Any] = {"role": "assistant", "content": self.fields.get("content", "")}
        if self.job.enable_thinking:
            message["reasoning_content"] = self.fields.get("reasoning_content", "")
        if self.calls:
            message["tool_calls"] = self.calls
        choice = {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
        if self.logprobs:
            choice["logprobs"] = {"content": self.logprobs}
        return {**base, "object": "chat.completion", "choices": [choice]}

    def usage(self) -> dict[str, int]:
        stats = self.last.stats if self.last is not None else None
        prompt = stats.num_prompt_tokens if stats else 0
        completion = stats.num_generated_tokens if stats else 0
        return {"prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion}  # fmt: skip

    # streamed
    def chunks(self, first: Any, events: Iterator[tuple[str, Any]]) -> Iterator[bytes]:
        """The SSE events of the answer, ending with a finish_reason and [DONE] (also when the
        drain cut it); an error from the worker mid-stream becomes an error event."""
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        base = {"id": self.id, "object": obj, "created": self.created,
                "model": self.app.model_name}  # fmt: skip

        def event(delta: dict[str, Any] | None, finish: str | None = None,
                  logprob: dict[str, Any] | None = None) -> bytes:  # fmt: skip
            if self.chat:
                choice: dict[str, Any] = {"index": 0, "delta": delta or {}, "finish_reason": finish}
                if logprob is not None:
                    choice["logprobs"] = {"content": [logprob]}
            else:
                choice = {"index": 0, "text": (delta or {}).get("content", ""),
                          "finish_reason": finish}  # fmt: skip
                if logprob is not None:
                    choice["logprobs"] = _completion_logprobs([logprob])
            return _sse({**base, "choices": [choice]})

        if self.chat:
            yield event({"role": "assistant", "content": ""})
        kind, value = "delta", first
        while kind == "delta":
            pieces = self._feed(value)
            logprob = self._logprob(value)
            for i, (name, piece) in enumerate(pieces):
                yield event({name: piece}, logprob=logprob if i == 0 else None)
            if logprob is not None and not pieces:
                yield event({}, logprob=logprob)
            kind, value = next(events)
        if kind == "error":
            yield _sse(value.body())
        else:
            pieces, finish = self._end()
            for name, piece in pieces:
                yield event({name: piece})
            if self.calls:
                yield event({"tool_calls": [{"index": i, **c} for i, c in enumerate(self.calls)]})
            yield event(None, finish)
            if self.job.include_usage:
                yield _sse({**base, "choices": [], "usage": self.usage()})
        yield b"data: [DONE]\n\n"

    def log_fields(self) -> dict[str, Any]:
        usage = self.usage()
        stats = self.last.stats if self.last is not None else None
        ttft = None
        if self.first_token is not None and self.job.submitted:
            ttft = self.first_token - self.job.submitted
        return {
            "id": self.id,
            "stream": self.job.stream,
            "prompt_tokens": usage["prompt_tokens"],
            "completion_tokens": usage["completion_tokens"],
            "cached_tokens": stats.num_cached_tokens if stats else 0,
            "finish_reason": self.last.finish_reason if self.last is not None else None,
            "ttft_s": round(ttft, 4) if ttft is not None else None,
        }


def _completion_logprobs(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"tokens": [e["token"] for e in entries],
            "token_logprobs": [e["logprob"] for e in entries]}  # fmt: skip


def _sse(body: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(body).encode() + b"\n\n"
