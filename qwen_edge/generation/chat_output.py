"""Qwen3.5's answer text back into OpenAI message fields: reasoning, content and tool calls.

The inverse of `chat_template.py`: the template renders tool schemas and thinking into the
prompt; this module splits what the model writes back into `reasoning_content` (the `<think>`
block), `content`, and `tool_calls` (the XML `<tool_call><function=...>` blocks the Qwen3.5
template asks for, docs/model.md §7.2). It works on a stream, holding back text that may be the
start of a marker, so streamed and complete answers come from the same code.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

_TOOL_CALL = re.compile(r"<tool_call>\s*<function=([^>\n]+)>(.*?)</function>\s*</tool_call>", re.S)
_PARAMETER = re.compile(r"<parameter=([^>\n]+)>\n?(.*?)\n?</parameter>", re.S)


def parse_tool_calls(text: str) -> tuple[str, list[dict[str, Any]]]:
    """Splits Qwen3.5's XML tool calls out of an answer, as OpenAI `tool_calls` objects."""
    calls = []
    for match in _TOOL_CALL.finditer(text):
        args: dict[str, Any] = {}
        for name, raw in _PARAMETER.findall(match.group(2)):
            try:  # the chat template JSON-encodes values that are not strings
                value = json.loads(raw)
            except ValueError:
                value = raw
            args[name.strip()] = value if not isinstance(value, str) else raw
        calls.append(
            {
                "id": f"call_{uuid.uuid4().hex[:24]}",
                "type": "function",
                "function": {"name": match.group(1).strip(), "arguments": json.dumps(args)},
            }
        )
    return _TOOL_CALL.sub("", text).strip() if calls else text, calls


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of `text` that is a proper start of `marker`."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0


class _Trim:
    """One field's text with the whitespace at both ends dropped, as it streams: leading
    whitespace is skipped, trailing whitespace held until more text follows it."""

    def __init__(self) -> None:
        self.started = False
        self.held = ""

    def feed(self, text: str) -> str:
        if not self.started:
            text = text.lstrip()
            self.started = bool(text)
        text = self.held + text
        body = text.rstrip()
        self.held = text[len(body) :]
        return body


class ChatOutputParser:
    """Turns the model's answer text, as it streams, into OpenAI message fields.

    With thinking on, text up to `</think>` is `reasoning_content`; then `content`; with tools,
    text from `<tool_call>` on is held back and parsed into `tool_calls` at the end. Text that
    may be the start of a marker is held until the next piece decides, and each field loses the
    whitespace at its ends (trailing whitespace is held until more text follows). The streaming
    and the non-streaming responses both come from this one parser, so their text is the same.
    """

    def __init__(self, thinking: bool, tools: bool):
        self.phase = "reasoning_content" if thinking else "content"
        self.tools = tools
        self.pending = ""
        self.tool_text = ""
        self.trims = {"reasoning_content": _Trim(), "content": _Trim()}

    def feed(self, text: str) -> list[tuple[str, str]]:
        """(field, text) pieces that can be sent now."""
        return self._trimmed(self._split(text))

    def finish(self) -> tuple[list[tuple[str, str]], list[dict[str, Any]]]:
        """The held-back text and the parsed tool calls, at the end of the answer."""
        out = [(self.phase if self.phase != "tools" else "content", self.pending)]
        calls: list[dict[str, Any]] = []
        if self.tool_text:
            rest, calls = parse_tool_calls(self.tool_text)
            out.append(("content", rest if calls else self.tool_text))
        return self._trimmed(out), calls

    def _trimmed(self, pieces: list[tuple[str, str]]) -> list[tuple[str, str]]:
        out = [(f, self.trims[f].feed(t)) for f, t in pieces]
        return [(f, t) for f, t in out if t]

    def _split(self, text: str) -> list[tuple[str, str]]:
        self.pending += text
        out: list[tuple[str, str]] = []
        if self.phase == "reasoning_content":
            i = self.pending.find("</think>")
            if i < 0:
                keep = _partial_suffix(self.pending, "</think>")
                out.append(("reasoning_content", self.pending[: len(self.pending) - keep]))
                self.pending = self.pending[len(self.pending) - keep :]
                return out
            out.append(("reasoning_content", self.pending[:i]))
            self.pending = self.pending[i + len("</think>") :]
            self.phase = "content"
        if self.phase == "content":
            i = self.pending.find("<tool_call>") if self.tools else -1
            if i >= 0:
                out.append(("content", self.pending[:i]))
                self.tool_text, self.pending, self.phase = self.pending[i:], "", "tools"
            else:
                keep = _partial_suffix(self.pending, "<tool_call>") if self.tools else 0
                out.append(("content", self.pending[: len(self.pending) - keep]))
                self.pending = self.pending[len(self.pending) - keep :]
        if self.phase == "tools":
            self.tool_text += self.pending
            self.pending = ""
        return out
