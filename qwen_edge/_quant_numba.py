"""numba forms of the scale searches in `_quant_search` (same expressions, same order).

Imported only when numba is installed; compiled functions are cached on disk by numba.
"""
# mypy: ignore-errors

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def rnd(v: float) -> float:
    a = np.floor(abs(v) + 0.5)
    return a if v >= 0 else -a


@numba.njit(cache=True, nogil=True)
def clip(v: float, lo: float, hi: float) -> float:
    return lo if v < lo else (hi if v > hi else v)


@numba.njit(cache=True, nogil=True)
def sym_block(x, nmax, steps, refine):  # type: ignore[no-untyped-def]
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


@numba.njit(cache=True, parallel=True, nogil=True)
def sym_all(x, nmax, steps, refine):  # type: ignore[no-untyped-def]
    rows, nb = x.shape[0], x.shape[1]
    out = np.empty((rows, nb), np.float32)
    for r in numba.prange(rows):
        for b in range(nb):
            out[r, b] = sym_block(x[r, b], float(nmax), steps, refine)
    return out


@numba.njit(cache=True, nogil=True)
def aff_err(n, sl, sl2, sxl, sx, sx2, s, mn):
    return s * s * sl2 + 2.0 * s * mn * sl + n * mn * mn - 2.0 * s * sxl - 2.0 * mn * sx + sx2


@numba.njit(cache=True, nogil=True)
def aff_block(x, nmax, steps, refine, lvs):  # type: ignore[no-untyped-def]
    n = x.shape[0]
    lo, hi = 0.0, float(x[0])
    lo = min(lo, float(x[0]))
    for j in range(1, n):
        lo = min(lo, float(x[j]))
        hi = max(hi, float(x[j]))
    if hi <= lo:
        return 0.0, lo
    rng = hi - lo
    sx2 = 0.0
    for j in range(n):
        sx2 += float(x[j]) * float(x[j])
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
            err = aff_err(n, sl, sl2, sxl, sx, sx2, s, mn)
        else:
            det = n * sl2 - sl * sl
            if det > 0:
                s = (n * sxl - sx * sl) / det
                mn = (sl2 * sx - sl * sxl) / det
                if mn > 0:
                    s = sxl / sl2 if sl2 > 0 else 0.0
                    mn = 0.0
                err = aff_err(n, sl, sl2, sxl, sx, sx2, s, mn)
            else:
                s, mn, err = 0.0, 0.0, np.inf
        if err < best_err:
            best_err, best_s, best_m = err, s, mn
    return best_s, best_m


@numba.njit(cache=True, parallel=True, nogil=True)
def aff_all(x, nmax, steps, refine):  # type: ignore[no-untyped-def]
    rows, nb, n = x.shape
    s_out = np.empty((rows, nb), np.float32)
    m_out = np.empty((rows, nb), np.float32)
    for r in numba.prange(rows):
        lvs = np.empty(n, np.float64)
        for b in range(nb):
            s, mn = aff_block(x[r, b], float(nmax), steps, refine, lvs)
            s_out[r, b] = s
            m_out[r, b] = -mn
    return s_out, m_out
