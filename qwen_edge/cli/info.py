"""`qwen-edge info`: this machine's CPU features and kernel tables (and a board's defaults)."""

from __future__ import annotations

import argparse
import json
import sys

from ..version import __version__
from .common import add_board_argument, apply_board

HELP = "show CPU features and the kernel variants this machine runs"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    add_board_argument(p)
    p.set_defaults(threads=None)


def run(args: argparse.Namespace) -> int:
    from ..backends.native import cpu_report
    from ..hardware.boards import check_board, ram_gb

    report = {"version": __version__, "python": sys.version.split()[0], **cpu_report()}
    board = apply_board(args)
    if board is not None:
        ram = ram_gb()
        tier = board.tier(ram)
        report["board"] = board.name
        report["board_cpus"] = ", ".join(map(str, args.board_cpus or [])) or "all"
        report["board_threads"] = args.threads
        report["board_defaults"] = (
            f"{tier.model} {tier.recipe}, context {tier.context} "
            f"(RAM {f'{ram:.1f} GB' if ram else 'unknown'})"
        )
        report["board_warnings"] = check_board(board, report, report["available_isas"]) or "none"
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            shown = ", ".join(value) if isinstance(value, list) else value
            print(f"{key:<15} {shown}")
    return 0
