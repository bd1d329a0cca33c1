"""The onnxruntime backend: a Qwen3.5 ONNX graph (`qwen-edge export --format onnx`, or
onnxruntime-genai's own export) behind the same protocol as the native runtime.

The graph takes the decoding state as inputs and returns the next state as outputs (names as
onnxruntime-genai uses them: `past_key_values.<i>.key/value`, `past.<i>.conv`,
`past.<i>.recurrent` in, `present.<i>...` out); `OnnxState` holds those arrays between calls.
The state's shapes are read from the graph's inputs, so any graph with these names runs.

`onnxruntime` is imported lazily: `pip install onnxruntime`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ContextLengthError, ModelFileError, QwenEdgeError
from ..formats.config import ModelConfig

METADATA_KEY = "qwen_edge.header"  # written by export/onnx_export.py
DEFAULT_CONTEXT = 4096
_FIXED_INPUTS = ("input_ids", "attention_mask", "position_ids")


def _require_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise QwenEdgeError(
            "running .onnx models needs the `onnxruntime` package: pip install onnxruntime"
        ) from None
    return onnxruntime


class OnnxState:
    """One sequence's state: the graph's `past...` arrays and the tokens seen."""

    def __init__(self, arrays: dict[str, np.ndarray], context: int, position: int = 0):
        self.arrays = arrays
        self.context = context
        self.position = position

    def copy(self) -> OnnxState:
        """An independent snapshot."""
        return OnnxState({k: v.copy() for k, v in self.arrays.items()}, self.context,
                         self.position)  # fmt: skip

    def restore(self, snapshot: OnnxState) -> None:
        """Makes this state equal to `snapshot`."""
        self.arrays = {k: v.copy() for k, v in snapshot.arrays.items()}
        self.position = snapshot.position

    @property
    def cache_bytes(self) -> int:
        return sum(int(a.nbytes) for a in self.arrays.values())


class OnnxModel:
    """A Qwen3.5 ONNX graph on onnxruntime's CPU provider: `new_state`, `forward`, `logits`.

    Attributes:
        config: the model configuration (from the graph's metadata, or given).
        header: the `.qe`-style header the exporter stored (empty for foreign graphs).
    """

    def __init__(self, session: Any, path: Path, config: ModelConfig, header: dict[str, Any],
                 context: int | None, threads: int) -> None:  # fmt: skip
        self._session = session
        self.path = path
        self.config = config
        self.header = header
        self.context = int(context or min(DEFAULT_CONTEXT, config.max_position_embeddings))
        self.threads = threads  # fixed with the session: no set_threads for the governor
        self.isa = "onnxruntime"
        self._past = [i for i in session.get_inputs() if i.name not in _FIXED_INPUTS]
        self._outputs = ["logits"] + [_present_name(i.name) for i in self._past]
        names = {o.name for o in session.get_outputs()}
        missing = [n for n in self._outputs if n not in names]
        if missing:
            raise ModelFileError(f"{path}: the graph has no outputs {missing[:3]}")

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        threads: int | None = None,
        context: int | None = None,
        isa: str | None = None,
        *,
        config: ModelConfig | None = None,
        **_ignored: Any,
    ) -> OnnxModel:
        """Opens a graph with onnxruntime.

        Args:
            path: the `.onnx` file (its weights may live in a `.data` file beside it).
            threads: intra-op threads (default: the CPUs this process may use).
            context: tokens a new state holds (default 4096, at most the model's limit).
            isa: ignored (onnxruntime chooses its own kernels).
            config: the model configuration of a graph without qwen-edge metadata (such as
                onnxruntime-genai's export; default: a checkpoint `config.json` beside it).

        Raises:
            ModelFileError: the file is missing or onnxruntime rejects it.
        """
        ort = _require_onnxruntime()
        path = Path(path)
        if not path.is_file():
            raise ModelFileError(f"{path} does not exist")
        threads = threads or _default_threads()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception classes
            raise ModelFileError(f"{path}: onnxruntime cannot load it: {e}") from None
        meta = session.get_modelmeta().custom_metadata_map
        header: dict[str, Any] = {}
        if METADATA_KEY in meta:
            header = json.loads(meta[METADATA_KEY])
            config = ModelConfig.from_dict(header["config"])
        if config is None:
            config = _config_beside(path)
        return cls(session, path, config, header, context, threads)

    # --- the protocol ---
    def new_state(self, context: int | None = None) -> OnnxState:
        """A fresh (all-zero, empty-cache) state for `context` tokens."""
        arrays = {}
        for i in self._past:
            shape = [1 if isinstance(d, str) and "batch" in d else d for d in i.shape]
            shape = [0 if isinstance(d, str) and "sequence" in d else d for d in shape]
            if any(not isinstance(d, int) for d in shape):  # genai's symbolic head size
                shape = [d if isinstance(d, int) else self.config.head_dim for d in shape]
            arrays[i.name] = np.zeros(shape, np.float32)
        return OnnxState(arrays, context or self.context)

    def forward(
        self, tokens: Iterable[int] | np.ndarray, state: OnnxState, *, all_logits: bool = False
    ) -> np.ndarray:
        """Runs `tokens` after what `state` holds and advances it.

        Returns:
            float32 logits of the last position [vocab], or [len(tokens), vocab].

        Raises:
            ContextLengthError: the tokens do not fit the state (the state is unchanged).
            ValueError: no tokens, or an id outside the vocabulary.
        """
        ids = np.asarray(tokens if isinstance(tokens, np.ndarray) else list(tokens))
        if ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError("tokens must be a non-empty 1-D sequence of integer ids")
        if ids.min() < 0 or ids.max() >= self.config.vocab_size:
            raise ValueError(f"token ids must be in [0, {self.config.vocab_size})")
        n, p = int(ids.size), state.position
        if p + n > state.context:
            raise ContextLengthError(
                f"{p} + {n} tokens exceed the context of {state.context} tokens"
            )
        feed = {
            "input_ids": ids.astype(np.int64)[None, :],
            "attention_mask": np.ones((1, p + n), np.int64),
            "position_ids": np.broadcast_to(np.arange(p, p + n, dtype=np.int64), (3, 1, n)).copy(),
            **state.arrays,
        }
        try:
            out = self._session.run(self._outputs, feed)
        except Exception as e:
            raise QwenEdgeError(f"{self.path}: onnxruntime failed: {e}") from None
        state.arrays = {i.name: out[k + 1] for k, i in enumerate(self._past)}
        state.position = p + n
        logits = out[0][0]
        return np.ascontiguousarray(logits if all_logits else logits[-1], dtype=np.float32)

    def logits(self, tokens: Iterable[int] | np.ndarray) -> np.ndarray:
        """Logits [len(tokens), vocab] of every position from a fresh state."""
        ids = list(tokens)
        return self.forward(ids, self.new_state(max(self.context, len(ids))), all_logits=True)

    @property
    def file_size(self) -> int:
        """Bytes of the graph and its external data."""
        data = self.path.with_name(self.path.name + ".data")
        return self.path.stat().st_size + (data.stat().st_size if data.is_file() else 0)

    @property
    def decode_weight_bytes(self) -> int:
        """Bytes of weights a decode step reads: the external data (about all of it)."""
        return self.file_size


def _present_name(past: str) -> str:
    if past.startswith("past_key_values."):
        return "present." + past[len("past_key_values.") :]
    if past.startswith("past."):
        return "present." + past[len("past.") :]
    raise ModelFileError(f"unexpected graph input '{past}' (not a past state)")


def _config_beside(path: Path) -> ModelConfig:
    cfg = path.parent / "config.json"
    if not cfg.is_file():
        raise ModelFileError(
            f"{path} carries no qwen-edge metadata and no config.json lies beside it; "
            "pass the checkpoint's configuration (config=...)"
        )
    from ..formats.checkpoint import Checkpoint

    return Checkpoint(path.parent).config


def _default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def load(path: str | os.PathLike[str], **kwargs: Any) -> OnnxModel:
    """`OnnxModel.load(path, **kwargs)`."""
    return OnnxModel.load(path, **kwargs)
