"""Scale searches of the 4-bit quantizers, in numba when installed and in numpy otherwise.

Both backends evaluate the same expressions in the same order (float64 sums taken sequentially
over the 32 columns of a block, round-half-away-from-zero) so they return identical scales;
`tests/test_quant.py` checks it. The numpy form is vectorised over all blocks, with a Python
loop over candidates and columns only.

Inputs are blocks x [rows, nb, 32] float32; outputs are float32 [rows, nb].

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


def symmetric_scales(x: np.ndarray, nmax: int, backend: str | None = None) -> np.ndarray:
    if (backend or ("numba" if _use_numba() else "numpy")) == "numba":
        return _numba_kernels()[0](np.ascontiguousarray(x, np.float32), nmax)
    return _symmetric_numpy(x, nmax)


def affine_scales(
    x: np.ndarray, nmax: int, backend: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    if (backend or ("numba" if _use_numba() else "numpy")) == "numba":
        return _numba_kernels()[1](np.ascontiguousarray(x, np.float32), nmax)
    return _affine_numpy(x, nmax)


# --- numpy --------------------------------------------------------------------------------------
def _round(v: np.ndarray) -> np.ndarray:
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


def _colsum(a: np.ndarray) -> np.ndarray:
    """Sum over the last axis in index order (the order the numba loops use)."""
    s = np.zeros(a.shape[:-1], np.float64)
    for j in range(a.shape[-1]):
        s += a[..., j]
    return s


def _symmetric_numpy(x: np.ndarray, nmax: int) -> np.ndarray:
    x = x.astype(np.float64)
    idx = np.abs(x).argmax(axis=-1)
    vmax = np.take_along_axis(x, idx[..., None], axis=-1)[..., 0]
    safe = np.where(vmax != 0, vmax, 1.0)
    best_scale = np.zeros(vmax.shape)
    best = np.full(vmax.shape, -1.0)  # sumlx^2 / suml2: larger is better
    for i in SYM_STEPS:
        iscale = -(nmax + 0.1 * i) / safe
        lv = np.clip(_round(iscale[..., None] * x), -nmax, nmax - 1)
        sumlx, suml2 = _colsum(lv * x), _colsum(lv * lv)
        with np.errstate(divide="ignore", invalid="ignore"):
            score = np.where(suml2 > 0, sumlx * sumlx / np.where(suml2 > 0, suml2, 1), -1.0)
            better = score > best
            best = np.where(better, score, best)
            best_scale = np.where(better, sumlx / np.where(suml2 > 0, suml2, 1), best_scale)
    for _ in range(REFINE):
        inv = np.where(best_scale != 0, 1.0 / np.where(best_scale != 0, best_scale, 1), 0.0)
        lv = np.clip(_round(inv[..., None] * x), -nmax, nmax - 1)
        sumlx, suml2 = _colsum(lv * x), _colsum(lv * lv)
        score = np.where(suml2 > 0, sumlx * sumlx / np.where(suml2 > 0, suml2, 1), -1.0)
        better = score > best
        best = np.where(better, score, best)
        best_scale = np.where(better, sumlx / np.where(suml2 > 0, suml2, 1), best_scale)
    return np.where(vmax != 0, best_scale, 0.0).astype(np.float32)


def _affine_fit(x: np.ndarray, lv: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares (s, mn) for x ~ s l + mn with mn <= 0, and the squared error."""
    n = float(x.shape[-1])
    sl, sl2, sxl, sx = _colsum(lv), _colsum(lv * lv), _colsum(x * lv), _colsum(x)
    det = n * sl2 - sl * sl
    ok = det > 0
    safe = np.where(ok, det, 1.0)
    s = (n * sxl - sx * sl) / safe
    mn = (sl2 * sx - sl * sxl) / safe
    pos = mn > 0
    s = np.where(pos, np.where(sl2 > 0, sxl / np.where(sl2 > 0, sl2, 1.0), 0.0), s)
    mn = np.where(pos, 0.0, mn)
    err = _colsum(np.square(s[..., None] * lv + mn[..., None] - x))
    return s, mn, np.where(ok, err, np.inf)


