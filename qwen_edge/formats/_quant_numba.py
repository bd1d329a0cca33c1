"""numba forms of the scale searches in `_quant_search` (same expressions, same order).

Each row's blocks are processed together, the block index innermost: a block's sums still
run over its 32 columns in index order (so results equal the numpy form bit for bit), while
the loop over blocks has no dependency and vectorises (rounding is floor(v + 0.5), clipping
is min/max, both branch-free). Imported only when numba is installed; compiled functions are
cached on disk by numba.
"""
# mypy: ignore-errors

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def _columns(x, r):
    # Row r's blocks as [column, block], so the loops over blocks run on contiguous memory.
    _, nb, n = x.shape
    xt = np.empty((n, nb))
    for b in range(nb):
        for j in range(n):
            xt[j, b] = x[r, b, j]
    return xt


@numba.njit(cache=True, parallel=True, nogil=True)
def sym_all(x, nmax, steps, refine, w):
    rows, nb, n = x.shape
    wt = np.empty((n, nb))  # the column weights as [column, block], like xt
    for b in range(nb):
        for j in range(n):
            wt[j, b] = w[b, j]
    out = np.empty((rows, nb), np.float32)
    nsteps = steps.shape[0]
    for r in numba.prange(rows):
        xt = _columns(x, r)
        vmax = np.zeros(nb)
        amax = np.full(nb, -1.0)
        for j in range(n):
            for b in range(nb):
                a = abs(xt[j, b])
                if a > amax[b]:
                    amax[b] = a
                    vmax[b] = xt[j, b]
        best = np.full(nb, -1.0)
        best_scale = np.zeros(nb)
        iscale = np.empty(nb)
        sumlx = np.empty(nb)
        suml2 = np.empty(nb)
        for t in range(nsteps + refine):
            for b in range(nb):
                if t < nsteps:
                    iscale[b] = -(nmax + 0.1 * steps[t]) / vmax[b] if vmax[b] != 0.0 else 0.0
                else:
                    iscale[b] = 1.0 / best_scale[b] if best_scale[b] != 0.0 else 0.0
                sumlx[b] = 0.0
                suml2[b] = 0.0
            for j in range(n):
                for b in range(nb):
                    xv = xt[j, b]
                    lv = min(max(np.floor(iscale[b] * xv + 0.5), -nmax), nmax - 1.0)
                    wl = wt[j, b] * lv
                    sumlx[b] += wl * xv
                    suml2[b] += wl * lv
            for b in range(nb):
                if suml2[b] > 0:
                    score = sumlx[b] * sumlx[b] / suml2[b]
                    if score > best[b]:
                        best[b] = score
                        best_scale[b] = sumlx[b] / suml2[b]
        for b in range(nb):
            out[r, b] = best_scale[b] if vmax[b] != 0.0 else 0.0
    return out


@numba.njit(cache=True, parallel=True, nogil=True)
def aff_all(x, nmax, steps, refine, w):
    rows, nb, n = x.shape
    s_out = np.empty((rows, nb), np.float32)
    m_out = np.empty((rows, nb), np.float32)
    nsteps = steps.shape[0]
    wt = np.empty((n, nb))
    fw = np.zeros(nb)  # each block's weight sum (32 without importance)
    for j in range(n):
        for b in range(nb):
            wt[j, b] = w[b, j]
            fw[b] += w[b, j]
    for r in numba.prange(rows):
        xt = _columns(x, r)
        lo = np.zeros(nb)
        hi = np.full(nb, -np.inf)
        sx = np.zeros(nb)
        sx2 = np.zeros(nb)
        for j in range(n):
            for b in range(nb):
                xv = xt[j, b]
                lo[b] = min(lo[b], xv)
                hi[b] = max(hi[b], xv)
                wx = wt[j, b] * xv
                sx[b] += wx
                sx2[b] += wx * xv
        rng = np.empty(nb)
        for b in range(nb):
            rng[b] = hi[b] - lo[b] if hi[b] > lo[b] else 1.0
        best_s = np.zeros(nb)
        best_m = lo.copy()
        best_err = np.full(nb, np.inf)
        iscale = np.empty(nb)
        base = np.empty(nb)
        sl = np.empty(nb)
        sl2 = np.empty(nb)
        sxl = np.empty(nb)
        for t in range(1 + nsteps + refine):
            for b in range(nb):
                if t == 0:
                    iscale[b] = nmax / rng[b]
                    base[b] = lo[b]
                elif t <= nsteps:
                    iscale[b] = (-1.0 + 0.1 * steps[t - 1] + nmax) / rng[b]
                    base[b] = lo[b]
                else:
                    iscale[b] = 1.0 / best_s[b] if best_s[b] > 0 else 0.0
                    base[b] = best_m[b]
                sl[b] = 0.0
                sl2[b] = 0.0
                sxl[b] = 0.0
            for j in range(n):
                for b in range(nb):
                    xv = xt[j, b]
                    lv = min(max(np.floor(iscale[b] * (xv - base[b]) + 0.5), 0.0), nmax)
                    wl = wt[j, b] * lv
                    sl[b] += wl
                    sl2[b] += wl * lv
                    sxl[b] += wt[j, b] * xv * lv
            for b in range(nb):
                if t == 0:
                    s = 1.0 / iscale[b]
                    mn = lo[b]
                    ok = True
                else:
                    det = fw[b] * sl2[b] - sl[b] * sl[b]
                    ok = det > 0
                    s, mn = 0.0, 0.0
                    if ok:
                        s = (fw[b] * sxl[b] - sx[b] * sl[b]) / det
                        mn = (sl2[b] * sx[b] - sl[b] * sxl[b]) / det
                        if mn > 0:
                            s = sxl[b] / sl2[b] if sl2[b] > 0 else 0.0
                            mn = 0.0
                if ok:
                    err = (
                        s * s * sl2[b] + 2.0 * s * mn * sl[b] + fw[b] * mn * mn
                        - 2.0 * s * sxl[b] - 2.0 * mn * sx[b] + sx2[b]
                    )  # fmt: skip
                    if err < best_err[b]:
                        best_err[b] = err
                        best_s[b] = s
                        best_m[b] = mn
        for b in range(nb):
            flat = not hi[b] > lo[b]
            s_out[r, b] = 0.0 if flat else best_s[b]
            m_out[r, b] = -(lo[b] if flat else best_m[b])
    return s_out, m_out
