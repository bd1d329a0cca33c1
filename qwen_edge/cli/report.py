"""`qwen-edge report`: sweep rows (JSON lines) -> one self-contained HTML page with plots."""

from __future__ import annotations

import argparse

from ..errors import QwenEdgeError

HELP = "plot sweep results (JSON lines) into one self-contained HTML page"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", nargs="+", help="JSON lines files from bench --sweep or peers")
    p.add_argument("-o", "--out", default="report.html", help="the HTML page (default report.html)")
    p.add_argument("--png-dir", help="also write the plots as PNG files into this folder")
    p.add_argument("--title", default="qwen-edge energy report")


def run(args: argparse.Namespace) -> int:
    from ..evaluation import report, sweep

    try:
        rows = sweep.read_rows(args.results)
    except OSError as e:
        raise QwenEdgeError(f"cannot read {e.filename}: {e.strerror}") from None
    if not rows:
        raise QwenEdgeError(
            f"no {sweep.ROW_SCHEMA} rows in {', '.join(args.results)} (make them with "
            "`qwen-edge bench --sweep --power`)"
        )
    written = report.write_report(rows, args.out, args.png_dir, args.title)
    if not written["plots"]:
        print("note: no plots (matplotlib missing: pip install 'qwen-edge[report]')")
    print(
        f"wrote {written['html']} ({len(rows)} rows"
        + (f", {len(written['pngs'])} PNGs in {args.png_dir})" if args.png_dir else ")")
    )
    return 0
