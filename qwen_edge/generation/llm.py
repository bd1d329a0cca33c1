"""The public face of generation: `load` a model and get an `LLM` that generates and chats.

`load` picks the backend from the path (a `.qe` model file runs on the native runtime, an
`.onnx` graph on onnxruntime, a checkpoint folder on the numpy reference); the tokenizer, chat
template and generation defaults come with the model (`ModelAssets`, read from the model file's
header, the graph's metadata and the tokenizer.json beside it, or the checkpoint's files).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..backends import Backend
from ..errors import CheckpointError, GenerationConfigError, QwenEdgeError, TokenizerError
from ..formats.model_file import ModelFile
from .chat_template import IM_START, ChatTemplate, Message
from .loop import (
    GenerationResponse,
    GenerationResult,
    collect,
    counting,
    fit_prompt,
    prefill,
    stream_generate,
)
from .prefix_cache import DEFAULT_CACHE_MB, PrefixCache, restore_state, snapshot_state
from .settings import GenerationConfig
from .speculative import prefill_for_speculation, supports_speculation
from .tokenizer import Tokenizer, load_tokenizer


def require_tokenizer(tokenizer: Tokenizer | None, source: str) -> Tokenizer:
    """`tokenizer`, or a TokenizerError saying the model at `source` has none."""
    if tokenizer is None:
        raise TokenizerError(
            f"{source} has no tokenizer.json, so it takes and gives token ids only"
        )
    return tokenizer


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
        return require_tokenizer(self.tokenizer, self.source)

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

    Keeps prompt-prefix snapshots in a `PrefixCache` (generation/prefix_cache.py) at chat
    boundaries: just before the second `<|im_start|>` of a prompt (after the system prompt and
    tools, which other conversations share) and just before its last one (after the finished
    turns: where a chat's next prompt stops sharing tokens with it, since the template
    re-renders the previous answer without its empty think block). A new prompt continues a
    copy of the longest cached prefix it starts with instead of starting over; the logits are
    the same either way. A speculating prompt's snapshots also keep the MTP head's part
    (docs/speculative.md, "With the prefix cache").
    """

    def __init__(
        self,
        model: Backend,
        assets: ModelAssets,
        *,
        load_time: tuple[float, float] = (0.0, 0.0),
        prefix_cache: PrefixCache | None = None,
    ):
        self.model = model
        self.tokenizer = assets.tokenizer
        self.chat_template = assets.chat_template
        self.generation_config = assets.generation
        self.source = assets.source
        self.load_time = load_time
        self.prefix_cache = PrefixCache() if prefix_cache is None else prefix_cache

    @property
    def assets(self) -> ModelAssets:
        return ModelAssets(self.tokenizer, self.chat_template, self.generation_config, self.source)

    def with_model(self, model: Backend) -> LLM:
        """This LLM over another model object (a wrapper of its model: the serving scheduler's
        batching proxy, a test's gate), sharing the tokenizer, defaults and prefix cache."""
        return LLM(model, self.assets, load_time=self.load_time, prefix_cache=self.prefix_cache)

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
        return require_tokenizer(self.tokenizer, self.source)

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
        progress: Callable[[int, int], None] | None = None,
        **overrides: Any,
    ) -> GenerationResult | Iterator[GenerationResponse]:
        """Continues `prompt` (text, encoded as ordinary text unless `allowed_special`, or ids).

        Args:
            prompt: the text or token ids to continue.
            stream: return an iterator of `GenerationResponse` instead of the result.
            config: settings instead of the model's defaults; `overrides` change single fields
                (`max_tokens`, `temperature`, `stop`, `seed`, ...).
            progress: called after each prefill chunk with the prompt tokens evaluated so far
                and the number to evaluate (those a prefix-cache hit restores not counted).

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
        responses = self._stream(ids, config, progress)
        return responses if stream else collect(responses, ids)

    def chat(
        self,
        messages: Sequence[Message],
        *,
        stream: bool = False,
        tools: Sequence[Mapping[str, Any]] | None = None,
        enable_thinking: bool | None = None,
        config: GenerationConfig | None = None,
        progress: Callable[[int, int], None] | None = None,
        **overrides: Any,
    ) -> GenerationResult | Iterator[GenerationResponse]:
        """Answers a conversation as the assistant (the model's chat template).

        Args:
            messages: `{"role": "system"|"user"|"assistant"|"tool", "content": ...}` dicts.
            stream: return an iterator of `GenerationResponse` instead of the result.
            tools: JSON schemas of tools the model may call.
            enable_thinking: True to let the model reason in a `<think>` block first; the small
                Qwen3.5 models default to off.
            config, progress, overrides: as in `generate`.

        Raises:
            ChatTemplateError: invalid messages.
            ContextLengthError: the conversation does not fit the context.
        """
        ids = self.apply_chat_template(messages, tools=tools, enable_thinking=enable_thinking)
        config = (config or self.generation_config).replace(**overrides)
        responses = self._stream(ids, config, progress)
        return responses if stream else collect(responses, ids)

    def _stream(
        self,
        ids: list[int],
        config: GenerationConfig,
        progress: Callable[[int, int], None] | None = None,
    ) -> Iterator[GenerationResponse]:
        # Validate and fit eagerly (errors at the call, not at the first next()), then stream.
        fitted = fit_prompt(ids, self.context, config.max_tokens, config.truncate)
        return self._stream_fitted(fitted, config.replace(truncate=False), progress)

    def _stream_fitted(
        self,
        ids: list[int],
        config: GenerationConfig,
        progress: Callable[[int, int], None] | None = None,
    ) -> Iterator[GenerationResponse]:
        start = time.perf_counter()
        cached, state = 0, None
        # A speculating prompt needs the MTP head's part of a snapshot (its cache and the last
        # hidden state: docs/speculative.md): it resumes only from head-ready snapshots and
        # leaves head-ready ones, replacing plain snapshots of the same prefixes.
        spec = config.speculates and supports_speculation(self.model)
        usable = (lambda snap: bool(getattr(snap, "mtp_ready", False))) if spec else None
        hit = self.prefix_cache.lookup(ids, usable=usable)
        if hit is not None:
            cached, state = hit[0], restore_state(self.model, hit[1])
        reused = cached
        if state is None:
            state = self.model.new_state()
        tick = counting(progress, len(ids) - reused) if progress is not None else None
        if self.prefix_cache.enabled:
            for cut in chat_boundaries(ids):
                if cut > cached:
                    if spec:
                        prefill_for_speculation(
                            self.model,
                            ids[cached:cut],
                            state,
                            slots=config.draft_tokens,
                            progress=tick,
                        )
                    else:
                        prefill(self.model, ids[cached:cut], state, progress=tick)
                    self.prefix_cache.put(ids[:cut], snapshot_state(state), replace=spec)
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
            progress=tick,
        )

    def __repr__(self) -> str:
        backend = type(self.model).__name__
        tok = self.tokenizer.backend_name if self.tokenizer else "none"
        return f"LLM({self.source!r}, backend={backend}, tokenizer={tok})"


def chat_boundaries(ids: Sequence[int]) -> list[int]:
    """Where `LLM` snapshots a prompt (see its docstring): the positions of its second and of
    its last `<|im_start|>`, ascending, without duplicates."""
    starts = [i for i, t in enumerate(ids) if t == IM_START and i > 0]
    return sorted({starts[0], starts[-1]}) if starts else []


BACKENDS = ("auto", "native", "onnxruntime", "reference")


def load(
    path: str | Path,
    *,
    threads: int | None = None,
    context: int | None = None,
    kv_cache: str = "f16",
    backend: str = "auto",
    tokenizer_backend: str = "auto",
    cache_mb: float = DEFAULT_CACHE_MB,
) -> LLM:
    """Loads a model for generation.

    Args:
        path: a qwen-edge model file (`.qe`, native runtime) or a Hugging Face checkpoint folder
            (numpy reference backend: exact but slow, for tests and small models).
        threads: worker threads of the native runtime (default: all cores).
        context: the most tokens a generation may hold (default: the model's maximum).
        kv_cache: the native runtime's KV cache: "f16" (default), "f32", "q8" (int8, 0.6x
            the memory of f16, for long contexts) or "q4" (4-bit, 0.3x, for the longest).
        backend: "auto" (by path), "native", "onnxruntime" or "reference".
        tokenizer_backend: "auto", "tokenizers" or "python" (see `generation/tokenizer.py`).
        cache_mb: megabytes of prompt-prefix snapshots to keep (`PrefixCache`); 0 keeps none.

    Returns:
        An `LLM`.

    Raises:
        QwenEdgeError (CheckpointError, ModelFileError, TokenizerError, ...): unreadable input.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    for name, value in (("threads", threads), ("context", context)):
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 2**31
        ):
            raise GenerationConfigError(
                f"{name} must be an integer in 1..{2**31}, got {value!r}", name
            )
    path = Path(path)
    start = time.perf_counter()
    if path.is_dir():
        if backend == "native":
            raise QwenEdgeError(
                f"{path} is a checkpoint folder; the native runtime runs model files: "
                "convert it with `qwen-edge export` first, or use backend='reference'"
            )
        from ..backends.reference import ReferenceModel

        assets = ModelAssets.from_checkpoint(path, tokenizer_backend)
        model: Backend = ReferenceModel.from_checkpoint(path, context=context)
    elif path.is_file() and (path.suffix == ".onnx" or backend == "onnxruntime"):
        if backend not in ("auto", "onnxruntime"):
            raise QwenEdgeError(f"{path}: an ONNX graph runs on the onnxruntime backend")
        model, assets = _load_onnx(path, threads, context, tokenizer_backend)
    elif path.is_file():
        if backend == "reference":
            raise QwenEdgeError(f"{path}: the reference backend loads checkpoint folders only")
        model, assets = _load_model_file(path, threads, context, kv_cache, tokenizer_backend)
    else:
        raise QwenEdgeError(
            f"{path} does not exist (expected a .qe model file or a checkpoint folder)"
        )
    limit = model.config.max_position_embeddings
    if context is not None and context > limit:
        raise GenerationConfigError(
            f"context must be at most {limit} tokens (the model's max_position_embeddings), "
            f"got {context}", "context",
        )  # fmt: skip
    if cache_mb < 0:
        raise ValueError(f"cache_mb must be >= 0, not {cache_mb}")
    cache = PrefixCache(int(cache_mb * 2**20))
    return LLM(model, assets, load_time=(start, time.perf_counter()), prefix_cache=cache)


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
    if path.is_file() and path.suffix == ".onnx":
        return _load_onnx(path, 1, None, tokenizer_backend)[1]
    if path.is_file():
        return _model_file_assets(path, tokenizer_backend)
    raise QwenEdgeError(
        f"{path} does not exist (expected a model file, checkpoint folder or tokenizer.json)"
    )


def _model_file_assets(path: Path, tokenizer_backend: str) -> ModelAssets:
    # The model file (docs/model-file.md) embeds tokenizer.json as a blob and the chat template
    # and generation defaults in its header: ModelAssets.from_parts takes exactly those.
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
    from ..backends.native import Model

    assets = _model_file_assets(path, tokenizer_backend)
    model = Model.load(path, threads=threads, context=context, kv_cache=kv_cache)
    return model, assets


def _load_onnx(
    path: Path, threads: int | None, context: int | None, tokenizer_backend: str
) -> tuple[Backend, ModelAssets]:
    # The exporter keeps the model file's header in the graph's metadata and writes
    # tokenizer.json beside the graph (docs/onnx.md).
    from ..backends.onnx_runtime import OnnxModel

    model = OnnxModel.load(path, threads=threads, context=context)
    tokenizer = path.parent / "tokenizer.json"
    assets = ModelAssets.from_parts(
        str(path),
        tokenizer_json=tokenizer.read_bytes() if tokenizer.is_file() else None,
        chat_template=model.header.get("chat_template"),
        generation=model.header.get("generation"),
        tokenizer_backend=tokenizer_backend,
    )
    return model, assets
