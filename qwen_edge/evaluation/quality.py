"""Quantization quality: KL divergence, top-1 agreement and perplexity against fp32 logits.

`qwen-edge eval` runs the numpy reference model (`reference.ReferenceModel`, fp32) twice over a
fixed text shipped with the package (`data/eval_coriolanus.txt`, tokenized once with the real
Qwen3.5 tokenizer by `tools/make_eval_tokens.py`): with the checkpoint's weights and with the
model file's dequantized weights. Both see the same windows of token ids, each from a fresh
state. `tools/eval_peers.py` reuses `reference_logprobs` and `compare` for other engines.

By default this measures weight quantization only (activations stay fp32). With
`act_q8=True` the inputs of every packed-format matrix are also rounded through q8a, as the
native integer kernels do, which is what llama.cpp's integer kernels do too.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import QwenEdgeError
from ..formats.config import ModelConfig

EVAL_TOKENS = Path(__file__).parent / "data" / "eval_coriolanus.tokens.json"
DEFAULT_CTX = 512
_ROWS = 64  # rows of a [T, vocab] block processed at once (bounds float64 temporaries)


def eval_tokens(limit: int | None = None) -> list[int]:
    """The token ids of the shipped evaluation text (first `limit` of them)."""
    doc = json.loads(EVAL_TOKENS.read_text(encoding="utf-8"))
    ids = [int(i) for i in doc["ids"]]
    return ids[:limit] if limit else ids


def windows(ids: list[int], ctx: int) -> list[list[int]]:
    """Non-overlapping windows of `ctx` tokens (a shorter last window is dropped unless it is
    the only one); each is evaluated from a fresh state."""
    if ctx < 2:
        raise QwenEdgeError(f"the evaluation window must hold at least 2 tokens, not {ctx}")
    out = [ids[i : i + ctx] for i in range(0, len(ids) - ctx + 1, ctx)]
    return out or [ids]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    x -= np.log(np.exp(x).sum(axis=-1, keepdims=True))
    return x


@dataclass(frozen=True)
class QualityReport:
    """Agreement of a model's next-token distributions with the fp32 reference."""

    tokens: int  # positions scored
    mean_kl: float  # mean KL(P_ref || P_model), nats
    p99_kl: float
    max_kl: float
    top1: float  # fraction of positions where the argmax agrees
    ppl_ref: float
    ppl_model: float

    @property
    def ppl_ratio(self) -> float:
        return self.ppl_model / self.ppl_ref

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ppl_ratio": self.ppl_ratio}


class _Accumulator:
    def __init__(self) -> None:
        self.kl: list[np.ndarray] = []
        self.top1: list[np.ndarray] = []
        self.nll_ref: list[np.ndarray] = []
        self.nll: list[np.ndarray] = []

    def add(self, ref_lp: np.ndarray, logits: np.ndarray, targets: np.ndarray) -> None:
        """ref_lp: reference log-probs [T, V] (float32); logits: the model's [T, V]."""
        for r0 in range(0, ref_lp.shape[0], _ROWS):
            rl = ref_lp[r0 : r0 + _ROWS].astype(np.float64)
            ml = log_softmax(logits[r0 : r0 + _ROWS])
            self.kl.append(np.maximum(np.sum(np.exp(rl) * (rl - ml), axis=-1), 0.0))
            self.top1.append(rl.argmax(axis=-1) == ml.argmax(axis=-1))
            t = targets[r0 : r0 + _ROWS]
            idx = np.arange(t.size)
            self.nll_ref.append(-rl[idx, t])
            self.nll.append(-ml[idx, t])

    def report(self) -> QualityReport:
        kl = np.concatenate(self.kl)
        return QualityReport(
            tokens=int(kl.size),
            mean_kl=float(kl.mean()),
            p99_kl=float(np.percentile(kl, 99)),
            max_kl=float(kl.max()),
            top1=float(np.concatenate(self.top1).mean()),
            ppl_ref=float(np.exp(np.concatenate(self.nll_ref).mean())),
            ppl_model=float(np.exp(np.concatenate(self.nll).mean())),
        )


LogitsFn = Callable[[list[int]], np.ndarray]  # window ids -> logits [T, vocab]


def reference_logprobs(fn: LogitsFn, wins: Iterable[list[int]]) -> Iterator[np.ndarray]:
    """Reference log-probabilities [T-1, vocab] (float32) of every window but its last position."""
    for w in wins:
        yield log_softmax(np.asarray(fn(w))[:-1]).astype(np.float32)


def compare(
    ref_logprobs: list[np.ndarray],
    fn: LogitsFn,
    wins: list[list[int]],
    progress: Callable[[int, int], None] | None = None,
) -> QualityReport:
    """Scores a model (`fn`) against cached reference log-probs, window by window."""
    acc = _Accumulator()
    for i, (lp, w) in enumerate(zip(ref_logprobs, wins, strict=True)):
        if progress is not None:
            progress(i, len(wins))
        logits = np.asarray(fn(w))[:-1]
        if logits.shape != lp.shape:
            raise QwenEdgeError(f"logits of shape {logits.shape}, expected {lp.shape}")
        acc.add(lp, logits, np.asarray(w[1:], dtype=np.int64))
    return acc.report()


