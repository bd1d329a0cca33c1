"""`/metrics` in the Prometheus text format (version 0.0.4), on the standard library alone.

The HTTP layer counts requests by route and status; everything about generation (tokens,
queue, batch, prefix cache, latencies) is read from the worker's `stats()` at each scrape, and
its latency samples are folded into cumulative histograms here.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Sequence
from typing import Any

PREFIX = "qwen_edge_"
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
DURATION_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class Histogram:
    """Cumulative bucket counts, their sum and count (Prometheus `histogram`)."""

    def __init__(self, buckets: Sequence[float]):
        self.bounds = tuple(buckets)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, values: Iterable[float]) -> None:
        for v in values:
            i = next((i for i, b in enumerate(self.bounds) if v <= b), len(self.bounds))
            self.counts[i] += 1
            self.sum += v

    def lines(self, name: str) -> list[str]:
        out, total = [], 0
        for bound, n in zip((*self.bounds, math.inf), self.counts, strict=True):
            total += n
            le = "+Inf" if bound == math.inf else repr(float(bound))
            out.append(f'{name}_bucket{{le="{le}"}} {total}')
        return [*out, f"{name}_sum {_number(self.sum)}", f"{name}_count {total}"]


class Metrics:
    """Request counters of the HTTP layer and the histograms of the worker's latency samples."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}
        self.ttft = Histogram(TTFT_BUCKETS)
        self.itl = Histogram(ITL_BUCKETS)
        self.duration = Histogram(DURATION_BUCKETS)

    def count_request(self, route: str, status: int, seconds: float) -> None:
        with self._lock:
            key = (route, status)
            self.requests[key] = self.requests.get(key, 0) + 1
            self.duration.observe([seconds])

    def render(self, stats: dict[str, Any], in_flight: int, ready: bool) -> str:
        """The exposition text of everything, with the worker's `stats()` of this scrape."""
        with self._lock:
            self.ttft.observe(stats.get("ttft_seconds", ()))
            self.itl.observe(stats.get("itl_seconds", ()))
            out: list[str] = []

            def family(name: str, kind: str, help: str, lines: list[str]) -> None:
                out.extend([f"# HELP {PREFIX}{name} {help}", f"# TYPE {PREFIX}{name} {kind}"])
                out.extend(PREFIX + line for line in lines)

            family(
                "requests_total", "counter", "HTTP requests answered, by route and status.",
                [f'requests_total{{route="{r}",status="{s}"}} {n}'
                 for (r, s), n in sorted(self.requests.items())],
            )  # fmt: skip
            family(
                "request_duration_seconds", "histogram",
                "Time from a request's arrival to the end of its answer.",
                self.duration.lines("request_duration_seconds"),
            )  # fmt: skip
            for name, key, help in (
                ("prompt_tokens_total", "prompt_tokens", "Prompt tokens of finished generations."),
                ("completion_tokens_total", "completion_tokens", "Tokens generated."),
                ("prefix_cache_hits_total", "prefix_cache_hits",
                 "Generations that resumed from a cached prompt prefix."),
                ("prefix_cache_tokens_total", "prefix_cache_tokens",
                 "Prompt tokens not recomputed thanks to the prefix cache."),
                ("speculative_requests_total", "speculative_requests",
                 "Generations that drafted with the MTP head (serve --speculative mtp)."),
                ("speculative_rounds_total", "speculative_rounds",
                 "Verification forwards of speculating generations."),
                ("speculative_drafted_tokens_total", "speculative_drafted_tokens",
                 "Tokens the MTP head drafted and a verification judged."),
                ("speculative_accepted_tokens_total", "speculative_accepted_tokens",
                 "Drafted tokens the verification kept (acceptance = accepted / drafted)."),
            ):  # fmt: skip
                family(name, "counter", help, [f"{name} {_number(stats.get(key, 0))}"])
            for name, value, help in (
                ("queue_depth", stats.get("queue_depth", 0), "Requests waiting for the model."),
                ("active_sequences", stats.get("active", 0), "Sequences being generated."),
                ("max_batch", stats.get("max_batch", 1), "Sequences one model step can hold."),
                ("batch_occupancy", stats.get("batch_occupancy", 0.0),
                 "Mean sequences per model step since the previous scrape."),
                ("in_flight_requests", in_flight, "HTTP requests being answered."),
                ("ready", int(ready), "1 when the server admits requests (model loaded, "
                 "not draining)."),
            ):  # fmt: skip
                family(name, "gauge", help, [f"{name} {_number(value)}"])
            family(
                "time_to_first_token_seconds", "histogram",
                "Time from a request's arrival at the model to its first token.",
                self.ttft.lines("time_to_first_token_seconds"),
            )  # fmt: skip
            family(
                "inter_token_latency_seconds", "histogram", "Time between two tokens of a stream.",
                self.itl.lines("inter_token_latency_seconds"),
            )  # fmt: skip
            return "\n".join(out) + "\n"


def _number(v: float) -> str:
    return str(v) if isinstance(v, int) else repr(float(v))
