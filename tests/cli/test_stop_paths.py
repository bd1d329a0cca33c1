"""`qwen-edge run` and `chat` stopped at random moments of a generation: Ctrl-C (SIGINT) ends
`run` with 130 and stops `chat`'s answer (the chat goes on, then ends at end of input with 0),
SIGTERM ends either with 143; never an abort, a traceback or a hang."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from processes import KILLS, delays, exit_code_of, qwen_edge, signal, signal_after, start

from qwen_edge.export import convert


@pytest.fixture(scope="module")
def chat_model(tiny_chat_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stop") / "chat.qe"
    convert.export(tiny_chat_checkpoint, out, "q8")
    return out


# Far more tokens than any machine generates in the 1.5 s before the signal, so a `run` that
# exits 0 after being signalled ignored the signal.
GENERATE = ("-n", "20000", "--context", "20480", "--seed", "1", "--threads", "2")


def _started(proc: subprocess.Popen[str]) -> None:
    """Waits for the first generated character: the model is loaded and generating."""
    assert proc.stdout is not None
    if not proc.stdout.read(1):
        raise AssertionError(f"no output; stderr:\n{proc.communicate()[1]}")


def test_run_stopped_by_sigint_and_sigterm(chat_model: Path) -> None:
    seed = 21
    for i, delay in enumerate(delays(KILLS, 0.0, 1.5, seed)):
        signum = signal.SIGINT if i % 2 == 0 else signal.SIGTERM
        proc = start(qwen_edge("run", chat_model, "-p", "Tell me a story.", *GENERATE))
        _started(proc)
        ended = signal_after(proc, signum, delay)
        # 0 only when it ended before the signal (20,000 tokens take far longer than that)
        ok = ended.code == exit_code_of(signum) or (ended.code == 0 and ended.delay < 0)
        assert ok and ended.crash() is None, (
            f"seed {seed} try {i} signal {signum}: " + ended.describe()
        )
        if ended.code:
            want = "interrupted" if signum == signal.SIGINT else "terminated"
            assert f"qwen-edge: {want}" in ended.stderr


def test_chat_stopped_by_sigint_and_sigterm(chat_model: Path, tmp_path: Path) -> None:
    seed = 22
    messages = tmp_path / "in.txt"
    messages.write_text("Tell me a story.\n")  # then end of input: the chat ends with 0
    for i, delay in enumerate(delays(max(4, KILLS // 2), 0.0, 1.5, seed)):
        signum = signal.SIGINT if i % 2 == 0 else signal.SIGTERM
        with open(messages) as stdin:
            proc = start(qwen_edge("chat", chat_model, *GENERATE[:2], "--seed", "1"), stdin=stdin)
        assert proc.stdout is not None
        seen = ""
        while not seen.endswith(">>> "):  # the banner, then the prompt
            char = proc.stdout.read(1)
            assert char, proc.communicate()[1]
            seen += char
        _started(proc)
        ended = signal_after(proc, signum, delay)
        want = 0 if signum == signal.SIGINT else exit_code_of(signum)
        assert ended.code in (0, want) and ended.crash() is None, (
            f"seed {seed} try {i} signal {signum}: " + ended.describe()
        )
        if signum == signal.SIGINT and ended.delay >= 0:  # Ctrl-C stopped the answer itself
            assert "(stopped)" in ended.stdout, f"seed {seed} try {i}: " + ended.describe()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--context", "4000000000"], "context must be an integer in 1.."),
        (["--context", "0"], "context must be an integer in 1.."),
        (["--context", "300000"], "context must be at most 262144"),
        (["--threads", "0"], "threads must be an integer in 1.."),
        (["--threads", "5000"], "threads must be in 1..1024"),
        (["--temperature", "inf"], "temperature must be in"),
        (["--top-p", "1e400"], "top_p must be in"),
        (["-n", "-3"], "max_tokens must be in"),
    ],
)
def test_bad_arguments_are_messages_not_tracebacks(
    flags: list[str], message: str, chat_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from qwen_edge.cli import main

    assert main(["run", str(chat_model), "-p", "hi", *flags]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_children_get_python_s_ctrl_c() -> None:
    """The kill tests' children handle SIGINT even when the tests run as a shell's background
    job, which starts with SIGINT ignored (tests/processes.py); otherwise the Ctrl-C tries of
    run, chat, export and the embedding test would test nothing."""
    check = "import signal; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)"
    proc = start([sys.executable, "-c", check])
    out, err = proc.communicate(timeout=120)
    assert out.strip() == "True", err
