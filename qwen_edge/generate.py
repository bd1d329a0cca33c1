"""The generation loop and the public API: `load`, `LLM`; generate_step → stream_generate → generate

One loop serves the CLI, the server and the benchmarks (mlx-lm `mlx_lm/generate.py`):

* `generate_step` prefills the prompt and yields (token id, logprob) pairs, running the model
  for the next token only when the caller asks for it, so closing the generator (or Ctrl-C)
  stops at once and wastes no forward pass;
* `stream_generate` encodes the prompt, checks it against the context, detokenizes the stream
  (never half a UTF-8 character), applies the stop rules (the model's end tokens, stop strings
  across token boundaries, the token limit, the end of the context) and yields
  `GenerationResponse`s carrying timings (`Stats`, named after executorch's runner stats);
* `generate` collects a stream into a `GenerationResult`.

A backend is anything with `new_state()` (a state with `.position` and `.copy()`),
`forward(tokens, state, *, all_logits=False)` and `logits(tokens)`: the numpy
`ReferenceModel` today, the native `runtime.Model` next. `load` picks it from the path; the
tokenizer, chat template and generation defaults come with the model (`ModelAssets`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .chat import ChatTemplate, Message
from .errors import (
    CheckpointError,
    ContextLengthError,
    GenerationConfigError,
    QwenEdgeError,
    TokenizerError,
)
from .sampling import Sampler, SamplingParams
from .tokenizer import StopStrings, StreamingDetokenizer, Tokenizer, load_tokenizer

log = logging.getLogger(__name__)

# Spec §5.1: chat generation ends on <|im_end|> (tokenizer eos) and <|endoftext|> (config eos).
IM_END, END_OF_TEXT, IM_START = 248046, 248044, 248045
DEFAULT_STOP_TOKENS = (IM_END, END_OF_TEXT)
PREFILL_CHUNK = 512  # prompt tokens per forward call: bounds memory, lets Ctrl-C in between


# --- configuration ------------------------------------------------------------------------------
@dataclass(frozen=True)
class GenerationConfig:
    """Sampling and stopping settings of one generation.

    The defaults are the Qwen3.5 cards' non-thinking "general" settings (spec §5.3); a model's
    `generation_config.json` overrides them (`from_hf`), and call arguments override both.

    Attributes:
        max_tokens: most tokens to generate.
        temperature, top_k, top_p, min_p, repetition_penalty, presence_penalty,
        frequency_penalty, logit_bias, seed: see `sampling.SamplingParams`.
        stop: stop strings; the text ends before the first one found.
        stop_token_ids: tokens that end the generation (not part of the text).
        truncate: if the prompt does not fit the context, drop its oldest tokens instead of
            raising ContextLengthError.
        skip_special_tokens: leave control tokens (`<|im_start|>` ...) out of the text.
        logprobs: report each token's log-probability (costs a pass over the vocabulary).
    """

    max_tokens: int = 512
    temperature: float = 0.7
    top_k: int = 20
    top_p: float = 0.8
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 1.5
    frequency_penalty: float = 0.0
    logit_bias: Mapping[int, float] = field(default_factory=dict)
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = DEFAULT_STOP_TOKENS
    truncate: bool = False
    skip_special_tokens: bool = True
    logprobs: bool = False

    def __post_init__(self) -> None:
        if self.max_tokens < 0:
            raise GenerationConfigError(f"max_tokens must be >= 0, got {self.max_tokens}")
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        self.sampling()  # validates the sampling fields

    def sampling(self) -> SamplingParams:
        """The sampler settings."""
        return SamplingParams(
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            min_p=self.min_p,
            repetition_penalty=self.repetition_penalty,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            logit_bias=dict(self.logit_bias),
            seed=self.seed,
        )

    def replace(self, **overrides: Any) -> GenerationConfig:
        """A copy with the given fields changed; None values are ignored (handy for CLIs).

        Raises:
            GenerationConfigError: an unknown field or a value out of range.
        """
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise GenerationConfigError(f"unknown generation settings: {', '.join(unknown)}")
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})

    @classmethod
    def from_hf(
        cls, config: Mapping[str, Any], base: GenerationConfig | None = None
    ) -> GenerationConfig:
        """Reads a Hugging Face `generation_config.json` dict (unknown keys are ignored).

        `do_sample: false` means greedy; `eos_token_id` adds stop tokens to the default two;
        `max_new_tokens` sets `max_tokens`.
        """
        base = base or cls()
        values: dict[str, Any] = {}
        for key in ("temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty"):
            if isinstance(config.get(key), (int, float)):
                values[key] = float(config[key])
        if isinstance(config.get("frequency_penalty"), (int, float)):
            values["frequency_penalty"] = float(config["frequency_penalty"])
        if isinstance(config.get("top_k"), int):
            values["top_k"] = int(config["top_k"])
        if isinstance(config.get("max_new_tokens"), int):
            values["max_tokens"] = int(config["max_new_tokens"])
        if config.get("do_sample") is False:
            values["temperature"] = 0.0
        eos = config.get("eos_token_id")
        eos_ids = [eos] if isinstance(eos, int) else [e for e in (eos or []) if isinstance(e, int)]
        values["stop_token_ids"] = tuple(dict.fromkeys([*base.stop_token_ids, *eos_ids]))
        try:
            return dataclasses.replace(base, **values)
        except GenerationConfigError as e:
            raise GenerationConfigError(f"generation_config.json: {e}") from e


# --- results ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Stats:
    """Timings and counts of one generation (executorch `extension/llm/runner/stats.h`).

    Times are `time.perf_counter()` seconds; the properties give the usual rates.
    """

    inference_start: float
    prompt_eval_end: float
    first_token: float
    inference_end: float
    sampling_time: float
    num_prompt_tokens: int
    num_cached_tokens: int
    num_generated_tokens: int
    model_load_start: float = 0.0
    model_load_end: float = 0.0

    @property
    def time_to_first_token(self) -> float:
        return self.first_token - self.inference_start

    @property
    def prompt_tokens_per_second(self) -> float:
        evaluated = self.num_prompt_tokens - self.num_cached_tokens
        elapsed = self.prompt_eval_end - self.inference_start
        return evaluated / elapsed if elapsed > 0 else 0.0

    @property
    def generation_tokens_per_second(self) -> float:
        # Tokens after the first, over the time after it (the first comes from the prefill).
        elapsed = self.inference_end - self.first_token
        return (
            (self.num_generated_tokens - 1) / elapsed
            if self.num_generated_tokens > 1 and elapsed > 0
            else 0.0
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.num_prompt_tokens,
            "cached_prompt_tokens": self.num_cached_tokens,
            "generated_tokens": self.num_generated_tokens,
            "time_to_first_token_s": self.time_to_first_token,
            "prompt_tokens_per_s": self.prompt_tokens_per_second,
            "generation_tokens_per_s": self.generation_tokens_per_second,
            "sampling_time_s": self.sampling_time,
            "total_time_s": self.inference_end - self.inference_start,
            "load_time_s": self.model_load_end - self.model_load_start,
        }


@dataclass(frozen=True)
class GenerationResponse:
    """One step of `stream_generate`.

    Attributes:
        text: new text since the previous response (may be empty while a character or a
            possible stop string is incomplete).
        token: the token of this step, or None for the closing response of a stop or limit.
        logprob: its log-probability under the model (before sampling settings), if asked
            for with `logprobs=True`.
        finish_reason: None while generating; then "stop" (end token or stop string) or
            "length" (token limit or full context).
        stop: the stop string or stop token id that ended the generation, if any.
        stats: timings so far.
    """

    text: str
    token: int | None
    logprob: float | None
    finish_reason: str | None
    stop: str | int | None
    stats: Stats


@dataclass(frozen=True)
class GenerationResult:
    """A finished generation: text, ids, why it ended, timings."""

    text: str
    tokens: list[int]
    logprobs: list[float] | None
    finish_reason: str
    stop: str | int | None
    stats: Stats
    prompt_tokens: list[int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "tokens": self.tokens,
            "finish_reason": self.finish_reason,
            "stop": self.stop,
            "stats": self.stats.to_dict(),
        }


# --- the loop -----------------------------------------------------------------------------------
class Backend(Protocol):
    """What generation needs from a model (ReferenceModel, runtime.Model)."""

    def new_state(self) -> Any: ...

    def forward(
        self, tokens: Sequence[int], state: Any, *, all_logits: bool = False
    ) -> np.ndarray: ...

    def logits(self, tokens: Sequence[int]) -> np.ndarray: ...


def prefill(
    model: Backend, tokens: Sequence[int], state: Any, chunk: int = PREFILL_CHUNK
) -> np.ndarray:
    """Feeds `tokens` into `state` in chunks; returns the logits after the last one."""
    if not tokens:
        raise ValueError("prefill needs at least one token")
    logits = None
    for start in range(0, len(tokens), chunk):
        logits = model.forward(list(tokens[start : start + chunk]), state)
    assert logits is not None
    return logits


def generate_step(
    model: Backend,
    prompt: Sequence[int],
    sampler: Callable[[np.ndarray], tuple[int, float | None]],
    *,
    state: Any = None,
    context: int | None = None,
    on_prefill: Callable[[], None] | None = None,
) -> Iterator[tuple[int, float | None]]:
    """Yields generated (token id, logprob) pairs, forever or until the context is full.

    Args:
        model: the backend.
        prompt: ids to feed first (at least one).
        sampler: logits -> (token, logprob), e.g. a `sampling.Sampler`.
        state: a state to continue (its tokens precede `prompt`); a new one if None.
        context: the most tokens the state may hold; the generator ends when the next token
            would not fit.
        on_prefill: called once the prompt has been evaluated (for timing).

    Yields:
        (token, logprob). The model runs on a token only when the next one is requested.
    """
    state = model.new_state() if state is None else state
    logits = prefill(model, prompt, state)
    if on_prefill is not None:
        on_prefill()
    while True:
        token, logprob = sampler(logits)
        yield token, logprob
        if context is not None and state.position + 1 > context:
            return
        logits = model.forward([token], state)


def fit_prompt(
    prompt: list[int], context: int | None, max_tokens: int, truncate: bool
) -> list[int]:
    """Checks that `prompt` fits the context; with `truncate`, keeps its newest tokens.

    Truncation keeps room for `max_tokens` new tokens, but at least half the context of prompt.

    Raises:
        ContextLengthError: the prompt does not fit and `truncate` is off.
    """
    if context is None or len(prompt) <= context:
        return prompt
    if not truncate:
        raise ContextLengthError(
            f"the prompt has {len(prompt)} tokens but the context holds {context}; shorten it, "
            "load the model with a larger context, or pass truncate=True (--truncate) to drop "
            "the oldest tokens"
        )
    keep = max(context - max(max_tokens, 1), context // 2, 1)
    log.info("prompt of %d tokens truncated to its last %d", len(prompt), keep)
    return prompt[-keep:]


def stream_generate(
    model: Backend,
    tokenizer: Tokenizer | None,
    prompt: str | Sequence[int],
    config: GenerationConfig | None = None,
    *,
    context: int | None = None,
    state: Any = None,
    cached_tokens: int = 0,
    allowed_special: bool = False,
    reused_tokens: int | None = None,
    start_time: float | None = None,
    load_time: tuple[float, float] = (0.0, 0.0),
    **overrides: Any,
) -> Iterator[GenerationResponse]:
    """Generates from `prompt`, yielding one `GenerationResponse` per token and a last one.

    Args:
        model: the backend.
        tokenizer: needed for text prompts and text output; with None, pass ids and read
            `token` from the responses (text stays empty).
        prompt: text (encoded as ordinary text unless `allowed_special`) or token ids.
        config: settings; `overrides` change single fields (e.g. `max_tokens=20`).
        context: the context length (the model's when None and it has `.context`).
        state: continue this state, which already holds the first `cached_tokens` tokens of
            the prompt (the prompt is still given from its beginning).
        allowed_special: let text prompts contain control tokens (`<|im_start|>` ...).
        reused_tokens: how many of `cached_tokens` came from an earlier request (for the
            stats; default all of them).
        start_time, load_time: `time.perf_counter()` stamps for the stats when the request
            started earlier (default: now) and when the model was loaded.

    Yields:
        GenerationResponse; the last has `finish_reason` set. Ctrl-C or closing the generator
        stops at once; the model stays usable (only `state` is left mid-way).

    Raises:
        ContextLengthError: the prompt does not fit (and `config.truncate` is off).
    """
    start = time.perf_counter() if start_time is None else start_time
    config = (config or GenerationConfig()).replace(**overrides)
    if context is None:
        context = getattr(model, "context", None)
    ids = _prompt_ids(tokenizer, prompt, allowed_special)
    fitted = fit_prompt(ids, context, config.max_tokens, config.truncate)
    if state is None or len(fitted) != len(ids):
        state, cached_tokens = None, 0
    reused = cached_tokens if reused_tokens is None else min(reused_tokens, cached_tokens)
    todo = fitted[cached_tokens:]
    if not todo:
        raise ValueError("a continued state needs at least one new prompt token")
    sampler: Sampler | None = None
    timing = {"prompt_eval_end": 0.0, "first_token": 0.0, "sampling": 0.0}

    def sample(logits: np.ndarray) -> tuple[int, float | None]:
        nonlocal sampler
        t0 = time.perf_counter()
        if sampler is None:  # sized by the logits: the model's rows, not the tokenizer's ids
            sampler = Sampler(
                config.sampling(),
                int(logits.shape[-1]),
                valid_vocab=tokenizer.vocab_size if tokenizer is not None else None,
                prompt=fitted,
                logprobs=config.logprobs,
            )
        got = sampler(logits)
        timing["sampling"] += time.perf_counter() - t0
        return got

    def stats(n: int) -> Stats:
        now = time.perf_counter()
        return Stats(
            inference_start=start,
            prompt_eval_end=timing["prompt_eval_end"] or now,
            first_token=timing["first_token"] or now,
            inference_end=now,
            sampling_time=timing["sampling"],
            num_prompt_tokens=len(fitted),
            num_cached_tokens=reused,
            num_generated_tokens=n,
            model_load_start=load_time[0],
            model_load_end=load_time[1],
        )

    detok = (
        StreamingDetokenizer(tokenizer, skip_special_tokens=config.skip_special_tokens)
        if tokenizer is not None
        else None
    )
    stops = StopStrings(config.stop)

    def drain() -> str:  # the text still held back when the generation ends
        return (stops.feed(detok.finish()) if detok is not None else "") + stops.flush()

    if config.max_tokens == 0:
        yield GenerationResponse("", None, None, "length", None, stats(0))
        return
    stop_ids = set(config.stop_token_ids)
    steps = generate_step(
        model,
        todo,
        sample,
        state=state,
        context=context,
        on_prefill=lambda: timing.__setitem__("prompt_eval_end", time.perf_counter()),
    )
    n = 0
    try:
        for token, logprob in steps:
            if n == 0:
                timing["first_token"] = time.perf_counter()
            if token in stop_ids:
                yield GenerationResponse(drain(), None, None, "stop", token, stats(n))
                return
            n += 1
            text = stops.feed(detok.add(token)) if detok is not None else ""
            if stops.matched is None and n >= config.max_tokens:
                text += drain()
                reason = "length" if stops.matched is None else "stop"
                yield GenerationResponse(text, token, logprob, reason, stops.matched, stats(n))
                return
            if stops.matched is not None:
                yield GenerationResponse(text, token, logprob, "stop", stops.matched, stats(n))
                return
            yield GenerationResponse(text, token, logprob, None, None, stats(n))
        # generate_step ended: the context is full
        text = drain()
        reason = "length" if stops.matched is None else "stop"
        yield GenerationResponse(text, None, None, reason, stops.matched, stats(n))
    finally:
        steps.close()


def _prompt_ids(
    tokenizer: Tokenizer | None, prompt: str | Sequence[int], allowed_special: bool
) -> list[int]:
    if isinstance(prompt, str):
        if tokenizer is None:
            raise TokenizerError("this model has no tokenizer: pass token ids, not text")
        ids = tokenizer.encode(prompt, allowed_special=allowed_special)
    else:
        ids = [int(t) for t in prompt]
    if not ids:
        raise ValueError("the prompt is empty: give at least one token")
    return ids


def generate(
    model: Backend,
    tokenizer: Tokenizer | None,
    prompt: str | Sequence[int],
    config: GenerationConfig | None = None,
    *,
    allowed_special: bool = False,
    **kwargs: Any,
) -> GenerationResult:
    """Runs `stream_generate` to the end and returns the whole result."""
    ids = _prompt_ids(tokenizer, prompt, allowed_special)
    return collect(stream_generate(model, tokenizer, ids, config, **kwargs), prompt_tokens=ids)


def collect(stream: Iterator[GenerationResponse], prompt_tokens: list[int]) -> GenerationResult:
    """Joins a stream of responses into a `GenerationResult`."""
    text: list[str] = []
    tokens: list[int] = []
    logprobs: list[float] | None = []
    last = None
    for last in stream:
        text.append(last.text)
        if last.token is not None:
            tokens.append(last.token)
            if last.logprob is None:
                logprobs = None
            elif logprobs is not None:
                logprobs.append(float(last.logprob))
    if last is None or last.finish_reason is None:
        raise QwenEdgeError("the generation stream ended without a finish reason")
    return GenerationResult(
        text="".join(text),
        tokens=tokens,
        logprobs=logprobs,
        finish_reason=last.finish_reason,
        stop=last.stop,
        stats=last.stats,
        prompt_tokens=prompt_tokens,
    )


# --- what comes with a model --------------------------------------------------------------------
@dataclass
class ModelAssets:
    """Everything besides the weights: tokenizer, chat template, generation defaults."""

    tokenizer: Tokenizer | None
    chat_template: ChatTemplate | None
    generation: GenerationConfig
    source: str

    def require_tokenizer(self) -> Tokenizer:
        """The tokenizer, or a TokenizerError saying the model has none."""
        if self.tokenizer is None:
            raise TokenizerError(
                f"{self.source} has no tokenizer.json, so it takes and gives token ids only"
            )
        return self.tokenizer

    @classmethod
    def from_parts(
        cls,
        source: str,
        *,
        tokenizer_json: str | bytes | None,
        chat_template: str | None,
        generation: Mapping[str, Any] | None,
        tokenizer_backend: str = "auto",
    ) -> ModelAssets:
        """From the raw pieces, as a checkpoint folder or a model file holds them."""
        tokenizer = (
            Tokenizer.from_json(tokenizer_json, tokenizer_backend)
            if tokenizer_json is not None
            else None
        )
        template = ChatTemplate(chat_template) if chat_template else None
        gen = GenerationConfig.from_hf(generation) if generation else GenerationConfig()
        return cls(tokenizer, template, gen, source)

    @classmethod
    def from_checkpoint(cls, folder: str | Path, tokenizer_backend: str = "auto") -> ModelAssets:
        """Reads `tokenizer.json`, `chat_template.jinja` (or the template in
        `tokenizer_config.json`) and `generation_config.json` from a checkpoint folder; each
        is optional."""
        folder = Path(folder)

        def read_json(name: str) -> Any:
            path = folder / name
            if not path.is_file():
                return None
            try:
                return json.loads(path.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError) as e:
                raise CheckpointError(f"{path}: not valid JSON ({e})") from e

        tokenizer_path = folder / "tokenizer.json"
        template = None
        if (folder / "chat_template.jinja").is_file():
            template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
        else:
            tok_config = read_json("tokenizer_config.json") or {}
            if isinstance(tok_config.get("chat_template"), str):
                template = tok_config["chat_template"]
        try:
            return cls.from_parts(
                str(folder),
                tokenizer_json=tokenizer_path.read_bytes() if tokenizer_path.is_file() else None,
                chat_template=template,
                generation=read_json("generation_config.json"),
                tokenizer_backend=tokenizer_backend,
            )
        except TokenizerError as e:
            raise TokenizerError(f"{tokenizer_path}: {e}") from e


# --- the public object --------------------------------------------------------------------------
class LLM:
    """A loaded model with its tokenizer, chat template and generation defaults.

    Forwards the backend protocol (`new_state`, `forward`, `logits`), so tests and tools can use
    it as a model, and adds text generation and chat.

    Keeps one prompt-prefix snapshot: the state just before the last `<|im_start|>` of the
    previous prompt, which is where a chat's next prompt stops sharing tokens with it (the
    template re-renders the previous answer without its empty think block). A new prompt that
    starts with those tokens continues a copy of that state instead of starting over.
    """

    def __init__(
        self, model: Backend, assets: ModelAssets, *, load_time: tuple[float, float] = (0.0, 0.0)
    ):
        self.model = model
        self.tokenizer = assets.tokenizer
        self.chat_template = assets.chat_template
        self.generation_config = assets.generation
        self.source = assets.source
        self.load_time = load_time
        self._cache: tuple[list[int], Any] | None = None

    # backend protocol
    @property
    def config(self) -> Any:
        return getattr(self.model, "config", None)

    @property
    def context(self) -> int | None:
        return getattr(self.model, "context", None)

    def new_state(self) -> Any:
        return self.model.new_state()

    def forward(self, tokens: Sequence[int], state: Any, *, all_logits: bool = False) -> np.ndarray:
        return self.model.forward(tokens, state, all_logits=all_logits)

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        return self.model.logits(tokens)

    # text
    def _need_tokenizer(self) -> Tokenizer:
        if self.tokenizer is None:
            raise TokenizerError(
                f"{self.source} has no tokenizer.json, so it takes and gives token ids only"
            )
        return self.tokenizer

    def encode(self, text: str, *, allowed_special: bool = False) -> list[int]:
        return self._need_tokenizer().encode(text, allowed_special=allowed_special)

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        return self._need_tokenizer().decode(ids, skip_special_tokens=skip_special_tokens)

    def apply_chat_template(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        enable_thinking: bool | None = None,
        add_generation_prompt: bool = True,
    ) -> list[int]:
        """Prompt ids of a conversation (control-token text in user content stays text)."""
        if self.chat_template is None:
            raise QwenEdgeError(
                f"{self.source} has no chat template; use generate() with a raw prompt"
            )
        return self.chat_template.encode(
            self._need_tokenizer(),
            messages,
            tools=tools,
            enable_thinking=enable_thinking,
            add_generation_prompt=add_generation_prompt,
        )

    # generation
    def generate(
        self,
        prompt: str | Sequence[int],
        *,
        stream: bool = False,
        config: GenerationConfig | None = None,
        allowed_special: bool = False,
        **overrides: Any,
    ) -> GenerationResult | Iterator[GenerationResponse]:
        """Continues `prompt` (text, encoded as ordinary text unless `allowed_special`, or ids).

        Args:
            prompt: the text or token ids to continue.
            stream: return an iterator of `GenerationResponse` instead of the result.
            config: settings instead of the model's defaults; `overrides` change single fields
                (`max_tokens`, `temperature`, `stop`, `seed`, ...).

        Returns:
            A `GenerationResult`, or with `stream` an iterator of responses.

        Raises:
            ContextLengthError: the prompt does not fit the context.
        """
        if isinstance(prompt, str):
            ids = self.encode(prompt, allowed_special=allowed_special)
        else:
            ids = [int(t) for t in prompt]
        config = (config or self.generation_config).replace(**overrides)
        responses = self._stream(ids, config)
        return responses if stream else collect(responses, ids)

    def chat(
        self,
        messages: Sequence[Message],
        *,
        stream: bool = False,
        tools: Sequence[Mapping[str, Any]] | None = None,
        enable_thinking: bool | None = None,
        config: GenerationConfig | None = None,
        **overrides: Any,
    ) -> GenerationResult | Iterator[GenerationResponse]:
        """Answers a conversation as the assistant (the model's chat template).

        Args:
            messages: `{"role": "system"|"user"|"assistant"|"tool", "content": ...}` dicts.
            stream: return an iterator of `GenerationResponse` instead of the result.
            tools: JSON schemas of tools the model may call.
            enable_thinking: True to let the model reason in a `<think>` block first; the small
                Qwen3.5 models default to off.
            config, overrides: as in `generate`.

        Raises:
            ChatTemplateError: invalid messages.
            ContextLengthError: the conversation does not fit the context.
        """
        ids = self.apply_chat_template(messages, tools=tools, enable_thinking=enable_thinking)
        config = (config or self.generation_config).replace(**overrides)
        responses = self._stream(ids, config)
        return responses if stream else collect(responses, ids)

    def _stream(self, ids: list[int], config: GenerationConfig) -> Iterator[GenerationResponse]:
        # Validate and fit eagerly (errors at the call, not at the first next()), then stream.
        fitted = fit_prompt(ids, self.context, config.max_tokens, config.truncate)
        return self._stream_fitted(fitted, config.replace(truncate=False))

    def _stream_fitted(
        self, ids: list[int], config: GenerationConfig
    ) -> Iterator[GenerationResponse]:
        start = time.perf_counter()
        cached, state = 0, None
        if self._cache is not None:
            prefix, snapshot = self._cache
            if len(prefix) < len(ids) and ids[: len(prefix)] == prefix:
                cached, state = len(prefix), snapshot.copy()
        reused = cached
        if state is None:
            state = self.model.new_state()
        # Snapshot before the last <|im_start|> past the reused part (see the class docstring).
        cut = max((i for i in range(cached, len(ids)) if ids[i] == IM_START), default=-1)
        if cut > cached:
            prefill(self.model, ids[cached:cut], state)
            self._cache = (ids[:cut], state.copy())
            cached = cut
        yield from stream_generate(
            self.model,
            self.tokenizer,
            ids,
            config,
            context=self.context,
            state=state,
            cached_tokens=cached,
            reused_tokens=reused,
            start_time=start,
            load_time=self.load_time,
        )

    def __repr__(self) -> str:
        backend = type(self.model).__name__
        tok = self.tokenizer.backend_name if self.tokenizer else "none"
        return f"LLM({self.source!r}, backend={backend}, tokenizer={tok})"


def load(
    path: str | Path,
    *,
    threads: int | None = None,
    context: int | None = None,
    kv_cache: str = "f16",
    backend: str = "auto",
    tokenizer_backend: str = "auto",
) -> LLM:
    """Loads a model for generation.

    Args:
        path: a qwen-edge model file (`.qe`, native runtime) or a Hugging Face checkpoint folder
            (numpy reference backend: exact but slow, for tests and small models).
        threads: worker threads of the native runtime (default: all cores).
        context: the most tokens a generation may hold (default: the model's maximum).
        kv_cache: the native runtime's KV cache: "f16" (default), "f32", or "q8" (int8, 0.6x
            the memory of f16, for long contexts).
        backend: "auto" (by path), "native" or "reference".
        tokenizer_backend: "auto", "tokenizers" or "python" (see `qwen_edge.tokenizer`).

    Returns:
        An `LLM`.

    Raises:
        QwenEdgeError (CheckpointError, ModelFileError, TokenizerError, ...): unreadable input.
    """
    if backend not in ("auto", "native", "reference"):
        raise ValueError(f"backend must be 'auto', 'native' or 'reference', not {backend!r}")
    path = Path(path)
    start = time.perf_counter()
    if path.is_dir():
        if backend == "native":
            raise QwenEdgeError(
                f"{path} is a checkpoint folder; the native runtime runs model files: "
                "convert it with `qwen-edge export` first, or use backend='reference'"
            )
        from .reference import ReferenceModel

        assets = ModelAssets.from_checkpoint(path, tokenizer_backend)
        model: Backend = ReferenceModel.from_checkpoint(path, context=context)
    elif path.is_file():
        if backend == "reference":
            raise QwenEdgeError(f"{path}: the reference backend loads checkpoint folders only")
        model, assets = _load_model_file(path, threads, context, kv_cache, tokenizer_backend)
    else:
        raise QwenEdgeError(
            f"{path} does not exist (expected a .qe model file or a checkpoint folder)"
        )
    return LLM(model, assets, load_time=(start, time.perf_counter()))


def load_assets(path: str | Path, tokenizer_backend: str = "auto") -> ModelAssets:
    """The tokenizer, chat template and generation defaults of a model, without its weights.

    Args:
        path: a model file, a checkpoint folder, or a `tokenizer.json` file.
    """
    path = Path(path)
    if path.is_dir():
        return ModelAssets.from_checkpoint(path, tokenizer_backend)
    if path.is_file() and path.suffix == ".json":
        return ModelAssets(
            load_tokenizer(path, tokenizer_backend), None, GenerationConfig(), str(path)
        )
    if path.is_file():
        return _model_file_assets(path, tokenizer_backend)
    raise QwenEdgeError(
        f"{path} does not exist (expected a model file, checkpoint folder or tokenizer.json)"
    )


def _model_file_assets(path: Path, tokenizer_backend: str) -> ModelAssets:
    # The model file (docs/model-file.md) embeds tokenizer.json as a blob and the chat template
    # and generation defaults in its header: ModelAssets.from_parts takes exactly those.
    try:
        from .modelfile import ModelFile  # type: ignore[attr-defined]
    except ImportError as e:
        raise QwenEdgeError(
            f"{path}: this build cannot read model files yet (no model-file reader); "
            "use a checkpoint folder"
        ) from e
    with ModelFile(path) as mf:
        header = mf.header
        tokenizer_json = mf.blob("tokenizer.json") if "tokenizer.json" in mf.blobs else None
    return ModelAssets.from_parts(
        str(path),
        tokenizer_json=tokenizer_json,
        chat_template=header.get("chat_template"),
        generation=header.get("generation"),
        tokenizer_backend=tokenizer_backend,
    )


def _load_model_file(
    path: Path, threads: int | None, context: int | None, kv_cache: str, tokenizer_backend: str
) -> tuple[Backend, ModelAssets]:
    from . import runtime

    if not hasattr(runtime, "Model"):
        raise QwenEdgeError(
            f"{path}: this build has no native runtime to run model files yet; load a "
            "checkpoint folder with the reference backend"
        )
    assets = _model_file_assets(path, tokenizer_backend)
    model = runtime.Model.load(path, threads=threads, context=context, kv_cache=kv_cache)
    return model, assets
