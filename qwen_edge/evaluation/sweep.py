"""`qwen-edge bench --sweep`: benchmarks over models (recipes), thread counts, context lengths
and power budgets, one JSON line per setting.

Each line is a flat, self-describing row (`ROW_SCHEMA`, fields in docs/energy.md) that
`qwen-edge report` plots; the peer harness (`tools/power_peers.py`) writes the same rows for
llama.cpp, so both land in one report. Rows are appended and flushed as they are measured, so an
interrupted sweep keeps what it measured.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .bench import BenchConfig, Loader, Power, _native_loader, git_commit, governed_decode
from .bench import run as bench_run

ROW_SCHEMA = "qwen-edge-sweep/1"


@dataclass(frozen=True)
class SweepConfig:
    """The grid: every model × context × thread count, then every budget per model × context
    (governed runs choose their own threads, up to the largest count)."""

    models: tuple[str, ...]
    threads: tuple[int, ...] = (1, 2)
    contexts: tuple[int, ...] = (16,)  # tokens already in the context when decoding
    budgets: tuple[float, ...] = ()
    bench: BenchConfig = field(
        default_factory=lambda: BenchConfig(repetitions=1, warmup=1, measure_bandwidth=False)
    )


def base_row(engine: str, model: str, recipe: str | None, power: Power | None) -> dict[str, Any]:
    """The fields every row has (the peer harness fills the same)."""
    return {
        "schema": ROW_SCHEMA,
        "engine": engine,
        "model": Path(model).name,
        "recipe": recipe,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git_commit": git_commit(),
        "sensor": str(power.monitor.sensor.spec) if power is not None else None,
        "idle_w": power.idle_w if power is not None else None,
        "threads": None,
        "context": None,
        "budget_w": None,
        "prefill_tok_s": None,
        "decode_tok_s": None,
        "prefill": None,
        "decode": None,
        "governed": None,
    }


def sweep(
    cfg: SweepConfig, power: Power | None = None, load: Loader = _native_loader
) -> Iterator[dict[str, Any]]:
    """Yields one row per setting of the grid."""
    for model in cfg.models:
        for context in cfg.contexts:
            for n in cfg.threads:
                bench = replace(cfg.bench, threads=(n,), decode_prompt=context, budget_w=None,
                                tokens_per_s=None)  # fmt: skip
                record = bench_run(model, bench, power, load)
                r = record["runs"][0]
                row = base_row("qwen-edge", model, record["model"].get("recipe"), power)
                row.update(
                    threads=n,
                    context=context,
                    prefill_tok_s=r["prefill_tok_s_mean"],
                    decode_tok_s=r["decode_tok_s_mean"],
                    isa=r["isa"],
                )
                for phase, values in r.get("power", {}).items():
                    row[phase] = values["mean"]
                if power is not None:
                    row["throttled"] = record["power"]["throttled"]
                    row["max_temperature_c"] = record["power"]["max_temperature_c"]
                yield row
            if power is None:
                continue
            for budget in cfg.budgets:
                bench = replace(cfg.bench, decode_prompt=context, budget_w=budget)
                report = governed_decode(Path(model), bench, power, max(cfg.threads), load)
                row = base_row("qwen-edge", model, None, power)
                row.update(
                    threads=max(cfg.threads),
                    context=context,
                    budget_w=budget,
                    decode_tok_s=report["tokens_per_s"],
                    decode=report["energy"],
                    governed=report,
                )
                yield row


def write_rows(rows: Iterator[dict[str, Any]], path: str | Path,
               on_row: Callable[[dict[str, Any]], None] | None = None) -> int:  # fmt: skip
    """Appends rows to a JSON lines file as they come; returns how many."""
    n = 0
    with open(path, "a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
            f.flush()
            n += 1
            if on_row is not None:
                on_row(row)
    return n


def read_rows(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """The rows of JSON lines files (other lines, e.g. truncated ones, are skipped)."""
    rows = []
    for path in paths:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and row.get("schema") == ROW_SCHEMA:
                rows.append(row)
    return rows
