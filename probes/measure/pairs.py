"""Cosine pairs of a unit set and its complete-linkage groups, without an n x n float64 matrix.

``scan`` computes every cosine once (the upper triangle, in blocks of rows): it sums |cos| for
the mean and keeps only the pairs close enough to be grouped at the loosest cut. Large sets use a
float32 GEMM; every pair whose float32 cosine lies within a rigorous rounding bound of that cut is
recomputed in float64 from the same float64 unit rows as the dense float64 path, so the kept pairs
and their distances are those of the float64 path (to its last bits).

``groups`` cuts complete linkage at each threshold from those pairs alone. Why that is exact:
below the loosest cut h, complete linkage only merges two clusters whose every cross pair is
<= h, so (i) no merge at height <= h joins two connected components of the graph of pairs <= h,
and (ii) inside a component, which merge comes first depends on the pairs <= h and on knowing
that the others are > h, not on their values. Linkage is run per component with the pairs > h set
to 2 (the largest cosine distance); the groups at every cut <= h equal those of one linkage on
every distance (up to exact ties between distinct merge heights, which the float64 path itself
breaks by rounding).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

U32 = 2.0**-24  # unit roundoff of float32


@dataclass
class Scan:
    """What ``scan`` found: ``abs_sum`` the sum of |cos| over pairs i < j; ``i``, ``j`` (m,) int
    pairs (i < j) with cosine distance <= the cut, ``d`` (m,) their float64 distances;
    ``dist`` (n (n - 1) / 2,) float64 condensed distances of every pair (float32 rounding away
    from the cut) when asked for, else None."""

    abs_sum: float
    i: np.ndarray
    j: np.ndarray
    d: np.ndarray
    dist: np.ndarray | None


def unit_rows(u: np.ndarray, norms: np.ndarray, rows, dtype=np.float64) -> np.ndarray:
    """Unit-norm rows ``u[rows] / norms[rows]``, computed in float64 then cast to ``dtype``.

    Args:
        u: (n, dim) float32 or float64 rows; norms: (n,) float64 their norms (> 0);
        rows: a slice or an index array.

    Returns:
        (len(rows), dim) array of ``dtype``.
    """
    if dtype == np.float64:
        return np.asarray(u[rows], dtype=np.float64) / norms[rows, None]
    idx = np.arange(len(u))[rows]
    out = np.empty((len(idx), u.shape[1]), dtype=dtype)
    step = max(1, 2**22 // max(1, u.shape[1]))  # float64 temporaries of <= 32 MB
    for r in range(0, len(idx), step):
        k = idx[r:r + step]
        out[r:r + step] = np.asarray(u[k], dtype=np.float64) / norms[k, None]
    return out


def float32_margin(dim: int) -> float:
    """Bound on |float32 cosine - exact cosine| of two unit rows of ``dim`` entries rounded to
    float32 and multiplied in float32 in any summation order (gamma_dim + input rounding, x2)."""
    k = dim + 2
    return 2.0 * k * U32 / (1.0 - k * U32) + 1e-7


def _distance(cos: np.ndarray, antipodal: bool) -> np.ndarray:
    """Cosine distance 1 - cos (1 - |cos| if antipodal) of clipped cosines, clipped to [0, 2]."""
    sim = np.abs(cos) if antipodal else cos
    return np.clip(1.0 - sim, 0.0, 2.0)


def _exact(u, norms, rows: np.ndarray, cols: np.ndarray, antipodal: bool,
           chunk: int = 2048) -> np.ndarray:
    """(len(rows), len(cols)) float64 distances of the pairs rows x cols, from float64 unit rows."""
    a = unit_rows(u, norms, rows)
    out = np.empty((len(rows), len(cols)))
    for c0 in range(0, len(cols), chunk):
        out[:, c0:c0 + chunk] = np.clip(a @ unit_rows(u, norms, cols[c0:c0 + chunk]).T, -1.0, 1.0)
    return _distance(out, antipodal)


def scan(u: np.ndarray, norms: np.ndarray, cut: float, antipodal: bool = False,
         exact: bool = True, want_dist: bool = False, block_rows: int = 256) -> Scan:
    """Every cosine of the rows of ``u`` once: the sum of |cos| and the pairs within ``cut``.

    Args:
        u: (n, dim) float32 or float64 rows, n >= 2, every norm > 0; norms: (n,) float64 norms.
        cut: cosine distance (1 - tau): pairs with float64 distance <= cut are returned.
        antipodal: distance 1 - |cos|.
        exact: float64 GEMM throughout (small sets); else float32 GEMM, pairs near the cut
            recomputed in float64 (see ``float32_margin``).
        want_dist: also return the condensed distances of every pair (n (n - 1) / 2 float64).
        block_rows: rows per block (memory: block_rows x n cosines at a time).

    Returns:
        ``Scan`` (pairs as int32; n < 2^31); with ``exact`` its values are those of the dense
        float64 path, else |cos| and ``dist`` carry float32 rounding (< ``float32_margin(dim)``)
        and ``i``, ``j``, ``d`` are exact.
    """
    n, dim = u.shape
    dtype = np.float64 if exact else np.float32
    unit = unit_rows(u, norms, slice(None), dtype)
    margin = 1e-12 if exact else float32_margin(dim)  # (exact: only the rounding of 1 - cut)
    dist = np.empty(n * (n - 1) // 2) if want_dist else None
    abs_sum, found = 0.0, []
    for i0 in range(0, n - 1, block_rows):
        b = min(block_rows, n - i0)
        block = np.clip(unit[i0:i0 + b] @ unit[i0:].T, -1.0, 1.0)  # (b, n - i0): columns j >= i0
        upper = np.arange(n - i0)[None, :] > np.arange(b)[:, None]  # j > i
        absb = np.abs(block)
        abs_sum += float(absb[:, b:].sum(dtype=np.float64)
                         + absb[:, :b][upper[:, :b]].sum(dtype=np.float64))
        sim = absb if antipodal else block
        near = (sim >= (1.0 - cut) - margin) & upper
        r, c = np.nonzero(near)
        if want_dist:
            d_block = _distance(block.astype(np.float64, copy=False), antipodal)
            for k in range(b):  # row i of the condensed form holds the pairs (i, j > i)
                i = i0 + k
                start = n * i - i * (i + 1) // 2
                dist[start:start + n - i - 1] = d_block[k, k + 1:]
        if not len(r):
            continue
        if exact:
            d = _distance(block[r, c], antipodal)
        else:  # float64 recheck of every pair within the rounding bound of the cut
            rows, ri = np.unique(r, return_inverse=True)
            cols, ci = np.unique(c, return_inverse=True)
            d = _exact(u, norms, i0 + rows, i0 + cols, antipodal)[ri, ci]
        i, j = i0 + r, i0 + c
        if want_dist:
            dist[n * i - i * (i + 1) // 2 + j - i - 1] = d
        keep = d <= cut  # int32 pairs: a third less memory when a large set is all close pairs
        found.append((i[keep].astype(np.int32), j[keep].astype(np.int32), d[keep]))
    if found:
        i, j, d = (np.concatenate(x) for x in zip(*found))
    else:
        i, j, d = np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.int32), np.zeros(0)
    return Scan(abs_sum, i, j, d, dist)


def groups(n: int, i: np.ndarray, j: np.ndarray, d: np.ndarray, cuts) -> dict:
    """Complete-linkage groups of n units at each cut, from the pairs within the largest cut.

    Args:
        n: number of units; i, j: (m,) int pairs (i < j) with distance ``d`` (m,) float64, every
            pair whose distance is <= max(cuts) (the others are taken as > max(cuts)).
        cuts: cosine distances (1 - tau) at which the dendrogram is cut (scipy's ``fcluster``
            criterion "distance": a merge at height <= cut is kept).

    Returns:
        {cut: (n,) int labels from 1, numbered in order of each group's first unit}.

    Raises:
        ValueError: a pair above max(cuts) or out of range.
    """
    cuts = list(cuts)
    if len(d) and (d.max() > max(cuts) or min(i.min(), j.min()) < 0 or max(i.max(), j.max()) >= n):
        raise ValueError("pairs must lie within the largest cut and index the n units")
    labels = {t: np.zeros(n, dtype=np.int64) for t in cuts}
    if not len(d):
        return {t: np.arange(1, n + 1) for t in cuts}
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    n_comp, comp = connected_components(graph, directed=False)
    by_comp = np.argsort(comp, kind="stable")  # units of each component, ascending
    bounds = np.r_[0, np.cumsum(np.bincount(comp, minlength=n_comp))]
    pair_order = np.argsort(comp[i], kind="stable")
    pair_bounds = np.r_[0, np.cumsum(np.bincount(comp[i], minlength=n_comp))]
    local = np.empty(n, dtype=np.int64)
    offset = dict.fromkeys(cuts, 0)
    for c in range(n_comp):
        members = by_comp[bounds[c]:bounds[c + 1]]
        k = len(members)
        if k == 1:
            for t in cuts:
                offset[t] += 1
                labels[t][members] = offset[t]
            continue
        local[members] = np.arange(k)
        sel = pair_order[pair_bounds[c]:pair_bounds[c + 1]]
        a, b = local[i[sel]], local[j[sel]]  # a < b: members are ascending
        cond = np.full(k * (k - 1) // 2, 2.0)
        cond[k * a - a * (a + 1) // 2 + b - a - 1] = d[sel]
        z = linkage(cond, method="complete")
        for t in cuts:
            lab = fcluster(z, t=t, criterion="distance")
            labels[t][members] = offset[t] + lab
            offset[t] += int(lab.max())
    return {t: _by_first_unit(lab) for t, lab in labels.items()}


def _by_first_unit(labels: np.ndarray) -> np.ndarray:
    """Renumber group ids 1.. in the order of each group's first unit."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(1, len(first) + 1)
    return rank[inverse]
