"""Condensation metrics of one set of units (scikit-learn style: configure, ``fit``, read attributes).

Follows the measurements of the condensation papers (see shared SCIENCE.md):
- cosine similarity C_ij = <v_i, v_j> / (|v_i| |v_j|) of unit vectors (Xu, Zhang, Zhou,
  arXiv 2504.09484; Zhang et al., arXiv 2405.05409 for W_Q rows);
- condensed groups at a threshold tau: complete-linkage clustering on cosine distance 1 - C cut
  at 1 - tau, so that every pair inside a group has cosine >= tau;
- relative distance RD = |theta(t) - theta(0)| / |theta(0)| (Luo, Xu, Ma, Zhang, JMLR 2021);
- stable rank sum(s^2) / max(s)^2 and effective rank exp(H(s / sum s)) (Roy and Vetterli 2007)
  of the units matrix.
Units whose norm is below ``zero_tol`` times the median norm are dropped and counted.
"""

from __future__ import annotations

import numpy as np
from scipy.cluster.hierarchy import fcluster, leaves_list, linkage

THRESHOLDS = (0.7, 0.9, 0.95, 0.99)


class Condensation:
    """Condensation of one (layer, component, head) unit set.

    Args:
        thresholds: cosine thresholds tau in (0, 1) at which groups are counted.
        antipodal: compare |cosine| instead of cosine, so that v and -v fall in one group (for
            odd activations such as tanh, whose neurons condense on a line).
        zero_tol: units with norm < zero_tol * median norm are dropped before comparing.

    Attributes after ``fit(units)``:
        n_units_ (kept units), n_dropped_ (units left out: zero norm, or dead), n_dead_ (dead
        units, None when no mask was given), cosine_ (n, n) float64 (float32
        from ``large_n`` units on),
        mean_abs_cos_ (mean |C_ij| over i != j), labels_ {tau: (n,) int group ids from 1},
        n_groups_ {tau: int}, group_ratio_ {tau: n_groups / n_units},
        largest_group_share_ {tau: size of the largest group / n_units},
        order_ (n,) unit order that puts groups next to each other (dendrogram leaves),
        stable_rank_, effective_rank_ (of the kept units matrix).
        With no kept unit every value is NaN; with one, mean_abs_cos_ is NaN and it is one group.

    Raises:
        ValueError: thresholds outside (0, 1), or ``units`` not a finite 2-D array.
    """

    # Cosines are computed in float64 in blocks of ``block_rows`` rows against the units after
    # them (the upper triangle: half the products of a full matrix), straight into the condensed
    # distances that the linkage needs, so no n x n float64 temporary is built beside the kept
    # cosine_. From ``large_n`` units on, cosine_ (kept for heat maps only) is float32, and the
    # only float64 n x n data are the condensed distances and the linkage's copy of them.
    large_n = 8192
    block_rows = 256
    # Singular values come from the eigenvalues of the smaller Gram matrix (a fraction of an
    # SVD's time) when every eigenvalue is either >= gram_rcond times the largest (relative
    # error < ~1e-9 on s) or at rounding level (s = 0); otherwise from an SVD. Stable and
    # effective ranks agree with the SVD's to ~1e-12.
    gram_rcond = 1e-8

    def __init__(self, thresholds=THRESHOLDS, antipodal: bool = False, zero_tol: float = 1e-8):
        self.thresholds = tuple(float(t) for t in thresholds)
        bad = [t for t in self.thresholds if not 0 < t < 1]
        if bad:
            raise ValueError(f"thresholds {bad} are invalid: accepted are numbers in (0, 1)")
        self.antipodal = antipodal
        self.zero_tol = zero_tol

    def fit(self, units, dead=None) -> Condensation:
        """Measure ``units``: array-like (n_units, dim), one unit per row (any float dtype).

        Args:
            dead: optional (n_units,) bool mask of dead units (a constant output after the
                nonlinearity on every probe input): left out of every metric, counted in
                ``n_dead_`` and in ``n_dropped_``, reported as the ``n_dead`` metric.
        """
        u = np.asarray(units, dtype=np.float64)
        if u.ndim != 2:
            raise ValueError(f"units must be 2-D (n_units, dim), got shape {u.shape}")
        if not np.isfinite(u).all():
            raise ValueError("units contain NaN or inf")
        norms = np.linalg.norm(u, axis=1)
        keep = norms >= self.zero_tol * np.median(norms) if len(norms) else norms > 0
        keep &= norms > 0
        self.n_dead_ = None
        if dead is not None:
            dead = np.asarray(dead, dtype=bool)
            if dead.shape != (len(u),):
                raise ValueError(f"dead mask of shape {dead.shape} does not fit {len(u)} units")
            self.n_dead_ = int(dead.sum())
            keep &= ~dead
        if not keep.all():  # (a copy only when something is dropped)
            u, norms = u[keep], norms[keep]
        self.n_units_, self.n_dropped_ = int(len(u)), int((~keep).sum())
        n = self.n_units_
        if n == 0:
            return self._empty()
        unit = u / norms[:, None]
        if n > 1:
            self.cosine_, dist, self.mean_abs_cos_ = self._distances(unit)
            z = linkage(dist, method="complete")
            del dist
            self.order_ = leaves_list(z)
            self.labels_ = {t: fcluster(z, t=1.0 - t, criterion="distance") for t in self.thresholds}
        else:
            self.cosine_, self.mean_abs_cos_ = np.ones((1, 1)), np.nan
            self.order_ = np.zeros(1, dtype=int)
            self.labels_ = {t: np.ones(1, dtype=int) for t in self.thresholds}
        self.n_groups_ = {t: int(lab.max()) for t, lab in self.labels_.items()}
        self.group_ratio_ = {t: g / n for t, g in self.n_groups_.items()}
        self.largest_group_share_ = {
            t: float(np.bincount(lab).max()) / n for t, lab in self.labels_.items()
        }
        s = self._singular_values(u)
        self.stable_rank_ = float((s**2).sum() / s[0] ** 2)
        p = s[s > 0] / s.sum()
        self.effective_rank_ = float(np.exp(-(p * np.log(p)).sum()))
        return self

    def _distances(self, unit: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """Cosine matrix, condensed linkage distances and mean |cos| of unit-norm rows.

        Args:
            unit: (n, dim) float64 unit-norm rows, n >= 2.

        Returns:
            (cosine (n, n), symmetric, diagonal 1, clipped to [-1, 1]: float64, float32 from
            ``large_n`` units; distances (n (n - 1) / 2,) float64: 1 - cosine (1 - |cosine| if
            antipodal) clipped to [0, 2], condensed upper triangle in scipy's order;
            mean |cos| over i != j).
        """
        n = len(unit)
        cos = np.empty((n, n), dtype=np.float64 if n < self.large_n else np.float32)
        dist = np.empty(n * (n - 1) // 2)
        abs_sum, start = 0.0, 0
        for i0 in range(0, n, self.block_rows):
            block = np.clip(unit[i0:i0 + self.block_rows] @ unit[i0:].T, -1.0, 1.0)  # j >= i0
            b = len(block)
            rows = np.arange(b)
            block[rows, rows] = 1.0
            cos[i0:i0 + b, i0:] = block
            cos[i0 + b:, i0:i0 + b] = block[:, b:].T
            diag = cos[i0:i0 + b, i0:i0 + b]
            lower = np.tril_indices(b, -1)
            diag[lower] = diag.T[lower]  # exactly symmetric: mirror the upper half
            abs_sum += float(np.abs(block[:, b:]).sum() + np.triu(np.abs(block[:, :b]), 1).sum())
            if self.antipodal:
                np.abs(block, out=block)
            np.clip(np.subtract(1.0, block, out=block), 0.0, 2.0, out=block)
            for r in rows:  # row i of the condensed form holds the pairs (i, j > i)
                dist[start:start + n - i0 - r - 1] = block[r, r + 1:]
                start += n - i0 - r - 1
        return cos, dist, 2.0 * abs_sum / (n * (n - 1))

    def _singular_values(self, u: np.ndarray) -> np.ndarray:
        """Singular values of ``u`` (n, dim), descending (see ``gram_rcond``).

        Eigenvalues of the Gram matrix at rounding level (a zero bias column, duplicated units)
        are exact zeros; any eigenvalue between that level and ``gram_rcond`` times the largest
        would come out inexact, so then the SVD decides.
        """
        gram = u.T @ u if len(u) >= u.shape[1] else u @ u.T
        lam = np.linalg.eigvalsh(gram)[::-1]
        noise = 10 * len(gram) * np.finfo(np.float64).eps * lam[0]
        inexact = (lam < self.gram_rcond * lam[0]) & (lam > noise)
        if lam[0] > 0 and not inexact.any():
            return np.sqrt(np.where(lam > noise, lam, 0.0))
        return np.linalg.svd(u, compute_uv=False)

    def _empty(self) -> Condensation:
        nan = float("nan")
        self.cosine_ = np.zeros((0, 0))
        self.order_ = np.zeros(0, dtype=int)
        self.mean_abs_cos_ = self.stable_rank_ = self.effective_rank_ = nan
        self.labels_ = {t: np.zeros(0, dtype=int) for t in self.thresholds}
        self.n_groups_ = {t: 0 for t in self.thresholds}
        self.group_ratio_ = {t: nan for t in self.thresholds}
        self.largest_group_share_ = {t: nan for t in self.thresholds}
        return self

    def ordered_cosine(self, max_units: int = 1024) -> tuple[np.ndarray, int]:
        """The cosine matrix with units in group order (dendrogram leaves), for heat maps.

        Args:
            max_units: at most this many units a side; every k-th unit of the order is kept
                (the group order keeps groups as blocks).

        Returns:
            ((m, m) float32 cosines, m <= max_units; the stride k).
        """
        n = len(self.order_)
        k = max(1, -(-n // max_units))
        order = self.order_[::k]
        return np.asarray(self.cosine_[np.ix_(order, order)], dtype=np.float32), k

    def results(self) -> list[tuple[str, float | None, float]]:
        """The fitted values as (metric, threshold or None, value) triples for the report."""
        out = [("mean_abs_cos", None, self.mean_abs_cos_),
               ("stable_rank", None, self.stable_rank_),
               ("effective_rank", None, self.effective_rank_),
               ("n_dropped", None, float(self.n_dropped_))]
        if self.n_dead_ is not None:
            out.append(("n_dead", None, float(self.n_dead_)))
        for t in self.thresholds:
            out += [("n_groups", t, float(self.n_groups_[t])),
                    ("group_ratio", t, self.group_ratio_[t]),
                    ("largest_group_share", t, self.largest_group_share_[t])]
        return out


def metric_rows(fit: Condensation, base: dict) -> list[dict]:
    """metrics.csv rows of a fitted unit set, one per (metric, threshold).

    Args:
        fit: a fitted ``Condensation``.
        base: the row's identity: run_id, step, layer, component, head, basis.

    Returns:
        dicts with the keys of ``base`` plus n_units, metric, threshold (None when none), value.
    """
    base = base | {"n_units": fit.n_units_}
    return [base | {"metric": m, "threshold": t, "value": v} for m, t, v in fit.results()]


def relative_distance(theta, theta0) -> float:
    """RD = ||theta - theta0||_F / ||theta0||_F (Luo, Xu, Ma, Zhang, JMLR 2021).

    Args:
        theta, theta0: array-likes of the same shape (the weights now and at initialization).

    Returns:
        RD as float (inf if theta0 is all zero and theta is not; 0 if both are zero).

    Raises:
        ValueError: if the shapes differ.
    """
    a, b = np.asarray(theta, dtype=np.float64), np.asarray(theta0, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: theta {a.shape} vs theta0 {b.shape}")
    num, den = np.linalg.norm(a - b), np.linalg.norm(b)
    if den == 0:
        return 0.0 if num == 0 else float("inf")
    return float(num / den)
