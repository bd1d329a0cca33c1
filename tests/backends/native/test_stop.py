"""Stopping native work: `Model.stop()` ends a forward pass at a layer boundary, an interrupted
state refuses to continue until reset, and an embedding process whose daemon thread is inside
the core when the interpreter exits ends with its exit code, never an abort."""

from __future__ import annotations

import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from processes import KILLS, delays, signal, signal_after, start

from qwen_edge.errors import ModelStoppedError

native = pytest.importorskip("qwen_edge.backends.native")
if not native.available():
    pytest.skip("the native core is not built", allow_module_level=True)

LONG = 3000  # prompt tokens: a few hundred ms of prefill on the tiny model
# Prompt tokens of the embedding's passes: short, so passes end (and want the GIL back) every few
# milliseconds, as decode steps do; without the shutdown in backends/native.py this aborted
# the process in 12 of 12 tries ("terminate called without an active exception").
SHORT = 64


def _long_forward(model: native.Model) -> Callable[[], None]:
    ids = np.arange(LONG, dtype=np.int32) % model.config.vocab_size

    def run() -> None:
        model.forward(ids, model.new_state(LONG))

    return run


def test_stop_ends_a_running_forward_and_later_ones(tiny_model_file: Callable[[str], Path]) -> None:
    model = native.Model.load(tiny_model_file("q8"), threads=2, context=LONG)
    errors: list[BaseException] = []
    started = threading.Event()

    def loop() -> None:
        started.set()
        try:
            while True:
                _long_forward(model)()
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=loop)
    t.start()
    started.wait()
    time.sleep(0.05)
    model.stop()
    t.join(timeout=60)
    assert not t.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], ModelStoppedError), errors
    with pytest.raises(ModelStoppedError):
        model.forward([1], model.new_state(8))


EMBEDDING = textwrap.dedent(
    """
    import sys, threading, time
    import numpy as np
    from qwen_edge.backends.native import Model
    from qwen_edge.errors import ModelStoppedError

    model = Model.load(sys.argv[1], threads=2, context={short})
    ids = np.arange({short}, dtype=np.int32) % model.config.vocab_size
    inside = threading.Event()

    def loop():
        try:
            while True:
                state = model.new_state({short})
                inside.set()
                model.forward(ids, state)
        except ModelStoppedError:
            pass

    for _ in range(2):
        threading.Thread(target=loop, daemon=True).start()
    inside.wait()
    print("ready", flush=True)
    time.sleep(float(sys.argv[2]))
    sys.exit(int(sys.argv[3]))  # the interpreter exits while the daemon threads compute
    """
).format(short=SHORT)


def test_interpreter_exit_with_forward_running_on_daemon_threads(
    tiny_model_file: Callable[[str], Path], tmp_path: Path
) -> None:
    script = tmp_path / "embed.py"
    script.write_text(EMBEDDING)
    path = tiny_model_file("q8")
    seed = 12
    for i, delay in enumerate(delays(KILLS, 0.0, 0.4, seed)):
        proc = start([sys.executable, str(script), str(path), f"{delay:.3f}", str(i % 3)])
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready", proc.communicate()[1]
        ended = signal_after(proc, signal.SIGCONT, 0.0)  # no signal: it exits by itself
        assert ended.code == i % 3 and ended.crash() is None, f"seed {seed} try {i}: " + (
            ended.describe()
        )


def test_signals_during_a_forward_on_the_main_thread(
    tiny_model_file: Callable[[str], Path], tmp_path: Path
) -> None:
    """Ctrl-C reaches a long prompt between two layers as KeyboardInterrupt (the script exits
    130 after checking the state); SIGTERM's default action ends it, without an abort."""
    script = tmp_path / "main.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            import numpy as np
            from qwen_edge.backends.native import Model
            from qwen_edge.errors import QwenEdgeError
            model = Model.load(sys.argv[1], threads=2, context=30000)
            ids = np.arange(30000, dtype=np.int32) % model.config.vocab_size
            print("ready", flush=True)
            state = model.new_state(30000)
            try:
                model.forward(ids, state)
            except KeyboardInterrupt:
                try:  # stopped inside the pass: the state says so until it is reset
                    model.forward(ids[:1], state)
                    sys.exit(4)
                except QwenEdgeError as e:
                    assert "reset it" in str(e), e
                state.reset()
                fresh = model.new_state(100)
                assert (model.forward(ids[:50], state) == model.forward(ids[:50], fresh)).all()
                sys.exit(130)
            sys.exit(3)  # the pass finished: the signal was not seen in time
            """
        )
    )
    path = tiny_model_file("q8")
    seed = 7
    for i, delay in enumerate(delays(max(4, KILLS // 4), 0.05, 0.5, seed)):
        proc = start([sys.executable, str(script), str(path)])
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready", proc.communicate()[1]
        signum = signal.SIGINT if i % 2 == 0 else signal.SIGTERM
        ended = signal_after(proc, signum, delay)
        want = 130 if signum == signal.SIGINT else -signal.SIGTERM
        assert ended.code == want and "terminate called" not in ended.stderr, (
            f"seed {seed} try {i}: " + ended.describe()
        )
