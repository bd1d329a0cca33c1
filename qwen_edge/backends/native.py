"""The native backend: the Python face of the C++ core, and the only importer of `_core`.

`Model` maps a `.qe` model file (or tensors in memory) and runs the whole forward pass in C++;
`State` is one sequence's caches. Both follow the `backends.Backend` protocol.
"""

from __future__ import annotations

import atexit
import json
import os
import time
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ..errors import (
    ContextLengthError,
    ModelFileError,
    ModelStoppedError,
    QwenEdgeError,
)
from ..formats.config import ModelConfig
from . import memory

try:
    from .. import _core
except ImportError as e:  # a source checkout without a build
    _core = None
    _IMPORT_ERROR: ImportError | None = e
else:
    _IMPORT_ERROR = None


def available() -> bool:
    """Whether this installation has the compiled native core."""
    return _core is not None


def core() -> Any:
    """The compiled extension, or a clear error when this installation has none."""
    if _core is None:
        raise QwenEdgeError(
            "qwen_edge._core, the native core, is not built in this installation "
            f"({_IMPORT_ERROR}); install the package with `pip install .` from the source tree"
        )
    return _core


def cpu_report() -> dict[str, Any]:
    """The CPU features the core detected and the kernel tables it can run here."""
    c = core()
    return {
        **c.cpu_info(),
        "compiled_isas": c.compiled_isas(),
        "available_isas": c.available_isas(),
        "selected_isa": c.selected_isa(),
    }


def check_model_file(path: str, verify: bool = False) -> dict[str, Any]:
    """Validates a model file with the native reader (the one the runtime loads with).

    Returns:
        {"header": the JSON header text (bytes), "file_size": int, "tensors": [entries]}.

    Raises:
        ModelFileError: the file is missing, truncated, corrupt or unsupported.
    """
    try:
        return core().open_model_file(str(path), verify)  # type: ignore[no-any-return]
    except RuntimeError as e:
        raise ModelFileError(str(e)) from None


def quantizer(threads: int | None = None, isa: str = "") -> Any:
    """The C++ export quantizer as a `formats.quant.NativeQuantizer`: byte for byte the numba/numpy
    quantizers' output, on `threads` threads (default: every CPU this process may use). `isa`:
    one of `quantizer_isas()` (default: the best).

    Raises:
        QwenEdgeError: this installation has no native core.
    """
    c = core()
    n = threads or _default_threads()

    def run(
        fmt: str,
        x: np.ndarray,
        rows: int,
        row0: int,
        out: np.ndarray,
        importance: np.ndarray | None = None,
    ) -> bool:
        return bool(c.quantize_into(fmt, x, rows, row0, out, n, isa, importance))

    return run


def quantizer_isas() -> list[str]:
    """The native quantizer's variants on this build and CPU, best first ("avx2", "base")."""
    return list(core().quantizer_isas())


def state_bytes_for(
    config: ModelConfig,
    context: int,
    kv_cache: str = "f16",
    batch: int | None = None,
    threads: int = 1,
) -> int:
    """Bytes a state for `context` tokens takes in a model of `config` (caches and forward
    scratch, `State::bytes_for`), without loading any weights: what `Model.state_bytes` says
    for the loaded model.

    Raises:
        ValueError: a context outside 1..max_position_embeddings or a bad KV type.
    """
    try:
        return int(
            core().state_bytes_for(
                json.dumps(config.to_dict()), context, batch or DEFAULT_BATCH, kv_cache, threads
            )
        )
    except RuntimeError as e:
        raise ValueError(str(e)) from None


# --- the model ----------------------------------------------------------------------------------
DEFAULT_CONTEXT = 4096  # tokens a state holds unless the caller asks for another length
DEFAULT_BATCH = 128  # tokens one native pass processes; longer prompts are split
KV_CACHE_TYPES = ("f16", "f32", "q8", "q4")


