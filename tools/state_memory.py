#!/usr/bin/env python3
"""State memory against context length for the Qwen3.5 shapes (0.8B .. 9B): fp16, int8 and
4-bit KV.

The numbers are the native core's own `State::bytes_for` (what a state allocates: the KV cache
of the full-attention layers, the DeltaNet conv and recurrent states, and the forward pass's
scratch), so no model file is needed:

    python tools/state_memory.py --json state-memory.json --markdown state-memory.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from qwen_edge.backends.native import state_bytes_for
from qwen_edge.export import presets
from qwen_edge.formats.config import ModelConfig

CONTEXTS = (1024, 4096, 16384, 65536, 131072, 262144)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", default="0.8b,2b,4b,9b")
    p.add_argument("--contexts", default=",".join(map(str, CONTEXTS)))
    p.add_argument("--threads", type=int, default=4, help="threads (attention scratch per thread)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--json")
    p.add_argument("--markdown")
    a = p.parse_args(argv)
    contexts = [int(c) for c in a.contexts.split(",")]
    rows = []
    for name in a.presets.split(","):
        cfg = ModelConfig.from_hf(presets.hf_config(name))
        for kv in ("f16", "q8", "q4"):
            sizes = {
                c: state_bytes_for(cfg, c, kv, batch=a.batch, threads=a.threads) for c in contexts
            }
            rows.append({"preset": name, "kv_cache": kv, "bytes": sizes})
    record = {"threads": a.threads, "batch": a.batch, "contexts": contexts, "rows": rows}
    if a.json:
        Path(a.json).write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        "| model | KV | " + " | ".join(f"{c // 1024}k" for c in contexts) + " |",
        "|---|---|" + "---|" * len(contexts),
    ]
    for r in rows:
        cells = " | ".join(f"{r['bytes'][c] / 2**20:,.0f} MiB" for c in contexts)
        lines.append(f"| {r['preset']} | {r['kv_cache']} | {cells} |")
    text = "\n".join(lines) + "\n"
    if a.markdown:
        Path(a.markdown).write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
