"""The OpenAI-compatible server: responses, SSE streaming, strict validation with OpenAI-shaped
errors, a client that disconnects mid-stream, queued concurrent requests."""

from __future__ import annotations

import json
import socket
import threading
from typing import Any

import pytest
from serving_util import CHAT, NO_END, Addr, call, request, sse_events

from qwen_edge.generation.chat_output import ChatOutputParser, parse_tool_calls
from qwen_edge.serving.server import Server


def test_health_and_models(server: Addr) -> None:
    assert request(server, "GET", "/health") == (200, {"status": "ok"})
    assert request(server, "GET", "/health/ready") == (200, {"status": "ready"})
    status, body = request(server, "GET", "/v1/models")
    assert status == 200 and body["data"][0]["id"] == "tiny"


def test_chat_completion(server: Addr) -> None:
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
    assert streamed == choice["message"]["content"]  # the same text, whitespace included
    assert events[-2]["choices"][0]["finish_reason"] == choice["finish_reason"]
    assert events[-1]["usage"] == usage


def test_completions_with_text_and_ids(server: Addr) -> None:
    body = {"prompt": "The capital of France is", "max_tokens": 4, "temperature": 0}
    status, out = request(server, "POST", "/v1/completions", body)
    assert status == 200 and out["object"] == "text_completion"
    assert out["usage"]["completion_tokens"] == 4 and out["choices"][0]["finish_reason"] == "length"
    status, out = request(server, "POST", "/v1/completions", {**body, "prompt": [785, 6722, 315]})
    assert status == 200 and out["usage"]["prompt_tokens"] == 3


def test_logprobs_name_tokens_by_text(running: Server, server: Addr) -> None:
    tokenizer = running.app.llm.tokenizer
    status, out = request(server, "POST", "/v1/chat/completions", {**CHAT, "logprobs": True})
    assert status == 200
    entries = out["choices"][0]["logprobs"]["content"]
    assert len(entries) == out["usage"]["completion_tokens"]
    for e in entries:
        assert isinstance(e["token"], str) and e["logprob"] <= 0
        assert e["token"] == bytes(e["bytes"]).decode("utf-8", "replace")
        assert tokenizer.encode(e["token"]) != [] and not e["token"].isdigit()
    # the text the tokens spell is the answer (before its whitespace is trimmed)
    spelled = b"".join(bytes(e["bytes"]) for e in entries).decode("utf-8", "replace")
    assert out["choices"][0]["message"]["content"] in spelled
    # streamed: the same entries, one per token, on the chunks
    status, text = request(server, "POST", "/v1/chat/completions",
                           {**CHAT, "logprobs": True, "stream": True})  # fmt: skip
    streamed = [lp for e in sse_events(text) for c in e["choices"]
                for lp in (c.get("logprobs") or {}).get("content", [])]  # fmt: skip
    assert streamed == entries
    # the legacy completions API: a count, and token texts
    body = {"prompt": "The capital of France is", "max_tokens": 4, "temperature": 0}
    status, out = request(server, "POST", "/v1/completions", {**body, "logprobs": 1})
    lp = out["choices"][0]["logprobs"]
    assert status == 200 and len(lp["tokens"]) == len(lp["token_logprobs"]) == 4
    assert "".join(lp["tokens"]) == out["choices"][0]["text"]


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
        # hostile or absurd: each a clear 400, never a dropped connection
        (b"[" * 100_000 + b"]" * 100_000, 400, "nested more than 64 levels"),
        (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, 400, "nested more than 64 levels"),
        (json.dumps({**CHAT, "tools": [{"x": [[[[[[[[]]]]]]]]}]}).encode().replace(b"[]", b"[" * 60
         + b"]" * 60), 400, "nested"),
        (json.dumps({**CHAT, "stream": True, "stream_options": "yes"}).encode(), 400,
         "'stream_options' must be an object"),
        (json.dumps({**CHAT, "stream": True, "stream_options": {"include_usage": 1}}).encode(),
         400, "'stream_options' must be an object"),
        (json.dumps({**CHAT, "stream_options": [1]}).encode(), 400, "'stream_options'"),
        (json.dumps(CHAT).encode().replace(b'"temperature": 0', b'"temperature": Infinity'),
         400, "Infinity is not JSON"),
        (json.dumps(CHAT).encode().replace(b'"temperature": 0', b'"temperature": NaN'),
         400, "NaN is not JSON"),
        (json.dumps({**CHAT, "temperature": 1e308}).encode(), 400, "temperature must be in"),
        (json.dumps(CHAT).encode().replace(b'"temperature": 0', b'"temperature": 1e400'),
         400, "temperature must be in"),
        (json.dumps({**CHAT, "max_tokens": 10**40}).encode(), 400, "over this server's limit"),
        (json.dumps({**CHAT, "max_tokens": 257}).encode(), 400, "limit of 256"),
        (json.dumps({**CHAT, "max_completion_tokens": 10**40}).encode(), 400, "limit of 256"),
        (json.dumps({**CHAT, "top_k": 10**40}).encode(), 400, "top_k must be in"),
        (json.dumps({**CHAT, "top_k": 2.5}).encode(), 400, "'top_k' must be an integer"),
        (json.dumps({**CHAT, "seed": -1}).encode(), 400, "seed must be in"),
        (json.dumps({**CHAT, "presence_penalty": 1e308}).encode(), 400, "presence_penalty"),
        (json.dumps({**CHAT, "logit_bias": {"x": 1}}).encode(), 400, "'logit_bias' keys"),
        (json.dumps({**CHAT, "logit_bias": {"5": 1000}}).encode(), 400, "logit_bias must map"),
        (json.dumps({**CHAT, "stop": ["x"] * 17}).encode(), 400, "stop takes at most 16"),
        (json.dumps({**CHAT, "model": 5}).encode(), 400, "'model' must be a string"),
        (json.dumps({**CHAT, "messages": [{"role": "user", "content": 5}]}).encode(), 400, ""),
        (json.dumps({**CHAT, "tools": "all"}).encode(), 400, "'tools' must be a list"),
        (b"null", 400, "must be a JSON object"),
        (b'"' + b"x" * 1000 + b'"', 400, "must be a JSON object"),
        (b"1" * 5000, 400, "not valid JSON"),  # an integer too long for Python to convert
    ],
)  # fmt: skip
def test_bad_requests_get_openai_errors(
    server: Addr, raw: bytes, status: int, message: str
) -> None:
    got, body = request(server, "POST", "/v1/chat/completions", raw=raw)
    assert got == status
    assert body["error"]["type"] == "invalid_request_error"
    assert message in body["error"]["message"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"prompt": [2**40]}, "'prompt' must be"),
        ({"prompt": "x", "logprobs": 9}, "'logprobs' must be a boolean or a count"),
        ({"prompt": "x", "echo": True}, "'echo' is not supported"),
    ],
)
def test_bad_completions(server: Addr, body: dict[str, Any], message: str) -> None:
    got, out = request(server, "POST", "/v1/completions", body)
    assert got == 400 and message in out["error"]["message"]