def _default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class State:
    """The caches and position of one sequence (KV cache, conv and recurrent states).

    Made by `Model.new_state`; `copy()` snapshots it (the caches up to `position`), so a
    prompt's state can be restored or branched.
    """

    def __init__(self, native: Any, model: Model):
        self._native = native
        self._model = model
        # Positions whose cache rows are resident (written since allocation), and up to which
        # memory was found available (Model._check_growth).
        self._resident = self._checked = self.position

    @property
    def position(self) -> int:
        """Tokens this state has seen."""
        return int(self._native.position)

    @property
    def context(self) -> int:
        """Tokens this state can hold."""
        return int(self._native.context)

    @property
    def kv_type(self) -> str:
        return str(self._native.kv_type)

    @property
    def cache_bytes(self) -> int:
        return int(self._native.cache_bytes)

    @property
    def allocated_bytes(self) -> int:
        """Bytes this state allocated: caches plus forward-pass scratch."""
        return int(self._native.allocated_bytes)

    def copy(self) -> State:
        """An independent snapshot of this state."""
        return State(self._native.copy(), self._model)

    def snapshot(self) -> State:
        """A compact copy: a state whose context is just this state's position (the caches
        a prompt prefix filled, nothing more), for keeping; `restore` it into a full state."""
        native = self._model._native.new_state(max(1, self.position), 1, self.kv_type)
        native.copy_from(self._native)
        return State(native, self._model)

    def restore(self, snapshot: State) -> None:
        """Makes this state equal to `snapshot` (a copy or `snapshot()` of a state of the same
        model, whose position fits this state's context).

        Raises:
            ValueError: the snapshot belongs to another model or does not fit.
        """
        try:
            self._native.copy_from(snapshot._native)
        except RuntimeError as e:
            raise _map_error(e, ValueError) from None
        self._resident = max(self._resident, self.position)

    def reset(self) -> None:
        """Back to position 0, as a fresh state (recurrent and conv states zeroed)."""
        self._native.reset()

    # --- speculative decoding (docs/speculative.md) ---
    def enable_speculation(self, slots: int) -> None:
        """Allocates the MTP head's KV cache and `slots` DeltaNet checkpoints, so a
        `forward(..., checkpoint=True)` of up to slots + 1 tokens can be rolled back."""
        try:
            self._native.enable_speculation(int(slots))
        except RuntimeError as e:
            raise _map_error(e, ValueError) from None

    @property
    def checkpoint_slots(self) -> int:
        return int(self._native.checkpoint_slots)

    def rollback(self, n: int) -> None:
        """Undoes the last `n` tokens of the last checkpointed forward, exactly (as if they
        had never run): reruns the kept tokens' delta rule from the state before it
        (docs/speculative.md). Once per forward (`n` = 0 leaves it possible).

        Raises:
            ValueError: no checkpointed forward covers `n` tokens.
        """
        try:
            self._model._native.rollback(self._native, int(n))
        except RuntimeError as e:
            raise _map_error(e, ValueError) from None

    @property
    def mtp_position(self) -> int:
        """Pairs the MTP head's cache holds."""
        return int(self._native.mtp_position)

    def set_mtp_position(self, position: int) -> None:
        """Truncates the MTP head's cache to `position` pairs."""
        try:
            self._native.set_mtp_position(int(position))
        except RuntimeError as e:
            raise _map_error(e, ValueError) from None

    @property
    def mtp_ready(self) -> bool:
        """Whether speculation can continue from this state: the head's cache holds a pair for
        every position but the last, and the state keeps that last position's hidden state
        (`set_mtp_hidden`). Snapshots and copies keep both."""
        return bool(self._native.mtp_ready)

    @property
    def mtp_hidden(self) -> np.ndarray | None:
        """A copy of the kept hidden state of position - 1 when `mtp_ready`, else None."""
        return self._native.mtp_hidden

    def set_mtp_hidden(self, hidden: np.ndarray) -> None:
        """Keeps the main model's final-normed hidden state of the last position (position -
        1): the head's input for the pair the next token completes."""
        try:
            self._native.set_mtp_hidden(np.ascontiguousarray(hidden, np.float32).reshape(-1))
        except RuntimeError as e:
            raise _map_error(e, ValueError) from None


