"""The OpenAI-compatible server: responses, SSE streaming, strict validation with OpenAI-shaped
errors, a client that disconnects mid-stream, queued concurrent requests."""

from __future__ import annotations

import http.client
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qwen_edge.generation.chat_output import ChatOutputParser, parse_tool_calls
from qwen_edge.serving.server import Server, serve


@pytest.fixture(scope="module")
def running(tiny_chat_checkpoint: Path) -> Iterator[Server]:
    from qwen_edge.generation.llm import load

    llm = load(tiny_chat_checkpoint, context=256)
    srv = serve(llm, "127.0.0.1", 0, "tiny")
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def server(running: Server) -> tuple[str, int]:
    return running.server_address[:2]


def request(
    addr: tuple[str, int], method: str, path: str, body: Any = None, raw: bytes | None = None
) -> tuple[int, Any]:
    conn = http.client.HTTPConnection(*addr, timeout=60)
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    text = resp.read().decode()
    conn.close()
    ctype = resp.getheader("Content-Type", "")
    return resp.status, json.loads(text) if ctype.startswith("application/json") else text


def sse_events(text: str) -> list[Any]:
    events = [line[len("data: ") :] for line in text.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


CHAT = {
    "model": "tiny",
    "messages": [{"role": "user", "content": "Hello there"}],
    "max_tokens": 8,
    "temperature": 0,
}


def test_health_and_models(server: tuple[str, int]) -> None:
    assert request(server, "GET", "/health") == (200, {"status": "ok"})
    status, body = request(server, "GET", "/v1/models")
    assert status == 200 and body["data"][0]["id"] == "tiny"


def test_chat_completion(server: tuple[str, int]) -> None:
    status, body = request(server, "POST", "/v1/chat/completions", CHAT)
    assert status == 200, body
    choice = body["choices"][0]
    assert body["object"] == "chat.completion" and choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["prompt_tokens"] > 5 and 0 < usage["completion_tokens"] <= 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    # greedy decoding is deterministic, and streaming gives the same text
    assert request(server, "POST", "/v1/chat/completions", CHAT)[1]["choices"][0] == choice
    status, text = request(server, "POST", "/v1/chat/completions", {**CHAT, "stream": True,
                           "stream_options": {"include_usage": True}})  # fmt: skip
    assert status == 200
    events = sse_events(text)
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    streamed = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert streamed.strip() == choice["message"]["content"]
    assert events[-2]["choices"][0]["finish_reason"] == choice["finish_reason"]
    assert events[-1]["usage"] == usage


def test_completions_with_text_and_ids(server: tuple[str, int]) -> None:
    body = {"prompt": "The capital of France is", "max_tokens": 4, "temperature": 0}
    status, out = request(server, "POST", "/v1/completions", body)
    assert status == 200 and out["object"] == "text_completion"
    assert out["usage"]["completion_tokens"] == 4 and out["choices"][0]["finish_reason"] == "length"
    status, out = request(server, "POST", "/v1/completions", {**body, "prompt": [785, 6722, 315]})
    assert status == 200 and out["usage"]["prompt_tokens"] == 3


@pytest.mark.parametrize(
    ("raw", "status", "message"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "must be a JSON object"),
        (b"\xff\xfe", 400, "not valid JSON"),
        (json.dumps({"messages": []}).encode(), 400, "'messages' must be a non-empty list"),
        (
            json.dumps({**CHAT, "temperature": "hot"}).encode(),
            400,
            "'temperature' must be a number",
        ),
        (json.dumps({**CHAT, "max_tokens": 0}).encode(), 400, "'max_tokens' must be a positive"),
        (json.dumps({**CHAT, "n": 3}).encode(), 400, "only n = 1"),
        (json.dumps({**CHAT, "frobnicate": 1}).encode(), 400, "unsupported field(s): frobnicate"),
        (json.dumps({**CHAT, "stop": [""]}).encode(), 400, "'stop' must be"),
        (json.dumps({**CHAT, "stream": "yes"}).encode(), 400, "'stream' must be a boolean"),
        (
            json.dumps({**CHAT, "messages": [{"role": "robot", "content": "x"}]}).encode(),
            400,
            "role",
        ),
        (json.dumps({**CHAT, "messages": [{"content": "x"}]}).encode(), 400, "'role'"),
    ],
)
def test_bad_requests_get_openai_errors(
    server: tuple[str, int], raw: bytes, status: int, message: str
) -> None:
    got, body = request(server, "POST", "/v1/chat/completions", raw=raw)
    assert got == status
    assert body["error"]["type"] == "invalid_request_error"
    assert message in body["error"]["message"]


