"""What several commands share: model and generation flags, board profiles, text input, output.

The generation flags are derived from `generation.settings` (one definition for the command
line, the server and the library), so a new sampling setting needs no change here.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import QwenEdgeError
from ..generation.loop import PREFILL_CHUNK
from ..generation.settings import GenerationConfig, settings
from ..hardware.boards import Board, board_defaults, list_boards, load_board, pin_to_cpus


def default_cache() -> Path:
    """Where commands keep what they build once (the demo model, the tokenizer files)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "qwen-edge"


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    raise AssertionError


# --- board profiles -----------------------------------------------------------------------------
def add_board_argument(parser: argparse.ArgumentParser) -> None:
    """Adds `--board NAME`. Options a board can default (`--threads`, `--context`) must default
    to None in that parser."""
    parser.add_argument(
        "--board",
        metavar="NAME",
        help=f"take defaults from a board profile ({', '.join(list_boards())}, or a JSON path)",
    )


def apply_board(
    args: argparse.Namespace, ram: float | None = None, set_affinity: bool = True
) -> Board | None:
    """Applies `--board` if given: fills the options the user left unset and pins the process
    to the board's cores.

    Sets, where the attribute exists and is None: `threads`, `context`, `quant` (the recipe)
    and `model_size`; always sets `args.board_cpus` (the chosen cores, or None).

    Returns:
        The board, or None without `--board`.

    Raises:
        ConfigError: unknown board or invalid profile.
    """
    name = getattr(args, "board", None)
    if not name:
        return None
    board = load_board(name)
    chosen = board_defaults(board, ram)
    defaults = {
        "threads": chosen.threads,
        "context": chosen.context,
        "quant": chosen.recipe,
        "model_size": chosen.model,
    }
    for key, value in defaults.items():
        if hasattr(args, key) and getattr(args, key) is None:
            setattr(args, key, value)
    args.board_cpus = chosen.cpus
    if set_affinity:
        pin_to_cpus(chosen.cpus)
    return board


# --- loading a model ----------------------------------------------------------------------------
def _context(text: str) -> int | str:
    """A number of tokens (its range is the loader's to check) or "max"."""
    if text == "max":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number of tokens or max, got {text!r}"
        ) from None


def add_context_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--context",
        type=_context,
        metavar="N|max",
        help="context length in tokens; max: the longest whose state fits 90%% of the memory "
        "available now (default: the --board's, else 4096)",
    )


def fit_context(llm: Any, args: argparse.Namespace) -> None:
    """`--context max`: sizes the loaded model's context to the memory available now.

    Raises:
        QwenEdgeError: a backend that cannot size its state (not the native runtime).
        ContextLengthError: not even a short state fits.
    """
    if args.context != "max":
        return
    model = getattr(llm, "model", None)
    if not hasattr(model, "fit_context"):
        raise QwenEdgeError("--context max needs a .qe model file (the native runtime)")
    model.fit_context()


def add_kv_cache_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--kv-cache",
        choices=["f16", "f32", "q8", "q4"],
        default="f16",
        help="KV cache type of the native runtime (q8: int8, for long contexts; q4: 4-bit, "
        "for the longest; default f16)",
    )


def add_tokenizer_backend_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tokenizer-backend",
        choices=["auto", "tokenizers", "python"],
        default="auto",
        help="tokenizers (Rust) when installed, else the pure-Python BPE",
    )


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """The model and how to run it: path, threads, context, KV cache, board, backends."""
    p.add_argument(
        "model", help="model file (.qe), ONNX graph (.onnx) or Hugging Face checkpoint folder"
    )
    p.add_argument("--threads", type=int, help="worker threads of the native runtime")
    add_context_argument(p)
    add_kv_cache_argument(p)
    add_board_argument(p)
    p.add_argument(
        "--backend",
        choices=["auto", "native", "onnxruntime", "reference"],
        default="auto",
        help="auto: native for .qe files, onnxruntime for .onnx graphs, numpy reference for "
        "checkpoint folders",
    )
    add_tokenizer_backend_argument(p)


