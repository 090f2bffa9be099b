"""Condensation metrics of one set of units (scikit-learn style: configure, ``fit``, read attributes).

Follows the measurements of the condensation papers (sources in docs/science.md):
- cosine similarity C_ij = <v_i, v_j> / (|v_i| |v_j|) of unit vectors (Xu, Zhang, Zhou,
  arXiv 2504.09484; Zhang et al., arXiv 2405.05409 for W_Q rows);
- condensed groups at a threshold tau: complete-linkage clustering on cosine distance 1 - C cut
  at 1 - tau, so that every pair inside a group has cosine >= tau;
- relative distance RD = |theta(t) - theta(0)| / |theta(0)| (Luo, Xu, Ma, Zhang, JMLR 2021);
- stable rank sum(s^2) / max(s)^2 and effective rank exp(H(s / sum s)) (Roy and Vetterli 2007)
  of the units matrix, and of a Linear layer's weight alone its stable rank and WeightWatcher's
  power-law exponent alpha (probes.measure.spectral: routes and tolerances).
Units whose norm is below ``zero_tol`` times the median norm are dropped and counted.
"""

from __future__ import annotations

import numpy as np
from scipy.cluster.hierarchy import leaves_list, linkage

from probes.measure import pairs
from probes.measure.result import metric_row
from probes.measure.spectral import (
    FAST_RANK_TOL,
    PRECISIONS,
    RANK_METRICS,
    STABLE,
    WEIGHT_METRICS,
    Spectrum,
    float32_route,
    float32_spectrum,
    float64_spectrum,
    gram_pair,
    stable_spectrum,
)

THRESHOLDS = (0.7, 0.9, 0.95, 0.99)


