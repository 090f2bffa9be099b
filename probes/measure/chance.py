"""Chance baselines of condensation: what the same number of units in the same dimension gives
when nothing has condensed (scikit-learn style: configure, ``fit``, read attributes).

A group count alone says nothing: 1000 random directions in 2-D (the (w, b) units of a 1-D-input
ReLU layer) fall into ~55 groups at cosine 0.99 without any condensation. ``ChanceBaseline``
draws ``n_draws`` unit sets of the same size and dimension from a null distribution and counts
their groups with the project's own ``Condensation`` (``order=False, spectral=False``), so that
null and observed sets are counted by the same code. It gives, per threshold, the null's mean and
sd of n_groups, a one-sided Monte Carlo p-value p = (1 + #{draws at least as condensed}) /
(1 + n_draws) (never 0: Phipson and Smyth 2010, Stat. Appl. Genet. Mol. Biol. 9:39) and a
z-score, and the null's mean |cos| with its p-value.

Nulls:
- ``isotropic``: standard Gaussian rows, i.e. directions uniform on the sphere S^{dim-1}. Its
  mean |cos| has the closed form ``isotropic_mean_abs_cos``. Its draws depend only on (n, dim),
  so they are drawn once per shape and process (cached): every set of one shape is compared
  with the same draws.
- ``covariance``: zero-mean Gaussian rows with the units' own centered covariance (drawn along
  its principal axes, from the centered units' singular values, so a rank-deficient covariance
  is drawn exactly, in its own span).
  Low rank alone then does not count as condensation, while a shared mean direction (all units
  pointing one way) still does: the null keeps the spread around the mean, not the mean.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy.special import gammaln

from probes.measure.metrics import THRESHOLDS, Condensation
from probes.measure.result import metric_row
from probes.measure.spectral import eigenvalues, gram64

# null -> the suffix of its metric names
NULLS = {"isotropic": "iso", "covariance": "cov"}
# metrics.csv names, each followed by _<suffix> (``chance_metric``): per unit set, then per tau
PER_SET = ("null_draws", "mean_abs_cos_null", "mean_abs_cos_p")
PER_THRESHOLD = ("n_groups_null", "n_groups_null_sd", "n_groups_p", "n_groups_z")
CHANCE_METRICS = tuple(f"{m}_{s}" for s in NULLS.values() for m in (*PER_SET, *PER_THRESHOLD))
# the ones that describe the null alone (not the units against it): no correlation with scores
NULL_ONLY = tuple(f"{m}_{s}" for s in NULLS.values()
                  for m in ("null_draws", "mean_abs_cos_null", "n_groups_null", "n_groups_null_sd"))
# One draw costs one group count, O(n^2 dim) (one thread of an AMD EPYC, float32 GEMM above 2^31
# multiply-adds: 4096 x 4096 ~1.1 s, 4096 x 400 ~0.15 s, 192 x 64 ~0.6 ms; the covariance null
# adds its spectrum once a set, ~9 s at 4096 x 4096). 4096 units keep the attention sets of
# models up to 4096 wide and every set of this project's own families (the 2-D units of the
# width-5000 nets of mlp_phase aside), while the MLPs of 7B-sized models (11008+ units, ~8 s a
# draw) are skipped, and a null_draws row of 0 says so.
MAX_UNITS = 4096


def chance_metric(name: str, null: str) -> str:
    """The metrics.csv name of ``name`` (from ``PER_SET`` / ``PER_THRESHOLD``) under ``null``.

    Raises:
        ValueError: an unknown name or null.
    """
    if name not in PER_SET + PER_THRESHOLD or null not in NULLS:
        raise ValueError(f"({name!r}, {null!r}) is unknown: accepted are a name of "
                         f"{PER_SET + PER_THRESHOLD} and a null of {list(NULLS)}")
    return f"{name}_{NULLS[null]}"


def isotropic_mean_abs_cos(dim: int) -> float:
    """E|cos| of two independent directions uniform on the sphere in ``dim`` dimensions:
    Gamma(d/2) / (sqrt(pi) Gamma((d+1)/2)) (|cos| has density prop. to (1 - c^2)^((d-3)/2));
    2/pi in 2-D, 1/2 in 3-D, ~ sqrt(2 / (pi d)) for large d. Log-gamma keeps it finite at any d.

    Raises:
        ValueError: ``dim`` not an integer >= 1.
    """
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise ValueError(f"dim={dim!r} is invalid: accepted is an integer >= 1")
    return float(np.exp(gammaln(dim / 2) - gammaln((dim + 1) / 2)) / np.sqrt(np.pi))


def _counts(draw, n_draws: int, thresholds: tuple, antipodal: bool) -> tuple[np.ndarray, np.ndarray]:
    """((n_draws, n_thresholds) int groups, (n_draws,) mean |cos|) of ``draw()`` sets."""
    fit = Condensation(thresholds, antipodal=antipodal, order=False, spectral=False)
    groups = np.empty((n_draws, len(thresholds)), dtype=np.int64)
    mac = np.empty(n_draws)
    for k in range(n_draws):
        fit.fit(draw())
        groups[k] = [fit.n_groups_[t] for t in thresholds]
        mac[k] = fit.mean_abs_cos_
    return groups, mac


@functools.lru_cache(maxsize=64)
def _isotropic(n: int, dim: int, thresholds: tuple, antipodal: bool, n_draws: int, seed: int):
    """The isotropic null's counts of (n, dim) sets (``_counts``), read-only; cached per shape."""
    rng = np.random.default_rng(seed)
    out = _counts(lambda: rng.standard_normal((n, dim)), n_draws, thresholds, antipodal)
    for a in out:
        a.setflags(write=False)
    return out