def load_model(args: argparse.Namespace) -> Any:
    """`qwen_edge.load` with the flags of `add_model_arguments` (and the board's defaults)."""
    from ..generation.llm import load

    apply_board(args)
    llm = load(
        args.model,
        threads=args.threads,
        context=None if args.context == "max" else args.context,
        kv_cache=args.kv_cache,
        backend=getattr(args, "backend", "auto"),
        tokenizer_backend=getattr(args, "tokenizer_backend", "auto"),
    )
    fit_context(llm, args)
    model = getattr(llm, "model", None)
    if hasattr(model, "state_bytes"):  # the native backend: say what a state will take
        print(
            f"state: {model.state_bytes() / 2**20:.1f} MiB for {model.context} tokens "
            f"({model.kv_cache} KV cache)",
            file=sys.stderr,
        )
    return llm


# --- generation settings ------------------------------------------------------------------------
_TYPES = {"int": int, "float": float}


def add_generation_arguments(p: argparse.ArgumentParser) -> None:
    """One flag per command-line setting of `GenerationConfig`, plus `--think` for chats."""
    g = p.add_argument_group("generation (defaults: the model's generation_config.json)")
    for s in settings():
        if s.cli:
            _add_setting(g, s)
    g.add_argument("--think", action="store_true", help="chat: let the model reason first")


SPECULATIVE_SETTINGS = ("speculative", "draft_tokens")


def add_speculative_arguments(p: argparse.ArgumentParser) -> None:
    """`--speculative` and `--draft-tokens`, from their settings (for `bench`)."""
    g = p.add_argument_group("speculative decoding (docs/speculative.md)")
    for s in settings():
        if s.name in SPECULATIVE_SETTINGS:
            _add_setting(g, s)


def _add_setting(g: Any, s: Any) -> None:
    flags = ["-n"] if s.name == "max_tokens" else []
    flags.append("--" + s.name.replace("_", "-"))
    if s.kind == "bool":
        g.add_argument(*flags, action="store_true", default=None, help=s.help)
    elif s.kind == "strings":
        g.add_argument(*flags, action="append", help=s.help)
    elif s.kind == "choice":
        g.add_argument(*flags, choices=s.choices, help=s.help)
    else:
        g.add_argument(*flags, type=_TYPES[s.kind], help=s.help)