class Condensation:
    """Condensation of one (layer, component, head) unit set.

    Args:
        thresholds: cosine thresholds tau in (0, 1) at which groups are counted.
        antipodal: compare |cosine| instead of cosine, so that v and -v fall in one group (for
            odd activations such as tanh, whose neurons condense on a line).
        zero_tol: units with norm < zero_tol * median norm are dropped before comparing.
        order: also build the whole dendrogram (``order_``) and keep the unit rows for
            ``cosine_`` and ``ordered_cosine`` (heat maps): n (n - 1) / 2 float64 more memory and
            one full linkage. Without it ``order_`` and ``cosine_`` are None.
        spectral: also compute ``stable_rank_`` and ``effective_rank_`` (and, for ``fit`` with
            ``bias_columns``, ``stable_rank_weight_`` and ``alpha_``) from the singular values
            (most of the time on large layers). True or ``"fast"``: float64 Gram matrices, an
            SVD only where their rounding could move the effective rank by more than 1e-5
            (relative, first order); ``"float32"``: float32 Gram matrices first where they meet
            1e-5 (effective rank) and 1e-6 (stable rank), for rectangular float32 units;
            ``"exact"``: an SVD already from ``rank_tol`` (1e-8). See probes.measure.spectral.
            ``"stable"``: the stable ranks alone, from s_max (Lanczos, certified to 1e-6) and
            ||U||_F, no spectrum: effective_rank_ and alpha_ stay None, ``results`` leaves
            them out. False: all are None and ``results`` leaves them out.

    Attributes after ``fit(units)``:
        n_units_ (kept units), n_dropped_ (units left out: zero norm, or dead), kept_ (n_in,)
        bool mask of the kept units among the rows given (``labels_`` are theirs, in row
        order), n_dead_ (dead units, None when no mask was given),
        mean_abs_cos_ (mean |C_ij| over i != j), labels_ {tau: (n,) int group ids from 1,
        numbered in order of each group's first unit}, n_groups_ {tau: int},
        group_ratio_ {tau: n_groups / n_units},
        largest_group_share_ {tau: size of the largest group / n_units},
        order_ (n,) unit order that puts groups next to each other (dendrogram leaves),
        cosine_ (n, n) cosine matrix, computed when read (float64; float32 for large sets),
        stable_rank_, effective_rank_ (of the kept units matrix; None without ``spectral``),
        stable_rank_weight_, alpha_ (of its weight columns; None without ``spectral`` or
        ``bias_columns``; alpha_ NaN below 50 eigenvalues above 1e-5), spectral_route_
        (``float32``, ``float64`` or ``svd``: how the units' singular values were computed).
        With no kept unit every value is NaN; with one, mean_abs_cos_ is NaN and it is one group.

    Raises:
        ValueError: thresholds outside (0, 1), ``spectral`` not one of False, True, "fast",
            "float32", "exact", "stable", or ``units`` not a finite 2-D array.
    """

    # Cosines are computed once per pair in blocks of ``block_rows`` rows against the rows after
    # them (probes.measure.pairs.scan). From ``float32_work`` multiply-adds (n^2 dim) on, the
    # GEMM is float32 and the pairs near the loosest cut are recomputed in float64, so groups
    # equal the float64 path's and mean_abs_cos_ is within ~1e-7 of it; below, all is float64.
    # Groups come from the pairs within the loosest cut alone (probes.measure.pairs.groups); no
    # n x n matrix is built unless ``order`` asks for the dendrogram.
    float32_work = 2**31
    block_rows = 256
    # Singular values come from the eigenvalues of the smaller Gram matrix (a fraction of an
    # SVD's time); eigenvalues at rounding level count as exact zeros. When the rounding of the
    # others could move the effective rank by more than ``fast_rank_tol`` (``rank_tol`` with
    # spectral="exact"; relative, a first-order bound, see spectral.entropy_error), an SVD
    # decides. spectral="float32" tries float32 Gram matrices for float32 units from
    # ``float32_gram_work`` multiply-adds (n dim min(n, dim)) on, ``float32_aspect`` times
    # longer than wide (spectral.float32_route).
    rank_tol = 1e-8
    fast_rank_tol = FAST_RANK_TOL
    gram_rows = 2048
    float32_gram_work = 2**31
    float32_aspect = 2.0
    # Eigenvalues of Gram matrices from this size on come from torch (MKL's syevd), below it from
    # scipy (OpenBLAS's syevr, in place): each is the faster on one thread there, by up to 2x
    # (measured on an AVX2 EPYC: 769: 0.04 s against 0.09 s; 4096: 6 s against 9 s).
    torch_eig_from = 1800

    def __init__(self, thresholds=THRESHOLDS, antipodal: bool = False, zero_tol: float = 1e-8,
                 order: bool = True, spectral: bool | str = True):
        self.thresholds = tuple(float(t) for t in thresholds)
        bad = [t for t in self.thresholds if not 0 < t < 1]
        if bad:
            raise ValueError(f"thresholds {bad} are invalid: accepted are numbers in (0, 1)")
        self.antipodal = antipodal
        self.zero_tol = zero_tol
        self.order = order
        if not (isinstance(spectral, bool) or (isinstance(spectral, str)
                                                and spectral in (*PRECISIONS, STABLE))):
            raise ValueError(f"spectral={spectral!r} is invalid: accepted are False, True, "
                             f"{', '.join(map(repr, (*PRECISIONS, STABLE)))}")
        self.spectral = spectral

    def fit(self, units, dead=None, bias_columns: int | None = None) -> Condensation:
        """Measure ``units``: array-like (n_units, dim), one unit per row (float32 and float64
        are used as given, other types as float64).

        Args:
            dead: optional (n_units,) bool mask of dead units (a constant output after the
                nonlinearity on every probe input): left out of every metric, counted in
                ``n_dead_`` and in ``n_dropped_``, reported as the ``n_dead`` metric.
            bias_columns: when the rows are a Linear / Conv1D weight matrix W with its bias
                appended (``probes.measure.units.UnitSet.bias_columns``), how many trailing
                columns are bias (0: none): ``stable_rank_weight_`` and ``alpha_`` are then
                measured on the other columns, W. None: not a weight matrix, neither is.

        Raises:
            ValueError: ``units`` not 2-D or not finite; ``dead`` of another length;
                ``bias_columns`` not an int in [0, dim).
        """
        u = np.asarray(units)
        if u.dtype not in (np.float32, np.float64):
            u = u.astype(np.float64)
        if u.ndim != 2:
            raise ValueError(f"units must be 2-D (n_units, dim), got shape {u.shape}")
        if not np.isfinite(u).all():
            raise ValueError("units contain NaN or inf")
        if bias_columns is not None and (isinstance(bias_columns, bool)
                                         or not isinstance(bias_columns, (int, np.integer))
                                         or not 0 <= bias_columns < max(u.shape[1], 1)):
            raise ValueError(f"bias_columns={bias_columns!r} is invalid: accepted is an int in "
                             f"[0, {u.shape[1]}) (the units' trailing bias columns) or None")
        self._weight = bias_columns is not None
        norms = np.concatenate([np.linalg.norm(np.asarray(u[r:r + self.gram_rows], np.float64),
                                               axis=1) for r in range(0, len(u), self.gram_rows)]
                               or [np.zeros(0)])
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
        self.n_units_, self.n_dropped_, self.kept_ = int(len(u)), int((~keep).sum()), keep
        n = self.n_units_
        self._unit = None
        self.stable_rank_ = self.effective_rank_ = self.spectral_route_ = None
        self.stable_rank_weight_ = self.alpha_ = None
        if n == 0:
            return self._empty()
        if n > 1:
            exact = n * n * u.shape[1] < self.float32_work
            cuts = {t: 1.0 - t for t in self.thresholds}
            found = pairs.scan(u, norms, max(cuts.values()), self.antipodal, exact,
                               want_dist=self.order, block_rows=self.block_rows)
            self.mean_abs_cos_ = 2.0 * found.abs_sum / (n * (n - 1))
            labels = pairs.groups(n, found.i, found.j, found.d, cuts.values())
            self.labels_ = {t: labels[c] for t, c in cuts.items()}
            self.order_ = None
            if self.order:
                self.order_ = leaves_list(linkage(found.dist, method="complete"))
                self._unit = pairs.unit_rows(u, norms, slice(None),
                                             np.float64 if exact else np.float32)
            del found
        else:
            self.mean_abs_cos_ = np.nan
            self.order_ = np.zeros(1, dtype=int)
            self._unit = np.ones((1, 1))
            self.labels_ = {t: np.ones(1, dtype=int) for t in self.thresholds}
        self.n_groups_ = {t: int(lab.max()) for t, lab in self.labels_.items()}
        self.group_ratio_ = {t: g / n for t, g in self.n_groups_.items()}
        self.largest_group_share_ = {
            t: float(np.bincount(lab).max()) / n for t, lab in self.labels_.items()
        }
        if self.spectral:
            units_spectrum, weight = self._spectra(u, bias_columns)
            self.stable_rank_ = units_spectrum.stable_rank
            self.spectral_route_ = units_spectrum.route
            if weight is not None:
                self.stable_rank_weight_ = weight.stable_rank
            if self.spectral != STABLE:
                self.effective_rank_ = units_spectrum.effective_rank
                self.alpha_ = None if weight is None else weight.alpha
        return self

    @property
    def cosine_(self) -> np.ndarray | None:
        """(n, n) cosines (diagonal 1, symmetric, in [-1, 1]) from the kept unit rows; None when
        fitted with ``order=False``."""
        if self._unit is None:
            return None
        return _cosines(self._unit)

    def _spectra(self, u: np.ndarray, bias_columns: int | None) -> tuple[Spectrum, Spectrum | None]:
        """The spectrum of ``u`` (n, dim) and, for a weight matrix (``bias_columns`` not None),
        that of W, its columns but the bias. Where both take the float64 route, W's Gram matrix
        comes with u's (``gram_pair``): one product for both."""
        if bias_columns is None or bias_columns == 0:
            units = self._spectrum(u)
            return units, (units if bias_columns == 0 else None)
        w = u[:, :u.shape[1] - bias_columns]
        if self.spectral == STABLE:  # (contiguous: Lanczos multiplies by it many times)
            return self._spectrum(u), self._spectrum(np.ascontiguousarray(w))
        if self._float32(u) or self._float32(w):
            return self._spectrum(u), self._spectrum(w)
        gram, w_gram = gram_pair(u, bias_columns, self.gram_rows)
        return self._spectrum(u, gram), self._spectrum(w, w_gram)

    def _float32(self, u: np.ndarray) -> bool:
        return self.spectral == "float32" and float32_route(u, self.float32_gram_work,
                                                             self.float32_aspect)

    def _spectrum(self, u: np.ndarray, gram: np.ndarray | None = None) -> Spectrum:
        """Singular values of ``u`` (n, dim): with ``spectral="float32"`` the float32 route where
        it applies and meets its tolerances, else the float64 one (to ``fast_rank_tol``;
        ``rank_tol`` with ``spectral="exact"``), from ``gram`` when given (u's float64 Gram
        matrix, ``gram64``)."""
        found = None
        if self.spectral == STABLE:
            found = stable_spectrum(u, self.gram_rows)
        elif self._float32(u):
            found = float32_spectrum(u, self.torch_eig_from, self.fast_rank_tol,
                                     rows=self.gram_rows)
        if found is not None:
            return found
        tol = self.rank_tol if self.spectral == "exact" else self.fast_rank_tol
        return float64_spectrum(u, tol, self.torch_eig_from, self.gram_rows, gram)

    def _singular_values(self, u: np.ndarray) -> np.ndarray:
        """Singular values of ``u`` (n, dim) on the float64 route, descending, float64 (see
        ``rank_tol``)."""
        return float64_spectrum(u, self.rank_tol, self.torch_eig_from, self.gram_rows).s

    def _empty(self) -> Condensation:
        nan = float("nan")
        self._unit = np.zeros((0, 0))
        self.order_ = np.zeros(0, dtype=int)
        self.mean_abs_cos_ = self.stable_rank_ = self.effective_rank_ = nan
        if self._weight:
            self.stable_rank_weight_ = self.alpha_ = nan
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

        Raises:
            ValueError: fitted with ``order=False`` (no dendrogram order kept).
        """
        if self._unit is None:
            raise ValueError("ordered_cosine needs a fit with order=True")
        n = len(self.order_)
        k = max(1, -(-n // max_units))
        order = self.order_[::k]
        return _cosines(self._unit[order]).astype(np.float32), k

    def results(self) -> list[tuple[str, float | None, float]]:
        """The fitted values as (metric, threshold or None, value) triples for the report."""
        out = [("mean_abs_cos", None, self.mean_abs_cos_)]
        if self.spectral:
            stable = self.spectral == STABLE
            out += [(m, None, getattr(self, m + "_")) for m in RANK_METRICS
                    if not stable or m == "stable_rank"]
            if self._weight:  # alpha only where it is fitted (>= 50 eigenvalues)
                out += [(m, None, getattr(self, m + "_")) for m in WEIGHT_METRICS
                        if m != "alpha" or not (stable or np.isnan(self.alpha_))]
        out.append(("n_dropped", None, float(self.n_dropped_)))
        if self.n_dead_ is not None:
            out.append(("n_dead", None, float(self.n_dead_)))
        for t in self.thresholds:
            out += [("n_groups", t, float(self.n_groups_[t])),
                    ("group_ratio", t, self.group_ratio_[t]),
                    ("largest_group_share", t, self.largest_group_share_[t])]
        return out


def _cosines(unit: np.ndarray) -> np.ndarray:
    """(m, m) cosines of unit-norm rows (m, dim): clipped to [-1, 1], diagonal 1, symmetric."""
    cos = np.clip(unit @ unit.T, -1.0, 1.0)
    upper = np.triu_indices(len(cos), 1)
    cos.T[upper] = cos[upper]
    np.fill_diagonal(cos, 1.0)
    return cos


def metric_rows(fit: Condensation, base: dict) -> list[dict]:
    """metrics.csv rows of a fitted unit set, one per (metric, threshold).

    Args:
        fit: a fitted ``Condensation``.
        base: the row's identity: run_id, step, layer, component, head, basis.

    Returns:
        ``metric_row`` dicts (METRICS_COLUMNS), n_units the fit's kept units.
    """
    return [metric_row(**base, metric=m, threshold=t, value=v, n_units=fit.n_units_)
            for m, t, v in fit.results()]


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
