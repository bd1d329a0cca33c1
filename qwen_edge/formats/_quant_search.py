"""Scale searches of the 4- and 6-bit quantizers, in numba when installed and in numpy otherwise.

Both backends evaluate the same expressions in the same order (float64 sums taken sequentially
over the 32 columns of a block, rounding floor(v + 0.5)) so they return identical scales;
`tests/test_quant.py` checks it. The numpy form is vectorised over all blocks, with a Python
loop over candidates and columns only.

Inputs are blocks x [rows, nb, 32] float32; outputs are float32 [rows, nb].

Importance (activation-aware quantization): with `weights` w [nb, 32] (one positive weight per
input column, the same for every row: the mean squared activation of that input channel on
calibration text, `export.convert.read_calibration`) every squared error and least-squares
fit is weighted, sum w (x - x_q)^2, so a block's scale favours the columns whose inputs are
large. Each product is formed as (w l) x, (w x) x, ..., so w = 1 gives exactly the unweighted
sums: without weights the searches run with w = 1 and return the same scales as before.

* `symmetric_scales`: x ~ d * l, l in [-nmax, nmax - 1]. Candidates map the block's signed
  extreme to -(nmax + 0.1 i) for i in -9..9 (the negative side has the extra level); each
  candidate's codes get their least-squares scale; the best is then refined by re-rounding and
  re-solving until it stops improving (at most `REFINE` rounds).
* `affine_scales`: x ~ s * l - m, l in [0, nmax], m >= 0 (the block minimum clamped to <= 0, as
  llama.cpp's k-quants do). Candidates stretch the range to nmax + (-1 + 0.1 i), i in 0..20;
  each candidate's codes get the joint least-squares (s, m); then the same refinement.
"""

from __future__ import annotations

import os

import numpy as np

SYM_STEPS = tuple(range(-9, 10))
AFF_STEPS = tuple(range(21))
REFINE = 3


