"""An OpenAI-compatible HTTP server for gateways, on the standard library alone.

`/v1/chat/completions` (with SSE streaming, tools and thinking), `/v1/completions`,
`/v1/models`, `/metrics`, `/health` and `/health/ready`. The scheduler owns the model and
batches the running requests (`scheduler.py`); what to answer is decided by `app.py`; this
module is the HTTP transport: one thread per connection, a deep listen backlog, a cap on open
connections, a deadline for receiving each request and a timeout for each write, so slow or
stalled clients cannot hold the server, and a watch on the socket of every generation so that a
client that goes away cancels it. Why the standard library and not an ASGI server:
docs/serving.md (measured).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import selectors
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .app import App, Request, Response
from .openai_api import MAX_BODY_BYTES, APIError
from .scheduler import DEFAULT_MAX_BATCH, DEFAULT_PREFILL_CHUNK, DEFAULT_PREFILL_SHARE, Scheduler

log = logging.getLogger(__name__)

BACKLOG = 1024  # connections the kernel queues before accept (Linux caps it at somaxconn)


class _DeadlineReader(io.RawIOBase):
    """The connection's reading side: while `deadline` is set, no read waits past it."""

    def __init__(self, sock: socket.socket, timeout: float):
        self.sock = sock
        self.timeout = timeout
        self.deadline: float | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self.timeout if self.deadline is None else self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the client did not send its request in time")
        self.sock.settimeout(left)
        return self.sock.recv_into(buffer)


