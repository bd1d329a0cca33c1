"""Helpers of the serving tests (their fixtures are in tests/conftest.py): a small HTTP client,
SSE parsing, request bodies."""

from __future__ import annotations

import http.client
import json
from typing import Any

Addr = tuple[str, int]


def call(
    addr: Addr,
    method: str,
    path: str,
    body: Any = None,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, http.client.HTTPResponse]:
    """(status, JSON body or text, response) of one request on a new connection."""
    conn = http.client.HTTPConnection(*addr, timeout=60)
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    conn.request(method, path, body=data, headers={"Content-Type": "application/json",
                                                   **(headers or {})})  # fmt: skip
    resp = conn.getresponse()
    text = resp.read().decode()
    conn.close()
    ctype = resp.getheader("Content-Type", "")
    is_json = ctype.startswith("application/json") and text
    return resp.status, json.loads(text) if is_json else text, resp


def request(addr: Addr, method: str, path: str, body: Any = None, raw: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, Any]:  # fmt: skip
    """(status, JSON body or text) of one request on a new connection."""
    status, out, _ = call(addr, method, path, body, raw, headers)
    return status, out


def sse_events(text: str) -> list[Any]:
    """The JSON events of an SSE answer, checking that it ends with [DONE]."""
    events = [line[len("data: ") :] for line in text.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


CHAT = {
    "model": "tiny",
    "messages": [{"role": "user", "content": "Hello there"}],
    "max_tokens": 8,
    "temperature": 0,
}
NO_END = {"248046": -100, "248044": -100}  # so only a limit, a cancel or a drain ends it
