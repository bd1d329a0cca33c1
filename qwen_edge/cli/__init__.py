"""The `qwen-edge` command line: dispatch only.

Each command is a module of this package with `HELP`, `add_arguments(parser)` and
`run(args) -> exit code`; this file lists them and turns the project's errors into messages and
exit codes. The command line is the only layer that prints for users, reads argv and exits.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
from collections.abc import Sequence

from ..errors import QwenEdgeError

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 128 + signal.SIGTERM


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so cleanups run (an export removes its temporary
    file) and the process ends with 143 rather than being killed mid-write."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated


# Command modules, in the order `qwen-edge --help` lists them (module name = command name).
COMMANDS = (
    "inspect", "info", "demo", "export", "eval", "run", "chat", "tokenize", "serve", "boards",
    "bench", "report",
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qwen-edge", description="Edge inference runtime for Qwen3.5 small language models."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f".{name}", __name__)
        p = sub.add_parser(name, help=module.HELP)
        module.add_arguments(p)
        p.set_defaults(func=module.run)
    return parser


def _stop_cause(e: BaseException) -> BaseException | None:
    """The KeyboardInterrupt or Terminated somewhere in e's chain of causes, if any."""
    seen: set[int] = set()
    cause: BaseException | None = e
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, (KeyboardInterrupt, Terminated)):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)  # `serve` installs its own
    try:
        try:
            return int(args.func(args))
        except SystemError as e:
            # A signal's exception raised inside a C callback (numba's first-call unpickling in
            # the Python quantizer) comes back wrapped in SystemError: it is still that stop.
            cause = _stop_cause(e)
            if cause is None:
                raise
            raise cause from None
    except Terminated:
        print("qwen-edge: terminated", file=sys.stderr)
        return EXIT_TERMINATED
    except QwenEdgeError as e:
        print(f"qwen-edge: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("qwen-edge: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`qwen-edge run ... | head`): stop quietly, and keep Python from
        # failing again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
