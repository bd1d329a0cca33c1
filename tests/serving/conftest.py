"""Servers on loopback for the serving tests, and a small HTTP client."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from serving_util import Addr

from qwen_edge.serving.server import Server, serve


def start(llm: Any, **options: Any) -> Server:
    """A server for `llm` on a free loopback port, serving on a thread."""
    srv = serve(llm, "127.0.0.1", 0, "tiny", **options)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


@pytest.fixture(scope="session")
def serving_llm(tiny_chat_checkpoint: Path) -> Any:
    """The tiny chat model, loaded once: servers take turns with it (a test's servers are
    shut down, their workers joined, before the next test starts)."""
    from qwen_edge.generation.llm import load

    return load(tiny_chat_checkpoint, context=256)


@pytest.fixture(scope="module")
def running(serving_llm: Any) -> Iterator[Server]:
    """One server with default options, shared by a test module."""
    srv = start(serving_llm)
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def server(running: Server) -> Addr:
    return running.server_address[:2]


@pytest.fixture
def make_server(serving_llm: Any) -> Iterator[Callable[..., Server]]:
    """`make_server(wrap=None, **options)`: a server of its own for one test; `wrap(llm)` may
    wrap the model first."""
    made: list[Server] = []

    def make(wrap: Callable[[Any], Any] | None = None, **options: Any) -> Server:
        made.append(start(wrap(serving_llm) if wrap else serving_llm, **options))
        return made[-1]

    yield make
    for srv in made:
        srv.shutdown()
        srv.server_close()