def _affine_numpy(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    x = x.astype(np.float64)
    lo = np.minimum(x.min(axis=-1), 0.0)
    hi = x.max(axis=-1)
    flat = hi <= lo
    rng = np.where(flat, 1.0, hi - lo)
    best_s = np.zeros(lo.shape)
    best_m = lo.copy()
    best_err = np.full(lo.shape, np.inf)
    for i in (None, *AFF_STEPS):
        iscale = (nmax if i is None else (-1.0 + 0.1 * i + nmax)) / rng
        lv = np.clip(_round(iscale[..., None] * (x - lo[..., None])), 0, nmax)
        if i is None:  # plain min/max rounding
            s, mn = 1.0 / iscale, lo
            err = _colsum(np.square(s[..., None] * lv + mn[..., None] - x))
        else:
            s, mn, err = _affine_fit(x, lv)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_s, best_m = np.where(better, s, best_s), np.where(better, mn, best_m)
    for _ in range(REFINE):
        inv = np.where(best_s > 0, 1.0 / np.where(best_s > 0, best_s, 1.0), 0.0)
        lv = np.clip(_round(inv[..., None] * (x - best_m[..., None])), 0, nmax)
        s, mn, err = _affine_fit(x, lv)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_s, best_m = np.where(better, s, best_s), np.where(better, mn, best_m)
    best_s = np.where(flat, 0.0, best_s)
    best_m = np.where(flat, lo, best_m)
    return best_s.astype(np.float32), (-best_m).astype(np.float32)


# --- numba --------------------------------------------------------------------------------------
_KERNELS: tuple | None = None


def _numba_kernels() -> tuple:
    """Compiles (once, cached on disk) the numba forms of both searches."""
    global _KERNELS
    if _KERNELS is not None:
        return _KERNELS
    import numba

    jit = numba.njit(cache=True, nogil=True)
    pjit = numba.njit(cache=True, parallel=True, nogil=True)
    sym_steps = np.array(SYM_STEPS, np.float64)
    aff_steps = np.array(AFF_STEPS, np.float64)
    refine = REFINE

    @jit
    def rnd(v: float) -> float:
        a = np.floor(abs(v) + 0.5)
        return a if v >= 0 else -a

    @jit
    def clip(v: float, lo: float, hi: float) -> float:
        return lo if v < lo else (hi if v > hi else v)

    @jit
    def sym_block(x, nmax, steps):  # type: ignore[no-untyped-def]
        n = x.shape[0]
        vmax, amax = 0.0, -1.0
        for j in range(n):
            if abs(x[j]) > amax:
                amax, vmax = abs(x[j]), float(x[j])
        if vmax == 0.0:
            return 0.0
        best, best_scale = -1.0, 0.0
        for t in range(steps.shape[0] + refine):
            if t < steps.shape[0]:
                iscale = -(nmax + 0.1 * steps[t]) / vmax
            else:
                iscale = 1.0 / best_scale if best_scale != 0.0 else 0.0
            sumlx, suml2 = 0.0, 0.0
            for j in range(n):
                xv = float(x[j])
                lv = clip(rnd(iscale * xv), -nmax, nmax - 1)
                sumlx += lv * xv
                suml2 += lv * lv
            if suml2 > 0:
                score = sumlx * sumlx / suml2
                if score > best:
                    best, best_scale = score, sumlx / suml2
        return best_scale

    @pjit
    def sym_all(x, nmax):  # type: ignore[no-untyped-def]
        rows, nb = x.shape[0], x.shape[1]
        out = np.empty((rows, nb), np.float32)
        for r in numba.prange(rows):
            for b in range(nb):
                out[r, b] = sym_block(x[r, b], float(nmax), sym_steps)
        return out

    @jit
    def aff_err(x, lvs, s, mn):  # type: ignore[no-untyped-def]
        e = 0.0
        for j in range(x.shape[0]):
            d = s * lvs[j] + mn - float(x[j])
            e += d * d
        return e

    @jit
    def aff_block(x, nmax, steps, lvs):  # type: ignore[no-untyped-def]
        n = x.shape[0]
        lo, hi = 0.0, float(x[0])
        lo = min(lo, float(x[0]))
        for j in range(1, n):
            lo = min(lo, float(x[j]))
            hi = max(hi, float(x[j]))
        if hi <= lo:
            return 0.0, lo
        rng = hi - lo
        best_s, best_m, best_err = 0.0, lo, np.inf
        nsteps = steps.shape[0]
        for t in range(1 + nsteps + refine):
            if t == 0:
                iscale, base = nmax / rng, lo
            elif t <= nsteps:
                iscale, base = (-1.0 + 0.1 * steps[t - 1] + nmax) / rng, lo
            else:
                iscale = 1.0 / best_s if best_s > 0 else 0.0
                base = best_m
            sl, sl2, sxl, sx = 0.0, 0.0, 0.0, 0.0
            for j in range(n):
                xv = float(x[j])
                lv = clip(rnd(iscale * (xv - base)), 0.0, nmax)
                lvs[j] = lv
                sl += lv
                sl2 += lv * lv
                sxl += xv * lv
                sx += xv
            if t == 0:
                s, mn = 1.0 / iscale, lo
                err = aff_err(x, lvs, s, mn)
            else:
                det = n * sl2 - sl * sl
                if det > 0:
                    s = (n * sxl - sx * sl) / det
                    mn = (sl2 * sx - sl * sxl) / det
                    if mn > 0:
                        s = sxl / sl2 if sl2 > 0 else 0.0
                        mn = 0.0
                    err = aff_err(x, lvs, s, mn)
                else:
                    s, mn, err = 0.0, 0.0, np.inf
            if err < best_err:
                best_err, best_s, best_m = err, s, mn
        return best_s, best_m

    @pjit
    def aff_all(x, nmax):  # type: ignore[no-untyped-def]
        rows, nb, n = x.shape
        s_out = np.empty((rows, nb), np.float32)
        m_out = np.empty((rows, nb), np.float32)
        for r in numba.prange(rows):
            lvs = np.empty(n, np.float64)
            for b in range(nb):
                s, mn = aff_block(x[r, b], float(nmax), aff_steps, lvs)
                s_out[r, b] = s
                m_out[r, b] = -mn
        return s_out, m_out

    _KERNELS = (sym_all, aff_all)
    return _KERNELS
