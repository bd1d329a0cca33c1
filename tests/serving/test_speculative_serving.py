"""`serve --speculative mtp` under the continuous-batching scheduler (docs/serving.md): a request
alone in the batch speculates and answers exactly as plain decoding (tokens and logprobs, so
logits); a speculating request that gets company finishes with plain batched steps; requests
beside others decode plainly and the prefix cache still gives exact logits; a speculating
request resumes from the prefix cache (its snapshots keep the MTP head's part, counted in the
cache's bytes) with the same tokens and logits; the acceptance counters reach `stats()` (and so
/metrics)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import start_server
from serving_util import request

from qwen_edge.backends import native
from qwen_edge.generation.chat_template import IM_START
from qwen_edge.generation.llm import LLM, load
from qwen_edge.serving.metrics import Metrics
from qwen_edge.serving.openai_api import Job
from qwen_edge.serving.scheduler import Scheduler

pytestmark = pytest.mark.skipif(not native.available(), reason="the native core is not built")

GREEDY = {"temperature": 0.0, "presence_penalty": 0.0, "stop_token_ids": (), "logprobs": True}


@pytest.fixture(scope="module")
def mtp_file(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from qwen_edge.export.convert import export

    path = tmp_path_factory.mktemp("tiny-mtp") / "tiny-q8-mtp.qe"
    export(tiny_checkpoint, path, "q8", keep_mtp=True)
    return path


def load_mtp(path: Path, cache_mb: float = 0) -> LLM:
    llm = load(path, context=256, cache_mb=cache_mb, threads=2)
    assert llm.model.has_mtp and llm.generation_config.speculative == "auto"
    return llm


def speculate(llm: LLM) -> None:
    """What `serve --speculative mtp --draft-tokens 3` does to every request's defaults."""
    llm.generation_config = llm.generation_config.replace(speculative="mtp", draft_tokens=3)


def plain(llm: LLM, prompt: list[int], n: int) -> tuple[list[int], list[float]]:
    r = llm.generate(prompt, max_tokens=n, speculative="off", **GREEDY)
    assert r.stats.speculative is None
    return r.tokens, list(r.logprobs)


def collect(events: Iterator[tuple[str, Any]]) -> tuple[list[int], list[float], Any]:
    """Tokens, logprobs and the last response's stats of a job's events."""
    tokens, logprobs, last = [], [], None
    for kind, value in events:
        assert kind != "error", value.message
        if kind == "delta" and value.token is not None:
            tokens.append(value.token)
            logprobs.append(value.logprob)
            last = value
    return tokens, logprobs, last.stats if last is not None else None


def test_a_request_alone_speculates_and_answers_as_plain(mtp_file: Path) -> None:
    llm = load_mtp(mtp_file)
    prompt = [1000, 2000, 3000, 41]
    want = plain(llm, prompt, 40)
    speculate(llm)
    scheduler = Scheduler(llm, max_batch=2)
    try:
        tokens, logprobs, stats = collect(
            scheduler.submit(Job("completion", prompt, {"max_tokens": 40, **GREEDY}))
        )
        totals = scheduler.stats()
    finally:
        scheduler.close()
    assert (tokens, logprobs) == want  # logprobs equal: the verification's logits are plain's
    assert stats.speculative is not None and stats.speculative["rounds"] > 0
    assert stats.speculative["plain_steps"] == 0
    assert totals["speculative_requests"] == 1
    assert totals["speculative_rounds"] == stats.speculative["rounds"]
    assert totals["speculative_drafted_tokens"] == stats.speculative["drafted_tokens"] > 0
    assert totals["speculative_accepted_tokens"] == stats.speculative["accepted_tokens"]
    text = Metrics().render(totals, 0, True)
    assert f"qwen_edge_speculative_rounds_total {totals['speculative_rounds']}" in text
    assert "qwen_edge_speculative_accepted_tokens_total" in text


class Gate:
    """The model; its `after`-th MTP call waits for `release` (the scheduler's thread runs it,
    so the speculating request is held mid-generation while another joins)."""

    def __init__(self, model: Any, after: int):
        self.model, self.after, self.calls = model, after, 0
        self.release = threading.Event()

    def mtp_forward(self, *args: Any, **kw: Any) -> Any:
        self.calls += 1
        if self.calls == self.after:
            self.release.wait()
        return self.model.mtp_forward(*args, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)


