"""An OpenAI-compatible HTTP server for gateways, on the standard library alone.

`/v1/chat/completions` (with SSE streaming, tools and thinking), `/v1/completions`,
`/v1/models` and `/health`. The native model serves one sequence at a time, so one worker
thread owns the model and runs queued requests in order (mlx-lm's server does the same); HTTP
threads only parse, validate and stream. Requests are validated strictly and every error is an
OpenAI-shaped JSON object with a 4xx/5xx status; a client that disconnects mid-stream cancels
its generation at the next token, and the model stays usable for the next request.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .errors import ChatTemplateError, ContextLengthError, GenerationConfigError, QwenEdgeError

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 4 << 20
# Request fields that map one to one onto GenerationConfig.
_SAMPLING_FIELDS = {
    "temperature": (int, float), "top_p": (int, float), "top_k": (int,), "min_p": (int, float),
    "presence_penalty": (int, float), "frequency_penalty": (int, float),
    "repetition_penalty": (int, float), "seed": (int,),
}  # fmt: skip
# Accepted and ignored (they do not change what this server computes).
_IGNORED_FIELDS = {
    "user",
    "store",
    "metadata",
    "service_tier",
    "parallel_tool_calls",
    "stream_options",
}


class APIError(Exception):
    """An error reported to the client as an OpenAI error object."""

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {
            "error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}
        }


# --- request parsing ----------------------------------------------------------------------------
@dataclass
class Job:
    """One request for the worker: what to run, and the channel its events come back on."""

    kind: str  # "chat" or "completion"
    prompt: Any  # messages, or a prompt string / token ids
    overrides: dict[str, Any]
    tools: list[dict[str, Any]] | None = None
    enable_thinking: bool | None = None
    events: queue.Queue[tuple[str, Any]] = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)


def _check_type(body: dict[str, Any], key: str, types: tuple[type, ...], what: str) -> Any:
    value = body[key]
    if isinstance(value, bool) and bool not in types:
        raise APIError(400, f"'{key}' must be {what}", key)
    if not isinstance(value, types):
        raise APIError(400, f"'{key}' must be {what}", key)
    return value


def _generation_overrides(body: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, types in _SAMPLING_FIELDS.items():
        if body.get(key) is not None:
            out[key] = _check_type(body, key, types, "a number")
    for key in ("max_tokens", "max_completion_tokens"):
        if body.get(key) is not None:
            value = _check_type(body, key, (int,), "a positive integer")
            if value <= 0:
                raise APIError(400, f"'{key}' must be a positive integer", key)
            out["max_tokens"] = value
    if body.get("stop") is not None:
        stop = body["stop"]
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
            raise APIError(400, "'stop' must be a non-empty string or a list of them", "stop")
        out["stop"] = tuple(stops)
    if body.get("logit_bias") is not None:
        bias = _check_type(body, "logit_bias", (dict,), "an object of token id -> bias")
        try:
            out["logit_bias"] = {int(k): float(v) for k, v in bias.items()}
        except (TypeError, ValueError):
            raise APIError(
                400, "'logit_bias' keys must be token ids and values numbers", "logit_bias"
            ) from None
    if body.get("logprobs") is not None:
        out["logprobs"] = bool(_check_type(body, "logprobs", (bool,), "a boolean"))
    if body.get("top_logprobs"):
        raise APIError(400, "'top_logprobs' is not supported", "top_logprobs")
    if body.get("n", 1) != 1:
        raise APIError(400, "only n = 1 is supported", "n")
    fmt = body.get("response_format")
    if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") != "text"):
        raise APIError(400, "only response_format {'type': 'text'} is supported", "response_format")
    return out


def parse_chat(body: dict[str, Any]) -> Job:
    """Validates a /v1/chat/completions body into a Job."""
    known = set(_SAMPLING_FIELDS) | _IGNORED_FIELDS | {
        "model", "messages", "max_tokens", "max_completion_tokens", "stop", "logit_bias",
        "logprobs", "top_logprobs", "n", "stream", "tools", "tool_choice", "response_format",
        "chat_template_kwargs", "enable_thinking",
    }  # fmt: skip
    _reject_unknown(body, known)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty list", "messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise APIError(400, f"messages[{i}] must be an object with a 'role'", "messages")
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
            raise APIError(400, "'tools' must be a list of objects", "tools")
        if body.get("tool_choice") not in (None, "auto", "none"):
            raise APIError(400, "only tool_choice 'auto' or 'none' is supported", "tool_choice")
        if body.get("tool_choice") == "none":
            tools = None
    kwargs = body.get("chat_template_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise APIError(400, "'chat_template_kwargs' must be an object", "chat_template_kwargs")
    thinking = body.get("enable_thinking", kwargs.get("enable_thinking"))
    if thinking is not None and not isinstance(thinking, bool):
        raise APIError(400, "'enable_thinking' must be a boolean", "enable_thinking")
    return Job("chat", messages, _generation_overrides(body), tools, thinking)


def parse_completion(body: dict[str, Any]) -> Job:
    """Validates a /v1/completions body into a Job."""
    known = set(_SAMPLING_FIELDS) | _IGNORED_FIELDS | {
        "model", "prompt", "max_tokens", "stop", "logit_bias", "logprobs", "n", "stream", "echo",
    }  # fmt: skip
    _reject_unknown(body, known)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    ok_ids = (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in prompt)
    )
    if not (isinstance(prompt, str) and prompt) and not ok_ids:
        raise APIError(400, "'prompt' must be a non-empty string or a list of token ids", "prompt")
    if body.get("echo"):
        raise APIError(400, "'echo' is not supported", "echo")
    overrides = _generation_overrides(body)
    if (
        "logprobs" in body
        and body["logprobs"] is not None
        and not isinstance(body["logprobs"], bool)
    ):
        overrides["logprobs"] = True  # the legacy API passes a count
    return Job("completion", prompt, overrides)


def _reject_unknown(body: dict[str, Any], known: set[str]) -> None:
    unknown = sorted(set(body) - known)
    if unknown:
        raise APIError(400, f"unsupported field(s): {', '.join(unknown)}", unknown[0])


# --- model output -------------------------------------------------------------------------------
_TOOL_CALL = re.compile(r"<tool_call>\s*<function=([^>\n]+)>(.*?)</function>\s*</tool_call>", re.S)
_PARAMETER = re.compile(r"<parameter=([^>\n]+)>\n?(.*?)\n?</parameter>", re.S)


def parse_tool_calls(text: str) -> tuple[str, list[dict[str, Any]]]:
    """Splits Qwen3.5's XML tool calls out of an answer, as OpenAI `tool_calls` objects."""
    calls = []
    for match in _TOOL_CALL.finditer(text):
        args: dict[str, Any] = {}
        for name, raw in _PARAMETER.findall(match.group(2)):
            try:  # the chat template JSON-encodes values that are not strings
                value = json.loads(raw)
            except ValueError:
                value = raw
            args[name.strip()] = value if not isinstance(value, str) else raw
        calls.append(
            {
                "id": f"call_{uuid.uuid4().hex[:24]}",
                "type": "function",
                "function": {"name": match.group(1).strip(), "arguments": json.dumps(args)},
            }
        )
    return _TOOL_CALL.sub("", text).strip() if calls else text, calls