def test_bad_value_names_its_field(server: Addr) -> None:
    got, out = request(server, "POST", "/v1/chat/completions", {**CHAT, "temperature": 1e308})
    assert got == 400 and out["error"]["param"] == "temperature"


def test_http_level_errors(server: Addr) -> None:
    for method, path, status in [
        ("GET", "/nowhere", 404), ("POST", "/v1/nowhere", 404), ("PUT", "/nowhere", 404),
        ("GET", "/v1/chat/completions", 405), ("DELETE", "/v1/models", 405),
        ("POST", "/health", 405), ("PATCH", "/v1/completions", 405), ("FROB", "/health", 405),
        ("OPTIONS", "/v1/chat/completions", 405),
    ]:  # fmt: skip
        got, body, resp = call(server, method, path, CHAT if method != "GET" else None)
        assert got == status, (method, path)
        assert resp.getheader("Content-Type") == "application/json"  # never an HTML page
        assert body["error"]["code"] == ("not_found" if status == 404 else "method_not_allowed")
        if status == 405:
            assert resp.getheader("Allow") in ("GET", "POST")
    got, text, resp = call(server, "HEAD", "/health")
    assert (
        got == 200
        and text == ""
        and resp.getheader("Content-Length") == str(len(json.dumps({"status": "ok"})))
    )
    for head, code in [
        (b"Content-Length: 5242880\r\n", b" 413 "), (b"", b" 411 "),
        (b"Transfer-Encoding: chunked\r\n", b" 411 "), (b"Content-Length: -5\r\n", b" 400 "),
        (b"Content-Length: 12abc\r\n", b" 400 "),
        ("Content-Length: \u00b2\r\n".encode("latin-1"), b" 400 "),  # a digit, but not ASCII
        (b"Content-Length: " + b"9" * 5000 + b"\r\n", b" 413 "),
        (b"X: " + b"y" * 70_000 + b"\r\n", b" 431 "),
    ]:  # fmt: skip
        with socket.create_connection(server, timeout=30) as s:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n")
            reply = b""
            while chunk := s.recv(4096):  # the server closes: the body stays unread
                reply += chunk
        assert code in reply.split(b"\r\n")[0], reply[:200]
        assert b"application/json" in reply and b'"error"' in reply


def test_context_overflow(server: Addr) -> None:
    long = {**CHAT, "messages": [{"role": "user", "content": "word " * 400}]}
    status, body = request(server, "POST", "/v1/chat/completions", long)
    assert status == 400 and body["error"]["code"] == "context_length_exceeded"


def test_disconnect_mid_stream_leaves_the_model_usable(running: Server) -> None:
    server = running.server_address[:2]
    before = running.worker.cancelled_jobs
    body = {**CHAT, "max_tokens": 200, "temperature": 1.0, "stream": True, "logit_bias": NO_END}
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


def test_concurrent_requests_are_queued(server: Addr) -> None:
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
    assert fields["reasoning_content"] == "Let me check the weather."  # no whitespace at the ends
    assert fields["content"] == "Sure."
    assert [c["function"]["name"] for c in calls] == ["get_weather"]
