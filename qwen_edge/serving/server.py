"""An OpenAI-compatible HTTP server for gateways, on the standard library alone.

`/v1/chat/completions` (with SSE streaming, tools and thinking), `/v1/completions`,
`/v1/models` and `/health`. The native model serves one sequence at a time, so one worker
thread owns the model and runs queued requests in order (mlx-lm's server does the same); HTTP
threads only parse and validate (`openai_api.py`) and stream. Every error is an OpenAI-shaped
JSON object with a 4xx/5xx status; a client that disconnects mid-stream cancels
its generation at the next token, and the model stays usable for the next request.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ..errors import ChatTemplateError, ContextLengthError, GenerationConfigError, QwenEdgeError
from ..generation.chat_output import ChatOutputParser
from .openai_api import MAX_BODY_BYTES, APIError, Job, parse_chat, parse_completion

log = logging.getLogger(__name__)


# --- responses ----------------------------------------------------------------------------------
def _usage(stats: Any) -> dict[str, int]:
    prompt, completion = stats.num_prompt_tokens, stats.num_generated_tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


# --- the worker ---------------------------------------------------------------------------------
class Worker(threading.Thread):
    """Owns the model; runs jobs one at a time and streams their events back."""

    def __init__(self, llm: Any):
        super().__init__(name="qwen-edge-worker", daemon=True)
        self.llm = llm
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        self.cancelled_jobs = 0  # generations stopped because their client went away

    def run(self) -> None:
        while (job := self.jobs.get()) is not None:
            if job.cancelled.is_set():
                continue
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

    def _run(self, job: Job) -> None:
        if job.kind == "chat":
            stream = self.llm.chat(
                job.prompt, stream=True, tools=job.tools, enable_thinking=job.enable_thinking,
                **job.overrides,
            )  # fmt: skip
        else:
            stream = self.llm.generate(job.prompt, stream=True, **job.overrides)
        try:
            for response in stream:
                if job.cancelled.is_set():
                    self.cancelled_jobs += 1
                    break
                job.events.put(("delta", response))
        finally:
            stream.close()  # stops the model at once if the client went away
        job.events.put(("done", None))  # always, so a handler draining the events returns

    def submit(self, job: Job) -> Iterator[tuple[str, Any]]:
        """Queues a job and yields its events until it finishes."""
        self.jobs.put(job)
        while True:
            kind, value = job.events.get()
            yield kind, value
            if kind in ("done", "error"):
                return


# --- HTTP ---------------------------------------------------------------------------------------
class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], llm: Any, model_name: str):
        self.llm = llm
        self.model_name = model_name
        self.worker = Worker(llm)
        self.worker.start()
        super().__init__(address, Handler)

    def server_close(self) -> None:
        self.worker.jobs.put(None)
        super().server_close()


class Handler(BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)

    # plumbing
    def _send_json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, error: APIError) -> None:
        self._send_json(error.status, error.body())

    def _event(self, body: dict[str, Any]) -> None:
        self.wfile.write(b"data: " + json.dumps(body).encode() + b"\n\n")
        self.wfile.flush()

    def _read_json(self) -> dict[str, Any]:
        length = self.headers.get("Content-Length")
        if length is None:
            self.close_connection = True
            raise APIError(411, "a Content-Length header is required")
        try:
            n = int(length)
        except ValueError:
            raise APIError(400, "invalid Content-Length") from None
        if n < 0:
            raise APIError(400, "invalid Content-Length")
        if n > MAX_BODY_BYTES:
            self.close_connection = True  # the body stays unread
            raise APIError(413, f"request body over {MAX_BODY_BYTES} bytes")
        raw = self.rfile.read(n)
        if len(raw) != n:
            raise APIError(400, "request body shorter than its Content-Length")
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise APIError(400, f"request body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise APIError(400, "request body must be a JSON object")
        return body

    # routes
    def do_GET(self) -> None:
        if self.path == "/health":
            self._send_json(200, {"status": "ok"})
        elif self.path == "/v1/models":
            model = {
                "id": self.server.model_name,
                "object": "model",
                "created": 0,
                "owned_by": "qwen-edge",
            }
            self._send_json(200, {"object": "list", "data": [model]})
        else:
            self._send_error(APIError(404, f"no route {self.path}"))

    def do_POST(self) -> None:
        try:
            if self.path == "/v1/chat/completions":
                parse = parse_chat
            elif self.path == "/v1/completions":
                parse = parse_completion
            else:
                # The body is unread; close so it is not taken for the next request.
                self.close_connection = True
                raise APIError(404, f"no route {self.path}")
            body = self._read_json()
            job = parse(body)
            stream = body.get("stream", False)
            if not isinstance(stream, bool):
                raise APIError(400, "'stream' must be a boolean", "stream")
        except APIError as e:
            self._send_error(e)
            return
        if stream:
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            self._stream(job, include_usage)
        else:
            self._complete(job)

    def _complete(self, job: Job) -> None:
        text, tokens, logprobs, last = "", [], [], None
        for kind, value in self.server.worker.submit(job):
            if kind == "error":
                self._send_error(value)
                return
            if kind == "delta":
                text += value.text
                if value.token is not None:
                    tokens.append(value.token)
                    if value.logprob is not None:
                        logprobs.append(value.logprob)
                last = value
        assert last is not None
        finish = last.finish_reason or "stop"
        base = {"id": _new_id(job), "created": int(time.time()), "model": self.server.model_name,
                "usage": _usage(last.stats)}  # fmt: skip
        if job.kind == "completion":
            choice: dict[str, Any] = {
                "index": 0,
                "text": text,
                "finish_reason": finish,
                "logprobs": None,
            }
            if logprobs:
                choice["logprobs"] = {
                    "token_logprobs": logprobs,
                    "tokens": [str(t) for t in tokens],
                }
            self._send_json(200, {**base, "object": "text_completion", "choices": [choice]})
            return
        parser = ChatOutputParser(bool(job.enable_thinking), bool(job.tools))
        fields: dict[str, str] = {}
        pieces = parser.feed(text)
        more, calls = parser.finish()
        for name, piece in pieces + more:
            fields[name] = fields.get(name, "") + piece
        message: dict[str, Any] = {
            "role": "assistant",
            "content": fields.get("content", "").strip(),
        }
        if job.enable_thinking:
            message["reasoning_content"] = fields.get("reasoning_content", "").strip()
        if calls:
            message["tool_calls"] = calls
            finish = "tool_calls"
        choice = {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
        if logprobs:
            choice["logprobs"] = {
                "content": [
                    {"token": str(t), "logprob": lp}
                    for t, lp in zip(tokens, logprobs, strict=False)
                ]
            }
        self._send_json(200, {**base, "object": "chat.completion", "choices": [choice]})

    def _stream(self, job: Job, include_usage: bool) -> None:
        events = self.server.worker.submit(job)
        kind, value = next(events)
        if kind == "error":  # fail before any byte of the stream is sent
            self._send_error(value)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        chat = job.kind == "chat"
        obj = "chat.completion.chunk" if chat else "text_completion"
        base = {
            "id": _new_id(job),
            "object": obj,
            "created": int(time.time()),
            "model": self.server.model_name,
        }
        parser = ChatOutputParser(bool(job.enable_thinking), bool(job.tools))
        last = None

        def send(delta: dict[str, Any] | None = None, finish: str | None = None) -> None:
            if chat:
                choice: dict[str, Any] = {"index": 0, "delta": delta or {}, "finish_reason": finish}
            else:
                choice = {
                    "index": 0,
                    "text": (delta or {}).get("content", ""),
                    "finish_reason": finish,
                }
            self._event({**base, "choices": [choice]})

        try:
            if chat:
                send({"role": "assistant", "content": ""})
            while True:
                if kind == "error":  # mid-stream: an error event, then the end of the stream
                    self._event(value.body())
                    break
                if kind == "done":
                    break
                last = value
                pieces = parser.feed(value.text) if chat else [("content", value.text)]
                for name, piece in pieces:
                    send({name: piece})
                kind, value = next(events)
            if last is not None and kind == "done":
                finish = last.finish_reason or "stop"
                if chat:
                    pieces, calls = parser.finish()
                    for name, piece in pieces:
                        send({name: piece})
                    if calls:
                        send({"tool_calls": [{"index": i, **c} for i, c in enumerate(calls)]})
                        finish = "tool_calls"
                send(None, finish)
                if include_usage:
                    self._event({**base, "choices": [], "usage": _usage(last.stats)})
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            job.cancelled.set()  # the worker stops this generation at its next token
            for _ in events:  # drain, so the worker is never blocked on us
                pass


def _new_id(job: Job) -> str:
    prefix = "chatcmpl" if job.kind == "chat" else "cmpl"
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def serve(
    llm: Any, host: str = "127.0.0.1", port: int = 8000, model_name: str = "qwen-edge"
) -> Server:
    """A started-not-yet-serving server bound to (host, port); call `serve_forever()`."""
    return Server((host, port), llm, model_name)