def test_company_ends_the_speculation_and_the_prefix_cache_stays_exact(mtp_file: Path) -> None:
    base = load_mtp(mtp_file, cache_mb=16)
    long_prompt = [7, 8, 9]
    chat_like = [IM_START, 11, 12, 13, IM_START, 21, 22, IM_START, 31, 32]  # cache boundaries
    want_long = plain(base, long_prompt, 200)
    want_chat = plain(base, chat_like, 6)
    base.prefix_cache.clear()
    speculate(base)
    gate = Gate(base.model, after=3)
    llm = base.with_model(gate)
    scheduler = Scheduler(llm, max_batch=2)
    try:
        got: dict[str, Any] = {}

        def submit(name: str, job: Job) -> threading.Thread:
            thread = threading.Thread(
                target=lambda: got.__setitem__(name, collect(scheduler.submit(job)))
            )
            thread.start()
            return thread

        long = submit("long", Job("completion", long_prompt, {"max_tokens": 200, **GREEDY}))
        wait = threading.Event()
        while gate.calls < 3:  # it is alone: speculating, until the gate holds it
            wait.wait(0.005)
        # Beside it: plain, through the prefix cache (the first fills it, the second hits it).
        first = submit("first", Job("completion", chat_like, {"max_tokens": 6, **GREEDY}))
        while scheduler.active < 2:
            wait.wait(0.005)
        gate.release.set()
        first.join()
        submit("second", Job("completion", chat_like, {"max_tokens": 6, **GREEDY})).join()
        long.join()
    finally:
        gate.release.set()
        scheduler.close()
    tokens, logprobs, stats = got["long"]
    assert (tokens, logprobs) == want_long
    assert stats.speculative is not None and stats.speculative["plain_steps"] > 0
    for name in ("first", "second"):
        tokens, logprobs, stats = got[name]
        assert (tokens, logprobs) == want_chat
        assert stats.speculative is None  # admitted beside a running request: plain
    assert got["first"][2].num_cached_tokens == 0 and got["second"][2].num_cached_tokens > 0


def test_a_speculating_request_resumes_from_the_prefix_cache(mtp_file: Path) -> None:
    base = load_mtp(mtp_file, cache_mb=16)
    system = [IM_START, 11, 12, 13, 14, 15]
    prompts = [[*system, IM_START, 21, 22, IM_START, 31], [*system, IM_START, 23, IM_START, 33]]
    want = [plain(base, p, 16) for p in prompts]  # fills the cache with plain snapshots
    assert base.prefix_cache.stats()["entries"] == 3
    speculate(base)
    scheduler = Scheduler(base, max_batch=2)
    try:
        got = [collect(scheduler.submit(Job("completion", p, {"max_tokens": 16, **GREEDY})))
               for p in prompts * 2]  # fmt: skip
        totals = scheduler.stats()
    finally:
        scheduler.close()
    for (tokens, logprobs, stats), expected in zip(got, want * 2, strict=True):
        assert (tokens, logprobs) == expected
        assert stats.speculative is not None and stats.speculative["rounds"] > 0
    # the plain snapshots lack the head's part: the first request starts over and replaces
    # them; the second resumes after the shared system prompt; the repeats after their turns
    cached = [stats.num_cached_tokens for _, _, stats in got]
    assert cached == [0, len(system), 9, 8]
    assert totals["prefix_cache_hits"] == 3
    cache = base.prefix_cache
    snaps = [cache.lookup([*p, 0])[1] for p in (system, prompts[0][:9], prompts[1][:8])]
    assert all(s.mtp_ready for s in snaps)
    # each snapshot counts the head's KV cache and hidden state in the cache's budget
    c = base.model.config
    for snap in snaps:
        head = 2 * c.num_key_value_heads * snap.position * 2 * c.head_dim + 4 * c.hidden_size
        main = base.model.new_state(snap.position)
        base.model.forward([1] * snap.position, main)
        assert snap.cache_bytes == main.snapshot().cache_bytes + head
    assert cache.bytes == sum(s.cache_bytes for s in snaps) and len(cache) == 3


def test_over_http_the_metrics_carry_the_acceptance(mtp_file: Path) -> None:
    llm = load_mtp(mtp_file)
    want = plain(llm, [1000, 2000, 3000, 41], 12)[0]
    speculate(llm)
    srv = start_server(llm)
    try:
        addr = srv.server_address[:2]
        body = {"model": "tiny", "prompt": [1000, 2000, 3000, 41], "max_tokens": 12,
                "temperature": 0, "logprobs": 1}  # fmt: skip
        status, out = request(addr, "POST", "/v1/completions", body)
        assert status == 200, out
        status, metrics = request(addr, "GET", "/metrics")
    finally:
        srv.shutdown()
        srv.server_close()
    assert status == 200
    counters = {
        line.split()[0]: float(line.split()[1])
        for line in metrics.splitlines()
        if line.startswith("qwen_edge_speculative_")
    }
    assert counters["qwen_edge_speculative_requests_total"] == 1
    assert counters["qwen_edge_speculative_rounds_total"] >= 1
    assert out["usage"]["completion_tokens"] == len(want)
