"""The prefix-state cache: model states after prompt prefixes, keyed by their token ids.

A hybrid model cannot cut its recurrent state back to an earlier position, so a prompt that
shares its beginning with an earlier one can only skip that beginning if the state *at the end
of the shared part* was kept. `LLM` keeps such snapshots at chat boundaries (before the second
`<|im_start|>`: after the system prompt and tools; and before the last one: after the finished
turns), and a new prompt resumes from the longest cached prefix it starts with, prefilling only
the rest. The logits are the same as without the cache (a restored state holds the bits the
prefill left).

Snapshots are compact (`State.snapshot()` on the native backend: caches up to the prefix's
length only) and evicted least-recently-used when their bytes exceed the budget. Thread-safe:
the serving scheduler's requests look up and insert concurrently.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

DEFAULT_CACHE_MB = 256.0


def snapshot_state(state: Any) -> Any:
    """A copy of `state` for keeping: compact where the backend can (`snapshot()`)."""
    return state.snapshot() if hasattr(state, "snapshot") else state.copy()


def restore_state(model: Any, snapshot: Any) -> Any:
    """A new working state of `model` equal to `snapshot` (the snapshot stays untouched)."""
    state = model.new_state()
    if hasattr(state, "restore"):
        state.restore(snapshot)
        return state
    return snapshot.copy()


def state_bytes(state: Any) -> int:
    """Bytes a snapshot holds: the native `cache_bytes`, else the sizes of its arrays."""
    if hasattr(state, "cache_bytes"):
        return int(state.cache_bytes)
    total = 0
    for value in vars(state).values():
        arrays = value.values() if isinstance(value, dict) else [value]
        total += sum(a.nbytes for a in arrays if isinstance(a, np.ndarray))
    return total


class PrefixCache:
    """Snapshots keyed by token prefixes, least-recently-used out beyond `max_bytes`.

    Args:
        max_bytes: the budget; 0 disables the cache (nothing is stored).
    """

    def __init__(self, max_bytes: int = int(DEFAULT_CACHE_MB * 2**20)):
        if max_bytes < 0:
            raise ValueError(f"the prefix cache budget must be >= 0 bytes, not {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[int, ...], tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self.hits = self.misses = self.evictions = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(
        self, ids: Sequence[int], usable: Callable[[Any], bool] | None = None
    ) -> tuple[int, Any] | None:
        """The longest cached prefix shorter than `ids` (at least one token must remain to be
        evaluated) whose snapshot is `usable` (default: any) as (its length, the snapshot), or
        None. Marks it recently used."""
        if not self.enabled:
            return None
        ids = tuple(ids)
        with self._lock:
            best: tuple[int, ...] | None = None
            for key, (snap, _) in self._entries.items():
                longer = best is None or len(key) > len(best)
                fits = len(key) < len(ids) and longer and ids[: len(key)] == key
                if fits and (usable is None or usable(snap)):
                    best = key
            if best is None:
                self.misses += 1
                return None
            self.hits += 1
            self._entries.move_to_end(best)
            return len(best), self._entries[best][0]

    def put(self, ids: Sequence[int], snapshot: Any, replace: bool = False) -> bool:
        """Keeps `snapshot` (the state after exactly `ids`), evicting the least recently used
        snapshots beyond the budget. Returns whether it was kept (one larger than the whole
        budget is not). A snapshot of the same prefix already kept stays, unless `replace`
        (a speculating prompt's snapshot also holds the MTP head's part)."""
        if not self.enabled:
            return False
        key = tuple(ids)
        size = state_bytes(snapshot)
        if size > self.max_bytes:
            return False
        with self._lock:
            if key in self._entries:
                if not replace:
                    self._entries.move_to_end(key)
                    return True
                self._bytes -= self._entries.pop(key)[1]
            self._entries[key] = (snapshot, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._bytes -= dropped
                self.evictions += 1
            return True

    def __contains__(self, ids: Sequence[int]) -> bool:
        with self._lock:
            return tuple(ids) in self._entries

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "entries": len(self._entries),
                "bytes": self._bytes,
                "max_bytes": self.max_bytes,
                "hits": self.hits,
                "misses": self.misses,
                "evictions": self.evictions,
            }