def generation_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The generation settings given on the command line, checked before the model loads."""
    out = {}
    for s in settings():
        value = getattr(args, s.name, None) if s.cli else None
        if value is not None:
            out[s.name] = tuple(value) if s.kind == "strings" else value
    GenerationConfig().replace(**out)  # raises GenerationConfigError on a bad value
    return out


# --- text in, text out --------------------------------------------------------------------------
def check_utf8(text: str, what: str) -> str:
    """`text` if it is valid UTF-8 (argv and stdin carry invalid bytes as lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise QwenEdgeError(f"{what} is not valid UTF-8 (at character {e.start})") from e
    return text


def read_text(arg: str, what: str) -> str:
    """The argument's text, or stdin's for "-" (read as bytes: invalid UTF-8 is a clear error)."""
    if arg != "-":
        return check_utf8(arg, what)
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise QwenEdgeError(f"{what} (stdin) is not valid UTF-8 at byte {e.start}") from e


def stats_line(stats: Any, finish_reason: str) -> str:
    return (
        f"[{stats.num_prompt_tokens} prompt tokens, {stats.num_generated_tokens} generated, "
        f"{stats.generation_tokens_per_second:.1f} tok/s, "
        f"first token after {stats.time_to_first_token:.2f} s, {finish_reason}]"
    )


def stream_to(out: Any, responses: Any) -> Any:
    """Writes a response stream's text as it comes; returns the last response."""
    last = None
    for last in responses:
        if last.text:
            out.write(last.text)
            out.flush()
    return last


def progress_bar(total_label: str, unit: str = "tensor") -> Any:
    """A (name, index, total) callback: tqdm when installed, else a line every ~10 %."""
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    state: dict[str, Any] = {"bar": None, "shown": -1}

    def update(name: str, index: int, total: int) -> None:
        if tqdm is not None:
            if state["bar"] is None:
                state["bar"] = tqdm(total=total, desc=total_label, unit=unit, leave=False)
            state["bar"].set_postfix_str(name[-40:], refresh=False)
            state["bar"].n = index
            state["bar"].refresh()
            if index + 1 == total:
                state["bar"].close()
            return
        step = index * 10 // max(total, 1)
        if step != state["shown"]:
            state["shown"] = step
            print(f"  {total_label}: {index}/{total} {name}", file=sys.stderr, flush=True)

    return update


def prompt_progress(
    out: Any = None, min_tokens: int = 2 * PREFILL_CHUNK
) -> Callable[[int, int], None] | None:
    """A `progress` callback for `LLM.generate`/`chat`: a prompt of `min_tokens` or more gets
    one line on the terminal (tokens done, rate, time left), rewritten after each prefill
    chunk and erased before the answer; tens of thousands of tokens take minutes on a board.
    `progress(0, total)` says a prefill starts (the rate counts from there; else from the
    callback's making). None when `out` (stderr) is not a terminal, so pipes and logs stay
    clean."""
    out = sys.stderr if out is None else out
    if not out.isatty():
        return None
    start = time.perf_counter()

    def show(done: int, total: int) -> None:
        nonlocal start
        if done == 0:
            start = time.perf_counter()
        if total < min_tokens or done == 0:
            return
        if done >= total:
            out.write("\r\x1b[K")
        else:
            rate = done / max(time.perf_counter() - start, 1e-9)
            left = (total - done) / rate
            out.write(f"\rprompt: {done}/{total} tokens, {rate:.0f} tok/s, {left:.0f} s left\x1b[K")
        out.flush()

    return show


# --- power --------------------------------------------------------------------------------------
def add_power_arguments(p: argparse.ArgumentParser, governed: bool = True) -> None:
    """`--power-sensor`, `--idle-seconds`, `--power-period`, and with `governed` the goals
    `--power-budget` and `--tokens-per-second` (docs/energy.md)."""
    g = p.add_argument_group("power (docs/energy.md)")
    g.add_argument(
        "--power-sensor",
        metavar="KIND:WHERE",
        help="rapl:DIR, hwmon:DIR[,label=NAME], battery:DIR, pmic, command:CMD, csv:FILE "
        "(default: the --board profile's sensor)",
    )
    if governed:
        g.add_argument(
            "--power-budget",
            type=float,
            metavar="W",
            help="keep the mean power under W watts (threads, pauses, CPU clock caps)",
        )
        g.add_argument(
            "--tokens-per-second",
            type=float,
            metavar="R",
            help="decode at R tokens/s with the least energy this board allows",
        )
    g.add_argument(
        "--idle-seconds", type=float, default=3.0, help="idle baseline before the run (s)"
    )
    g.add_argument(
        "--power-period", type=float, help="seconds between sensor samples (default 0.02-0.1)"
    )


def open_power(args: argparse.Namespace, board: Board | None, measure: bool = False) -> Any:
    """The power setup the flags ask for (a started monitor, the idle power measured, the
    writable clock caps), or None when neither `measure` nor a budget or rate is given.

    Raises:
        SensorError: no sensor given or named by the board, or one that cannot be read.
    """
    from ..errors import SensorError
    from ..evaluation.bench import Power
    from ..hardware.governor import CpuFreq
    from ..hardware.power import PowerMonitor, default_period, open_sensor

    governed = getattr(args, "power_budget", None) or getattr(args, "tokens_per_second", None)
    if not (measure or governed):
        return None
    spec = args.power_sensor or (board.power if board is not None else None)
    if spec is None:
        raise SensorError(
            "measuring power needs a sensor: --power-sensor KIND:WHERE, or --board NAME for "
            "the board's own (see docs/energy.md)"
        )
    sensor = open_sensor(spec)
    period = args.power_period or default_period(sensor.spec.kind)
    monitor = PowerMonitor(sensor, period).start()
    print(f"power: {sensor.spec}; idle baseline for {args.idle_seconds:g} s", file=sys.stderr)
    idle = monitor.idle_baseline(args.idle_seconds)
    cpufreq = CpuFreq.open() if governed else None
    return Power(monitor, idle, cpufreq)


def govern(llm: Any, power: Any, args: argparse.Namespace) -> Any:
    """Puts `llm`'s model under a governor for the flags' budget or rate; returns it (None
    without a power setup)."""
    if power is None:
        return None
    from ..evaluation.bench import make_governor
    from ..generation.pacing import PacedModel

    governor = make_governor(power, llm.model, args.power_budget, args.tokens_per_second)
    llm.model = PacedModel(llm.model, governor)
    return governor


def finish_power(governor: Any, power: Any) -> dict[str, Any] | None:
    """Stops the sensor and prints how the budget held (stderr); returns the report."""
    if power is None:
        return None
    from ..evaluation.bench import finish_governed, format_governed

    report = finish_governed(governor, power) if governor is not None else None
    power.monitor.stop()
    if report is not None:
        print(format_governed(report), file=sys.stderr)
    return report
