#!/usr/bin/env python3
"""The model-size curve (0.8B -> 2B -> 4B -> 9B at 4 bits): one JSON, a markdown table and a
plot from `compare_peers.py run` and `compare_peers.py export` records, per size.

    python tools/size_curve.py --threads 2 \\
        --run 0.8b=run-0.8b.json --export 0.8b=export-0.8b.json \\
        --run 4b=run-4b.json --export 4b=export-4b-ours.json --export 4b=export-4b-llama.json \\
        --json docs/size-curve.json --markdown size-curve.md --png docs/size-curve.png

Speed rows come from the `run` record's rows at `--threads` (the group given by `--group`,
default q4); export rows from every `export` record of that size (engines merged, so ours and
llama.cpp's may come from two records of the same session). Parameters are the text model's
(the MTP head left out, as both exporters do).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from qwen_edge.export import presets
from qwen_edge.formats.config import ModelConfig

ENGINE_NAMES = {"native": "qwen-edge", "python": "qwen-edge (numba)", "llama": "llama.cpp"}


def parameters(size: str) -> int:
    cfg = ModelConfig.from_hf(presets.hf_config(size))
    total = 0
    for shape in cfg.text_tensor_shapes().values():
        n = 1
        for s in shape:
            n *= s
        total += n
    return total


def pairs(items: list[str] | None) -> list[tuple[str, Path]]:
    out = []
    for item in items or []:
        size, sep, path = item.partition("=")
        if not sep:
            raise SystemExit(f"expected SIZE=FILE, got {item!r}")
        out.append((size, Path(path)))
    return out


def collect(a: argparse.Namespace) -> dict[str, Any]:
    sizes: dict[str, dict[str, Any]] = {}
    for size, path in pairs(a.run):
        rec = json.loads(path.read_text())
        entry = sizes.setdefault(size, {"speed": {}, "export": {}})
        entry["run_record"] = {"file": path.name, "time": rec.get("time"),
                               "read_bandwidth_gbs": rec.get("read_bandwidth_gbs")}  # fmt: skip
        for row in rec["rows"]:
            if row["group"] != a.group or row["threads"] != a.threads:
                continue
            entry["speed"][row["engine"]] = {
                "file_bytes": row["file_bytes"],
                "prefill_tok_s": row["prefill_tok_s"],
                "decode_tok_s": row["decode_tok_s"],
                "peak_rss_bytes": row["peak_rss_bytes"],
                "load_s": row["load_s"]["mean"],
            }
    for size, path in pairs(a.export):
        rec = json.loads(path.read_text())
        entry = sizes.setdefault(size, {"speed": {}, "export": {}})
        for engine, e in rec["engines"].items():
            entry["export"][ENGINE_NAMES.get(engine, engine)] = {
                "wall_s": e["wall_s"]["mean"],
                "cpu_s": e["cpu_s"]["mean"],
                "peak_rss_bytes": e["peak_rss_bytes"],
                "file_bytes": e["file_bytes"],
                "recipe_or_type": rec["recipe"] if engine != "llama" else rec["llama_type"],
                "llama_outtype": rec.get("llama_outtype", "bf16") if engine == "llama" else None,
                "load_average": rec.get("load_average"),
                "time": rec.get("time"),
            }
    order = ["0.8b", "2b", "4b", "9b"]
    for size, entry in sizes.items():
        entry["parameters"] = parameters(size)
        ours, llama = entry["speed"].get("qwen-edge"), entry["speed"].get("llama.cpp")
        if ours and llama:
            entry["ratios"] = {
                k: ours[k]["mean"] / llama[k]["mean"] for k in ("prefill_tok_s", "decode_tok_s")
            }
        eo, el = entry["export"].get("qwen-edge"), entry["export"].get("llama.cpp")
        if eo and el:
            entry.setdefault("ratios", {}).update(
                {
                    "export_wall": eo["wall_s"] / el["wall_s"],
                    "export_cpu": eo["cpu_s"] / el["cpu_s"],
                    "export_peak_rss": eo["peak_rss_bytes"] / el["peak_rss_bytes"],
                }
            )
    return {
        "schema": "qwen-edge-size-curve/1",
        "threads": a.threads,
        "group": a.group,
        "command": " ".join(sys.argv),
        "sizes": {s: sizes[s] for s in sorted(sizes, key=lambda s: order.index(s))},
    }


def markdown(rec: dict[str, Any]) -> str:
    lines = [
        "| size | params | engine | file MB | prefill tok/s | decode tok/s | peak RSS MB | "
        "prefill vs llama.cpp | decode vs llama.cpp | export wall s | export CPU s | "
        "export peak RSS MB | export CPU vs llama.cpp |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for size, e in rec["sizes"].items():
        r = e.get("ratios", {})
        for engine in ("qwen-edge", "llama.cpp"):
            s, x = e["speed"].get(engine), e["export"].get(engine)
            if not s and not x:
                continue
            ours = engine == "qwen-edge"
            cells = [size, f"{e['parameters'] / 1e9:.2f}B", engine]
            if s:
                cells += [
                    f"{s['file_bytes'] / 1e6:.0f}",
                    f"{s['prefill_tok_s']['mean']:.1f} ± {s['prefill_tok_s']['std']:.1f}",
                    f"{s['decode_tok_s']['mean']:.2f} ± {s['decode_tok_s']['std']:.2f}",
                    f"{s['peak_rss_bytes'] / 1e6:.0f}",
                ]
            else:
                cells += [f"{x['file_bytes'] / 1e6:.0f}" if x else "", "", "", ""]
            cells += [
                f"{r['prefill_tok_s']:.2f}x" if ours and "prefill_tok_s" in r else "",
                f"{r['decode_tok_s']:.2f}x" if ours and "decode_tok_s" in r else "",
            ]
            if x:
                cells += [
                    f"{x['wall_s']:.0f}",
                    f"{x['cpu_s']:.0f}",
                    f"{x['peak_rss_bytes'] / 1e6:.0f}",
                ]
            else:
                cells += ["", "", ""]
            cells.append(f"{r['export_cpu']:.2f}x" if ours and "export_cpu" in r else "")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rec: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def file_gb(e: dict[str, Any], g: str) -> float | None:
        row = e["speed"].get(g) or e["export"].get(g)
        return row["file_bytes"] / 1e9 if row else None

    panels = [
        ("prefill tok/s", lambda e, g: e["speed"].get(g, {}).get("prefill_tok_s", {}).get("mean")),
        ("decode tok/s", lambda e, g: e["speed"].get(g, {}).get("decode_tok_s", {}).get("mean")),
        ("file GB", file_gb),
        ("export CPU s", lambda e, g: e["export"].get(g, {}).get("cpu_s")),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    for ax, (title, get) in zip(axes, panels, strict=True):
        for engine, style in (("qwen-edge", "o-"), ("llama.cpp", "s--")):
            xs, ys = [], []
            for e in rec["sizes"].values():
                y = get(e, engine)
                if y:
                    xs.append(e["parameters"] / 1e9)
                    ys.append(y)
            if xs:
                ax.plot(xs, ys, style, label=engine)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("parameters (B, text model)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"Qwen3.5 sizes at 4 bits (q4 vs Q4_0), {rec['threads']} threads")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", action="append", metavar="SIZE=JSON")
    p.add_argument("--export", action="append", metavar="SIZE=JSON")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--group", default="q4")
    p.add_argument("--json")
    p.add_argument("--markdown")
    p.add_argument("--png")
    a = p.parse_args(argv)
    rec = collect(a)
    table = markdown(rec)
    print(table)
    if a.json:
        Path(a.json).write_text(json.dumps(rec, indent=2) + "\n")
    if a.markdown:
        Path(a.markdown).write_text(table + "\n")
    if a.png:
        plot(rec, Path(a.png))
    return 0


if __name__ == "__main__":
    sys.exit(main())
