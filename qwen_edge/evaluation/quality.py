"""Quantization quality: KL divergence, top-1 agreement and perplexity against fp32 logits.

`qwen-edge eval` runs the numpy reference model (`reference.ReferenceModel`, fp32) twice over a
fixed text: with the checkpoint's weights and with the model file's dequantized weights. Both
see the same windows of token ids, each from a fresh state. The text is the one shipped with
the package (`data/eval_coriolanus.txt`, tokenized once with the real Qwen3.5 tokenizer by
`tools/make_eval_tokens.py`) unless `text=` names another: a token file (JSON with an `ids`
list, as `tools/train_small.py` writes for its held-out split) or plain UTF-8 text, which is
tokenized with the checkpoint's tokenizer. `tools/eval_peers.py` reuses `reference_logprobs`
and `compare` for other engines.

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


def read_token_file(path: str | Path) -> list[int]:
    """The `ids` of a token file (JSON: `{"ids": [...], ...}`).

    Raises:
        QwenEdgeError: unreadable, not JSON, or without a non-empty list of integer ids.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise QwenEdgeError(f"{path}: cannot read the token file ({e.strerror})") from e
    except ValueError as e:
        raise QwenEdgeError(f"{path}: not a JSON token file ({e})") from e
    ids = doc.get("ids") if isinstance(doc, dict) else None
    if (
        not isinstance(ids, list)
        or not ids
        or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids)
    ):
        raise QwenEdgeError(
            f"{path}: a token file needs an 'ids' list of token ids (integers >= 0)"
        )
    return ids


def is_token_file(path: str | Path) -> bool:
    """Token files are JSON (`.json`); anything else is read as text."""
    return Path(path).suffix.lower() == ".json"


def text_tokens(path: str | Path, tokenizer_json: str | Path) -> list[int]:
    """The token ids of a UTF-8 text file under the given `tokenizer.json` (no special tokens).

    Raises:
        QwenEdgeError: the file cannot be read or is not UTF-8 (TokenizerError for the
            tokenizer's own problems).
    """
    from ..generation.tokenizer import Tokenizer

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise QwenEdgeError(f"{path}: cannot read the evaluation text ({e.strerror})") from e
    except UnicodeDecodeError as e:
        raise QwenEdgeError(f"{path}: the evaluation text is not UTF-8 ({e.reason})") from e
    return Tokenizer.from_file(tokenizer_json).encode(text)


def eval_tokens(
    limit: int | None = None,
    text: str | Path | None = None,
    tokenizer_json: str | Path | None = None,
) -> list[int]:
    """The token ids to evaluate on (the first `limit` of them).

    Args:
        limit: keep only the first `limit` ids.
        text: None for the shipped text, a token file (`.json`), or a UTF-8 text file.
        tokenizer_json: the tokenizer for a text file (a checkpoint's `tokenizer.json`).

    Raises:
        QwenEdgeError: a text file without a tokenizer, or a bad file.
    """
    if text is None:
        ids = read_token_file(EVAL_TOKENS)
    elif is_token_file(text):
        ids = read_token_file(text)
    else:
        if tokenizer_json is None or not Path(tokenizer_json).is_file():
            raise QwenEdgeError(
                f"{text}: a text file is tokenized with the checkpoint's tokenizer.json, "
                f"which is missing ({tokenizer_json}); pass a token file (.json) instead"
            )
        ids = text_tokens(text, tokenizer_json)
        if not ids:
            raise QwenEdgeError(f"{text}: the evaluation text is empty")
    if len(ids) < 2:
        raise QwenEdgeError(f"{text or EVAL_TOKENS}: at least 2 tokens are needed to score one")
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


@dataclass(frozen=True)
class VocabGroups:
    """Token ids whose LM-head rows are identical, scored as one class each.

    Identical rows give identical logits in every model made from the checkpoint (a quantizer
    maps equal rows to equal bytes), so the full-vocabulary softmax, KL, argmax and target
    log-probability follow exactly from one logit per group and the group's size. A checkpoint
    trained on part of the vocabulary (tools/train_small.py writes one shared row at every id
    its corpus lacks) has a few thousand groups instead of 248,320 ids, which makes scoring many
    times cheaper; `compare` checks the premise on every window.
    """

    first: np.ndarray  # [G] the lowest id of each group
    log_size: np.ndarray  # [G] float64, log of the group's size
    group_of: np.ndarray  # [V] the group of every id

    @classmethod
    def of_rows(cls, w: np.ndarray) -> VocabGroups | None:
        """Groups of the identical rows of `w` [V, H]; None when every row is distinct."""
        w = np.ascontiguousarray(w)
        seen: dict[bytes, int] = {}
        group_of = np.empty(w.shape[0], np.int64)
        for i, row in enumerate(w):
            group_of[i] = seen.setdefault(row.tobytes(), len(seen))
        if len(seen) == w.shape[0]:
            return None
        sizes = np.bincount(group_of, minlength=len(seen))
        first = np.full(len(seen), w.shape[0], np.int64)
        np.minimum.at(first, group_of, np.arange(w.shape[0]))
        return cls(first, np.log(sizes.astype(np.float64)), group_of)

    @property
    def size(self) -> int:
        return int(self.first.size)

    def collapse(self, logits: np.ndarray) -> np.ndarray:
        """[T, V] logits -> [T, G] class logits (float64): a group's logit plus log(size).
        [T, G] logits (the representatives' only) are taken as they are.

        Raises:
            QwenEdgeError: the logits of a group's ids differ (the engine broke the premise).
        """
        logits = np.asarray(logits)
        if logits.shape[-1] == self.size:  # already one logit per group (`restrict_lm_head`)
            return logits.astype(np.float64) + self.log_size
        rep = logits[:, self.first]
        spread = float(np.abs(logits - rep[:, self.group_of]).max())
        span = float(rep.max() - rep.min()) or 1.0
        if spread > 1e-4 * span:
            raise QwenEdgeError(
                f"ids with identical LM-head rows got logits {spread:.3g} apart; "
                "score this model without vocabulary groups"
            )
        return rep.astype(np.float64) + self.log_size


