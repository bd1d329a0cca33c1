"""Numpy float32 reference of the Qwen3.5 text decoder, following docs/model.md line by line.

This is the golden model of qwen-edge: every native kernel and the quantization quality
measures are checked against it, and it is itself checked against `transformers`. It favours
being obviously right over being fast. Section numbers (§) refer to docs/model.md.

Two entry points must agree: `forward` takes many tokens at once (batched projections, causal
attention over the whole block, the chunked form of the gated delta rule) and `step` takes one
token (the delta-rule recurrence, which docs/model.md §4.8 step 7 makes the ground truth).
Both carry a `ReferenceState` so a prompt can be continued either way.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from ..errors import ContextLengthError
from ..formats.config import LINEAR, ModelConfig

F32 = np.float32
GDN_CHUNK = 64  # chunk length of the chunked delta rule (§4.8), as transformers uses
L2NORM_EPS = 1e-6  # the q/k l2-norm epsilon is fixed, not rms_norm_eps (§4.8 step 5)
MTP_SLOT = -1  # ReferenceState key of the MTP head's KV cache
MTP_LAYER = "mtp.layers.0."


# --- elementwise pieces (§4.1) -----------------------------------------------------------------
def sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x))).astype(F32)


def silu(x: np.ndarray) -> np.ndarray:
    return (x * sigmoid(x)).astype(F32)


def softplus(x: np.ndarray) -> np.ndarray:
    """PyTorch's softplus: beta 1, and x itself above the threshold 20."""
    return np.where(x > 20.0, x, np.log1p(np.exp(np.minimum(x, 20.0)))).astype(F32)


