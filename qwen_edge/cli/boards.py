"""`qwen-edge boards`: the board profiles, or one of them in full."""

from __future__ import annotations

import argparse

HELP = "list the board profiles, or show one"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="a board name (see the list)")


def run(args: argparse.Namespace) -> int:
    from ..hardware.boards import list_boards, load_board

    if not args.name:
        for name in list_boards():
            print(f"{name:<18} {load_board(name).description}")
        return 0
    board = load_board(args.name)
    print(f"{board.name}: {board.description}")
    print(f"  cpu          {board.cores}; features {', '.join(board.features)}")
    print(f"  kernels      {board.expected_isa}")
    print(
        f"  cores        {board.cpus if board.cpus is not None else 'all'}, threads "
        f"{board.threads or 'one per core'}"
    )
    for t in board.memory:
        print(f"  RAM >= {t.min_ram_gb:>4g} GB  {t.model} {t.recipe}, context {t.context}")
    print(f"  power        {board.power} ({board.power.notes})")
    print(f"  build        {board.build_notes}")
    return 0
