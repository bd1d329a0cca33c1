"""Chat-template rendering: message validation, thinking on/off, control-token-safe encoding.

The template is the model's own Jinja source (a checkpoint's `chat_template.jinja` or
`tokenizer_config.json`, or the model file header), rendered in the environment transformers
uses for `apply_chat_template` (sandboxed, `trim_blocks`, `lstrip_blocks`, the same `tojson`,
`raise_exception` and `strftime_now`), so the prompt text is identical. Jinja2 is an optional
dependency (the `tokenizer` extra), imported on first use.

`ChatTemplate.encode` keeps user text from forging control tokens: text such as `<|im_end|>`
inside user, system or tool content (or tool schemas) is wrapped in private-use markers before
rendering and encoded as ordinary text afterwards, so only the control tokens the template
writes itself become control tokens (the idea of transformers' `sanitize_control_tokens`).
Assistant content is the model's own output and keeps its tokens, so a multi-turn history is
encoded as the model produced it.

Used by `LLM.chat` (`generation/llm.py`), and so by the CLI and the server; its inverse, parsing
the model's answer back into content, reasoning and tool calls, is `chat_output.py`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

from ..errors import ChatTemplateError, require
from .tokenizer import Tokenizer

# Control tokens of the chat format (docs/model.md §7.1): a turn opens with <|im_start|> and
# closes with <|im_end|> (the tokenizer's eos); <|endoftext|> is the config's eos.
IM_START, IM_END, END_OF_TEXT = 248045, 248046, 248044
ROLES = ("system", "user", "assistant", "tool")
# Names a message's reasoning arrives under; the template reads `reasoning_content`.
REASONING_KEYS = ("reasoning_content", "reasoning", "thinking")
# Private-use code points that cannot come from users (they are stripped from input first).
MARK_START, MARK_END = "\U000f0000", "\U000f0001"
TRUSTED_ROLES = ("assistant",)

Message = Mapping[str, Any]


# --- validation ---------------------------------------------------------------------------------
def _check_content(where: str, content: Any, *, allow_parts: bool = True) -> None:
    if content is None or isinstance(content, str):
        return
    if allow_parts and isinstance(content, (list, tuple)):
        for j, part in enumerate(content):
            if not isinstance(part, Mapping):
                raise ChatTemplateError(f"{where}.content[{j}]: a content part must be a dict")
            kind = part.get("type")
            if kind == "text" or (kind is None and "text" in part):
                if not isinstance(part.get("text"), str):
                    raise ChatTemplateError(f"{where}.content[{j}]: 'text' must be a string")
            elif kind in ("image", "image_url", "video") or "image" in part or "video" in part:
                continue
            else:
                raise ChatTemplateError(
                    f"{where}.content[{j}]: unknown content part type {kind!r} "
                    "(expected 'text', 'image' or 'video')"
                )
        return
    raise ChatTemplateError(
        f"{where}.content: expected a string, a list of content parts or null, "
        f"not {type(content).__name__}"
    )


def _normalize_tool_call(where: str, call: Any) -> dict[str, Any]:
    if not isinstance(call, Mapping):
        raise ChatTemplateError(f"{where}: a tool call must be a dict")
    call = dict(call)
    fn = call.get("function", call)
    if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise ChatTemplateError(f"{where}: a tool call needs a function name")
    fn = dict(fn)
    args = fn.get("arguments")
    if isinstance(args, str):  # OpenAI sends the arguments as a JSON string
        try:
            args = json.loads(args) if args.strip() else {}
        except ValueError as e:
            raise ChatTemplateError(f"{where}: arguments are not valid JSON ({e})") from e
    if args is not None and not isinstance(args, Mapping):
        raise ChatTemplateError(f"{where}: arguments must be a JSON object")
    if args is not None:
        fn["arguments"] = dict(args)
    if "function" in call:
        call["function"] = fn
        return call
    return fn


def validate_messages(messages: Any) -> list[dict[str, Any]]:
    """Checks chat messages and returns plain-dict copies ready for a template.

    Accepts what OpenAI-style clients send: `content` as a string, a list of parts or null (with
    tool calls); tool-call `arguments` as a dict or a JSON string (parsed); reasoning under
    `reasoning_content`, `reasoning` or `thinking`. Keys whose value is None are dropped (as
    transformers does).

    Raises:
        ChatTemplateError: naming the message and field at fault.
    """
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise ChatTemplateError("messages must be a list of {'role': ..., 'content': ...} dicts")
    if not messages:
        raise ChatTemplateError("messages is empty: give at least one user message")
    out = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, Mapping):
            raise ChatTemplateError(
                f"{where}: a message must be a dict, not {type(message).__name__}"
            )
        role = message.get("role")
        if role not in ROLES:
            raise ChatTemplateError(f"{where}: role {role!r} is not one of {', '.join(ROLES)}")
        if role == "system" and i != 0:
            raise ChatTemplateError(f"{where}: a system message is only allowed first")
        _check_content(where, message.get("content"))
        m = {k: v for k, v in message.items() if v is not None}
        reasoning = next((m[k] for k in REASONING_KEYS if k in m), None)
        if reasoning is not None:
            if role != "assistant" or not isinstance(reasoning, str):
                raise ChatTemplateError(f"{where}: reasoning must be a string on an assistant turn")
            m["reasoning_content"] = reasoning
        calls = m.get("tool_calls")
        if calls is not None:
            if role != "assistant" or not isinstance(calls, (list, tuple)):
                raise ChatTemplateError(f"{where}: tool_calls must be a list on an assistant turn")
            m["tool_calls"] = [
                _normalize_tool_call(f"{where}.tool_calls[{j}]", c) for j, c in enumerate(calls)
            ]
        out.append(m)
    if not any(m["role"] == "user" for m in out):
        raise ChatTemplateError("messages has no user message")
    return out


# --- rendering ----------------------------------------------------------------------------------
@lru_cache(maxsize=8)
def _compile(source: str) -> Any:
    jinja2 = require("jinja2", "tokenizer")
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationTag(Extension):  # `{% generation %}` marks assistant text in some templates
        tags = {"generation"}  # noqa: RUF012 (jinja's API)

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(
                lineno
            )

        def _render(self, caller: Callable[[], str]) -> str:
            return caller()

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(
        x: Any,
        ensure_ascii: bool = False,
        indent: int | None = None,
        separators: Any = None,
        sort_keys: bool = False,
    ) -> str:
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTag, loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise ChatTemplateError(f"the chat template does not parse: {e} (line {e.lineno})") from e


class ChatTemplate:
    """A model's chat template.

    Args:
        source: the Jinja template text.
        special_tokens: template variables transformers also passes (`eos_token`, ...).
    """

    def __init__(self, source: str, special_tokens: Mapping[str, str] | None = None):
        if not isinstance(source, str) or not source.strip():
            raise ChatTemplateError("the chat template is empty")
        self.source = source
        self.special_tokens = dict(special_tokens or {})

    def render(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        enable_thinking: bool | None = None,
        **kwargs: Any,
    ) -> str:
        """The prompt text for `messages`.

        Args:
            messages: chat turns (see `validate_messages`).
            tools: JSON schemas of callable tools, listed in the system turn.
            add_generation_prompt: end with the opening of an assistant turn.
            enable_thinking: True opens a `<think>` block; False closes an empty one; None leaves
                the template's default (off for the small Qwen3.5 models).
            **kwargs: more template variables (e.g. `add_vision_id`).

        Raises:
            ChatTemplateError: invalid messages, or an error raised by the template.
        """
        return self._render(
            validate_messages(messages), tools, add_generation_prompt, enable_thinking, kwargs
        )

    def _render(
        self,
        messages: list[dict[str, Any]],
        tools: Any,
        add_generation_prompt: bool,
        enable_thinking: bool | None,
        kwargs: dict[str, Any],
    ) -> str:
        jinja2 = require("jinja2", "tokenizer")
        if tools is not None and (
            isinstance(tools, (str, Mapping)) or not all(isinstance(t, Mapping) for t in tools)
        ):
            raise ChatTemplateError("tools must be a list of JSON-schema dicts")
        variables = {**self.special_tokens, **kwargs}
        if enable_thinking is not None:
            variables["enable_thinking"] = bool(enable_thinking)
        template = _compile(self.source)
        try:
            return str(
                template.render(
                    messages=messages,
                    tools=list(tools) if tools is not None else None,
                    documents=None,
                    add_generation_prompt=add_generation_prompt,
                    **variables,
                )
            )
        except jinja2.exceptions.TemplateError as e:
            raise ChatTemplateError(f"chat template: {e}") from e

    def encode(
        self,
        tokenizer: Tokenizer,
        messages: Sequence[Message],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        enable_thinking: bool | None = None,
        trusted_roles: Iterable[str] = TRUSTED_ROLES,
        **kwargs: Any,
    ) -> list[int]:
        """Token ids of the rendered prompt; control-token text in untrusted content stays text.

        Args:
            tokenizer: the model's tokenizer.
            trusted_roles: roles whose content may carry control tokens (default: the model's
                own "assistant" turns). Everything else, tools included, is encoded as text.
            Other arguments: as `render`.
        """
        checked = validate_messages(messages)
        pattern = _added_pattern(tuple(tokenizer.added_tokens))
        trusted = set(trusted_roles)
        marked = [m if m["role"] in trusted else _mark(m, pattern) for m in checked]
        marked_tools = _mark(list(tools), pattern) if tools is not None else None
        text = self._render(marked, marked_tools, add_generation_prompt, enable_thinking, kwargs)
        return tokenizer.encode_segments(_segments(text, pattern))


def _added_pattern(tokens: tuple[str, ...]) -> re.Pattern[str]:
    alternatives = "|".join(map(re.escape, sorted(tokens, key=len, reverse=True))) or "(?!)"
    return re.compile(alternatives)


def _mark(value: Any, pattern: re.Pattern[str]) -> Any:
    # Wrap added-token text in user strings (not dict keys) with the private markers.
    if isinstance(value, str):
        value = value.replace(MARK_START, "").replace(MARK_END, "")
        return pattern.sub(lambda m: MARK_START + m.group() + MARK_END, value)
    if isinstance(value, Mapping):
        return {k: _mark(v, pattern) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_mark(v, pattern) for v in value]
    return value


def _segments(text: str, pattern: re.Pattern[str]) -> list[tuple[str, bool]]:
    # (text, is_control) pieces of a rendered prompt: template-written added tokens are control;
    # marked ones are text; markers a template split apart are dropped.
    scanner = re.compile(
        f"{MARK_START}({pattern.pattern}){MARK_END}|({pattern.pattern})|[{MARK_START}{MARK_END}]"
    )
    out, pos = [], 0
    for m in scanner.finditer(text):
        out.append((text[pos : m.start()], False))
        if m.group(1) is not None:
            out.append((m.group(1), False))
        elif m.group(2) is not None:
            out.append((m.group(2), True))
        pos = m.end()
    out.append((text[pos:], False))
    return [(t, c) for t, c in out if t]
