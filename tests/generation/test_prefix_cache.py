"""The prefix-state cache: hits, misses, least-recently-used eviction by bytes, and the same
answers with and without it (a shared system prompt, a multi-turn chat)."""

from __future__ import annotations

from pathlib import Path

import pytest

from qwen_edge.generation.llm import LLM, chat_boundaries, load
from qwen_edge.generation.prefix_cache import PrefixCache

GREEDY = {"temperature": 0.0, "presence_penalty": 0.0}
IM_START = 248_045


class Snap:
    """A stand-in snapshot of a given size."""

    def __init__(self, size: int):
        self.cache_bytes = size


def test_hit_miss_longest_prefix() -> None:
    cache = PrefixCache(1000)
    assert cache.lookup([1, 2, 3]) is None
    a, b = Snap(10), Snap(10)
    assert cache.put([1, 2], a) and cache.put([1, 2, 3, 4], b)
    assert cache.lookup([1, 2, 3, 4, 5]) == (4, b)  # the longest
    assert cache.lookup([1, 2, 3]) == (2, a)
    assert cache.lookup([1, 2, 3, 4]) == (2, a)  # a whole prompt leaves nothing to evaluate
    assert cache.lookup([1, 2]) is None and cache.lookup([2, 1, 3]) is None
    assert cache.stats()["hits"] == 3 and cache.stats()["misses"] == 3
    assert cache.bytes == 20 and len(cache) == 2


def test_lru_eviction_by_bytes() -> None:
    cache = PrefixCache(100)
    for i in range(3):
        cache.put([i, 0], Snap(40))  # the third evicts the first
    assert [0, 0] not in cache and [1, 0] in cache and [2, 0] in cache
    assert cache.bytes == 80 and cache.stats()["evictions"] == 1
    cache.lookup([1, 0, 5])  # [1, 0] is now the most recently used
    cache.put([3, 0], Snap(40))
    assert [2, 0] not in cache and [1, 0] in cache and [3, 0] in cache
    assert not cache.put([9], Snap(101))  # larger than the whole budget: not kept
    assert cache.bytes == 80
    off = PrefixCache(0)
    assert not off.enabled and not off.put([1], Snap(1)) and off.lookup([1, 2]) is None
    with pytest.raises(ValueError):
        PrefixCache(-1)


def test_usable_snapshots_and_replacing() -> None:
    # a speculating prompt resumes only from snapshots with the MTP head's part, and its own
    # snapshot of a prefix replaces a plain one (the bytes follow)
    cache = PrefixCache(1000)
    plain, with_head = Snap(10), Snap(30)
    with_head.mtp_ready = True
    cache.put([1, 2], with_head)
    cache.put([1, 2, 3], plain)
    ready = lambda snap: getattr(snap, "mtp_ready", False)  # noqa: E731
    assert cache.lookup([1, 2, 3, 4]) == (3, plain)
    assert cache.lookup([1, 2, 3, 4], usable=ready) == (2, with_head)
    assert cache.lookup([1, 2], usable=ready) is None
    assert cache.put([1, 2, 3], Snap(5)) and cache.lookup([1, 2, 3, 4]) == (3, plain)
    newer = Snap(50)
    newer.mtp_ready = True
    assert cache.put([1, 2, 3], newer, replace=True)
    assert cache.lookup([1, 2, 3, 4], usable=ready) == (3, newer)
    assert cache.bytes == 80 and len(cache) == 2


def test_chat_boundaries() -> None:
    s = IM_START
    assert chat_boundaries([s, 1, 2, s, 3, s, 4]) == [3, 5]
    assert chat_boundaries([s, 1, s, 2]) == [2]
    assert chat_boundaries([1, 2, 3]) == []


@pytest.fixture(scope="module")
def models(tiny_chat_checkpoint: Path) -> tuple[LLM, LLM]:
    return load(tiny_chat_checkpoint), load(tiny_chat_checkpoint, cache_mb=0)


def test_same_answers_with_and_without_the_cache(models: tuple[LLM, LLM]) -> None:
    cached, plain = models
    system = {"role": "system", "content": "You are a terse assistant. " * 20}
    for question in ("Hi there", "What is a gateway?", "Hi there"):
        messages = [system, {"role": "user", "content": question}]
        a = cached.chat(messages, max_tokens=6, **GREEDY)
        b = plain.chat(messages, max_tokens=6, **GREEDY)
        assert a.tokens == b.tokens and b.stats.num_cached_tokens == 0
    # every request after the first resumed at least from the system prompt
    assert a.stats.num_cached_tokens > 100
    # a multi-turn chat resumes after the previous turn
    history = [system, {"role": "user", "content": "Hello"}]
    first = cached.chat(history, max_tokens=4, **GREEDY)
    history += [{"role": "assistant", "content": first.text}, {"role": "user", "content": "More"}]
    second = cached.chat(history, max_tokens=6, **GREEDY)
    again = plain.chat(history, max_tokens=6, **GREEDY)
    assert second.tokens == again.tokens
    # ... from just before the first prompt's last <|im_start|> (its assistant header)
    last_start = max(i for i, t in enumerate(first.prompt_tokens) if t == IM_START)
    assert second.stats.num_cached_tokens == last_start
    assert len(plain.prefix_cache) == 0 and len(cached.prefix_cache) >= 3