def _use_numba() -> bool:
    if os.environ.get("QWEN_EDGE_NO_NUMBA") == "1":
        return False
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def _weights(x: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """The column weights as float64 [nb, 32] (ones without importance)."""
    if weights is None:
        return np.ones(x.shape[1:], np.float64)
    w = np.asarray(weights, np.float64).reshape(x.shape[1:])
    return np.ascontiguousarray(w)


def symmetric_scales(
    x: np.ndarray, nmax: int, backend: str | None = None, weights: np.ndarray | None = None
) -> np.ndarray:
    w = _weights(x, weights)
    if (backend or ("numba" if _use_numba() else "numpy")) == "numba":
        return _numba_kernels()[0](np.ascontiguousarray(x, np.float32), nmax, w)
    return _symmetric_numpy(x, nmax, w)


def affine_scales(
    x: np.ndarray, nmax: int, backend: str | None = None, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    w = _weights(x, weights)
    if (backend or ("numba" if _use_numba() else "numpy")) == "numba":
        return _numba_kernels()[1](np.ascontiguousarray(x, np.float32), nmax, w)
    return _affine_numpy(x, nmax, w)


# --- numpy --------------------------------------------------------------------------------------
def _round(v: np.ndarray) -> np.ndarray:
    """Round half up, floor(v + 0.5): branch-free, so the numba loops vectorise."""
    return np.floor(v + 0.5)


def _colsum(a: np.ndarray) -> np.ndarray:
    """Sum over the last axis in index order (the order the numba loops use)."""
    s = np.zeros(a.shape[:-1], np.float64)
    for j in range(a.shape[-1]):
        s += a[..., j]
    return s


def _symmetric_numpy(x: np.ndarray, nmax: int, w: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    idx = np.abs(x).argmax(axis=-1)
    vmax = np.take_along_axis(x, idx[..., None], axis=-1)[..., 0]
    safe = np.where(vmax != 0, vmax, 1.0)
    best_scale = np.zeros(vmax.shape)
    best = np.full(vmax.shape, -1.0)  # sumlx^2 / suml2: larger is better
    for i in SYM_STEPS:
        iscale = -(nmax + 0.1 * i) / safe
        lv = np.clip(_round(iscale[..., None] * x), -nmax, nmax - 1)
        sumlx, suml2 = _colsum(w * lv * x), _colsum(w * lv * lv)
        with np.errstate(divide="ignore", invalid="ignore"):
            score = np.where(suml2 > 0, sumlx * sumlx / np.where(suml2 > 0, suml2, 1), -1.0)
            better = score > best
            best = np.where(better, score, best)
            best_scale = np.where(better, sumlx / np.where(suml2 > 0, suml2, 1), best_scale)
    for _ in range(REFINE):
        inv = np.where(best_scale != 0, 1.0 / np.where(best_scale != 0, best_scale, 1), 0.0)
        lv = np.clip(_round(inv[..., None] * x), -nmax, nmax - 1)
        sumlx, suml2 = _colsum(w * lv * x), _colsum(w * lv * lv)
        score = np.where(suml2 > 0, sumlx * sumlx / np.where(suml2 > 0, suml2, 1), -1.0)
        better = score > best
        best = np.where(better, score, best)
        best_scale = np.where(better, sumlx / np.where(suml2 > 0, suml2, 1), best_scale)
    return np.where(vmax != 0, best_scale, 0.0).astype(np.float32)


def _affine_err(
    n: np.ndarray | float, sums: tuple, sx2: np.ndarray, s: np.ndarray, mn: np.ndarray
) -> np.ndarray:
    """Sum of (s l + mn - x)^2 from the block sums (the same closed form as the numba code)."""
    sl, sl2, sxl, sx = sums
    return s * s * sl2 + 2.0 * s * mn * sl + n * mn * mn - 2.0 * s * sxl - 2.0 * mn * sx + sx2


def _affine_fit(
    x: np.ndarray, lv: np.ndarray, sx2: np.ndarray, w: np.ndarray, n: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted least-squares (s, mn) for x ~ s l + mn with mn <= 0, and the squared error
    (n: the blocks' weight sums)."""
    sums = sl, sl2, sxl, sx = (
        _colsum(w * lv),
        _colsum(w * lv * lv),
        _colsum(w * x * lv),
        _colsum(w * x),
    )
    det = n * sl2 - sl * sl
    ok = det > 0
    safe = np.where(ok, det, 1.0)
    s = (n * sxl - sx * sl) / safe
    mn = (sl2 * sx - sl * sxl) / safe
    pos = mn > 0
    s = np.where(pos, np.where(sl2 > 0, sxl / np.where(sl2 > 0, sl2, 1.0), 0.0), s)
    mn = np.where(pos, 0.0, mn)
    return s, mn, np.where(ok, _affine_err(n, sums, sx2, s, mn), np.inf)


def _affine_numpy(x: np.ndarray, nmax: int, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = x.astype(np.float64)
    lo = np.minimum(x.min(axis=-1), 0.0)
    hi = x.max(axis=-1)
    flat = hi <= lo
    rng = np.where(flat, 1.0, hi - lo)
    best_s = np.zeros(lo.shape)
    best_m = lo.copy()
    best_err = np.full(lo.shape, np.inf)
    sx2 = _colsum(w * x * x)
    n = _colsum(w)
    for i in (None, *AFF_STEPS):
        iscale = (nmax if i is None else (-1.0 + 0.1 * i + nmax)) / rng
        lv = np.clip(_round(iscale[..., None] * (x - lo[..., None])), 0, nmax)
        if i is None:  # plain min/max rounding
            s, mn = 1.0 / iscale, lo
            sums = (_colsum(w * lv), _colsum(w * lv * lv), _colsum(w * x * lv), _colsum(w * x))
            err = _affine_err(n, sums, sx2, s, mn)
        else:
            s, mn, err = _affine_fit(x, lv, sx2, w, n)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_s, best_m = np.where(better, s, best_s), np.where(better, mn, best_m)
    for _ in range(REFINE):
        inv = np.where(best_s > 0, 1.0 / np.where(best_s > 0, best_s, 1.0), 0.0)
        lv = np.clip(_round(inv[..., None] * (x - best_m[..., None])), 0, nmax)
        s, mn, err = _affine_fit(x, lv, sx2, w, n)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_s, best_m = np.where(better, s, best_s), np.where(better, mn, best_m)
    best_s = np.where(flat, 0.0, best_s)
    best_m = np.where(flat, lo, best_m)
    return best_s.astype(np.float32), (-best_m).astype(np.float32)


# --- numba --------------------------------------------------------------------------------------
def _numba_kernels() -> tuple:
    from . import _quant_numba as nb

    sym_steps = np.array(SYM_STEPS, np.float64)
    aff_steps = np.array(AFF_STEPS, np.float64)
    return (
        lambda x, nmax, w: nb.sym_all(x, float(nmax), sym_steps, REFINE, w),
        lambda x, nmax, w: nb.aff_all(x, float(nmax), aff_steps, REFINE, w),
    )
