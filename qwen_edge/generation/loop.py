"""The one generation loop: generate_step → stream_generate → generate.

One loop serves the `LLM` facade and so the CLI, the server and the benchmarks (mlx-lm
`mlx_lm/generate.py`):

* `generate_step` prefills the prompt and yields (token id, logprob) pairs, running the model
  for the next token only when the caller asks for it, so closing the generator (or Ctrl-C)
  stops at once and wastes no forward pass;
* `stream_generate` encodes the prompt, checks it against the context, detokenizes the stream
  (never half a UTF-8 character), applies the stop rules (the model's end tokens, stop strings
  across token boundaries, the token limit, the end of the context) and yields
  `GenerationResponse`s carrying timings (`Stats`, named after executorch's runner stats);
* `generate` collects a stream into a `GenerationResult`.

The model is any `backends.Backend` (the native runtime or the numpy reference).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backends import Backend
from ..errors import ContextLengthError, MemoryLimitError, QwenEdgeError, TokenizerError
from .sampling import Sampler
from .settings import GenerationConfig
from .speculative import SpeculativeStats, speculative_step, supports_speculation
from .tokenizer import StopStrings, StreamingDetokenizer, Tokenizer

log = logging.getLogger(__name__)

PREFILL_CHUNK = 512  # prompt tokens per forward call: bounds memory, lets Ctrl-C in between
# Called after each prefill chunk with the number of prompt tokens it evaluated: a long prompt
# takes minutes on a board, and the CLI shows how far it is.
Progress = Callable[[int], None]


def counting(progress: Callable[[int, int], None], total: int) -> Progress:
    """Per-chunk counts -> `progress(done, total)`, `total` the tokens of every prefill the
    caller will run (a request's prefills make one total)."""
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        progress(done, total)

    return tick


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
    speculative: dict[str, Any] | None = None  # SpeculativeStats.to_dict() when it ran

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
            **({"speculative": self.speculative} if self.speculative is not None else {}),
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
def prefill(
    model: Backend,
    tokens: Sequence[int],
    state: Any,
    chunk: int = PREFILL_CHUNK,
    progress: Progress | None = None,
) -> np.ndarray:
    """Feeds `tokens` into `state` in chunks; returns the logits after the last one."""
    if not tokens:
        raise ValueError("prefill needs at least one token")
    logits = None
    for start in range(0, len(tokens), chunk):
        part = list(tokens[start : start + chunk])
        logits = model.forward(part, state)
        if progress is not None:
            progress(len(part))
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
    progress: Progress | None = None,
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
        progress: called after each prefill chunk with the tokens it evaluated.

    Yields:
        (token, logprob). The model runs on a token only when the next one is requested.
    """
    state = model.new_state() if state is None else state
    logits = prefill(model, prompt, state, progress=progress)
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
    progress: Progress | None = None,
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
        progress: called after each prefill chunk with the prompt tokens it evaluated.

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
    spec_stats: SpeculativeStats | None = None

    def sample(logits: np.ndarray) -> tuple[int, float | None]:
        nonlocal sampler
        t0 = time.perf_counter()
        if sampler is None:  # sized by the logits: the model's rows, not the tokenizer's ids
            sampler = Sampler(
                config.sampling,
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
            speculative=spec_stats.to_dict() if spec_stats is not None else None,
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
    on_prefill = lambda: timing.__setitem__("prompt_eval_end", time.perf_counter())  # noqa: E731
    # Speculation gives the tokens of plain decoding; it runs where it can (a model with an
    # MTP head, a fresh or head-ready state), else plain decoding.
    if config.speculates and supports_speculation(model, state):
        spec_stats = SpeculativeStats()
        steps = speculative_step(
            model,
            todo,
            sample,
            state=state,
            context=context,
            draft_tokens=config.draft_tokens,
            on_prefill=on_prefill,
            stats=spec_stats,
            progress=progress,
        )
    else:
        steps = generate_step(
            model,
            todo,
            sample,
            state=state,
            context=context,
            on_prefill=on_prefill,
            progress=progress,
        )
    n = 0
    try:
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
        except MemoryLimitError as e:
            if n == 0:  # the prompt itself cannot be held: refused, as one over the context
                raise
            # The state cannot grow: the answer so far stands, ended as at a full context.
            log.warning("generation stopped after %d tokens: %s", n, e)
        # generate_step ended: the context (or the memory for it) is full
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