class Scores:
    """Positions scored against reference log-probs, window by window (`add`), summed up in a
    QualityReport (`report`)."""

    def __init__(self, groups: VocabGroups | None = None) -> None:
        self.groups = groups
        self.kl: list[np.ndarray] = []
        self.top1: list[np.ndarray] = []
        self.nll_ref: list[np.ndarray] = []
        self.nll: list[np.ndarray] = []

    def add(self, ref_lp: np.ndarray, logits: np.ndarray, targets: np.ndarray) -> None:
        """ref_lp: reference log-probs [T, V] (float32); logits: the model's [T, V]. With
        groups, both are per group ([T, G], the logits already collapsed): a group's log-prob
        minus log(size) is each of its ids' log-prob."""
        g = self.groups
        for r0 in range(0, ref_lp.shape[0], _ROWS):
            rl = ref_lp[r0 : r0 + _ROWS].astype(np.float64)
            ml = log_softmax(logits[r0 : r0 + _ROWS])
            self.kl.append(np.maximum(np.sum(np.exp(rl) * (rl - ml), axis=-1), 0.0))
            t = targets[r0 : r0 + _ROWS]
            if g is not None:  # per-id log-probs of the group representatives
                rl, ml, t = rl - g.log_size, ml - g.log_size, g.group_of[t]
            self.top1.append(rl.argmax(axis=-1) == ml.argmax(axis=-1))
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


def reference_logprobs(
    fn: LogitsFn, wins: Iterable[list[int]], groups: VocabGroups | None = None
) -> Iterator[np.ndarray]:
    """Reference log-probabilities [T-1, vocab] (float32) of every window but its last position
    ([T-1, groups] with `groups`)."""
    for w in wins:
        logits = np.asarray(fn(w))[:-1]
        yield log_softmax(logits if groups is None else groups.collapse(logits)).astype(np.float32)


def compare(
    ref_logprobs: list[np.ndarray],
    fn: LogitsFn,
    wins: list[list[int]],
    progress: Callable[[int, int], None] | None = None,
    groups: VocabGroups | None = None,
) -> QualityReport:
    """Scores a model (`fn`) against cached reference log-probs, window by window (made with
    the same `groups`)."""
    acc = Scores(groups)
    for i, (lp, w) in enumerate(zip(ref_logprobs, wins, strict=True)):
        if progress is not None:
            progress(i, len(wins))
        logits = np.asarray(fn(w))[:-1]
        if groups is not None:
            logits = groups.collapse(logits)
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


def restrict_lm_head(model: Any, groups: VocabGroups) -> Any:
    """Makes a ReferenceModel compute only the logits of the groups' representatives ([T, G]):
    the rows of a group are equal, so their logits are too, and the LM head (the largest
    matrix) shrinks to one row per group. Call after `with_q8a_inputs`."""
    head = model.lm_head
    if isinstance(head, _Q8aInputs):
        head.w_t = np.ascontiguousarray(head.w_t[:, groups.first])
    else:
        model.lm_head = np.ascontiguousarray(head[groups.first])
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
    text: str | Path | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> QualityReport:
    """Compares a model file with its fp32 checkpoint on an evaluation text.

    A `.qe` file runs through the reference model with its dequantized weights; an `.onnx`
    graph (ours, or onnxruntime-genai's) runs on onnxruntime itself, activations as it rounds
    them (`act_q8` does not apply).

    Args:
        model_file: the `.qe` file or `.onnx` graph.
        reference: the checkpoint folder it was exported from.
        tokens: use only the first `tokens` ids of the text.
        text: the text (`eval_tokens`): None for the shipped one, a token file (`.json`) or a
            UTF-8 text file, tokenized with the checkpoint's `tokenizer.json`.
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
    ids = eval_tokens(tokens, text, Path(reference) / "tokenizer.json")
    if max(ids) >= config.vocab_size:
        raise QwenEdgeError(
            f"{model_file}: the vocabulary has {config.vocab_size} tokens, but the evaluation text "
            f"uses ids up to {max(ids)}; eval needs a model with the Qwen3.5 vocabulary"
        )
    wins = windows(ids, ctx)

    def stage(name: str) -> Callable[[int, int], None] | None:
        return None if progress is None else (lambda i, n: progress(name, i, n))

    ref = ReferenceModel.from_checkpoint(ckpt, context=ctx)
    groups = VocabGroups.of_rows(ref.lm_head)
    if groups is not None:
        restrict_lm_head(ref, groups)
    cached = []
    for i, lp in enumerate(reference_logprobs(reference_fn(ref), wins, groups)):
        if progress is not None:
            progress("fp32 reference", i, len(wins))
        cached.append(lp)
    del ref  # one float32 model in memory at a time
    if onnx_model is not None:
        return compare(cached, reference_fn(onnx_model), wins, stage("onnx graph"), groups)
    config, weights = model_file_weights(model_file)
    model = ReferenceModel(config, weights, context=ctx)
    del weights
    if act_q8:
        with_q8a_inputs(model, packed_tensors(model_file))
    if groups is not None:
        restrict_lm_head(model, groups)
    return compare(cached, reference_fn(model), wins, stage("model file"), groups)
