#!/usr/bin/env python3
"""The model-size curve (0.8B -> 2B -> 4B -> 9B at 4 bits): one JSON, a markdown table and a
plot from `compare_peers.py run` and `compare_peers.py export` records, per size.

    python tools/size_curve.py --threads 2 \\
        --run 0.8b=run-0.8b.json --export 0.8b=export-0.8b.json \\
        --run 4b=run-4b-pp128.json --run 4b=run-4b-pp512.json --export 4b=export-4b.json \\
        --json docs/size-curve.json --markdown size-curve.md --png docs/size-curve.png

Speed rows come from each `run` record's rows at `--threads` (the group given by `--group`,
default q4), one set per prompt length: a size may have several runs at different prompt
lengths (prefill's ratio moves with it), never two at the same length. The plot draws one
line per engine and prompt length. Export rows come from every `export` record of that size
(engines merged, so ours and llama.cpp's may come from two records of the same session).
Parameters are the text model's (the MTP head left out, as both exporters do).
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
ORDER = ["0.8b", "2b", "4b", "9b"]


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
        if size not in ORDER:
            raise SystemExit(f"unknown size {size!r} (one of {', '.join(ORDER)})")
        rec = json.loads(path.read_text())
        entry = sizes.setdefault(size, {"runs": {}, "export": {}})
        prompt = int(rec["config"]["prompt"])
        key = f"pp{prompt}"
        if key in entry["runs"]:
            raise SystemExit(f"two runs of {size} at a {prompt}-token prompt: keep one")
        run: dict[str, Any] = {
            "prompt_tokens": prompt,
            "decode_tokens": int(rec["config"]["decode"]),
            "file": path.name,
            "time": rec.get("time"),
            "load_average": rec.get("load_average"),  # absent in records before 2026-12-03
            "read_bandwidth_gbs": rec.get("read_bandwidth_gbs"),
            "engines": {},
        }
        for row in rec["rows"]:
            if row["group"] != a.group or row["threads"] != a.threads:
                continue
            run["engines"][row["engine"]] = {
                # ours: the kernel table; llama.cpp: its system info (which SIMD it built for)
                "isa": row.get("isa", ""),
                "file_bytes": row["file_bytes"],
                "prefill_tok_s": row["prefill_tok_s"],
                "decode_tok_s": row["decode_tok_s"],
                "peak_rss_bytes": row["peak_rss_bytes"],
                "load_s": row["load_s"]["mean"],
            }
        if not run["engines"]:
            raise SystemExit(f"{path}: no rows of group {a.group!r} at {a.threads} threads")
        ours, llama = run["engines"].get("qwen-edge"), run["engines"].get("llama.cpp")
        if ours and llama:
            run["ratios"] = {
                k: ours[k]["mean"] / llama[k]["mean"] for k in ("prefill_tok_s", "decode_tok_s")
            }
        entry["runs"][key] = run
    for size, path in pairs(a.export):
        if size not in ORDER:
            raise SystemExit(f"unknown size {size!r} (one of {', '.join(ORDER)})")
        rec = json.loads(path.read_text())
        entry = sizes.setdefault(size, {"runs": {}, "export": {}})
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
    for entry in sizes.values():
        entry["runs"] = dict(sorted(entry["runs"].items(), key=lambda kv: kv[1]["prompt_tokens"]))
        eo, el = entry["export"].get("qwen-edge"), entry["export"].get("llama.cpp")
        if eo and el:
            entry["export_ratios"] = {
                "wall": eo["wall_s"] / el["wall_s"],
                "cpu": eo["cpu_s"] / el["cpu_s"],
                "peak_rss": eo["peak_rss_bytes"] / el["peak_rss_bytes"],
            }
    return {
        "schema": "qwen-edge-size-curve/2",
        "threads": a.threads,
        "group": a.group,
        "command": " ".join(sys.argv),
        "sizes": {
            s: dict(parameters=parameters(s), **sizes[s]) for s in sorted(sizes, key=ORDER.index)
        },
    }


def isa_tag(isa: str) -> str:
    """Our kernel table's tag as is; llama.cpp's system info reduced to its widest x86 SIMD
    (the size curve's first rows ran on an AVX2-only machine, both engines at AVX2)."""
    if "=" not in isa:
        return isa
    flags = {f.split("=")[0].strip() for f in isa.split("|") if f.strip().endswith("= 1")}
    for flag in ("AVX512_VNNI", "AVX512", "AVX_VNNI", "AVX2"):
        if flag in flags:
            return flag.lower()
    return isa[:20]


def markdown(rec: dict[str, Any]) -> str:
    lines = [
        "| size | params | prompt | engine | ISA | file MB | prefill tok/s | decode tok/s | "
        "peak RSS MB | prefill vs llama.cpp | decode vs llama.cpp | export wall s | "
        "export CPU s | export peak RSS MB | export CPU vs llama.cpp |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for size, e in rec["sizes"].items():
        runs = list(e["runs"].values()) or [None]
        for i, run in enumerate(runs):
            for engine in ("qwen-edge", "llama.cpp"):
                s = run["engines"].get(engine) if run else None
                # the export's cells once per size, on its first prompt's rows
                x = e["export"].get(engine) if i == 0 else None
                if not s and not x:
                    continue
                ours = engine == "qwen-edge"
                r = run.get("ratios", {}) if run else {}
                cells = [size, f"{e['parameters'] / 1e9:.2f}B",
                         str(run["prompt_tokens"]) if run else "", engine]  # fmt: skip
                if s:
                    cells += [
                        isa_tag(s.get("isa", "")),
                        f"{s['file_bytes'] / 1e6:.0f}",
                        f"{s['prefill_tok_s']['mean']:.1f} ± {s['prefill_tok_s']['std']:.1f}",
                        f"{s['decode_tok_s']['mean']:.2f} ± {s['decode_tok_s']['std']:.2f}",
                        f"{s['peak_rss_bytes'] / 1e6:.0f}",
                    ]
                else:
                    cells += ["", f"{x['file_bytes'] / 1e6:.0f}" if x else "", "", "", ""]
                cells += [
                    f"{r['prefill_tok_s']:.2f}x" if ours and "prefill_tok_s" in r else "",
                    f"{r['decode_tok_s']:.2f}x" if ours and "decode_tok_s" in r else "",
                ]
                if x:
                    cells += [f"{x['wall_s']:.0f}", f"{x['cpu_s']:.0f}",
                              f"{x['peak_rss_bytes'] / 1e6:.0f}"]  # fmt: skip
                else:
                    cells += ["", "", ""]
                xr = e.get("export_ratios")
                cells.append(f"{xr['cpu']:.2f}x" if ours and x and xr else "")
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rec: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for e in rec["sizes"].values() for r in e["runs"].values()]
    prompts = sorted({r["prompt_tokens"] for r in runs})
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    styles = {"qwen-edge": ("o", "-"), "llama.cpp": ("s", "--")}
    for ax, metric in zip(axes[:2], ("prefill_tok_s", "decode_tok_s"), strict=True):
        for engine, (marker, line) in styles.items():
            for j, prompt in enumerate(prompts):
                xs, ys = [], []
                for e in rec["sizes"].values():
                    s = e["runs"].get(f"pp{prompt}", {}).get("engines", {}).get(engine)
                    if s:
                        xs.append(e["parameters"] / 1e9)
                        ys.append(s[metric]["mean"])
                if xs:
                    ax.plot(xs, ys, marker + line, color=f"C{2 * j + (engine != 'qwen-edge')}",
                            label=f"{engine}, {prompt}-token prompt")  # fmt: skip
        ax.set_title(metric.replace("_tok_s", " tok/s"))
    for ax, title, key in ((axes[2], "file GB", "file_bytes"), (axes[3], "export CPU s", "cpu_s")):
        for engine, (marker, line) in styles.items():
            xs, ys = [], []
            for e in rec["sizes"].values():
                value = e["export"].get(engine, {}).get(key)
                if value is None and key == "file_bytes":
                    runs = [r["engines"][engine] for r in e["runs"].values()
                            if engine in r["engines"]]  # fmt: skip
                    value = runs[0]["file_bytes"] if runs else None
                if value:
                    xs.append(e["parameters"] / 1e9)
                    ys.append(value / 1e9 if key == "file_bytes" else value)
            if xs:
                ax.plot(xs, ys, marker + line, label=engine)
        ax.set_title(title)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("parameters (B, text model)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
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
