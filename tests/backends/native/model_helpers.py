"""Test helpers: native models built from in-memory weights, and the numpy reference made to see
the same weights and the same activation quantization as the native W4A8/W8A8 path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import packing
from packing import write_model_file  # noqa: F401  (re-exported for the tests)

from qwen_edge.backends.native import Model
from qwen_edge.backends.reference import ReferenceModel
from qwen_edge.export import presets
from qwen_edge.export.random_checkpoint import random_tensor
from qwen_edge.formats import quant
from qwen_edge.formats.checkpoint import Checkpoint
from qwen_edge.formats.config import ModelConfig

CHECKPOINT_FORMATS = {"F32": "f32", "F16": "f16", "BF16": "bf16"}
GOLDENS = Path(__file__).resolve().parents[2] / "data" / "goldens"
GOLDEN_DIRS = sorted(p for p in GOLDENS.iterdir() if (p / "golden.npz").is_file())


def small_config(**overrides: object) -> ModelConfig:
    """The 'tiny' preset with a small vocabulary (fast LM head) and K multiples of 32."""
    text = {"vocab_size": 1000, "eos_token_id": 999, **overrides}
    return ModelConfig.from_hf(presets.hf_config("tiny", **text))


def random_weights(config: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    return {n: random_tensor(n, s, seed) for n, s in config.text_tensor_shapes().items()}


def checkpoint_tensors(path: Path) -> tuple[ModelConfig, dict, dict[str, np.ndarray]]:
    """A checkpoint's text tensors in their stored dtype (f32/f16/bf16) for the native model,
    and as float32 for the reference."""
    ck = Checkpoint(path)
    tensors, weights = {}, {}
    for name in ck.config.text_tensor_shapes():
        info = ck.info(name)
        raw = ck.files[info.path.name].read_raw(info.name)
        tensors[name] = (CHECKPOINT_FORMATS[info.dtype], info.shape, np.ascontiguousarray(raw))
        weights[name] = ck.read(name)
    return ck.config, tensors, weights


def quantized_tensors(
    weights: dict[str, np.ndarray], fmt: str
) -> tuple[dict, dict[str, np.ndarray], set[str]]:
    """Every 2-D matrix whose K is a multiple of 32 packed in `fmt` (round to nearest), the
    rest f32. Returns (native tensors, dequantized float32 weights, names of packed ones)."""
    tensors, deq, packed = {}, {}, set()
    for name, w in weights.items():
        if w.ndim == 2 and w.shape[1] % 32 == 0:
            data, dq = packing.quantize(fmt, w)
            tensors[name] = (fmt, w.shape, data)
            deq[name] = dq
            packed.add(name)
        else:
            tensors[name] = ("f32", w.shape, np.ascontiguousarray(w, np.float32))
            deq[name] = w
    return tensors, deq, packed


class _FakeQuantT:
    """`x @ W.T` with x quantized to q8a first, as the native integer path does."""

    __array_ufunc__ = None  # make numpy defer `x @ self` to __rmatmul__

    def __init__(self, w: np.ndarray):
        self.w = w.astype(np.float64)

    def __rmatmul__(self, x: np.ndarray) -> np.ndarray:
        x2 = np.ascontiguousarray(x, np.float32).reshape(-1, x.shape[-1])
        d, _, q = quant.quantize_q8a(x2.reshape(-1))
        xq = (d[:, None].astype(np.float64) * q).reshape(x2.shape)
        return (xq @ self.w.T).astype(np.float32).reshape(*x.shape[:-1], -1)


class _FakeQuantMatrix:
    __array_ufunc__ = None

    def __init__(self, w: np.ndarray):
        self.w = w
        self.T = _FakeQuantT(w)

    def __getitem__(self, index: object) -> np.ndarray:
        return self.w[index]


def reference_with_q8a(
    config: ModelConfig, deq: dict[str, np.ndarray], packed: set[str]
) -> ReferenceModel:
    """The numpy reference on dequantized weights, quantizing the activations of every packed
    matrix to q8a like the native kernels (so only float rounding order differs)."""
    ref = ReferenceModel(config, deq)
    for name in packed:
        ref.w[name] = _FakeQuantMatrix(ref.w[name])
    ref.lm_head = ref.w["embed_tokens.weight" if config.tie_word_embeddings else "lm_head.weight"]
    return ref


def native(config: ModelConfig, tensors: dict, **kwargs: object) -> Model:
    return Model.from_tensors(config, tensors, **kwargs)


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| over the logit range of `want` (the measure of test_reference.py)."""
    return float(np.abs(got - want).max() / np.ptp(want))


def nmse(got: np.ndarray, want: np.ndarray) -> float:
    """Normalized mean squared error, per position averaged (llama.cpp check-nmse)."""
    w = want - want.mean(axis=-1, keepdims=True)
    return float(np.mean(np.sum((got - want) ** 2, axis=-1) / np.sum(w**2, axis=-1)))
