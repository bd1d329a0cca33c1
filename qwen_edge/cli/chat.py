"""`qwen-edge chat`: an interactive chat with history, /reset, /system and /think."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import QwenEdgeError
from .common import (
    add_generation_arguments,
    add_model_arguments,
    add_power_arguments,
    apply_board,
    check_utf8,
    finish_power,
    generation_overrides,
    govern,
    load_model,
    open_power,
    prompt_progress,
    stats_line,
)

HELP = "interactive chat with history, /reset and /system"
CHAT_HELP = """commands: /reset (forget the conversation), /system TEXT (set the system prompt and
reset), /think on|off, /help, /exit (or Ctrl-D). Ctrl-C stops an answer."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--system", help="system prompt")
    add_generation_arguments(p)
    add_power_arguments(p)


def run(args: argparse.Namespace) -> int:
    overrides = generation_overrides(args)
    power = open_power(args, apply_board(args, set_affinity=False))
    llm = load_model(args)
    if llm.chat_template is None:
        raise QwenEdgeError(f"{args.model} has no chat template; use `qwen-edge run`")
    governor = govern(llm, power, args)
    try:
        return _chat(args, llm, overrides)
    finally:
        finish_power(governor, power)


def _chat(args: argparse.Namespace, llm: Any, overrides: dict[str, Any]) -> int:
    system = args.system
    think = bool(args.think)
    history: list[dict[str, Any]] = []
    print(f"qwen-edge chat: {llm.source} ({type(llm.model).__name__}). {CHAT_HELP}")
    while True:
        try:
            line = input(">>> ")
        except EOFError:
            print()
            return 0
        except KeyboardInterrupt:
            print()
            continue
        except UnicodeDecodeError:
            print("(that line was not valid UTF-8; ignored)")
            continue
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            command, _, rest = line.partition(" ")
            if command in ("/exit", "/quit"):
                return 0
            if command == "/reset":
                history = []
                print("(conversation cleared)")
            elif command == "/system":
                system = rest.strip() or None
                history = []
                print(f"(system prompt {'set' if system else 'cleared'}; conversation cleared)")
            elif command == "/think":
                think = rest.strip().lower() in ("on", "1", "true", "yes")
                print(f"(thinking {'on' if think else 'off'})")
            elif command == "/help":
                print(CHAT_HELP)
            else:
                print(f"(unknown command {command}; /help lists them)")
            continue
        try:
            line = check_utf8(line, "the message")
        except QwenEdgeError as e:
            print(f"({e})")
            continue
        messages = ([{"role": "system", "content": system}] if system else []) + history
        messages.append({"role": "user", "content": line})
        text: list[str] = []
        last = responses = None
        try:  # Ctrl-C at any moment of an answer (templating, prefill, decode) ends just it
            responses = llm.chat(
                messages,
                stream=True,
                enable_thinking=think,
                progress=prompt_progress(),
                **overrides,
            )
            for last in responses:
                if last.text:
                    text.append(last.text)
                    sys.stdout.write(last.text)
                    sys.stdout.flush()
        except QwenEdgeError as e:
            print(f"error: {e}")
            continue
        except KeyboardInterrupt:
            if responses is not None:
                responses.close()
            print("\n(stopped)")
        else:
            print()
            if last is not None:
                print(stats_line(last.stats, last.finish_reason or "?"))
        history += [messages[-1], {"role": "assistant", "content": "".join(text)}]
