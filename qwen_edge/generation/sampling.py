"""Next-token sampling in numpy: penalties, logit bias, temperature, top-k, top-p, min-p, greedy.

One `Sampler` per generation holds the settings, the token counts the penalties need and a seeded
random generator, so a run with a seed is reproducible. The order of operations follows
transformers (`generation/utils.py` `_get_logits_processor`), with OpenAI's presence and
frequency penalties and logit bias in front: bias → repetition penalty → presence/frequency
penalties → suppressed ids → temperature → top-k → top-p → min-p → draw.

The vocabulary has 248,320 entries, so nothing here sorts it: top-k runs `argpartition` on the
few logits above a bound taken from block maxima, min-p is a cut on the logits, and top-p
without top-k brackets the crossing logit. Only the few candidates left are sorted.

Time per step (`tools/bench_sampling.py`, 2-core x86-64 development machine under heavy load,
CPU time, 248,320 logits): greedy 0.1-0.2 ms; the Qwen3.5 recommended settings (top-k 20 with
top-p and presence penalty) 0.4-0.7 ms, plus 0.4 ms with logprobs. Against the native runtime's
20-40 ms per token that is 1-3.5 %, under the 5 % at which a sampler would move to C++. Top-p
without top-k costs 3-6 ms (a dozen passes over the vocabulary): the one setting that would.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ..errors import GenerationConfigError
from .settings import SamplingParams

_POOL = 1024  # about how many of the largest logits top-p alone tries first


class Sampler:
    """Picks tokens from logits; one instance per generation (it counts the tokens it saw).

    Args:
        params: the settings.
        vocab_size: the logits' length.
        valid_vocab: ids at or above this are never picked (embedding rows with no token: the
            Qwen3.5 matrices have 248,320 rows for 248,077 tokens).
        prompt: the prompt ids, which count for the repetition penalty.
        logprobs: compute each token's log-probability (a pass over the vocabulary, ~0.3 ms).
    """

    def __init__(
        self,
        params: SamplingParams,
        vocab_size: int,
        *,
        valid_vocab: int | None = None,
        prompt: Iterable[int] = (),
        logprobs: bool = True,
    ):
        self.params = params
        self.logprobs = logprobs
        self.vocab_size = vocab_size
        self.valid_vocab = vocab_size if valid_vocab is None else min(valid_vocab, vocab_size)
        self.rng = np.random.default_rng(params.seed)
        bad = [k for k in params.logit_bias if not 0 <= k < vocab_size]
        if bad:
            raise GenerationConfigError(f"logit_bias ids outside the vocabulary: {bad[:5]}")
        self._bias_ids = np.fromiter(params.logit_bias.keys(), np.int64, len(params.logit_bias))
        self._bias = np.fromiter(params.logit_bias.values(), np.float32, len(params.logit_bias))
        self._seen: set[int] = {int(t) for t in prompt if 0 <= int(t) < vocab_size}
        self._counts: dict[int, int] = {}
        # Scratch reused every step: a fresh 1 MB array costs an mmap and page faults each time.
        self._x = np.empty(vocab_size, np.float32)  # processed logits
        self._scratch = _Scratch(vocab_size)

    def accept(self, token: int) -> None:
        """Records a generated token for the penalties."""
        token = int(token)
        self._seen.add(token)
        self._counts[token] = self._counts.get(token, 0) + 1

    def __call__(self, logits: np.ndarray) -> tuple[int, float | None]:
        """Picks the next token.

        Args:
            logits: float logits [vocab_size] of the next position.

        Returns:
            (token id, its log-probability under the model's unmodified distribution, or None
            when the sampler was made with `logprobs=False`).
        """
        raw = np.asarray(logits)
        if raw.shape != (self.vocab_size,):
            raise ValueError(f"logits must have shape ({self.vocab_size},), got {raw.shape}")
        x, top = self._process(raw)
        token = int(np.argmax(x)) if self.params.greedy else self._draw(x, top)
        self.accept(token)
        return token, (_logprob(raw, token, self._scratch.a) if self.logprobs else None)

    def _process(self, raw: np.ndarray) -> tuple[np.ndarray, float]:
        p = self.params
        x = self._x
        np.copyto(x, raw)
        if self._bias_ids.size:
            x[self._bias_ids] += self._bias
        if p.repetition_penalty != 1.0 and self._seen:
            ids = np.fromiter(self._seen, np.int64, len(self._seen))
            v = x[ids]
            x[ids] = np.where(v > 0, v / p.repetition_penalty, v * p.repetition_penalty)
        if (p.presence_penalty or p.frequency_penalty) and self._counts:
            ids = np.fromiter(self._counts.keys(), np.int64, len(self._counts))
            counts = np.fromiter(self._counts.values(), np.float32, len(self._counts))
            x[ids] -= p.presence_penalty + p.frequency_penalty * counts
        if self.valid_vocab < self.vocab_size:
            x[self.valid_vocab :] = -np.inf
        top = float(np.max(x))  # NaN if any logit is NaN
        if not np.isfinite(top):
            raise ValueError("the logits hold NaN, or every token is excluded (all -inf)")
        return x, top

    def _draw(self, x: np.ndarray, top: float) -> int:
        p = self.params
        t = p.temperature
        ids: np.ndarray | None = None  # None: every id is still a candidate
        w_all: np.ndarray | None = None  # weights of the whole vocabulary, when computed
        total = 0.0  # normalizer of the distribution top-p measures mass against
        if 0 < p.top_k < x.size:
            ids = _top_k_ids(x, p.top_k)
            ids = ids[np.isfinite(x[ids])]
            total = float(np.sum(_weights(x[ids], top, t)))
        elif p.top_p < 1.0:
            w_all = _weights(x, top, t, out=self._scratch.w)
            total = float(np.sum(w_all, dtype=np.float64))
        if p.min_p > 0.0:
            # p_i >= min_p * p_max  <=>  x_i >= top + t * log(min_p): a cut on logits, and a
            # prefix of the ranking like top-p, so applying it first changes nothing.
            cut = top + t * float(np.log(p.min_p))
            ids = np.flatnonzero(x >= cut) if ids is None else ids[x[ids] >= cut]
        if p.top_p < 1.0:
            if ids is None and w_all is not None:
                cut, ids = _top_p_search(x, top, t, p.top_p * total, w_all, self._scratch)
                if np.isfinite(cut):  # a flat distribution: most of the vocabulary stays
                    s = self._scratch
                    np.greater(x, cut, out=s.mask)
                    kept = np.multiply(w_all, s.mask, out=s.a)
                    kept[ids] = w_all[ids]
                    return _draw_all(kept, self.rng)
            else:
                ids = _top_p_ids(x, ids, top, t, p.top_p * total)
        if ids is None or ids.size > _LARGE:
            # Many candidates: a two-level draw over the vocabulary, the others weighted 0.
            w = _weights(x, top, t, out=self._scratch.w) if w_all is None else w_all
            if ids is not None:
                kept = self._scratch.a
                kept.fill(0.0)
                kept[ids] = w[ids]
                w = kept
            return _draw_all(w, self.rng)
        cdf = np.cumsum(_weights(x[ids], top, t), dtype=np.float64)
        i = int(np.searchsorted(cdf, self.rng.random() * cdf[-1], side="right"))
        return int(ids[min(i, ids.size - 1)])


class _Scratch:
    """Reusable [vocab] buffers of a Sampler."""

    def __init__(self, n: int):
        self.w = np.empty(n, np.float32)  # weights of the whole vocabulary
        self.a = np.empty(n, np.float32)  # anything else float
        self.mask = np.empty(n, bool)


_BLOCK = 256  # block length of the two-level searches over the whole vocabulary
_LARGE = 16_384  # candidate sets above this are drawn from with the two-level search


def _weights(
    v: np.ndarray, top: float, temperature: float, out: np.ndarray | None = None
) -> np.ndarray:
    # Unnormalized probabilities exp((v - top) / T), float32, -inf -> 0; into `out` if given.
    out = np.subtract(v, np.float32(top), out=out, dtype=np.float32)
    np.multiply(out, np.float32(1.0 / temperature), out=out)
    return np.exp(out, out=out)


def _blocks(v: np.ndarray, fill: float) -> np.ndarray:
    # v as [n_blocks, _BLOCK], block contiguous, padded with `fill`.
    pad = -v.size % _BLOCK
    if pad:
        v = np.concatenate([v, np.full(pad, fill, v.dtype)])
    return v.reshape(-1, _BLOCK)


def _top_k_ids(x: np.ndarray, k: int) -> np.ndarray:
    """Ids of the k largest logits (ties broken arbitrarily), without partitioning all of x.

    The k-th largest of the per-block maxima is a lower bound of the k-th largest logit (those
    k maxima are k distinct entries), so only logits at or above it can be in the top k.
    """
    if k * _BLOCK >= x.size:
        return np.argpartition(x, -k)[-k:]
    maxima = _blocks(x, -np.inf).max(axis=1)
    bound = np.partition(maxima, -k)[-k]
    ids = np.flatnonzero(x >= bound)
    return ids[np.argpartition(x[ids], -k)[-k:]]


def _top_p_ids(
    x: np.ndarray, ids: np.ndarray | None, top: float, temperature: float, mass: float
) -> np.ndarray:
    """The most likely ids (of `ids`, or of all of x) whose more likely neighbours hold less than
    `mass` (transformers' top-p rule), found without sorting the whole vocabulary."""
    if ids is not None:
        return _top_p_cut(x, ids, top, temperature, mass, 0.0)
    cut, ids = _top_p_search(x, top, temperature, mass, None)
    return np.concatenate([np.flatnonzero(x > cut), ids]) if np.isfinite(cut) else ids


def _top_p_search(
    x: np.ndarray,
    top: float,
    temperature: float,
    mass: float,
    w: np.ndarray | None,
    scratch: _Scratch | None = None,
) -> tuple[float, np.ndarray]:
    """Top-p over all of x as (cut, ids): it keeps `ids` and every id with x > cut (+inf: none).

    A strided sample of the logits (sorted: 8,192 values) gives a cut above which lie about
    1,000 ids. If they hold `mass` (peaked distributions), only they are sorted. Otherwise
    (flat ones) the sample estimates where the mass is crossed, and two logits around the
    estimate are checked exactly: the mass above the upper one is below `mass` and the mass down
    to the lower one reaches it, so only the ids between them need sorting. The bracket widens
    until both checks hold, so the result is exact whatever the sample says.
    """
    stride = max(1, x.size // 8192)
    sample = np.sort(x[::stride])[::-1]  # descending
    head_cut = float(sample[min(_POOL // stride, sample.size - 1)])
    head = np.flatnonzero(x >= head_cut)
    head_mass = float(np.sum(_weights(x[head], top, temperature), dtype=np.float64))
    if head_mass >= mass:
        return np.inf, _top_p_cut(x, head, top, temperature, mass, 0.0)
    w = _weights(x, top, temperature) if w is None else w
    s = scratch or _Scratch(x.size)

    def mass_where(compare: np.ufunc, c: float) -> float:
        compare(x, np.float32(c), out=s.mask)
        return float(np.sum(np.multiply(w, s.mask, out=s.a), dtype=np.float64))

    rest = sample[sample < head_cut]
    est = head_mass + np.cumsum(_weights(rest, top, temperature), dtype=np.float64) * stride
    k = int(np.searchsorted(est, mass))
    margin = 64  # samples each side: about 2,000 ids of a flat 248k vocabulary
    while True:
        hi = float(rest[k - margin]) if k >= margin else head_cut
        lo = float(rest[k + margin]) if k + margin < rest.size else -np.inf
        above = mass_where(np.greater, hi)
        down_to = mass_where(np.greater_equal, lo)
        if above < mass <= down_to or (hi == head_cut and lo == -np.inf):
            break
        margin *= 4
    band = np.flatnonzero((x >= lo) & (x <= hi))
    return hi, _top_p_cut(x, band, top, temperature, mass, above)


def _top_p_cut(
    x: np.ndarray, ids: np.ndarray, top: float, temperature: float, mass: float, before: float
) -> np.ndarray:
    # Sort the candidates (a small set) and keep those whose preceding mass (+ `before`, the mass
    # of more likely tokens outside `ids`) is below `mass`; the first is always kept.
    w = _weights(x[ids], top, temperature).astype(np.float64)
    order = np.argsort(-w, kind="stable")
    preceding = before + np.cumsum(w[order]) - w[order]
    keep = int(np.count_nonzero(preceding < mass))
    return ids[order[: max(1, keep) if before == 0.0 else keep]]


def _draw_all(w: np.ndarray, rng: np.random.Generator) -> int:
    # Inverse-CDF draw over the whole vocabulary in two levels (block sums, then one block), so
    # only ~1,000 + 256 float64 partial sums are formed instead of 248k.
    blocks = _blocks(w, 0.0)
    sums = np.cumsum(blocks.sum(axis=1, dtype=np.float64))
    u = rng.random() * sums[-1]
    b = min(int(np.searchsorted(sums, u, side="right")), sums.size - 1)
    inner = np.cumsum(blocks[b], dtype=np.float64)
    u -= sums[b - 1] if b else 0.0
    i = min(int(np.searchsorted(inner, u, side="right")), _BLOCK - 1)
    while blocks[b, i] == 0.0 and i > 0:  # rounding can land on a padding or -inf entry
        i -= 1
    return b * _BLOCK + i


def _logprob(logits: np.ndarray, token: int, scratch: np.ndarray | None = None) -> float:
    top = float(np.max(logits))
    e = np.subtract(logits, np.float32(top), out=scratch, dtype=np.float32)
    lse = top + float(np.log(np.sum(np.exp(e, out=e), dtype=np.float64)))
    return float(logits[token]) - lse
