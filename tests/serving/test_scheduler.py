"""The continuous-batching scheduler without HTTP: concurrent requests share model steps and
answer exactly as alone; joining, leaving and cancelling between steps; steps paced as one."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qwen_edge.errors import MemoryLimitError
from qwen_edge.generation.llm import LLM, load
from qwen_edge.generation.pacing import PacedModel
from qwen_edge.serving import scheduler as scheduler_module
from qwen_edge.serving.openai_api import Job
from qwen_edge.serving.scheduler import Scheduler, StepCost

GREEDY = {"temperature": 0.0, "presence_penalty": 0.0, "stop_token_ids": ()}


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


class Recorder:
    """The model, recording each step's sequences; the first step waits for `release`."""

    def __init__(self, model: Any):
        self.model = model
        self.sizes: list[int] = []
        self.release = threading.Event()

    def forward_batch(self, batch: Any, *, want: Any = None) -> np.ndarray:
        self.release.wait()
        self.sizes.append(len(batch))
        return np.stack([self.model.forward(t, s) for t, s in batch])

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)


@pytest.fixture(scope="module")
def llm(tiny_chat_checkpoint: Path) -> LLM:
    return load(tiny_chat_checkpoint, context=256, cache_mb=0)


def run(scheduler: Scheduler, job: Job) -> list[int]:
    tokens = []
    for kind, value in scheduler.submit(job):
        assert kind != "error", value.message
        if kind == "delta" and value.token is not None:
            tokens.append(value.token)
    return tokens


def test_concurrent_requests_share_steps_and_answer_as_alone(llm: LLM) -> None:
    prompts = [[1000 + i, 2000 + 7 * i, 3000, 41 + i][: 2 + i] for i in range(4)]
    max_tokens = [6, 3, 8, 5]
    alone = [
        llm.generate(p, max_tokens=m, **GREEDY).tokens
        for p, m in zip(prompts, max_tokens, strict=True)
    ]
    recorder = Recorder(llm.model)
    scheduler = Scheduler(llm.with_model(recorder), max_batch=4, max_queue=0)
    try:
        answers: list[list[int]] = [[] for _ in prompts]
        jobs = [Job("completion", p, {"max_tokens": m, **GREEDY})
                for p, m in zip(prompts, max_tokens, strict=True)]  # fmt: skip
        threads = [
            threading.Thread(target=lambda i=i: answers.__setitem__(i, run(scheduler, jobs[i])))
            for i in range(4)
        ]
        for t in threads:
            t.start()
        wait_for(lambda: scheduler.active == 4 and len(scheduler._calls) == 4, "4 calls")
        recorder.release.set()
        for t in threads:
            t.join()
    finally:
        scheduler.close()
    assert answers == alone
    # the first step held until all four had a call waiting: a step after it carried at least
    # the three that did not run in it
    assert max(recorder.sizes) >= 3
    # the steps: far fewer than the 4 prefills + 22 tokens the requests took one at a time
    assert len(recorder.sizes) < 4 + sum(max_tokens)
    stats = scheduler.stats()
    assert stats["completion_tokens"] == sum(max_tokens) and stats["batch_occupancy"] > 1
    assert stats["max_batch"] == 4 and stats["active"] == 0


def test_a_long_prompt_is_prefilled_in_chunks_beside_a_decoding_stream(llm: LLM) -> None:
    long_prompt = list(range(1000, 1100))
    recorder = Recorder(llm.model)
    recorder.release.set()
    chunks: list[int] = []
    inner = recorder.forward_batch

    def record_chunks(batch: Any, *, want: Any = None) -> np.ndarray:
        chunks.append(max(len(t) for t, _ in batch))
        return inner(batch, want=want)

    recorder.forward_batch = record_chunks  # type: ignore[method-assign]
    scheduler = Scheduler(llm.with_model(recorder), max_batch=2, prefill_chunk=16)
    try:
        short = Job("completion", [5, 6], {"max_tokens": 250, **GREEDY})
        events = scheduler.submit(short)
        next(events)  # the short one is decoding
        long = Job("completion", long_prompt, {"max_tokens": 2, **GREEDY})
        got = run(scheduler, long)
        short.cancelled.set()
        for _ in events:
            pass
    finally:
        scheduler.close()
    assert got == llm.generate(long_prompt, max_tokens=2, **GREEDY).tokens
    # while the short stream decoded, no step carried more than 16 prompt tokens (fewer when
    # the measured cost says so), and the prompt went in over several steps
    assert max(chunks) <= 16 and len(chunks) >= 100 // 16


