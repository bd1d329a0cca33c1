"""The OpenAI API's requests: strict validation of `/v1/chat/completions` and `/v1/completions`
bodies into `Job`s, and its error objects.

The generation fields accepted are derived from `generation.settings` (the fields marked `api`),
so the server, the command line and the library share one definition of each setting and its
range checks; a value the settings reject becomes a 400 naming the field.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Any

from ..errors import GenerationConfigError
from ..generation.settings import GenerationConfig, settings

MAX_BODY_BYTES = 4 << 20
# Accepted and ignored (they do not change what this server computes).
IGNORED_FIELDS = {
    "user",
    "store",
    "metadata",
    "service_tier",
    "parallel_tool_calls",
    "stream_options",
}
# Numbers of the API settings: JSON has no int/float split, so floats take ints too.
_JSON_TYPES: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float)}
API_SETTINGS = [s for s in settings() if s.api]
API_FIELDS = {s.name for s in API_SETTINGS} | IGNORED_FIELDS


class APIError(Exception):
    """An error reported to the client as an OpenAI error object."""

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {
            "error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}
        }


# --- request parsing ----------------------------------------------------------------------------
@dataclass
class Job:
    """One request for the worker: what to run, and the channel its events come back on."""

    kind: str  # "chat" or "completion"
    prompt: Any  # messages, or a prompt string / token ids
    overrides: dict[str, Any]
    tools: list[dict[str, Any]] | None = None
    enable_thinking: bool | None = None
    events: queue.Queue[tuple[str, Any]] = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)


def _check_type(body: dict[str, Any], key: str, types: tuple[type, ...], what: str) -> Any:
    value = body[key]
    if isinstance(value, bool) and bool not in types:
        raise APIError(400, f"'{key}' must be {what}", key)
    if not isinstance(value, types):
        raise APIError(400, f"'{key}' must be {what}", key)
    return value


def _generation_overrides(body: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for s in API_SETTINGS:
        if body.get(s.name) is None:
            continue
        value = body[s.name]
        if s.kind in _JSON_TYPES:
            what = "an integer" if s.kind == "int" else "a number"
            out[s.name] = _check_type(body, s.name, _JSON_TYPES[s.kind], what)
        elif s.kind == "bool":
            out[s.name] = _check_type(body, s.name, (bool,), "a boolean")
        elif s.kind == "strings":
            values = [value] if isinstance(value, str) else value
            if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
                raise APIError(
                    400, f"'{s.name}' must be a non-empty string or a list of them", s.name
                )
            out[s.name] = tuple(values)
        elif s.kind == "bias":
            bias = _check_type(body, s.name, (dict,), "an object of token id -> bias")
            try:
                out[s.name] = {int(k): float(v) for k, v in bias.items()}
            except (TypeError, ValueError):
                raise APIError(
                    400, f"'{s.name}' keys must be token ids and values numbers", s.name
                ) from None
    if body.get("max_completion_tokens") is not None:  # the chat API's newer name
        out["max_tokens"] = _check_type(body, "max_completion_tokens", (int,), "an integer")
    if "max_tokens" in out and out["max_tokens"] <= 0:
        raise APIError(400, "'max_tokens' must be a positive integer", "max_tokens")
    if body.get("top_logprobs"):
        raise APIError(400, "'top_logprobs' is not supported", "top_logprobs")
    if body.get("n", 1) != 1:
        raise APIError(400, "only n = 1 is supported", "n")
    fmt = body.get("response_format")
    if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") != "text"):
        raise APIError(400, "only response_format {'type': 'text'} is supported", "response_format")
    try:
        GenerationConfig().replace(**out)
    except GenerationConfigError as e:
        raise APIError(400, str(e)) from None
    return out


def parse_chat(body: dict[str, Any]) -> Job:
    """Validates a /v1/chat/completions body into a Job."""
    known = API_FIELDS | {
        "model", "messages", "max_completion_tokens", "top_logprobs", "n", "stream", "tools",
        "tool_choice", "response_format", "chat_template_kwargs", "enable_thinking",
    }  # fmt: skip
    _reject_unknown(body, known)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty list", "messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise APIError(400, f"messages[{i}] must be an object with a 'role'", "messages")
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
            raise APIError(400, "'tools' must be a list of objects", "tools")
        if body.get("tool_choice") not in (None, "auto", "none"):
            raise APIError(400, "only tool_choice 'auto' or 'none' is supported", "tool_choice")
        if body.get("tool_choice") == "none":
            tools = None
    kwargs = body.get("chat_template_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise APIError(400, "'chat_template_kwargs' must be an object", "chat_template_kwargs")
    thinking = body.get("enable_thinking", kwargs.get("enable_thinking"))
    if thinking is not None and not isinstance(thinking, bool):
        raise APIError(400, "'enable_thinking' must be a boolean", "enable_thinking")
    return Job("chat", messages, _generation_overrides(body), tools, thinking)


def parse_completion(body: dict[str, Any]) -> Job:
    """Validates a /v1/completions body into a Job."""
    known = API_FIELDS | {"model", "prompt", "n", "stream", "echo"}
    _reject_unknown(body, known)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    ok_ids = (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in prompt)
    )
    if not (isinstance(prompt, str) and prompt) and not ok_ids:
        raise APIError(400, "'prompt' must be a non-empty string or a list of token ids", "prompt")
    if body.get("echo"):
        raise APIError(400, "'echo' is not supported", "echo")
    overrides = _generation_overrides(body)
    if (
        "logprobs" in body
        and body["logprobs"] is not None
        and not isinstance(body["logprobs"], bool)
    ):
        overrides["logprobs"] = True  # the legacy API passes a count
    return Job("completion", prompt, overrides)


def _reject_unknown(body: dict[str, Any], known: set[str]) -> None:
    unknown = sorted(set(body) - known)
    if unknown:
        raise APIError(400, f"unsupported field(s): {', '.join(unknown)}", unknown[0])