class Model:
    """The native Qwen3.5 forward pass: the same protocol as `reference.ReferenceModel`.

    `new_state()` makes a state, `forward(tokens, state)` continues it and returns logits,
    `logits(tokens)` runs a fresh state. Generation code can drive either class.
    """

    def __init__(
        self,
        native: Any,
        config: ModelConfig,
        header: dict[str, Any],
        context: int | None,
        kv_cache: str,
        batch: int,
    ):
        if kv_cache not in KV_CACHE_TYPES:
            raise ValueError(
                f"kv_cache must be one of {', '.join(KV_CACHE_TYPES)}, not {kv_cache!r}"
            )
        self._native = native
        self.config = config
        self.header = header
        self.context = int(context or min(DEFAULT_CONTEXT, config.max_position_embeddings))
        self.kv_cache = kv_cache
        self.batch = batch
        _MODELS.add(self)

    # --- construction ---
    @classmethod
    def from_tensors(
        cls,
        config: ModelConfig,
        tensors: dict[str, tuple[str, tuple[int, ...], Any]],
        *,
        threads: int | None = None,
        context: int | None = None,
        isa: str | None = None,
        kv_cache: str = "f16",
        batch: int = DEFAULT_BATCH,
        pin: bool = False,
        spin_us: int = 100,
        header: dict[str, Any] | None = None,
    ) -> Model:
        """A model over tensors in memory: name -> (format, shape, buffer of the stored bytes).

        Names and formats are those of the model file (docs/model-file.md); the buffers are
        used in place and kept alive by the model.

        Raises:
            ModelFileError: a missing tensor or a wrong shape, format or byte size.
        """
        threads = threads or _default_threads()
        try:
            native = core().Model(
                json.dumps(config.to_dict()), tensors, threads, isa or "", pin, spin_us
            )
        except RuntimeError as e:
            raise _map_error(e, ModelFileError) from None
        return cls(native, config, header or {}, context, kv_cache, batch)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        threads: int | None = None,
        context: int | None = None,
        isa: str | None = None,
        *,
        kv_cache: str = "f16",
        batch: int = DEFAULT_BATCH,
        pin: bool = False,
        spin_us: int = 100,
        verify: bool = False,
    ) -> Model:
        """Maps a model file (docs/model-file.md) and builds the native model on it.

        Weights are used in place from the read-only mapping, so loading costs about the
        header's validation. The GIL is released while the file is mapped and checked.

        Args:
            path: the `.qe` model file.
            threads: worker threads including the caller (default: the CPUs this process may
                use).
            context: tokens a new state holds (default 4096, at most the model's limit).
            isa: kernel table tag (default: QWEN_EDGE_ISA, else the best for this CPU).
            kv_cache: "f16" (default), "f32", "q8" keys and values (int8 in blocks of 32
                with a float scale: 1.125 bytes per element, for long contexts) or "q4" (4-bit
                codes, 0.625 bytes per element, for the longest).
            batch: tokens per native pass of a long prompt (scratch is sized by it).
            pin: pin thread i to the i-th allowed CPU.
            spin_us: how long idle workers spin before sleeping.
            verify: also check every tensor's CRC (reads the whole file).

        Raises:
            ModelFileError: the file is missing, corrupt, or describes an unsupported model.
        """
        threads = threads or _default_threads()
        try:
            native = core().Model.load(os.fspath(path), threads, isa or "", pin, spin_us, verify)
        except RuntimeError as e:
            raise _map_error(e, ModelFileError) from None
        header = json.loads(bytes(native.header_text).decode("utf-8"))
        config = ModelConfig.from_dict(header["config"])
        return cls(native, config, header, context, kv_cache, batch)

    # --- properties ---
    @property
    def isa(self) -> str:
        """Tag of the kernel table in use (`avx512_vnni`, `avx2`, `ref`, ...)."""
        return str(self._native.isa)

    @property
    def threads(self) -> int:
        """Threads the forward passes use now (see `set_threads`)."""
        return int(self._native.active_threads)

    @property
    def max_threads(self) -> int:
        """Threads of the pool, the most `set_threads` allows."""
        return int(self._native.threads)

    def set_threads(self, n: int) -> None:
        """Runs the next forward passes on `n` threads (clamped to 1..max_threads); the others
        sleep. Results do not depend on it. The power governor turns this knob."""
        self._native.set_active_threads(int(n))

    def stop(self) -> None:
        """Ends the forward passes running on any thread at their next layer boundary (they
        raise `ModelStoppedError`), and makes every later one raise at once. For shutting
        down: the interpreter's exit does this for every model, then waits for them."""
        self._native.stop()

    @property
    def file_size(self) -> int:
        """Bytes of the model file (0 for a model built from tensors in memory)."""
        return int(self._native.file_size)

    @property
    def decode_weight_bytes(self) -> int:
        """Bytes of weights one decode step reads."""
        return int(self._native.decode_weight_bytes)

    def state_bytes(self, context: int | None = None) -> int:
        """Bytes a new state for `context` tokens allocates (default: the model's context):
        the KV cache of the full-attention layers in this model's KV type, the DeltaNet conv
        and recurrent states, and the scratch of a forward pass (`State::bytes_for`).

        Raises:
            ValueError: a context outside 1..max_position_embeddings.
        """
        try:
            return int(self._native.state_bytes(context or self.context, self.batch, self.kv_cache))
        except RuntimeError as e:
            raise _map_error(e, ValueError) from None

    def max_context_for(self, budget: int) -> int:
        """The longest context whose state fits in `budget` bytes (0 if none does)."""
        return memory.longest_context(self.state_bytes, self.config.max_position_embeddings, budget)

    def fit_context(self, share: float = 0.9) -> int:
        """Sets `context` to the longest (at most the model's limit) whose state fits `share`
        of the memory available now, and returns it: `--context max`.

        Raises:
            ContextLengthError: not even a one-token state fits, or available memory is unknown.
        """
        limit = self.config.max_position_embeddings
        self.context = memory.fitting_context(self.state_bytes, limit, share)
        return self.context

    # --- the protocol ---
    def new_state(self, context: int | None = None) -> State:
        """A fresh state for `context` tokens (default: the model's context).

        Raises:
            ContextLengthError: the state would not fit the memory available now
                (MemAvailable), which would otherwise end in the OOM killer.
            ValueError: a context outside 1..max_position_embeddings.
        """
        context = context or self.context
        limit = self.config.max_position_embeddings
        memory.check_new_state(self.state_bytes, limit, context, self.kv_cache)
        try:
            native = self._native.new_state(context, self.batch, self.kv_cache)
        except RuntimeError as e:
            raise _map_error(e, ValueError) from None
        return State(native, self)

    def forward(
        self,
        tokens: Iterable[int] | np.ndarray,
        state: State,
        *,
        all_logits: bool = False,
        hidden: np.ndarray | None = None,
        checkpoint: bool = False,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """Runs `tokens` after what `state` holds; the GIL is released meanwhile.

        Args:
            hidden: a C-contiguous float32 array of len(tokens) * hidden_size elements that
                receives every position's final-normed hidden state (the MTP head's input).
            checkpoint: keep what `state.rollback(n)` needs to undo up to len(tokens) - 1
                of them (needs `state.enable_speculation`).
            out: a C-contiguous float32 array for the logits (reused instead of a new one).

        Returns:
            float32 logits of the last position [vocab], or [len(tokens), vocab] when
            `all_logits` is set.

        Raises:
            ContextLengthError: the tokens do not fit the state (the state is unchanged).
            MemoryLimitError: the memory their cache rows need is not available (unchanged).
            ValueError: no tokens, or an id outside the vocabulary.
        """
        ids = _token_array(tokens, self.config.vocab_size)
        if state.position + ids.size > state.context:
            raise ContextLengthError(
                f"{state.position} + {ids.size} tokens exceed the context of {state.context} tokens"
            )
        self._check_growth(state, ids.size)
        vocab = self.config.vocab_size
        if out is None:
            out = np.empty((ids.size, vocab) if all_logits else (vocab,), np.float32)
        try:
            self._native.forward(ids, state._native, out, all_logits, hidden, checkpoint)
        except RuntimeError as e:
            raise _map_error(e, QwenEdgeError) from None
        state._resident = max(state._resident, state.position)
        return out

    def _check_growth(self, state: State, n: int) -> None:
        """Before `n` more tokens go into `state` (`memory.check_growth`)."""
        state._checked = memory.check_growth(
            self.state_bytes,
            self.kv_cache,
            end=state.position + n,
            resident=state._resident,
            checked=state._checked,
            context=state.context,
        )

    def forward_batch(
        self,
        batch: Sequence[tuple[Iterable[int] | np.ndarray, State]],
        *,
        want: Sequence[bool] | None = None,
    ) -> np.ndarray:
        """One step over several sequences: each (tokens, state) continues its own state, one
        token when decoding or a chunk of a prompt, and every weight matrix is read once for
        all of them. Each sequence's result equals `forward(tokens, state)` alone, bit for bit.

        Args:
            batch: (tokens, state) per sequence; the states must be distinct.
            want: per sequence, whether to compute its logits (default: all).

        Returns:
            float32 [len(batch), vocab]: row i holds the last position's logits of sequence i
            (zeros where `want[i]` is false).

        Raises:
            ContextLengthError: a sequence's tokens do not fit its state (no state changes).
            MemoryLimitError: the memory a sequence's cache rows need is not available.
            ValueError: an empty batch or token list, a bad id, a state given twice.
        """
        if not batch:
            raise ValueError("forward_batch needs at least one sequence")
        want = [True] * len(batch) if want is None else [bool(w) for w in want]
        if len(want) != len(batch):
            raise ValueError("want must have one entry per sequence")
        vocab = self.config.vocab_size
        arrays, states = [], []
        for tokens, state in batch:
            ids = _token_array(tokens, vocab)
            if state.position + ids.size > state.context:
                raise ContextLengthError(
                    f"{state.position} + {ids.size} tokens exceed the context of "
                    f"{state.context} tokens"
                )
            arrays.append(ids)
            states.append(state._native)
        if len({id(s) for s in states}) != len(states):
            raise ValueError("forward_batch: a state appears twice in one step")
        for ids, (_, state) in zip(arrays, batch, strict=True):
            self._check_growth(state, ids.size)
        out = np.zeros((len(batch), vocab), np.float32)
        try:
            self._native.forward_multi(arrays, states, out, want)
        except RuntimeError as e:
            raise _map_error(e, QwenEdgeError) from None
        for _, state in batch:
            state._resident = max(state._resident, state.position)
        return out

    # --- the MTP head (docs/model.md §5, docs/speculative.md) ---
    @property
    def has_mtp(self) -> bool:
        """Whether the model file stores the MTP head (`qwen-edge export --mtp`)."""
        return bool(self._native.has_mtp)

    def draft_rows(self, rows: int | None) -> int:
        """LM-head rows a draft over the first `rows` rows computes (None: all)."""
        return int(self._native.draft_rows(int(rows or 0)))

    def mtp_weight_bytes(self, rows: int | None = None) -> int:
        """Bytes of weights one MTP draft step reads."""
        return int(self._native.mtp_weight_bytes(int(rows or 0)))

    def mtp_forward(
        self,
        tokens: Iterable[int] | np.ndarray,
        hidden: np.ndarray,
        state: State,
        *,
        rows: int | None = None,
        logits: np.ndarray | None = None,
        hidden_out: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The MTP head over pairs (hidden[t], tokens[t]) at the MTP cache's next positions.

        Args:
            tokens: the ids that followed each hidden state.
            hidden: float32 [len(tokens), hidden_size], final-normed hidden states.
            rows: draft over the first `rows` rows of the LM head only (None: all).
            logits, hidden_out: optional output arrays to reuse.

        Returns:
            (draft logits [draft_rows(rows)] of the last pair, its output hidden [hidden_size]).
        """
        ids = _token_array(tokens, self.config.vocab_size)
        h = np.ascontiguousarray(hidden, dtype=np.float32)
        if logits is None:
            logits = np.empty(self.draft_rows(rows), np.float32)
        if hidden_out is None:
            hidden_out = np.empty(self.config.hidden_size, np.float32)
        try:
            self._native.mtp_forward(ids, h, state._native, logits, int(rows or 0), hidden_out)
        except RuntimeError as e:
            raise _map_error(e, QwenEdgeError) from None
        return logits, hidden_out

    def logits(self, tokens: Iterable[int] | np.ndarray) -> np.ndarray:
        """Logits [len(tokens), vocab] of every position from a fresh state."""
        ids = _token_array(tokens, self.config.vocab_size)
        return self.forward(ids, self.new_state(max(self.context, ids.size)), all_logits=True)


def _token_array(tokens: Iterable[int] | np.ndarray, vocab: int) -> np.ndarray:
    ids = np.asarray(tokens if isinstance(tokens, np.ndarray) else list(tokens))
    if ids.ndim != 1 or ids.size == 0:
        raise ValueError("tokens must be a non-empty 1-D sequence of ids")
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"token ids must be integers, got {ids.dtype}")
    if ids.min() < 0 or ids.max() >= vocab:
        raise ValueError(f"token ids must be in [0, {vocab})")
    return np.ascontiguousarray(ids, dtype=np.int32)


def _map_error(e: RuntimeError, kind: type[Exception]) -> Exception:
    """A native error as the Python class it belongs to (`kind` for the generic qe::Error)."""
    c = core()
    if isinstance(e, c.ContextLengthError):
        return ContextLengthError(str(e))
    if isinstance(e, c.Interrupted):
        return ModelStoppedError(f"{e}: the model was stopped (Model.stop(), or the exit)")
    if isinstance(e, c.Error):
        return kind(str(e))
    return QwenEdgeError(str(e))


def load(path: str | os.PathLike[str], **kwargs: Any) -> Model:
    """`Model.load(path, **kwargs)`: the native model over a model file."""
    return Model.load(path, **kwargs)


# --- shutdown -----------------------------------------------------------------------------------
_MODELS: weakref.WeakSet[Model] = weakref.WeakSet()
SHUTDOWN_WAIT = 30.0  # seconds the exit waits for forward passes to reach a layer boundary


@atexit.register
def _stop_models_at_exit() -> None:
    """Stops every model's forward passes and waits until no thread is inside the core.

    atexit runs before the interpreter finalizes, while daemon threads still run. A daemon
    thread that took the GIL back after finalization began would be ended by the
    interpreter (a forced unwind through C++, which aborts the process: "terminate called
    without an active exception"), and one still computing while the models are freed would
    use freed memory. Stopped passes end at their next layer boundary, a few milliseconds.
    """
    models = list(_MODELS)
    for m in models:
        m._native.stop()
    deadline = time.monotonic() + SHUTDOWN_WAIT
    while any(m._native.running for m in models) and time.monotonic() < deadline:
        time.sleep(0.002)  # releases the GIL, so the passes can return