def test_http_level_errors(server: tuple[str, int]) -> None:
    assert request(server, "GET", "/nowhere")[0] == 404
    assert request(server, "POST", "/v1/nowhere", CHAT)[0] == 404
    for head, code in ((b"Content-Length: 5242880\r\n", b" 413 "), (b"", b" 411 ")):
        with socket.create_connection(server, timeout=30) as s:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n")
            reply = b""
            while chunk := s.recv(4096):  # the server closes: the body stays unread
                reply += chunk
        assert code in reply.split(b"\r\n")[0] and b'"invalid_request_error"' in reply


def test_context_overflow(server: tuple[str, int]) -> None:
    long = {**CHAT, "messages": [{"role": "user", "content": "word " * 400}]}
    status, body = request(server, "POST", "/v1/chat/completions", long)
    assert status == 400 and body["error"]["code"] == "context_length_exceeded"


def test_disconnect_mid_stream_leaves_the_model_usable(running: Server) -> None:
    server = running.server_address[:2]
    before = running.worker.cancelled_jobs
    no_end = {"248046": -100, "248044": -100}  # so only the disconnect can end it early
    body = {**CHAT, "max_tokens": 200, "temperature": 1.0, "stream": True, "logit_bias": no_end}
    body = json.dumps(body).encode()
    with socket.create_connection(server, timeout=30) as s:
        head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        s.sendall(head + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        received = b""
        while b"data: " not in received:  # the first event has arrived: now walk away
            chunk = s.recv(4096)
            assert chunk, "the server closed before the first event"
            received += chunk
    # the next requests run normally, after the worker stopped the abandoned generation
    for _ in range(2):
        status, out = request(server, "POST", "/v1/chat/completions", CHAT)
        assert status == 200 and out["choices"][0]["message"]["role"] == "assistant"
    assert running.worker.cancelled_jobs == before + 1


def test_concurrent_requests_are_queued(server: tuple[str, int]) -> None:
    results: list[tuple[int, Any]] = []

    def ask() -> None:
        results.append(request(server, "POST", "/v1/chat/completions", CHAT))

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r[0] for r in results] == [200, 200, 200]
    assert len({r[1]["choices"][0]["message"]["content"] for r in results}) == 1  # greedy: same


# --- output parsing ---------------------------------------------------------------------------
ANSWER = (
    "Let me check the weather.\n</think>\n\nSure.\n\n<tool_call>\n<function=get_weather>\n"
    "<parameter=city>\nParis\n</parameter>\n<parameter=days>\n3\n</parameter>\n</function>\n"
    "</tool_call>"
)


def test_tool_calls_are_parsed() -> None:
    content, calls = parse_tool_calls("Sure.\n\n" + ANSWER.split("Sure.\n\n")[1])
    assert content == "Sure."
    assert calls[0]["function"]["name"] == "get_weather"
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris", "days": 3}


@pytest.mark.parametrize("step", [1, 2, 3, 7, len(ANSWER)])
def test_streamed_pieces_equal_the_whole_answer(step: int) -> None:
    """However the text is cut into pieces, the parser gives the same fields."""
    parser = ChatOutputParser(thinking=True, tools=True)
    fields: dict[str, str] = {}
    pieces = [p for i in range(0, len(ANSWER), step) for p in parser.feed(ANSWER[i : i + step])]
    more, calls = parser.finish()
    for name, text in pieces + more:
        fields[name] = fields.get(name, "") + text
    assert fields["reasoning_content"].strip() == "Let me check the weather."
    assert fields["content"].strip() == "Sure."
    assert [c["function"]["name"] for c in calls] == ["get_weather"]
