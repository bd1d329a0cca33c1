"""Child processes for the stop-path tests: start one, signal it at a random moment, and check
that it ended the way a clean stop ends (its exit code, no abort, no traceback).

`KILLS` is how many times each stop path is tried (`QWEN_EDGE_KILLS` overrides it; the
documented longer runs in docs/reliability.md set it higher, and `QWEN_EDGE_KILLS_LOG` names a
file that gets one line per try).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

KILLS = int(os.environ.get("QWEN_EDGE_KILLS", "10"))
LOG = os.environ.get("QWEN_EDGE_KILLS_LOG")  # a file to append one line per try to
# What a crash looks like on stderr: a C++ terminate, glibc's abort, a sanitizer, a traceback.
CRASH_MARKS = (
    "terminate called", "Aborted", "Fatal Python error", "Segmentation fault", "Traceback",
    "core dumped", "AddressSanitizer", "runtime error:",
)  # fmt: skip


def qwen_edge(*args: str | Path) -> list[str]:
    """The command line of `qwen-edge ARGS` in this interpreter."""
    return [sys.executable, "-m", "qwen_edge", *map(str, args)]


@dataclass
class Ended:
    """How a child ended: its exit code (negative: killed by that signal) and its output."""

    code: int
    stdout: str
    stderr: str
    delay: float  # seconds after start the signal was sent (or -1: it ended before)

    def crash(self) -> str | None:
        """The crash mark found on stderr, if any."""
        return next((m for m in CRASH_MARKS if m in self.stderr), None)

    def describe(self) -> str:
        tail = self.stderr[-3000:]
        return f"exit {self.code} after a signal at {self.delay:.2f} s; stderr:\n{tail}"


def start(args: list[str], **kwargs: object) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"}
    # Not the repository root: `python -m qwen_edge` there would import the source tree, which
    # has no built core when the package was installed with `pip install .` (as CI does).
    kwargs.setdefault("cwd", Path(__file__).resolve().parent)
    return subprocess.Popen(  # type: ignore[call-overload,no-any-return]
        args, stdin=kwargs.pop("stdin", subprocess.DEVNULL), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, errors="replace", env=env, **kwargs,
    )  # fmt: skip


def wait_for_line(proc: subprocess.Popen[str], mark: str, timeout: float = 120.0) -> str:
    """Reads stdout until a line containing `mark` (the child says it is ready)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if mark in line:
            return line
    proc.kill()
    _, err = proc.communicate()
    raise AssertionError(f"child never printed {mark!r}; stdout {seen[-5:]}; stderr:\n{err}")


def signal_after(
    proc: subprocess.Popen[str], signum: int, delay: float, timeout: float = 120.0
) -> Ended:
    """Sends `signum` `delay` seconds from now (unless the child has ended) and waits."""
    time.sleep(delay)
    sent = -1.0
    if proc.poll() is None:
        proc.send_signal(signum)
        sent = delay
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # SIGABRT first: faulthandler (PYTHONFAULTHANDLER, set by start()) prints every thread's
        # Python stack, which says where it hung; SIGKILL if even that does not end it.
        proc.send_signal(signal.SIGABRT)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        raise AssertionError(
            f"child did not stop within {timeout} s of signal {signum} (a signal at {delay:.2f} s;"
            f" {len(out)} characters on stdout); its stacks at SIGABRT, on stderr:\n{err[-6000:]}"
        ) from None
    ended = Ended(proc.returncode, out, err, sent)
    if LOG:  # one line per try, for the long documented runs (watch them progress)
        with open(LOG, "a") as f:
            print(f"{' '.join(map(str, proc.args[1:4]))}\tsignal {signum}\tat {sent:.2f}"
                  f"\texit {ended.code}\tcrash {ended.crash()}", file=f)  # fmt: skip
    return ended


def delays(n: int, low: float, high: float, seed: int) -> list[float]:
    """`n` random moments in [low, high) seconds, fixed by `seed` (printed by failing tests)."""
    rng = random.Random(seed)
    return [rng.uniform(low, high) for _ in range(n)]


def exit_code_of(signum: int) -> int:
    """The exit code of a clean stop on `signum`: 130 for Ctrl-C, 143 for SIGTERM."""
    return 128 + int(signum)


__all__ = [
    "KILLS", "Ended", "delays", "exit_code_of", "qwen_edge", "signal", "signal_after", "start",
    "wait_for_line",
]  # fmt: skip
