"""The OpenAI API's requests: strict validation of `/v1/chat/completions` and `/v1/completions`
bodies into `Job`s, and its error objects.

The generation fields accepted are derived from `generation.settings` (the fields marked `api`),
so the server, the command line and the library share one definition of each setting and its
range checks; a value the settings reject becomes a 400 naming the field. Bodies are strict
JSON (no NaN or Infinity) nested at most `MAX_JSON_DEPTH` deep.
"""

from __future__ import annotations

import json
import queue
import threading
from dataclasses import dataclass, field
from typing import Any

from ..errors import GenerationConfigError
from ..generation.settings import GenerationConfig, settings

MAX_BODY_BYTES = 4 << 20
MAX_JSON_DEPTH = 64  # tool schemas nest ~10 deep; deeper bodies are attacks on parsers
# Accepted and ignored (they do not change what this server computes).
IGNORED_FIELDS = {"user", "store", "metadata", "service_tier", "parallel_tool_calls"}
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
    stream: bool = False  # answer as server-sent events
    include_usage: bool = False  # streams: a last event with the token counts
    submitted: float = 0.0  # `time.perf_counter()` when the worker queued it


def parse_json(raw: bytes) -> dict[str, Any]:
    """A request body: a JSON object in UTF-8, strict (no NaN/Infinity), not nested too deep."""

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    too_deep = APIError(400, f"request body is nested more than {MAX_JSON_DEPTH} levels deep")
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=no_constant)
    except RecursionError:  # deeper than Python's own limit
        raise too_deep from None
    except (UnicodeDecodeError, ValueError) as e:
        raise APIError(400, f"request body is not valid JSON: {e}") from None
    if _too_deep(body, MAX_JSON_DEPTH):
        raise too_deep
    if not isinstance(body, dict):
        raise APIError(400, "request body must be a JSON object")
    return body


def _too_deep(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        children = v.values() if isinstance(v, dict) else v if isinstance(v, list) else None
        if children is not None:
            if depth > limit:
                return True
            stack.extend((c, depth + 1) for c in children)
    return False


def _check_type(body: dict[str, Any], key: str, types: tuple[type, ...], what: str) -> Any:
    value = body[key]
    if isinstance(value, bool) and bool not in types:
        raise APIError(400, f"'{key}' must be {what}", key)
    if not isinstance(value, types):
        raise APIError(400, f"'{key}' must be {what}", key)
    return value


def _generation_overrides(body: dict[str, Any], max_tokens_cap: int | None) -> dict[str, Any]:
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
        elif s.kind == "choice":
            if value not in s.choices:
                raise APIError(400, f"'{s.name}' must be one of {', '.join(s.choices)}", s.name)
            out[s.name] = value
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
    if max_tokens_cap is not None and out.get("max_tokens", 0) > max_tokens_cap:
        raise APIError(
            400, f"'max_tokens' is over this server's limit of {max_tokens_cap}", "max_tokens"
        )
    if body.get("model") is not None and not isinstance(body["model"], str):
        raise APIError(400, "'model' must be a string", "model")
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
        raise APIError(400, str(e), e.field) from None
    return out


def parse_chat(body: dict[str, Any], max_tokens_cap: int | None = None) -> Job:
    """Validates a /v1/chat/completions body into a Job (`max_tokens` at most the cap)."""
    known = API_FIELDS | {
        "model", "messages", "max_completion_tokens", "top_logprobs", "n", "stream", "tools",
        "stream_options",
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
    job = Job("chat", messages, _generation_overrides(body, max_tokens_cap), tools, thinking)
    return _with_stream_options(job, body)


def parse_completion(body: dict[str, Any], max_tokens_cap: int | None = None) -> Job:
    """Validates a /v1/completions body into a Job (`max_tokens` at most the cap)."""
    known = API_FIELDS | {"model", "prompt", "n", "stream", "stream_options", "echo"}
    _reject_unknown(body, known)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    ok_ids = (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < 2**31 for t in prompt)
    )
    if not (isinstance(prompt, str) and prompt) and not ok_ids:
        raise APIError(400, "'prompt' must be a non-empty string or a list of token ids", "prompt")
    if body.get("echo"):
        raise APIError(400, "'echo' is not supported", "echo")
    count = body.get("logprobs")
    if isinstance(count, int) and not isinstance(count, bool):  # the legacy API's count
        if not 0 <= count <= 5:
            raise APIError(400, "'logprobs' must be a boolean or a count in [0, 5]", "logprobs")
        body = {**body, "logprobs": count > 0}
    job = Job("completion", prompt, _generation_overrides(body, max_tokens_cap))
    return _with_stream_options(job, body)


def _with_stream_options(job: Job, body: dict[str, Any]) -> Job:
    if body.get("stream") is not None:
        job.stream = _check_type(body, "stream", (bool,), "a boolean")
    options = body.get("stream_options")
    if options is not None:
        if (
            not isinstance(options, dict)
            or set(options) - {"include_usage"}
            or not isinstance(options.get("include_usage", False), bool)
        ):
            raise APIError(
                400, "'stream_options' must be an object like {'include_usage': true}",
                "stream_options",
            )  # fmt: skip
        job.include_usage = options.get("include_usage", False)
    return job


def _reject_unknown(body: dict[str, Any], known: set[str]) -> None:
    unknown = sorted(set(body) - known)
    if unknown:
        raise APIError(400, f"unsupported field(s): {', '.join(unknown)}", unknown[0])