class FakeClock:
    """Seconds that pass only when the model runs: a step of r rows takes 10 + 2 r ms."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_prompt_chunks_keep_a_step_within_the_share_of_a_decode_step(
    llm: LLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Behaviour, not wall-clock: the model's time is a fake clock and every step waits for all
    # running requests, so the chunk sizes the scheduler picks follow from its cost model only.
    monkeypatch.setattr(scheduler_module, "GATHER_SECONDS", 600.0)
    clock = FakeClock()
    recorder = Recorder(llm.model)
    recorder.release.set()
    steps: list[tuple[int, int, float]] = []  # (sequences, rows, seconds)
    inner = recorder.forward_batch

    def timed(batch: Any, *, want: Any = None) -> np.ndarray:
        rows = sum(len(t) for t, _ in batch)
        seconds = 0.010 + 0.002 * rows
        clock.now += seconds
        steps.append((len(batch), rows, seconds))
        return inner(batch, want=want)

    recorder.forward_batch = timed  # type: ignore[method-assign]
    scheduler = Scheduler(
        llm.with_model(recorder), max_batch=3, prefill_chunk=64, prefill_share=0.5, clock=clock
    )
    long_prompt = list(range(1000, 1120))
    try:
        streams = [Job("completion", [5 + i, 6], {"max_tokens": 250, **GREEDY}) for i in range(2)]
        events = [scheduler.submit(job) for job in streams]
        for e in events:
            next(e)  # both decoding
        wait_for(lambda: sum(1 for n, r, _ in steps if n == r == 2) >= 3, "decode steps")
        got = run(scheduler, Job("completion", long_prompt, {"max_tokens": 2, **GREEDY}))
        for job in streams:
            job.cancelled.set()
        for e in events:
            for _ in e:
                pass
    finally:
        scheduler.close()
    assert got == llm.generate(long_prompt, max_tokens=2, **GREEDY).tokens
    decode_step = 0.010 + 0.002 * 2  # 14 ms for the two streams alone
    mixed = [(n, r - 2, s) for n, r, s in steps if n == 3]  # the long job's steps beside both
    assert sum(p for _, p, _ in mixed) == len(long_prompt) + 1  # its prompt, then 1 decode
    # a share of 0.5 of the 14 ms decode step is 7 ms: 3 prompt tokens at the learnt 2 ms each
    # (the first chunk, if no prompt token was measured yet, took one at a decoding sequence's
    # 7 ms), so no step beside the streams took more than 1.5x their decode step
    assert all(s <= (1 + 0.5) * decode_step + 1e-9 for _, _, s in mixed)
    assert [p for _, p, _ in mixed[1:-2]] == [3] * (len(mixed) - 3)
    assert scheduler.cost.per_token == pytest.approx(0.002)
    assert scheduler.cost.decode[2] == pytest.approx(decode_step)


def test_a_burst_of_requests_is_prefilled_together_and_a_later_prompt_within_the_share(
    llm: LLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Requests arrive a few milliseconds apart: the first one's prompt is already running when
    # the others are admitted. Theirs are prefilled whole beside its first decode step (not in
    # the share's few tokens per step), so the burst decodes together; a prompt admitted once
    # they decode keeps within the share. Behaviour only: a fake clock, every step waits for
    # all running requests, the first step is held until the burst is in.
    monkeypatch.setattr(scheduler_module, "GATHER_SECONDS", 600.0)
    clock = FakeClock()
    recorder = Recorder(llm.model)
    entered = threading.Event()
    steps: list[list[int]] = []  # tokens per sequence of each step
    inner = recorder.forward_batch

    def timed(batch: Any, *, want: Any = None) -> np.ndarray:
        entered.set()
        recorder.release.wait()
        rows = sum(len(t) for t, _ in batch)
        clock.now += 0.010 + 0.002 * rows
        steps.append(sorted(len(t) for t, _ in batch))
        return inner(batch, want=want)

    recorder.forward_batch = timed  # type: ignore[method-assign]
    scheduler = Scheduler(
        llm.with_model(recorder), max_batch=5, prefill_chunk=64, prefill_share=0.5, clock=clock
    )
    prompts = [[5 + i, *range(100 + 20 * i, 119 + 20 * i)] for i in range(4)]  # 20 tokens
    late_prompt = list(range(1000, 1060))
    answers: list[list[int]] = [[] for _ in range(5)]

    def start(i: int, prompt: list[int], max_tokens: int) -> threading.Thread:
        job = Job("completion", prompt, {"max_tokens": max_tokens, **GREEDY})
        thread = threading.Thread(target=lambda: answers.__setitem__(i, run(scheduler, job)))
        thread.start()
        return thread

    try:
        threads = [start(0, prompts[0], 40)]
        assert entered.wait(60)  # the first prompt runs alone
        threads += [start(i, prompts[i], 40) for i in range(1, 4)]
        wait_for(lambda: len(scheduler._calls) == 4, "the burst's prompts")
        recorder.release.set()
        wait_for(lambda: len(steps) >= 6, "steps after the burst's")
        threads.append(start(4, late_prompt, 2))
        for t in threads:
            t.join()
    finally:
        scheduler.close()
    assert answers[:4] == [llm.generate(p, max_tokens=40, **GREEDY).tokens for p in prompts]
    assert answers[4] == llm.generate(late_prompt, max_tokens=2, **GREEDY).tokens
    # the first prompt alone, then the three others whole beside its first decode token
    assert steps[0] == [20] and steps[1] == [1, 20, 20, 20] and steps[2] == [1, 1, 1, 1]
    # the late prompt beside the four streams: within 1.5x their 18 ms decode step, so at most
    # 4 tokens (2 ms each) per step, over many steps
    late = [max(s) for s in steps if len(s) == 5 and max(s) > 1]
    assert sum(late) == len(late_prompt) and max(late) <= 4 and len(late) >= len(late_prompt) // 4
    assert all(0.010 + 0.002 * (4 + n) <= 1.5 * 0.018 + 1e-9 for n in late)


def test_cancel_frees_the_slot_and_a_queued_job_joins(llm: LLM) -> None:
    scheduler = Scheduler(llm, max_batch=1, max_queue=1)
    try:
        first = Job("completion", [7, 8], {"max_tokens": 200, **GREEDY})
        events = scheduler.submit(first)
        assert next(events)[0] == "delta"
        second = Job("completion", [9, 10], {"max_tokens": 3, **GREEDY})
        result: list[list[int]] = []
        waiter = threading.Thread(target=lambda: result.append(run(scheduler, second)))
        waiter.start()
        wait_for(lambda: scheduler.queue_depth == 1, "the second job to wait")
        first.cancelled.set()
        kinds = [kind for kind, _ in events]
        assert kinds[-1] == "done"
        waiter.join()
        assert len(result[0]) == 3 and scheduler.cancelled_jobs == 1
    finally:
        scheduler.close()


class Starved:
    """The model, whose states cannot grow past `limit` positions, as the native runtime's
    when the memory runs out: a forward that would take one there raises MemoryLimitError."""

    def __init__(self, model: Any, limit: int):
        self.model, self.limit = model, limit

    def _check(self, tokens: Any, state: Any) -> None:
        if state.position + len(tokens) > self.limit:
            raise MemoryLimitError(f"the state cannot grow to {state.position + len(tokens)}")

    def forward(self, tokens: Any, state: Any, **kwargs: Any) -> np.ndarray:
        self._check(tokens, state)
        return self.model.forward(tokens, state, **kwargs)

    def forward_batch(self, batch: Any, *, want: Any = None) -> np.ndarray:
        for tokens, state in batch:
            self._check(tokens, state)
        return np.stack([self.model.forward(t, s) for t, s in batch])

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)


def test_memory_running_out_refuses_a_prompt_and_ends_a_decoding_answer(llm: LLM) -> None:
    """States that cannot grow past 10 positions: a 40-token prompt is refused with 503
    insufficient_memory (the memory may free up: retry), and beside it a 4-token prompt's
    answer stops at the 10th position with finish_reason "length", as alone up to there."""
    alone = llm.generate([7, 8, 9, 10], max_tokens=20, **GREEDY).tokens
    scheduler = Scheduler(llm.with_model(Starved(llm.model, 10)), max_batch=2, max_queue=0)
    try:
        long_events: list[Any] = []
        waiter = threading.Thread(target=lambda: long_events.extend(scheduler.submit(
            Job("completion", list(range(100, 140)), {"max_tokens": 4, **GREEDY}))))  # fmt: skip
        waiter.start()
        events = list(
            scheduler.submit(Job("completion", [7, 8, 9, 10], {"max_tokens": 20, **GREEDY}))
        )
        waiter.join()
        kind, error = long_events[-1]
        assert kind == "error" and error.status == 503 and error.code == "insufficient_memory"
        assert "cannot grow to 40" in error.message
        deltas = [value for kind, value in events if kind == "delta"]
        tokens = [d.token for d in deltas if d.token is not None]
        assert tokens == alone[:7]  # the prompt's 4 positions and 6 decoded: 10
        assert deltas[-1].finish_reason == "length" and events[-1] == ("done", None)
    finally:
        scheduler.close()


def test_close_ends_running_jobs(llm: LLM) -> None:
    scheduler = Scheduler(llm, max_batch=2)
    job = Job("completion", [7, 8], {"max_tokens": 250, **GREEDY})
    events = scheduler.submit(job)
    assert next(events)[0] == "delta"
    scheduler.close()
    assert [kind for kind, _ in events][-1] in ("done", "error")
    assert scheduler.active == 0
    with pytest.raises(ValueError):
        Scheduler(llm, max_batch=0)


class CountingPacer:
    def __init__(self) -> None:
        self.calls: list[int] = []

    def before_forward(self, n: int) -> None:
        self.calls.append(n)

    def after_forward(self, n: int) -> None:
        pass


def test_a_batched_step_is_paced_as_one_pass(llm: LLM) -> None:
    pacer = CountingPacer()
    paced = PacedModel(llm.model, pacer)
    states = [llm.model.new_state() for _ in range(3)]
    out = paced.forward_batch([([1, 2], states[0]), ([3], states[1]), ([4], states[2])])
    assert out.shape[0] == 3 and pacer.calls == [2]  # one pass, its longest sequence
    np.testing.assert_array_equal(out[1], llm.model.forward([3], llm.model.new_state()))


def test_step_cost_learns_what_a_prompt_token_adds() -> None:
    cost = StepCost()
    assert cost.chunk(4, 1.0, 64) == 4  # nothing measured: a token as dear as a sequence
    cost.record(4, 0, 0.040)  # 4 decoding sequences: 40 ms
    assert cost.chunk(4, 1.0, 64) == 4 and cost.chunk(4, 0.1, 64) == 1
    assert cost.decode_seconds(2) == pytest.approx(0.020)  # scaled from the nearest size
    cost.record(1, 0, 0.025)
    assert cost.decode_seconds(2) == pytest.approx(0.050)  # nearest is 1 (ties: the smaller)
    for _ in range(30):
        cost.record(4, 8, 0.040 + 8 * 0.0025)  # a prompt token adds 2.5 ms
    assert cost.per_token == pytest.approx(0.0025)
    assert cost.chunk(4, 1.0, 64) == 16 and cost.chunk(4, 1.0, 10) == 10
    assert cost.chunk(1, 1.0, 64) == 10  # 25 ms / 2.5 ms
    cost.record(4, 8, 0.039)  # noise: a step faster than decode alone never makes tokens free
    assert cost.per_token is not None and cost.per_token > 0


def test_a_step_waits_for_stragglers_about_as_long_as_a_step_takes(llm: LLM) -> None:
    scheduler = Scheduler(llm, max_batch=2)
    try:
        assert scheduler.gather_seconds() == scheduler_module.GATHER_SECONDS  # nothing measured
        scheduler._step_seconds = 0.001  # fast steps: never less than the floor
        assert scheduler.gather_seconds() == scheduler_module.GATHER_SECONDS
        scheduler._step_seconds = 0.25  # a slow machine: a straggler is worth a step's wait
        assert scheduler.gather_seconds() == pytest.approx(0.25)
    finally:
        scheduler.close()
