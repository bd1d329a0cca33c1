"""Activation statistics of every matrix input: how outlier-heavy the inputs of the integer
kernels are, and what rounding them to 8 bits costs.

The native integer kernels quantize each matrix input on the fly to q8a (blocks of 32 values,
one scale per block, docs/weight-formats.md). That is cheap when the values of a block are of
similar size and costly when a few channels carry outliers far above the rest. Trained models
have such channels; random-weight ones do not. `record_inputs` wraps every matrix of a
`ReferenceModel` so that `x @ w.T` also records its input `x`; `InputStats.summary` then gives,
per matrix:

* `channel_max_over_median`: the largest per-channel max|x| (over all tokens) divided by the
  median one: how far the outlier channels stand out;
* `token_peak_over_rms`: per token, max|x| / RMS(x), averaged over tokens (and its maximum);
* `q8a_rel_error`: ||x - q8a(x)|| / ||x|| over all tokens (the error the kernels add);
* `int8_token_rel_error`: the same with one int8 scale per token instead of per block of 32
  (what a per-token activation quantizer would add: the outliers set the scale of the row);
* `int4_rel_error`: the same with 4-bit codes per block of 32 (`d = max|x| / 7`), the
  cheaper activation format the 8-bit choice is measured against.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..formats.quant import BLOCK_K, fake_quantize_q8a

LM_HEAD = "lm_head"


def _blockwise(x: np.ndarray, levels: int) -> np.ndarray:
    """x [T, K] rounded with one absmax scale per block of 32 to `levels` (127: int8, 7: int4)."""
    xb = x.reshape(x.shape[0], -1, BLOCK_K)
    d = np.abs(xb).max(axis=-1, keepdims=True) / levels
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(d > 0, np.clip(np.rint(xb / d), -levels, levels), 0)
    return (q * d).reshape(x.shape)


def _per_token_int8(x: np.ndarray) -> np.ndarray:
    d = np.abs(x).max(axis=-1, keepdims=True) / 127
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(d > 0, np.clip(np.rint(x / d), -127, 127), 0)
    return q * d


@dataclass
class InputStats:
    """Running statistics of the inputs of one matrix."""

    name: str
    channels: int
    tokens: int = 0
    channel_absmax: np.ndarray = field(default_factory=lambda: np.zeros(0))
    channel_sum_sq: np.ndarray = field(default_factory=lambda: np.zeros(0))
    sum_sq: float = 0.0
    q8a_err_sq: float = 0.0
    int8_token_err_sq: float = 0.0
    int4_err_sq: float = 0.0
    peak_over_rms_sum: float = 0.0
    peak_over_rms_max: float = 0.0

    def add(self, x: np.ndarray) -> None:
        """Records the inputs x [..., K]."""
        x = np.asarray(x, dtype=np.float32).reshape(-1, self.channels)
        a = np.abs(x)
        m = a.max(axis=0)
        self.channel_absmax = m if self.tokens == 0 else np.maximum(self.channel_absmax, m)
        self.tokens += x.shape[0]
        x64 = x.astype(np.float64)
        sq = np.sum(x64 * x64, axis=0)
        self.channel_sum_sq = sq if self.channel_sum_sq.size == 0 else self.channel_sum_sq + sq
        self.sum_sq += float(np.sum(x64 * x64))
        if self.channels % BLOCK_K == 0:  # packed formats need it; others take no q8a
            self.q8a_err_sq += float(np.sum((x64 - fake_quantize_q8a(x)) ** 2))
            self.int4_err_sq += float(np.sum((x64 - _blockwise(x64, 7)) ** 2))
        self.int8_token_err_sq += float(np.sum((x64 - _per_token_int8(x64)) ** 2))
        rms = np.sqrt(np.mean(x64 * x64, axis=1))
        ratio = np.where(rms > 0, a.max(axis=1) / np.where(rms > 0, rms, 1), 0)
        self.peak_over_rms_sum += float(ratio.sum())
        self.peak_over_rms_max = max(self.peak_over_rms_max, float(ratio.max()))

    def summary(self, top: int = 3) -> dict[str, Any]:
        """The statistics as a JSON-able dict (see the module docstring)."""
        m = self.channel_absmax
        med = float(np.median(m)) if m.size else 0.0
        norm = np.sqrt(self.sum_sq) if self.sum_sq > 0 else 1.0
        order = np.argsort(m)[::-1][:top]
        return {
            "name": self.name,
            "channels": self.channels,
            "tokens": self.tokens,
            "channel_max": float(m.max()) if m.size else 0.0,
            "channel_median": med,
            "channel_max_over_median": float(m.max()) / med if med > 0 else float("inf"),
            "top_channels": [int(i) for i in order],
            "top_channel_max": [float(m[i]) for i in order],
            "token_peak_over_rms_mean": self.peak_over_rms_sum / max(self.tokens, 1),
            "token_peak_over_rms_max": self.peak_over_rms_max,
            "q8a_rel_error": (
                float(np.sqrt(self.q8a_err_sq) / norm) if self.channels % BLOCK_K == 0 else None
            ),
            "int8_token_rel_error": float(np.sqrt(self.int8_token_err_sq) / norm),
            "int4_rel_error": (
                float(np.sqrt(self.int4_err_sq) / norm) if self.channels % BLOCK_K == 0 else None
            ),
        }


class _Recording:
    """`x @ w.T` that records x first (numpy defers `x @ self` to `__rmatmul__`)."""

    __array_ufunc__ = None

    def __init__(self, w: np.ndarray, stats: InputStats):
        self.w_t = w.T
        self.stats = stats

    @property
    def T(self) -> _Recording:
        return self

    def __rmatmul__(self, x: np.ndarray) -> np.ndarray:
        self.stats.add(x)
        return np.asarray(x) @ self.w_t


# Matrices that read the same input as another matrix of their layer: recorded once, there.
SHARES_INPUT = {
    "linear_attn.in_proj_z": "linear_attn.in_proj_qkv",
    "linear_attn.in_proj_a": "linear_attn.in_proj_qkv",
    "linear_attn.in_proj_b": "linear_attn.in_proj_qkv",
    "self_attn.k_proj": "self_attn.q_proj",
    "self_attn.v_proj": "self_attn.q_proj",
    "mlp.up_proj": "mlp.gate_proj",
}
# How the tables name an input read by several matrices.
INPUT_LABELS = {
    "linear_attn.in_proj_qkv": "linear_attn.in_proj_qkv/z/a/b",
    "self_attn.q_proj": "self_attn.q/k/v_proj",
    "mlp.gate_proj": "mlp.gate/up_proj",
}


def record_inputs(model: Any) -> dict[str, InputStats]:
    """Wraps every matrix of a `ReferenceModel` (the LM head as "lm_head"; the embedding lookup
    stays a lookup) so its forward passes record the matrices' inputs; returns the recorders,
    by tensor name (one per input: matrices that share their input with another one of their
    layer, `SHARES_INPUT`, are not recorded again). The logits do not change."""
    stats: dict[str, InputStats] = {}
    head = model.lm_head
    for name, w in list(model.w.items()):
        if w.ndim != 2 or name == "embed_tokens.weight" or kind_of(name) in SHARES_INPUT:
            continue
        if name.startswith("mtp."):  # the MTP head drafts in its own pass, not in forward
            continue
        stats[name] = InputStats(name, w.shape[1])
        model.w[name] = _Recording(w, stats[name])
    stats[LM_HEAD] = InputStats(LM_HEAD, head.shape[1])
    model.lm_head = _Recording(head, stats[LM_HEAD])
    return stats


def importance(stats: dict[str, InputStats], tied: bool) -> dict[str, np.ndarray]:
    """Per tensor name, the mean squared activation of each input channel (float32 [k]): the
    weights of activation-aware quantization (`export.convert.read_calibration`). Matrices
    that share an input (`SHARES_INPUT`) get their sibling's; the LM head's goes to
    "embed_tokens.weight" when the embedding is tied, else "lm_head.weight"."""
    out: dict[str, np.ndarray] = {}
    for name, st in stats.items():
        if st.tokens == 0:
            continue
        mean_sq = (st.channel_sum_sq / st.tokens).astype(np.float32)
        if name == LM_HEAD:
            out["embed_tokens.weight" if tied else "lm_head.weight"] = mean_sq
            continue
        out[name] = mean_sq
        prefix, kind = name[: name.index(kind_of(name))], kind_of(name)
        for sibling, source in SHARES_INPUT.items():
            if source == kind:
                out[f"{prefix}{sibling}.weight"] = mean_sq
    return out


def kind_of(name: str) -> str:
    """The matrix kind of a tensor name: 'linear_attn.out_proj', 'mlp.down_proj', 'lm_head'."""
    if name == LM_HEAD:
        return LM_HEAD
    parts = name.split(".")
    return ".".join(parts[2:-1]) if parts[0] == "layers" else ".".join(parts[:-1])


def by_kind(summaries: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per matrix input kind: in how many layers, and the min / median / max over them of the
    outlier ratio and the errors."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for s in summaries:
        groups.setdefault(kind_of(s["name"]), []).append(s)
    out = []
    keys = ("channel_max_over_median", "token_peak_over_rms_mean", "q8a_rel_error",
            "int8_token_rel_error", "int4_rel_error")  # fmt: skip
    for kind, rows in groups.items():
        row: dict[str, Any] = {
            "kind": INPUT_LABELS.get(kind, kind),
            "layers": len(rows),
            "channels": rows[0]["channels"],
        }
        for k in keys:
            v = np.array([r[k] for r in rows if r[k] is not None], dtype=np.float64)
            row[k] = (
                {"min": float(v.min()), "median": float(np.median(v)), "max": float(v.max())}
                if v.size
                else None
            )
        out.append(row)
    return out