class ChanceBaseline:
    """The chance level of one unit set's condensation under one null.

    Args:
        thresholds: cosine thresholds tau in (0, 1); each must be one the observed fit counted.
        null: ``isotropic`` or ``covariance`` (see the module docstring).
        n_draws: null sets drawn (>= 1); the smallest p-value is 1 / (1 + n_draws).
        seed: seed of the draws (the same seed, units and settings give the same values).
        antipodal: count groups as ``Condensation(antipodal=...)``; must match the observed fit.
        max_units: sets of more kept units are skipped (``skipped_`` says why, ``n_draws_`` is
            0 and ``results`` gives only ``null_draws`` = 0).

    Cost: n_draws group counts of an (n_units, dim) set, O(n_draws n^2 dim) time and O(n dim)
    memory (see ``MAX_UNITS``); the covariance null adds one symmetric eigenvalue problem of
    size min(n, dim) and draws in r = rank <= min(n - 1, dim) dimensions. Isotropic draws are
    cached per (n, dim, settings), so a series of same-shaped sets pays for them once.

    Attributes after ``fit(units, observed)``:
        n_units_ (kept units of the observed fit), dim_, n_draws_ (draws made; 0 if skipped),
        skipped_ (None, or why no draw was made: too many units, fewer than 2, a covariance of
        rank 0), null_groups_ (n_draws, n_thresholds) int and null_mean_abs_cos_ (n_draws,) of
        the draws, and per tau: n_groups_null_ (mean), n_groups_null_sd_ (sd, ddof 1; NaN for
        one draw), n_groups_p_ (p = (1 + #{draws with n_groups <= observed}) / (1 + n_draws):
        fewer groups is more condensed), n_groups_z_ ((observed - mean) / sd: negative is more
        condensed than chance; NaN when sd is 0); mean_abs_cos_null_ (closed form for isotropic,
        the draws' mean for covariance) and mean_abs_cos_p_ ((1 + #{draws with mean |cos| >=
        observed}) / (1 + n_draws)). Skipped: these are None.

    Raises:
        ValueError: bad thresholds, null, n_draws, seed or max_units.
    """

    def __init__(self, thresholds=THRESHOLDS, null: str = "isotropic", n_draws: int = 199,
                 seed: int = 0, antipodal: bool = False, max_units: int = MAX_UNITS):
        self.thresholds = tuple(float(t) for t in thresholds)
        if not self.thresholds or not all(0 < t < 1 for t in self.thresholds):
            raise ValueError(f"thresholds {list(self.thresholds)} are invalid: accepted are "
                             f"numbers in (0, 1)")
        if null not in NULLS:
            raise ValueError(f"null={null!r} is unknown: accepted are {list(NULLS)}")
        for key, value, low in (("n_draws", n_draws, 1), ("seed", seed, 0),
                                ("max_units", max_units, 2)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{key}={value!r} is invalid: accepted is an integer >= {low}")
        self.null, self.n_draws, self.seed = null, int(n_draws), int(seed)
        self.antipodal, self.max_units = bool(antipodal), int(max_units)

    def fit(self, units, observed: Condensation, dead=None) -> ChanceBaseline:
        """Draw the null for ``units`` and compare ``observed`` with it.

        Args:
            units: array-like (n_units, dim), the rows ``observed`` was fitted on.
            observed: a ``Condensation`` fitted on ``units`` (with ``dead``) at every threshold.
            dead: the (n_units,) bool mask given to ``observed.fit``, or None.

        Raises:
            ValueError: ``units`` not 2-D, ``observed`` not fitted, missing a threshold,
                counted with another ``antipodal``, or not fitted on these units.
        """
        u = np.asarray(units)
        if u.ndim != 2:
            raise ValueError(f"units must be 2-D (n_units, dim), got shape {u.shape}")
        if not hasattr(observed, "n_groups_"):
            raise ValueError("observed must be a fitted Condensation (call its fit first)")
        missing = [t for t in self.thresholds if t not in observed.n_groups_]
        if missing:
            raise ValueError(f"thresholds {missing} were not counted by the observed fit: "
                             f"accepted are {list(observed.n_groups_)}")
        if observed.antipodal != self.antipodal:
            raise ValueError(f"antipodal={self.antipodal} differs from the observed fit's "
                             f"{observed.antipodal}: accepted is the same counting for both")
        self.n_units_, self.dim_ = observed.n_units_, int(u.shape[1])
        self._observed = observed
        self.skipped_ = self._skip_reason()
        scales = None
        if self.skipped_ is None and self.null == "covariance":
            scales = _cov_scales(_kept(u, observed, dead))
            if scales is None:
                self.skipped_ = "covariance of rank 0 (identical units)"
        if self.skipped_ is not None:
            return self._skipped()
        if self.null == "isotropic":
            groups, mac = _isotropic(self.n_units_, self.dim_, self.thresholds, self.antipodal,
                                     self.n_draws, self.seed)
        else:
            groups, mac = self._covariance_draws(scales)
        return self._compare(groups, mac)

    def _covariance_draws(self, scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``_counts`` of Gaussian sets z diag(scales), z (n, r) standard (see ``_cov_scales``)."""
        rng, n = np.random.default_rng(self.seed), self.n_units_
        return _counts(lambda: rng.standard_normal((n, len(scales))) * scales, self.n_draws,
                       self.thresholds, self.antipodal)

    def _skip_reason(self) -> str | None:
        if self.n_units_ > self.max_units:
            return f"{self.n_units_} units > max_units {self.max_units}"
        if self.n_units_ < 2:
            return f"{self.n_units_} unit(s): no pair to compare"
        return None

    def _skipped(self) -> ChanceBaseline:
        self.n_draws_ = 0
        self.null_groups_ = self.null_mean_abs_cos_ = None
        self.n_groups_null_ = self.n_groups_null_sd_ = self.n_groups_p_ = self.n_groups_z_ = None
        self.mean_abs_cos_null_ = self.mean_abs_cos_p_ = None
        return self

    def _compare(self, groups: np.ndarray, mac: np.ndarray) -> ChanceBaseline:
        obs = self._observed
        self.n_draws_, self.null_groups_, self.null_mean_abs_cos_ = len(groups), groups, mac
        mean = groups.mean(axis=0)
        sd = groups.std(axis=0, ddof=1) if len(groups) > 1 else np.full(len(mean), np.nan)
        self.n_groups_null_, self.n_groups_null_sd_ = {}, {}
        self.n_groups_p_, self.n_groups_z_ = {}, {}
        for k, t in enumerate(self.thresholds):
            seen = obs.n_groups_[t]
            self.n_groups_null_[t], self.n_groups_null_sd_[t] = float(mean[k]), float(sd[k])
            self.n_groups_p_[t] = (1 + int((groups[:, k] <= seen).sum())) / (1 + len(groups))
            self.n_groups_z_[t] = float((seen - mean[k]) / sd[k]) if sd[k] > 0 else np.nan
        self.mean_abs_cos_null_ = (isotropic_mean_abs_cos(self.dim_) if self.null == "isotropic"
                                   else float(mac.mean()))
        self.mean_abs_cos_p_ = (1 + int((mac >= obs.mean_abs_cos_).sum())) / (1 + len(mac))
        return self

    def results(self) -> list[tuple[str, float | None, float]]:
        """The fitted values as (metric, threshold or None, value) triples (names:
        ``CHANCE_METRICS``); a skipped baseline gives ``null_draws`` = 0 alone."""
        name = functools.partial(chance_metric, null=self.null)
        out = [(name("null_draws"), None, float(self.n_draws_))]
        if self.skipped_ is not None:
            return out
        out += [(name("mean_abs_cos_null"), None, self.mean_abs_cos_null_),
                (name("mean_abs_cos_p"), None, self.mean_abs_cos_p_)]
        for t in self.thresholds:
            out += [(name("n_groups_null"), t, self.n_groups_null_[t]),
                    (name("n_groups_null_sd"), t, self.n_groups_null_sd_[t]),
                    (name("n_groups_p"), t, self.n_groups_p_[t]),
                    (name("n_groups_z"), t, self.n_groups_z_[t])]
        return out


def _kept(u: np.ndarray, observed: Condensation, dead) -> np.ndarray:
    """(n_units_, dim) float64: the rows of ``u`` that ``observed`` kept, by its own rule (norm
    >= zero_tol x the median norm, > 0, not dead). Raises ValueError when the count differs."""
    norms = np.linalg.norm(np.asarray(u, dtype=np.float64), axis=1)
    keep = norms > 0
    if len(norms):
        keep &= norms >= observed.zero_tol * np.median(norms)
    if dead is not None:
        keep &= ~np.asarray(dead, dtype=bool)
    if int(keep.sum()) != observed.n_units_:
        raise ValueError(f"{int(keep.sum())} units kept here, {observed.n_units_} by the observed "
                         f"fit: accepted are the units (and dead mask) it was fitted on")
    return np.asarray(u[keep], dtype=np.float64)


def _cov_scales(u: np.ndarray) -> np.ndarray | None:
    """(r,) standard deviations of the centered sample covariance of ``u`` (n, dim) along its r
    principal axes (square roots of its nonzero eigenvalues, largest last); None at rank 0.

    A zero-mean Gaussian with that covariance is z diag(scales) V^T, V the axes; cosines do not
    change under the rotation V^T, so the null is drawn as z diag(scales) in r dimensions (no
    Cholesky: any rank is drawn exactly in its own span). Eigenvalues come from the smaller Gram
    matrix of the centered rows; those within rounding of 0 are dropped.
    """
    x = u - u.mean(axis=0)
    lam = eigenvalues(gram64(x, Condensation.gram_rows), Condensation.torch_eig_from)[::-1]
    if lam[-1] <= 0:
        return None
    return np.sqrt(lam[lam > lam[-1] * 10 * len(lam) * np.finfo(np.float64).eps] / (len(x) - 1))


def chance_baselines(units, observed: Condensation, nulls, n_draws: int, dead=None,
                     seed: int = 0, max_units: int = MAX_UNITS) -> list[ChanceBaseline]:
    """Fitted ``ChanceBaseline`` of ``units`` under each null in ``nulls`` (names of ``NULLS``,
    or ``both``) at the observed fit's thresholds; [] when ``n_draws`` is 0 (off).

    Raises:
        ValueError: as ``ChanceBaseline`` and its ``fit``; an unknown null.
    """
    if n_draws == 0:
        return []
    names = list(NULLS) if nulls == "both" else [nulls] if isinstance(nulls, str) else list(nulls)
    return [ChanceBaseline(observed.thresholds, null, n_draws, seed, observed.antipodal,
                           max_units).fit(units, observed, dead) for null in names]


def chance_rows(baselines: list[ChanceBaseline], base: dict) -> list[dict]:
    """metrics.csv rows of fitted baselines (``metric_row``; n_units the kept units).

    Args:
        baselines: fitted ``ChanceBaseline`` objects of one unit set.
        base: the row's identity: run_id, step, layer, component, head, basis.
    """
    return [metric_row(**base, metric=m, threshold=t, value=v, n_units=b.n_units_)
            for b in baselines for m, t, v in b.results()]