class DisconnectWatcher:
    """One thread watching the sockets of running generations: the end of the stream or a reset
    means the client went away (its request's `disconnect()` cancels the generation); data
    means a pipelined request, not a disconnect, and ends that socket's watch."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._lock = threading.Lock()
        self._changes: list[tuple[socket.socket, Request | None]] = []
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="qwen-edge-watch", daemon=True)
        self._thread.start()

    def add(self, sock: socket.socket, request: Request) -> None:
        self._change(sock, request)

    def remove(self, sock: socket.socket) -> None:
        self._change(sock, None)

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._wake()
        self._thread.join()

    def _change(self, sock: socket.socket, request: Request | None) -> None:
        with self._lock:  # applied by the watching thread, which owns the selector
            self._changes.append((sock, request))
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def _run(self) -> None:
        watched: dict[socket.socket, Request] = {}
        while True:
            with self._lock:
                changes, self._changes, closed = self._changes, [], self._closed
            if closed:
                break
            for sock, request in changes:
                if request is not None and sock not in watched:
                    with contextlib.suppress(OSError, ValueError):
                        self._selector.register(sock, selectors.EVENT_READ)
                        watched[sock] = request
                elif request is None and sock in watched:
                    del watched[sock]
                    with contextlib.suppress(OSError, ValueError, KeyError):
                        self._selector.unregister(sock)
            for key, _ in self._selector.select():
                sock = key.fileobj
                if sock is self._wake_r:
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(4096)
                    continue
                request = watched.pop(sock)  # type: ignore[call-overload]
                self._selector.unregister(sock)
                try:
                    gone = not sock.recv(1, socket.MSG_PEEK)  # type: ignore[union-attr]
                except OSError:  # reset
                    gone = True
                if gone:
                    request.disconnect()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()


class Server(ThreadingHTTPServer):
    """The HTTP transport of an `App`.

    Args:
        address: (host, port); port 0 picks a free one.
        app: what to answer.
        read_timeout: seconds a client has to send a whole request (head and body), and to
            start its next one on a kept-alive connection; also the longest a write may block.
        max_connections: open connections served at once; more are answered 503 at once.
    """

    daemon_threads = True
    request_queue_size = BACKLOG

    def __init__(
        self,
        address: tuple[str, int],
        app: App,
        *,
        read_timeout: float = 30.0,
        max_connections: int = 256,
    ):
        self.app = app
        self.read_timeout = read_timeout
        self.max_connections = max_connections
        self._lock = threading.Lock()
        self._connections: dict[Handler, bool] = {}  # handler -> busy with a request
        self._open = 0  # connections accepted and not yet closed
        super().__init__(address, Handler)
        self.watcher = DisconnectWatcher()

    # the scheduler (named `worker` since the one-request-at-a-time server): tests reach it here
    @property
    def worker(self) -> Any:
        return self.app.worker

    @property
    def open_connections(self) -> int:
        return self._open

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._lock:  # counted here, in the accepting thread, so a burst cannot overshoot
            full = self._open >= self.max_connections
            self._open += not full
        if not full:
            super().process_request(request, client_address)
            return
        body = APIError(503, "too many connections; retry later").body()
        data = json.dumps(body).encode()
        head = (
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
        )
        with contextlib.suppress(OSError):
            request.settimeout(1.0)
            request.sendall(head.encode() + data)
        self.shutdown_request(request)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._lock:
                self._open -= 1

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection from %s ended by an error", client_address, exc_info=True)

    def track(self, handler: Handler, busy: bool | None) -> None:
        """Records a connection as idle, busy with a request, or gone (None)."""
        with self._lock:
            if busy is None:
                self._connections.pop(handler, None)
            else:
                self._connections[handler] = busy

    def drain_and_stop(self, timeout: float) -> bool:
        """Graceful stop: not ready and 503 for new generations at once; admitted requests
        finish for up to `timeout` seconds, the rest end with a finish_reason; then the
        server stops accepting, closes idle connections, waits for answers still being
        written and stops the worker. Call from any thread but the one in `serve_forever`.

        Returns:
            Whether every request finished on its own.
        """
        clean = self.app.drain(timeout)
        self.shutdown()  # serve_forever returns
        deadline = time.monotonic() + self.read_timeout
        while time.monotonic() < deadline:
            with self._lock:
                idle = [h for h, busy in self._connections.items() if not busy]
                busy = len(self._connections) - len(idle)
            for handler in idle:
                with contextlib.suppress(OSError):
                    handler.connection.shutdown(socket.SHUT_RDWR)
            if not idle and not busy:
                break
            time.sleep(0.05)
        self.app.worker.close()
        return clean

    def server_close(self) -> None:
        super().server_close()
        self.watcher.close()
        self.app.worker.close()


class Handler(BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.1"
    server_version = "qwen-edge"
    sys_version = ""
    disable_nagle_algorithm = True  # stream events go out as they are written

    # --- connection plumbing ---
    def setup(self) -> None:
        super().setup()
        self.reader = _DeadlineReader(self.connection, self.server.read_timeout)
        self.rfile = io.BufferedReader(self.reader)
        self.server.track(self, False)

    def finish(self) -> None:
        self.server.track(self, None)
        with contextlib.suppress(OSError):
            super().finish()

    def handle_one_request(self) -> None:
        self.reader.deadline = time.monotonic() + self.server.read_timeout
        super().handle_one_request()
        self.server.track(self, False)

    def parse_request(self) -> bool:
        self.server.track(self, True)  # a request line arrived
        return super().parse_request()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("do_"):  # every method goes through the app, which answers 405
            return self._dispatch
        raise AttributeError(name)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The errors `http.server` finds itself (malformed request line, long headers), as
        JSON like every other error."""
        self.close_connection = True
        error = APIError(code, message or self.responses.get(code, ("error",))[0])
        request = Request(getattr(self, "command", "") or "", "/", {}, client=self._client())
        with contextlib.suppress(OSError):
            self._send(self.server.app.error(request, error))

    # --- requests ---
    def _client(self) -> str:
        return str(self.client_address[0]) if self.client_address else ""

    def _dispatch(self) -> None:
        headers = {k.lower(): v for k, v in self.headers.items()}
        request = Request(self.command, self.path, headers, client=self._client())
        app = self.server.app
        early = app.check(request)
        has_body = "content-length" in headers or "transfer-encoding" in headers
        if early is not None:
            self.close_connection |= has_body  # the body stays unread
            self._send(early)
            return
        try:
            request.body = self._read_body()
        except APIError as e:
            self.close_connection = True
            self._send(app.error(request, e))
            return
        watch = self.command == "POST"  # generations: a client that leaves cancels its own
        if watch:
            self.server.watcher.add(self.connection, request)
        try:
            self._send(app.handle(request), request)
        finally:
            if watch:
                self.server.watcher.remove(self.connection)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding"):
            raise APIError(411, "chunked request bodies are not supported; send Content-Length")
        length = self.headers.get("Content-Length")
        if length is None:
            if self.command == "POST":
                raise APIError(411, "a Content-Length header is required")
            return b""
        if not (length.isascii() and length.isdigit()):
            raise APIError(400, "invalid Content-Length")
        if len(length) > 18 or (n := int(length)) > MAX_BODY_BYTES:
            raise APIError(413, f"request body over {MAX_BODY_BYTES} bytes")
        try:
            raw = self.rfile.read(n)
        except TimeoutError:
            raise APIError(408, "the request body did not arrive in time") from None
        finally:
            self.reader.deadline = None
        if len(raw) != n:
            raise APIError(400, "request body shorter than its Content-Length")
        return raw

    def _send(self, response: Response, request: Request | None = None) -> None:
        self.connection.settimeout(self.server.read_timeout)  # each write's limit
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        if response.stream is None:
            self.send_header("Content-Length", str(len(response.body)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD" and not (request is not None and request.gone.is_set()):
                self.wfile.write(response.body)
            return
        self.send_header("Connection", "close")
        self.close_connection = True
        try:
            self.end_headers()
            for chunk in response.stream:
                if chunk:
                    self.wfile.write(chunk)
        except OSError:  # the client went away or stopped reading (write timeout)
            if request is not None:
                request.disconnect()
        finally:
            response.stream.close()  # type: ignore[attr-defined]


def serve(
    llm: Any,
    host: str = "127.0.0.1",
    port: int = 8000,
    model_name: str = "qwen-edge",
    *,
    api_key: str | None = None,
    max_queue: int = 16,
    max_batch: int = DEFAULT_MAX_BATCH,
    prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
    prefill_share: float = DEFAULT_PREFILL_SHARE,
    max_tokens_cap: int | None = None,
    read_timeout: float = 30.0,
    max_connections: int = 256,
) -> Server:
    """A bound server, ready for `serve_forever()` (stop it with `drain_and_stop` from another
    thread, or `shutdown` and `server_close`).

    Args:
        llm: the loaded `LLM`.
        host, port: where to listen (port 0: any free port; see `server_address`).
        model_name: the model id clients see.
        api_key: require `Authorization: Bearer KEY` on every route but the health probes.
        max_queue: requests that may wait for the model; more are answered 429.
        max_batch: requests that generate together (continuous batching, `scheduler.py`).
        prefill_chunk: the most prompt tokens a joining request prefills per step while others
            decode.
        prefill_share: a step with prompt tokens beside decoding requests takes at most
            `1 + prefill_share` times their decode step alone.
        max_tokens_cap: the most tokens a request may ask for (default: 4096, or the context
            when smaller).
        read_timeout: seconds to receive a whole request; also the write timeout.
        max_connections: connections served at once; more are answered 503.
    """
    if max_tokens_cap is None:
        max_tokens_cap = min(4096, llm.context or 4096)
    worker = Scheduler(
        llm, max_batch=max_batch, max_queue=max_queue, prefill_chunk=prefill_chunk,
        prefill_share=prefill_share,
    )  # fmt: skip
    app = App(worker, llm, model_name, api_key=api_key, max_tokens_cap=max_tokens_cap)
    try:
        return Server((host, port), app, read_timeout=read_timeout, max_connections=max_connections)
    except BaseException:
        worker.close()
        raise
