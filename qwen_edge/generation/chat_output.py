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


class ChatOutputParser:
    """Turns the model's answer text, as it streams, into OpenAI message fields.

    With thinking on, text up to `</think>` is `reasoning_content`; then `content`; with tools,
    text from `<tool_call>` on is held back and parsed into `tool_calls` at the end. Text that
    may be the start of a marker is held until the next piece decides. The streaming and the
    non-streaming responses both come from this one parser, so they always agree.
    """

    def __init__(self, thinking: bool, tools: bool):
        self.phase = "reasoning_content" if thinking else "content"
        self.tools = tools
        self.pending = ""
        self.tool_text = ""
        self.content_started = not thinking  # newlines after </think> are not content

    def feed(self, text: str) -> list[tuple[str, str]]:
        """(field, text) pieces that can be sent now."""
        self.pending += text
        out: list[tuple[str, str]] = []
        if self.phase == "reasoning_content":
            i = self.pending.find("</think>")
            if i < 0:
                keep = _partial_suffix(self.pending, "</think>")
                out.append(("reasoning_content", self.pending[: len(self.pending) - keep]))
                self.pending = self.pending[len(self.pending) - keep :]
                return [(f, t) for f, t in out if t]
            out.append(("reasoning_content", self.pending[:i]))
            self.pending = self.pending[i + len("</think>") :]
            self.phase = "content"
        if self.phase == "content":
            if not self.content_started:
                self.pending = self.pending.lstrip("\n")
                self.content_started = bool(self.pending)
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
        return [(f, t) for f, t in out if t]

    def finish(self) -> tuple[list[tuple[str, str]], list[dict[str, Any]]]:
        """The held-back text and the parsed tool calls, at the end of the answer."""
        out = [(self.phase if self.phase != "tools" else "content", self.pending)]
        calls: list[dict[str, Any]] = []
        if self.tool_text:
            rest, calls = parse_tool_calls(self.tool_text)
            out.append(("content", rest if calls else self.tool_text))
        return [(f, t) for f, t in out if t], calls