def reference_fn(model: Any) -> LogitsFn:
    """Window logits from a `ReferenceModel`, each window from a fresh state."""
    return lambda ids: model.forward(ids, model.new_state(), all_logits=True)


class _Q8aInputs:
    """`x @ w.T` with x rounded through q8a first (the runtime's integer kernels)."""

    __array_ufunc__ = None  # make numpy defer `x @ self` to __rmatmul__

    def __init__(self, w: np.ndarray):
        self.w_t = w.T

    @property
    def T(self) -> _Q8aInputs:
        return self

    def __rmatmul__(self, x: np.ndarray) -> np.ndarray:
        from ..formats.quant import fake_quantize_q8a

        return fake_quantize_q8a(np.ascontiguousarray(x, dtype=np.float32)) @ self.w_t


def with_q8a_inputs(model: Any, packed: Iterable[str]) -> Any:
    """Makes a ReferenceModel quantize the inputs of the named matrices to q8a."""
    for name in packed:
        if model.lm_head is model.w[name]:
            model.lm_head = _Q8aInputs(model.lm_head)
        if name != "embed_tokens.weight":  # the lookup stays a lookup
            model.w[name] = _Q8aInputs(model.w[name])
    return model


def packed_tensors(path: str | Path) -> list[str]:
    """Names of the tensors a model file stores in a packed (integer) format."""
    from ..formats.model_file import ModelFile
    from ..formats.quant import is_packed

    with ModelFile(path) as mf:
        return [n for n, e in mf.tensors.items() if is_packed(e.format)]


def model_file_weights(path: str | Path) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """Config and dequantized float32 text weights of a model file."""
    from ..formats.model_file import ModelFile

    with ModelFile(path) as mf:
        names = mf.config.text_tensor_shapes()
        weights = {n: np.array(mf.dequantize(n), dtype=np.float32) for n in names}
        return mf.config, weights


def evaluate(
    model_file: str | Path,
    reference: str | Path,
    *,
    tokens: int | None = None,
    ctx: int = DEFAULT_CTX,
    act_q8: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
) -> QualityReport:
    """Compares a model file with its fp32 checkpoint on the shipped evaluation text.

    A `.qe` file runs through the reference model with its dequantized weights; an `.onnx`
    graph (ours, or onnxruntime-genai's) runs on onnxruntime itself, activations as it rounds
    them (`act_q8` does not apply).

    Args:
        model_file: the `.qe` file or `.onnx` graph.
        reference: the checkpoint folder it was exported from.
        tokens: use only the first `tokens` ids of the text.
        ctx: window length (each window starts from a fresh state).
        act_q8: round the inputs of packed matrices through q8a, as the native kernels do.
        progress: called as (stage, window index, windows).

    Raises:
        QwenEdgeError: the model file and the checkpoint describe different models.
    """
    from ..backends.reference import ReferenceModel
    from ..formats.checkpoint import Checkpoint
    from ..formats.model_file import ModelFile

    ckpt = Checkpoint(reference)
    onnx_model = None
    if Path(model_file).suffix == ".onnx":
        from ..backends.onnx_runtime import OnnxModel

        onnx_model = OnnxModel.load(model_file, context=ctx, config=ckpt.config)
        config = onnx_model.config
    else:
        with ModelFile(model_file) as mf:
            config = mf.config
    if config != ckpt.config:
        raise QwenEdgeError(
            f"{model_file} and {reference} hold different model configurations; "
            "pass the checkpoint the file was exported from"
        )
    ids = eval_tokens(tokens)
    if max(ids) >= config.vocab_size:
        raise QwenEdgeError(
            f"{model_file}: the vocabulary has {config.vocab_size} tokens, but the evaluation text "
            f"uses ids up to {max(ids)}; eval needs a model with the Qwen3.5 vocabulary"
        )
    wins = windows(ids, ctx)

    def stage(name: str) -> Callable[[int, int], None] | None:
        return None if progress is None else (lambda i, n: progress(name, i, n))

    ref = ReferenceModel.from_checkpoint(ckpt, context=ctx)
    cached = []
    for i, lp in enumerate(reference_logprobs(reference_fn(ref), wins)):
        if progress is not None:
            progress("fp32 reference", i, len(wins))
        cached.append(lp)
    del ref  # one float32 model in memory at a time
    if onnx_model is not None:
        return compare(cached, reference_fn(onnx_model), wins, stage("onnx graph"))
    config, weights = model_file_weights(model_file)
    model = ReferenceModel(config, weights, context=ctx)
    del weights
    if act_q8:
        with_q8a_inputs(model, packed_tensors(model_file))
    return compare(cached, reference_fn(model), wins, stage("model file"))