def _usage(stats: Any) -> dict[str, int]:
    prompt, completion = stats.num_prompt_tokens, stats.num_generated_tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of `text` that is a proper start of `marker`."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0


class ChatOutputParser:
    """Turns the model's answer text, as it streams, into OpenAI message fields.

    With thinking on, text up to `</think>` is `reasoning_content`; then `content`; with tools,
    text from `<tool_call>` on is held back and parsed into `tool_calls` at the end. Text that
    may be the start of a marker is held until the next piece decides. The streaming and the
    non-streaming responses both come from this one parser, so they always agree.
    """

    def __init__(self, thinking: bool, tools: bool):
        self.phase = "reasoning_content" if thinking else "content"
        self.tools = tools
        self.pending = ""
        self.tool_text = ""
        self.content_started = not thinking  # newlines after </think> are not content

    def feed(self, text: str) -> list[tuple[str, str]]:
        """(field, text) pieces that can be sent now."""
        self.pending += text
        out: list[tuple[str, str]] = []
        if self.phase == "reasoning_content":
            i = self.pending.find("</think>")
            if i < 0:
                keep = _partial_suffix(self.pending, "</think>")
                out.append(("reasoning_content", self.pending[: len(self.pending) - keep]))
                self.pending = self.pending[len(self.pending) - keep :]
                return [(f, t) for f, t in out if t]
            out.append(("reasoning_content", self.pending[:i]))
            self.pending = self.pending[i + len("</think>") :]
            self.phase = "content"
        if self.phase == "content":
            if not self.content_started:
                self.pending = self.pending.lstrip("\n")
                self.content_started = bool(self.pending)
            i = self.pending.find("<tool_call>") if self.tools else -1
            if i >= 0:
                out.append(("content", self.pending[:i]))
                self.tool_text, self.pending, self.phase = self.pending[i:], "", "tools"
            else:
                keep = _partial_suffix(self.pending, "<tool_call>") if self.tools else 0
                out.append(("content", self.pending[: len(self.pending) - keep]))
                self.pending = self.pending[len(self.pending) - keep :]
        if self.phase == "tools":
            self.tool_text += self.pending
            self.pending = ""
        return [(f, t) for f, t in out if t]

    def finish(self) -> tuple[list[tuple[str, str]], list[dict[str, Any]]]:
        """The held-back text and the parsed tool calls, at the end of the answer."""
        out = [(self.phase if self.phase != "tools" else "content", self.pending)]
        calls: list[dict[str, Any]] = []
        if self.tool_text:
            rest, calls = parse_tool_calls(self.tool_text)
            out.append(("content", rest if calls else self.tool_text))
        return [(f, t) for f, t in out if t], calls


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
