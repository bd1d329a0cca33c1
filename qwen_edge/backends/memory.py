"""How much memory a native state may take: the longest context that fits a budget, the check
before a state is allocated, and the check before it grows.

A state's cache pages are mapped, not written, when it is allocated, so the check at allocation
cannot see what states made since, or other processes, take meanwhile. A state therefore grows
only while the memory of its next GROWTH_AHEAD tokens is available (read once per GROWTH_AHEAD
tokens), and a prompt or answer that cannot grow gets a clear error instead of the OOM killer.
Available memory is `boards.mem_available_bytes`: MemAvailable, or a container's cgroup limit.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import ContextLengthError, MemoryLimitError
from ..hardware.boards import mem_available_bytes

GROWTH_AHEAD = 1024

# Bytes a state for a context of that many tokens takes (`Model.state_bytes`).
StateBytes = Callable[[int], int]


def longest_context(state_bytes: StateBytes, limit: int, budget: int) -> int:
    """The longest context up to `limit` whose state fits in `budget` bytes (0 if none does).
    A state grows with its context (linearly, plus attention scratch up to one tile), so a
    binary search finds it."""
    lo, hi = 0, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if state_bytes(mid) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def fitting_context(state_bytes: StateBytes, limit: int, share: float) -> int:
    """The longest context up to `limit` whose state fits `share` of the memory available now
    (`--context max`); the rest is left to the system and to the state's growth checks.

    Raises:
        ContextLengthError: not even a one-token state fits, or available memory is unknown.
    """
    available = mem_available_bytes()
    if available is None:
        raise ContextLengthError(
            "cannot tell how much memory is available (no /proc/meminfo): give --context N"
        )
    fits = longest_context(state_bytes, limit, int(available * share))
    if fits < 1:
        raise ContextLengthError(
            f"no state fits: only {available / 2**20:.0f} MiB of memory is available"
        )
    return fits


# The next smaller KV cache a message can suggest, by cache type.
SMALLER_KV_CACHE = {"f32": "q8", "f16": "q8", "q8": "q4"}


def check_new_state(state_bytes: StateBytes, limit: int, context: int, kv_cache: str) -> None:
    """Raises ContextLengthError when a state for `context` tokens would not fit the memory
    available now, saying how many tokens would."""
    need = state_bytes(context)
    available = mem_available_bytes()
    if available is not None and need > available:
        fits = longest_context(state_bytes, limit, available)
        raise ContextLengthError(
            f"a state for {context} tokens needs {need / 2**20:.0f} MiB "
            f"({kv_cache} KV cache) but only {available / 2**20:.0f} MiB of memory is "
            f"available; use a smaller --context (at most {fits} tokens fit now)"
            + (
                f" or --kv-cache {SMALLER_KV_CACHE[kv_cache]}"
                if kv_cache in SMALLER_KV_CACHE
                else ""
            )
        )


def check_growth(
    state_bytes: StateBytes,
    kv_cache: str,
    *,
    end: int,
    resident: int,
    checked: int,
    context: int,
) -> int:
    """Before a state grows to `end` tokens: returns the position up to which memory is now
    known to be there (`checked` when `end` is within it). Where `end` passes `checked`, reads
    the memory available and checks that it holds the cache rows (those past `resident`, the
    rows already written) up to GROWTH_AHEAD tokens past `end`, or at least up to `end`.

    Raises:
        MemoryLimitError: not even the rows up to `end` fit.
    """
    if end <= checked:
        return checked
    available = mem_available_bytes()
    if available is None:  # not Linux: nothing to check against
        return context
    held = state_bytes(max(1, resident))
    ahead = min(context, end + GROWTH_AHEAD)
    if state_bytes(ahead) - held <= available:
        return ahead
    need = state_bytes(end) - held
    if need > available:
        raise MemoryLimitError(
            f"the state cannot grow to {end} tokens: their cache needs {need / 2**20:.0f} "
            f"MiB more but only {available / 2**20:.0f} MiB of memory is available"
            + (
                f"; --kv-cache {SMALLER_KV_CACHE[kv_cache]} needs less"
                if kv_cache in SMALLER_KV_CACHE
                else ""
            )
        )
    return end