def rms_norm_1p(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """Zero-centred RMSNorm over the last axis: x * rsqrt(mean(x^2) + eps) * (1 + w) (§4.3)."""
    ms = np.mean(np.square(x), axis=-1, keepdims=True, dtype=F32)
    return (x / np.sqrt(ms + F32(eps)) * (F32(1) + w)).astype(F32)


def gated_rms_norm(o: np.ndarray, w: np.ndarray, z: np.ndarray, eps: float) -> np.ndarray:
    """GDN output norm: plain weight, normalise first, then gate with silu(z) (§4.4)."""
    ms = np.mean(np.square(o), axis=-1, keepdims=True, dtype=F32)
    return (w * (o / np.sqrt(ms + F32(eps))) * silu(z)).astype(F32)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """x * rsqrt(sum(x^2) + 1e-6) over the last axis, as transformers' `l2norm`."""
    return (
        x / np.sqrt(np.sum(np.square(x), axis=-1, keepdims=True, dtype=F32) + F32(L2NORM_EPS))
    ).astype(F32)


def rope_inv_freq(config: ModelConfig) -> np.ndarray:
    """inv_freq[f] = 1 / theta^(2f / rotary_dim), evaluated in float32 like transformers (§4.7)."""
    dim = config.rotary_dim
    exponent = np.arange(0, dim, 2, dtype=F32) / F32(dim)
    return (F32(1.0) / np.power(F32(config.rope_theta), exponent, dtype=F32)).astype(F32)


def apply_rope(x: np.ndarray, positions: np.ndarray, inv_freq: np.ndarray) -> np.ndarray:
    """Partial rotate-half RoPE on the first 2*len(inv_freq) dims of every head (§4.7 step 3).

    x: [T, n_heads, head_dim]; positions: [T]. Text-only MRoPE reduces exactly to this (step 4).
    """
    half = inv_freq.shape[0]
    theta = positions.astype(F32)[:, None] * inv_freq[None, :]  # [T, half]
    cos, sin = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
    a, b = x[..., :half], x[..., half : 2 * half]
    out = x.copy()
    out[..., :half] = a * cos - b * sin
    out[..., half : 2 * half] = b * cos + a * sin
    return out


# --- state --------------------------------------------------------------------------------------
@dataclass
class ReferenceState:
    """Everything a continuation needs: per-layer caches and the number of tokens seen."""

    position: int = 0
    # linear-attention layers: last K-1 pre-conv inputs [K-1, conv_dim] and S [nv, dk, dv]
    conv: dict[int, np.ndarray] = field(default_factory=dict)
    recurrent: dict[int, np.ndarray] = field(default_factory=dict)
    # full-attention layers: post-norm, post-RoPE keys and raw values [T, n_kv, head_dim]
    keys: dict[int, np.ndarray] = field(default_factory=dict)
    values: dict[int, np.ndarray] = field(default_factory=dict)
    # the MTP head's cache (§5) is keys[MTP_SLOT] / values[MTP_SLOT]; pairs it has seen
    mtp_position: int = 0

    def copy(self) -> ReferenceState:
        return copy.deepcopy(self)


# --- the model ----------------------------------------------------------------------------------
class ReferenceModel:
    """The Qwen3.5 text decoder in numpy float32.

    Args:
        config: the text configuration.
        weights: canonical tensor name (see `Checkpoint`) -> float32 array.
        context: the most tokens a state may hold (for the context-length error).
    """

    def __init__(
        self, config: ModelConfig, weights: dict[str, np.ndarray], context: int | None = None
    ):
        self.config = config
        self.context = context or config.max_position_embeddings
        expected = config.text_tensor_shapes()
        missing = sorted(set(expected) - set(weights))
        if missing:
            raise ValueError(f"reference model: missing weights {missing[:5]}")
        self.w = {name: np.ascontiguousarray(weights[name], dtype=F32) for name in expected}
        # The MTP head (§5), when the weights carry it (names as in the checkpoint: mtp.*).
        for name, value in weights.items():
            if name.startswith("mtp."):
                self.w[name] = np.ascontiguousarray(value, dtype=F32)
        self.has_mtp = "mtp.fc.weight" in self.w
        self.lm_head = self.w[
            "embed_tokens.weight" if config.tie_word_embeddings else "lm_head.weight"
        ]
        self.inv_freq = rope_inv_freq(config)

    @classmethod
    def from_checkpoint(cls, checkpoint: object, context: int | None = None) -> ReferenceModel:
        """Loads every text tensor of a checkpoint (path or `Checkpoint`) as float32."""
        from ..formats.checkpoint import Checkpoint

        ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else Checkpoint(str(checkpoint))
        weights = dict(ckpt.iter_text())
        weights.update({name: ckpt.read_any(name) for name in ckpt.groups.mtp})
        return cls(ckpt.config, weights, context)

    def new_state(self) -> ReferenceState:
        c = self.config
        state = ReferenceState()
        for i in c.linear_layers:
            state.conv[i] = np.zeros((c.linear_conv_kernel_dim - 1, c.conv_dim), F32)
            state.recurrent[i] = np.zeros(
                (c.linear_num_value_heads, c.linear_key_head_dim, c.linear_value_head_dim), F32
            )
        for i in [*c.full_layers, MTP_SLOT]:
            state.keys[i] = np.zeros((0, c.num_key_value_heads, c.head_dim), F32)
            state.values[i] = np.zeros((0, c.num_key_value_heads, c.head_dim), F32)
        return state

    # public entry points (the same protocol as the native runtime's Model)
    def forward(
        self, tokens: Iterable[int], state: ReferenceState, *, all_logits: bool = False
    ) -> np.ndarray:
        """Processes a block of tokens at once (chunked delta rule), continuing `state`.

        Returns:
            float32 logits of the last position [vocab], or of every position [T, vocab] when
            `all_logits` is set.
        """
        ids = self._check_tokens(tokens, state)
        logits = self._run(ids, state, chunked=True)
        return logits if all_logits else logits[-1]

    def forward_hidden(self, tokens: Iterable[int], state: ReferenceState) -> Arrays:
        """(logits [T, vocab], final-normed hidden states [T, H]) of every position."""
        ids = self._check_tokens(tokens, state)
        y = self._hidden(ids, state, chunked=True)
        return (y @ self.lm_head.T).astype(F32), y

    def mtp(self, hidden: np.ndarray, tokens: Iterable[int], state: ReferenceState) -> Arrays:
        """The MTP head (§5) over pairs (hidden[t], tokens[t]) at the MTP cache's next positions.

        hidden [T, H]: final-normed hidden states at positions p..p+T-1 (or the head's own
        previous outputs); tokens: the ids that followed them. Returns (draft logits [T, vocab]
        for the token after each token, the head's normed outputs [T, H]).
        """
        if not self.has_mtp:
            raise ValueError("reference model: the weights have no MTP head (mtp.*)")
        c, w = self.config, self.w
        ids = self._check_tokens(tokens, None)
        hidden = np.asarray(hidden, F32).reshape(ids.size, c.hidden_size)
        e = w["embed_tokens.weight"][ids]
        cat = np.concatenate(
            [
                rms_norm_1p(e, w["mtp.pre_fc_norm_embedding.weight"], c.rms_norm_eps),
                rms_norm_1p(hidden, w["mtp.pre_fc_norm_hidden.weight"], c.rms_norm_eps),
            ],
            axis=-1,
        )
        h = cat @ w["mtp.fc.weight"].T
        positions = np.arange(state.mtp_position, state.mtp_position + ids.size)
        a = rms_norm_1p(h, w[MTP_LAYER + "input_layernorm.weight"], c.rms_norm_eps)
        h = h + self._attention(MTP_SLOT, a, positions, state, prefix=MTP_LAYER)
        f = rms_norm_1p(h, w[MTP_LAYER + "post_attention_layernorm.weight"], c.rms_norm_eps)
        h = h + self._mlp(MTP_SLOT, f, prefix=MTP_LAYER)
        state.mtp_position += ids.size
        y = rms_norm_1p(h, w["mtp.norm.weight"], c.rms_norm_eps)
        return (y @ self.lm_head.T).astype(F32), y

    def step(self, token: int, state: ReferenceState) -> np.ndarray:
        """Logits [vocab] for one token, using the delta-rule recurrence (the ground truth)."""
        ids = self._check_tokens([token], state)
        return self._run(ids, state, chunked=False)[0]

    def logits(self, tokens: Iterable[int]) -> np.ndarray:
        """Logits [T, vocab] of every position from a fresh state."""
        return self.forward(tokens, self.new_state(), all_logits=True)

    def _check_tokens(self, tokens: Iterable[int], state: ReferenceState | None) -> np.ndarray:
        ids = np.asarray(list(tokens), dtype=np.int64)
        if ids.ndim != 1 or ids.size == 0:
            raise ValueError("tokens must be a non-empty sequence of ids")
        if ids.min() < 0 or ids.max() >= self.config.vocab_size:
            raise ValueError(f"token ids must be in [0, {self.config.vocab_size})")
        used = state.position if state is not None else 0
        if used + ids.size > self.context:
            raise ContextLengthError(
                f"{used} + {ids.size} tokens exceed the context of {self.context} tokens"
            )
        return ids

    def _run(self, ids: np.ndarray, state: ReferenceState, chunked: bool) -> np.ndarray:
        y = self._hidden(ids, state, chunked)
        return (y @ self.lm_head.T).astype(F32)  # (§4.9)

    def _hidden(self, ids: np.ndarray, state: ReferenceState, chunked: bool) -> np.ndarray:
        c, w = self.config, self.w
        positions = np.arange(state.position, state.position + ids.size)
        h = w["embed_tokens.weight"][ids]  # [T, H] (§4.2)
        for i, kind in enumerate(c.layer_types):
            p = f"layers.{i}."
            a = rms_norm_1p(h, w[p + "input_layernorm.weight"], c.rms_norm_eps)
            if kind == LINEAR:
                h = h + self._gated_delta_net(i, a, state, chunked)
            else:
                h = h + self._attention(i, a, positions, state)
            f = rms_norm_1p(h, w[p + "post_attention_layernorm.weight"], c.rms_norm_eps)
            h = h + self._mlp(i, f)
        state.position += ids.size
        return rms_norm_1p(h, w["norm.weight"], c.rms_norm_eps)

    def _mlp(self, i: int, x: np.ndarray, prefix: str | None = None) -> np.ndarray:
        """SwiGLU: down(silu(gate x) * up x) (§4.6)."""
        p = (prefix or f"layers.{i}.") + "mlp."
        gate = x @ self.w[p + "gate_proj.weight"].T
        up = x @ self.w[p + "up_proj.weight"].T
        return (silu(gate) * up) @ self.w[p + "down_proj.weight"].T

    def _attention(
        self,
        i: int,
        x: np.ndarray,
        positions: np.ndarray,
        state: ReferenceState,
        prefix: str | None = None,
    ) -> np.ndarray:
        """Gated full attention with q/k norms, partial RoPE, GQA and the KV cache (§4.7);
        layer i's weights and cache, or those under `prefix` with the cache of slot i."""
        c, p = self.config, (prefix or f"layers.{i}.") + "self_attn."
        T, nh, nkv, hd = x.shape[0], c.num_attention_heads, c.num_key_value_heads, c.head_dim
        proj = (x @ self.w[p + "q_proj.weight"].T).reshape(T, nh, 2 * hd)
        q, gate = proj[..., :hd], proj[..., hd:]  # per head [q_h | gate_h] (§3.2)
        k = (x @ self.w[p + "k_proj.weight"].T).reshape(T, nkv, hd)
        v = (x @ self.w[p + "v_proj.weight"].T).reshape(T, nkv, hd)
        q = apply_rope(
            rms_norm_1p(q, self.w[p + "q_norm.weight"], c.rms_norm_eps), positions, self.inv_freq
        )
        k = apply_rope(
            rms_norm_1p(k, self.w[p + "k_norm.weight"], c.rms_norm_eps), positions, self.inv_freq
        )
        keys = state.keys[i] = np.concatenate([state.keys[i], k])
        values = state.values[i] = np.concatenate([state.values[i], v])

        group = nh // nkv  # query head h reads kv head h // group
        kh = np.repeat(keys, group, axis=1)  # [S, nh, hd]
        vh = np.repeat(values, group, axis=1)
        scores = np.einsum("thd,shd->hts", q, kh) / F32(np.sqrt(hd))  # [nh, T, S]
        key_pos = np.arange(keys.shape[0])
        scores = np.where(key_pos[None, None, :] <= positions[None, :, None], scores, -np.inf)
        scores = scores - scores.max(axis=-1, keepdims=True)
        probs = np.exp(scores)
        probs = (probs / probs.sum(axis=-1, keepdims=True)).astype(F32)
        out = np.einsum("hts,shd->thd", probs, vh)  # [T, nh, hd]
        out = (out * sigmoid(gate)).reshape(T, nh * hd)
        return out @ self.w[p + "o_proj.weight"].T

    def _gated_delta_net(
        self, i: int, x: np.ndarray, state: ReferenceState, chunked: bool
    ) -> np.ndarray:
        """Gated DeltaNet: causal conv, l2-normed q/k, gated delta rule, gated norm (§4.8)."""
        c, p = self.config, f"layers.{i}.linear_attn."
        T = x.shape[0]
        nk, nv, dk, dv = (
            c.linear_num_key_heads,
            c.linear_num_value_heads,
            c.linear_key_head_dim,
            c.linear_value_head_dim,
        )
        u = x @ self.w[p + "in_proj_qkv.weight"].T  # [T, conv_dim], pre-conv
        z = (x @ self.w[p + "in_proj_z.weight"].T).reshape(T, nv, dv)
        b = x @ self.w[p + "in_proj_b.weight"].T  # [T, nv]
        a = x @ self.w[p + "in_proj_a.weight"].T

        # Depthwise causal conv over the previous K-1 inputs and this block, then SiLU (step 2).
        taps = self.w[p + "conv1d.weight"][:, 0, :]  # [conv_dim, K]; tap j sees input t-K+1+j
        K = taps.shape[1]
        window = np.concatenate([state.conv[i], u])  # [K-1+T, conv_dim]
        conv = sum(window[j : j + T] * taps[:, j] for j in range(K))
        state.conv[i] = window[T:]  # the last K-1 pre-conv inputs
        u = silu(conv.astype(F32))

        q = u[:, : c.key_dim].reshape(T, nk, dk)
        k = u[:, c.key_dim : 2 * c.key_dim].reshape(T, nk, dk)
        v = u[:, 2 * c.key_dim :].reshape(T, nv, dv)
        beta = sigmoid(b)  # (step 4)
        g = (-np.exp(self.w[p + "A_log"]) * softplus(a + self.w[p + "dt_bias"])).astype(F32)
        q = l2_normalize(q) * F32(1.0 / np.sqrt(dk))  # (step 5)
        k = l2_normalize(k)
        r = nv // nk  # value head m reads q/k head m // r (step 6, grouped)
        q, k = np.repeat(q, r, axis=1), np.repeat(k, r, axis=1)  # [T, nv, dk]

        rule = _delta_rule_chunked if chunked else _delta_rule_recurrent
        o, state.recurrent[i] = rule(q, k, v, g, beta, state.recurrent[i])
        y = gated_rms_norm(o, self.w[p + "norm.weight"], z, c.rms_norm_eps)  # (step 8)
        return y.reshape(T, nv * dv) @ self.w[p + "out_proj.weight"].T


Arrays = tuple[np.ndarray, np.ndarray]


def _delta_rule_recurrent(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, g: np.ndarray, beta: np.ndarray, S: np.ndarray
) -> Arrays:
    """The gated delta rule token by token: the ground-truth definition (§4.8 step 7).

    q, k: [T, nv, dk]; v: [T, nv, dv]; g, beta: [T, nv]; S: [nv, dk, dv]. Returns (o, S').
    """
    S = S.copy()
    out = np.empty_like(v)
    for t in range(q.shape[0]):
        S *= np.exp(g[t])[:, None, None]  # 1. decay
        read = np.einsum("hij,hi->hj", S, k[t])  # 2. e = S^T k
        delta = beta[t][:, None] * (v[t] - read)  # 3.
        S += k[t][:, :, None] * delta[:, None, :]  # 4. S += k delta^T
        out[t] = np.einsum("hij,hi->hj", S, q[t])  # 5. o = S^T q from the updated state
    return out, S


def _delta_rule_chunked(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, g: np.ndarray, beta: np.ndarray, S: np.ndarray
) -> Arrays:
    """The same rule in chunks of 64 tokens (§4.8.1, chunked form): matrix products per
    chunk instead of a loop over tokens; equal to the recurrence up to rounding."""
    S = S.copy()
    T = q.shape[0]
    out = np.empty_like(v)
    for c0 in range(0, T, GDN_CHUNK):
        # per head, tokens of this chunk: [nv, n, d]
        qc, kc, vc = (x[c0 : c0 + GDN_CHUNK].transpose(1, 0, 2) for x in (q, k, v))
        gc, bc = g[c0 : c0 + GDN_CHUNK].T, beta[c0 : c0 + GDN_CHUNK].T  # [nv, n]
        n = qc.shape[1]
        gamma = np.cumsum(gc, axis=1, dtype=F32)  # in-chunk cumulative log-decay
        causal = np.tril(np.ones((n, n), bool))
        # D[r, s] = exp(gamma_r - gamma_s) for s <= r; masked before exp so nothing overflows.
        D = np.where(causal, np.exp(np.where(causal, gamma[:, :, None] - gamma[:, None, :], 0)), 0)
        A = np.tril(bc[:, :, None] * (kc @ kc.transpose(0, 2, 1)) * D, -1)
        U = _solve_unit_lower(A, bc[:, :, None] * vc)
        W = _solve_unit_lower(A, (bc * np.exp(gamma))[:, :, None] * kc)
        deltas = U - W @ S  # [nv, n, dv]
        o = np.exp(gamma)[:, :, None] * (qc @ S) + ((qc @ kc.transpose(0, 2, 1)) * D) @ deltas
        last = gamma[:, -1:]  # [nv, 1]
        S = (
            np.exp(last)[:, :, None] * S
            + (np.exp(last - gamma)[:, :, None] * kc).transpose(0, 2, 1) @ deltas
        )
        out[c0 : c0 + n] = o.transpose(1, 0, 2)
    return out.astype(F32), S.astype(F32)


def _solve_unit_lower(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """X with (I + A) X = B for strictly lower-triangular A [h, n, n], by forward substitution."""
    X = np.empty_like(B)
    for r in range(A.shape[1]):
        X[:, r] = B[:, r] - np.einsum("hs,hsd->hd", A[:, r, :r], X[:, :r])
    return X
