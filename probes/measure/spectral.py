"""Spectra of a unit matrix U (n_units, dim): its singular values s, with the error they carry.

Metrics (names in ``SPECTRAL_METRICS``):
- ``stable_rank`` ||U||_F^2 / s_max^2 and ``effective_rank`` exp(H(s / sum s)) (Roy and Vetterli
  2007) of the units matrix (for a Linear layer: its rows [W | b], bias appended);
- ``stable_rank_weight`` ||W||_F^2 / s_max(W)^2 and ``alpha``, WeightWatcher's power-law exponent
  of the eigenvalues s(W)^2 of W^T W (Martin and Mahoney, JMLR 2021; weightwatcher 0.7.7), of the
  weight matrix W alone (the bias columns left out), for rows of a Linear / Conv1D weight.

The singular values come from the eigenvalues lam = s^2 of the smaller Gram matrix (U^T U or
U U^T), computed by a float64 eigensolver, on one of two routes (``Condensation(spectral=...)``):
- ``float64`` (``True`` / ``"fast"``, the default, and ``"exact"``): a float64 Gram matrix
  (rounding ~1e-16 of lam_max); where that rounding could move log(effective rank) by more than
  the tolerance (``entropy_error``, first order: ``FAST_RANK_TOL`` = 1e-5 by default, 1e-8 for
  ``"exact"``), an SVD decides. The default's tolerance is what spares the SVD on spectra that
  reach down to rounding level: 4.3x and 5.3x faster on planted rank-256 sets of 4096 x 4096 and
  11008 x 4096 (reports/measured/benchmarks/spectral_7b_shapes_1thread.txt); on SmolLM2-135M with
  norms folded, 1 SVD in 180 whole-layer sets instead of 14.
- ``float32`` (``"float32"``, opt-in), for float32 units of a clearly rectangular shape: a float32
  Gram matrix (float32 products and sums, BLAS syrk: 2-3x faster than float64's). Its rounding
  moves each eigenvalue by at most ``noise`` = sqrt(N) eps32 max_j |u_j|^2 (N the Gram's size,
  |u_j| its largest column norm): entries err by ~eps32 |u_j| |u_k| with random signs, so the
  error matrix has a spectral norm ~sqrt(N) eps32 max |u_j|^2 (Weyl's bound on each eigenvalue);
  measured <= 0.34 of that on random, planted low-rank, power-law, spiked and column-scaled sets.
  It is a model, not a proof: the route is kept only when, under it, the first-order change of
  log(effective rank) is <= ``FAST_RANK_TOL``, and when s_max^2 is certified to ``FAST_TOP_TOL``
  (1e-6) by a residual on the units themselves (``top_eigenvalue``, no model); else the float64
  route decides. Near-square units skip it: their smallest singular values (~s_max / N for a
  random matrix) lie below a float32 Gram matrix's resolution sqrt(eps32) s_max (the squared
  condition number). It is not the default because it pays only where the spectrum stays well
  above that resolution: on random 11008 x 4096 units it saves ~15% (the float64 eigensolver
  remains), while norm-folded real weights (SmolLM2's MLP: smallest/largest eigenvalue 1e-8 to
  1e-11) fail its estimate and then cost the attempt on top of the float64 route. A float32
  eigensolver is no way out: its errors (~eps32 lam_max on every eigenvalue, ~250 eps32 relative
  on the largest) moved the effective rank of random 4096 x 4096 units by 3-5e-6, too close to
  1e-5 to be certified.
- ``lanczos`` (``"stable"``, opt-in): the stable ranks alone, which need only ||U||_F^2 and
  s_max^2: s_max^2 by Lanczos on products with U (no Gram matrix: ~40 products instead of a
  min(n, dim)-sized Gram matrix and its eigensolver), certified to ``FAST_TOP_TOL`` by its
  residual on U in float64 (``top_eigenvalue``); no effective rank and no alpha.

Where both the units [W | b] and W alone take the float64 route, one product gives both Gram
matrices (``gram_pair``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.linalg import eigh
from scipy.sparse.linalg import ArpackError, LinearOperator, eigsh

RANK_METRICS = ("stable_rank", "effective_rank")
WEIGHT_METRICS = ("stable_rank_weight", "alpha")
SPECTRAL_METRICS = RANK_METRICS + WEIGHT_METRICS
PRECISIONS = ("fast", "float32", "exact")
STABLE = "stable"  # the stable ranks alone (stable_spectrum: no spectrum)

EPS32 = float(np.finfo(np.float32).eps)
FAST_RANK_TOL = 1e-5  # relative error of effective_rank by default (first-order bound)
FAST_TOP_TOL = 1e-6  # relative error of s_max^2, so of stable_rank, on the float32 route (certified)
# Lanczos stops when its residual on the float32 Gram is below this (relative): the Gram's own
# rounding (~1e-7) then dominates the residual that ``top_eigenvalue`` measures on the units
LANCZOS_TOL = 1e-7
# up to this size a Gram matrix is formed and its top eigenvector taken by a dense eigensolver:
# cheaper than Lanczos's ~40 products there (GPT-2's 64-unit heads)
DENSE_TOP = 128
# WeightWatcher 0.7.7 (CPU): eigenvalues <= 1e-5 are left out of the fit (EVALS_THRESH; it is
# 1e-4 when CUDA is present); we fit only where >= 50 remain (its small-sample estimator, below 20,
# then never applies)
ALPHA_EVALS_THRESH = 1e-5
ALPHA_MIN_EVALS = 50


@dataclass
class Spectrum:
    """Singular values of a unit matrix and the numbers derived from them.

    s: (min(n, dim),) float64, descending, values at rounding level set to 0 (None on the
    ``lanczos`` route, which gives the stable rank alone); top: s_max^2 used by the stable rank;
    frobenius: ||U||_F^2 (float64) or None (then sum(s^2)); route: ``float64``, ``svd``,
    ``float32`` or ``lanczos``; rank_error: the bound on the relative error of the effective rank
    that the route met (``entropy_error``; 0 for the SVD); top_error: that of s_max^2 (float32 and
    lanczos routes: ``top_eigenvalue``'s; else NaN: rounding level).
    """

    s: np.ndarray | None
    top: float
    frobenius: float | None
    route: str
    rank_error: float = 0.0
    top_error: float = float("nan")

    @property
    def stable_rank(self) -> float:
        """||U||_F^2 / s_max^2 (sum(s^2) / s_max^2 without ``frobenius``); NaN for a zero
        matrix (a weight of zeros under a nonzero bias)."""
        total = float((self.s**2).sum()) if self.frobenius is None else self.frobenius
        return total / self.top if self.top > 0 else float("nan")

    @property
    def effective_rank(self) -> float:
        """exp(H(p)), p = s / sum(s) over the nonzero s (Roy and Vetterli 2007)."""
        p = self.s[self.s > 0] / self.s.sum()
        return float(np.exp(-(p * np.log(p)).sum()))

    @property
    def alpha(self) -> float:
        """WeightWatcher's alpha of the eigenvalues s^2 (``powerlaw_alpha``); NaN below
        ``ALPHA_MIN_EVALS`` eigenvalues above ``ALPHA_EVALS_THRESH``."""
        return powerlaw_alpha(self.s**2)


def gram64(u: np.ndarray, rows: int) -> np.ndarray:
    """The smaller float64 Gram matrix of ``u`` (n, dim): u^T u (dim, dim) when n >= dim, else
    u u^T (n, n); summed over blocks of ``rows`` rows (columns) so that no float64 copy of ``u``
    is made."""
    n, dim = u.shape
    if n >= dim:
        gram = np.zeros((dim, dim))
        for r in range(0, n, rows):
            b = np.asarray(u[r:r + rows], dtype=np.float64)
            gram += b.T @ b
        return gram
    gram = np.zeros((n, n))
    for c in range(0, dim, rows * 4):
        b = np.ascontiguousarray(u[:, c:c + rows * 4], dtype=np.float64)
        gram += b @ b.T
    return gram


def gram_pair(u: np.ndarray, bias_columns: int, rows: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Float64 Gram matrices of ``u`` (n, dim) and of W = u[:, :dim - bias_columns] from one
    product: W^T W is the leading block of u^T u (n >= dim); u u^T = W W^T + B B^T (n <= dim -
    bias_columns, B the bias columns: a sum of two positive semidefinite matrices, so no
    cancellation however large the bias). W's is None when its smaller Gram matrix has another
    size than u's (dim - bias_columns < n < dim)."""
    n, dim = u.shape
    d = dim - bias_columns
    if n >= dim:
        gram = gram64(u, rows)
        return gram, gram[:d, :d].copy()  # (a copy: an in-place eigensolver may overwrite ``gram``)
    if n <= d:
        w_gram = gram64(u[:, :d].T, rows)  # W W^T (n, n), even where n == d
        b = np.asarray(u[:, d:], np.float64)
        return w_gram + b @ b.T, w_gram
    return gram64(u, rows), None


def eigenvalues(gram: np.ndarray, torch_from: int) -> np.ndarray:
    """Eigenvalues of a symmetric (N, N) matrix (float32 or float64; read in float64, the lower
    triangle), descending, float64: torch (MKL's syevd) from size ``torch_from``, else scipy
    (syevr, in place on a float64 matrix), each the faster one there on one thread."""
    if len(gram) >= torch_from:
        return torch.linalg.eigvalsh(torch.from_numpy(gram).double()).numpy()[::-1]
    return eigh(np.asarray(gram, np.float64), lower=True, eigvals_only=True, overwrite_a=True,
                check_finite=False, driver="evr")[::-1]


def entropy_error(lam: np.ndarray, noise: float) -> float:
    """First-order bound on |change of log(effective rank)| when every eigenvalue of the Gram
    matrix may be off by ``noise`` (absolute).

    With S = sum(s), p = s / S and H = -sum p log p, dH/ds_i = -(log p_i + H) / S exactly; each s_i
    may move by ds_i = sqrt(lam_i + noise) - sqrt(lam_i - noise). Where ds_i is not small against
    s_i (eigenvalues near or below ``noise``: counted as zeros), the change of the i-th term over
    [0, ds_i] is bounded by integrating that derivative, which adds ds_i / S.

    Args:
        lam: (N,) eigenvalues, descending (largest first); noise: their absolute error bound.

    Returns:
        the bound (inf when no eigenvalue is above ``noise``).
    """
    lam = np.maximum(lam, 0.0)
    s = np.sqrt(np.where(lam > noise, lam, 0.0))
    total = s.sum()
    if total <= 0:
        return float("inf")
    ds = np.sqrt(lam + noise) - np.sqrt(np.maximum(lam - noise, 0.0))
    p, dp = s / total, ds / total
    big = p > 0
    entropy = -(p[big] * np.log(p[big])).sum()
    rough = p < 2 * dp
    return float((dp * (np.abs(np.log(np.maximum(p, dp)) + entropy) + rough)).sum())


def float64_spectrum(u: np.ndarray, rank_tol: float, torch_from: int, rows: int,
                     gram: np.ndarray | None = None) -> Spectrum:
    """Singular values of ``u`` (n, dim) from its float64 Gram matrix (``gram``, else
    ``gram64(u, rows)``; it may be overwritten), or from an SVD when the Gram's rounding could
    move log(effective rank) by more than ``rank_tol``.

    Eigenvalues lam of the Gram matrix are taken to carry an absolute error up to ``noise`` =
    10 N eps lam_max (N its size); those below it are exact zeros (a zero bias column, duplicated
    units).
    """
    lam = eigenvalues(gram64(u, rows) if gram is None else gram, torch_from)
    noise = 10 * len(lam) * np.finfo(np.float64).eps * lam[0]
    error = entropy_error(lam, noise) if lam[0] > 0 else float("inf")
    if error <= rank_tol:
        s = np.sqrt(np.where(lam > noise, lam, 0.0))
        return Spectrum(s, float(s[0] ** 2), None, "float64", error)
    s = np.linalg.svd(np.asarray(u, dtype=np.float64), compute_uv=False)
    return Spectrum(s, float(s[0] ** 2), None, "svd")


def float32_route(u: np.ndarray, min_work: float, min_aspect: float) -> bool:
    """Whether ``u`` (n, dim) goes the float32 route: float32 units, a Gram matrix that costs at
    least ``min_work`` multiply-adds (n dim min(n, dim)) and a shape at least ``min_aspect`` times
    longer than wide (where random-like spectra stay within float32's resolution)."""
    n, dim = u.shape
    small, large = min(n, dim), max(n, dim)
    return (u.dtype == np.float32 and small > 0 and n * dim * small >= min_work
            and large >= min_aspect * small)


def float32_spectrum(u: np.ndarray, torch_from: int, rank_tol: float = FAST_RANK_TOL,
                     top_tol: float = FAST_TOP_TOL, rows: int = 2048) -> Spectrum | None:
    """Singular values of float32 ``u`` (n, dim) from its float32 Gram matrix (see the module
    docstring for the error model), or None when its estimates miss ``rank_tol`` (effective
    rank) or ``top_tol`` (s_max^2: ``top_eigenvalue``). The stable rank's numerator ||u||_F^2 is
    summed in float64."""
    n, dim = u.shape
    gram = u.T @ u if n >= dim else u @ u.T  # float32 products and sums (BLAS syrk)
    noise = np.sqrt(len(gram)) * EPS32 * float(np.diag(gram).max())
    lam = eigenvalues(gram, torch_from)
    rank_error = entropy_error(lam, noise) if lam[0] > 0 else float("inf")
    if rank_error > rank_tol:
        return None
    top, top_error = top_eigenvalue(u, gram, rows)
    if top_error > top_tol:
        return None
    return Spectrum(np.sqrt(np.where(lam > noise, lam, 0.0)), top, _frobenius(u, rows), "float32",
                    rank_error, top_error)


def stable_spectrum(u: np.ndarray, rows: int = 2048) -> Spectrum | None:
    """s_max^2 and ||u||_F^2 of ``u`` (n, dim), all the stable rank needs, without a Gram matrix
    or a spectrum: s_max^2 by Lanczos on the products v -> u^T (u v) in u's own type, certified to
    ``FAST_TOP_TOL`` on ``u`` in float64 (``top_eigenvalue``), ||u||_F^2 summed in float64.

    Returns:
        a ``Spectrum`` with ``s`` None (route ``lanczos``), or None when the certificate misses
        ``FAST_TOP_TOL`` (then a full route decides).
    """
    top, top_error = top_eigenvalue(u, None, rows)
    if not top_error <= FAST_TOP_TOL:
        return None
    return Spectrum(None, top, _frobenius(u, rows), "lanczos", float("nan"), top_error)


def top_eigenvalue(u: np.ndarray, gram: np.ndarray | None,
                   rows: int = 2048) -> tuple[float, float]:
    """s_max^2 of ``u`` (n, dim) with a relative error bound, from its Gram matrix ``gram`` or,
    when None, from products with ``u`` in its own type (no Gram matrix formed).

    The top eigenvector v of the Gram matrix (Lanczos, ARPACK's ``eigsh``, from a fixed start) is
    scored on ``u`` itself in float64: theta = v^T (u^T u) v <= s_max^2 (a Rayleigh quotient),
    and the residual r = (u^T u) v - theta v puts an eigenvalue within |r| of theta (for symmetric
    matrices), the top one for a Ritz vector of the top eigenvalue. So s_max^2 is in
    [theta, theta + |r|] whatever the rounding of the products was.

    Returns:
        (theta, |r| / theta); (NaN, inf) when Lanczos does not converge.
    """
    n, dim = u.shape
    vec = _top_vector(u, gram, rows)
    if vec is None:
        return float("nan"), float("inf")
    v = vec[:, 0] / np.linalg.norm(vec[:, 0])
    if n >= dim:  # gram = u^T u: v in R^dim
        w = np.concatenate([np.asarray(u[r:r + rows], np.float64) @ v
                            for r in range(0, n, rows)])
        back = sum(np.asarray(u[r:r + rows], np.float64).T @ w[r:r + rows]
                   for r in range(0, n, rows))
    else:  # gram = u u^T: v in R^n
        w = sum(np.asarray(u[r:r + rows], np.float64).T @ v[r:r + rows] for r in range(0, n, rows))
        back = np.concatenate([np.asarray(u[r:r + rows], np.float64) @ w
                               for r in range(0, n, rows)])
    theta = float(w @ w)
    if theta <= 0:
        return theta, float("inf")
    return theta, float(np.linalg.norm(back - theta * v)) / theta


def _top_vector(u: np.ndarray, gram: np.ndarray | None, rows: int) -> np.ndarray | None:
    """(N, 1) top eigenvector of u's smaller Gram matrix (N its size): of ``gram``, or of the
    products with ``u`` (``_products``) when ``gram`` is None; None when Lanczos does not
    converge."""
    size = min(u.shape)
    if gram is None and size <= DENSE_TOP:
        gram = gram64(u, rows)
    if gram is not None and len(gram) <= DENSE_TOP:  # (ARPACK needs more dimensions than it keeps)
        return eigh(np.asarray(gram, np.float64), subset_by_index=[size - 1, size - 1])[1]
    op = _products(u, rows) if gram is None else np.asarray(gram, np.float64)
    if op is None:
        return None
    try:
        _, vec = eigsh(op, k=1, which="LA", tol=LANCZOS_TOL,
                       v0=np.random.default_rng(0).standard_normal(size))
    except ArpackError:  # (no convergence, or a breakdown): a full route decides
        return None
    return vec if np.isfinite(vec).all() else None


def _products(u: np.ndarray, rows: int) -> LinearOperator | None:
    """v -> u^T (u v) (n >= dim) or u (u^T v), in u's own type, of u / max |u_ij|: float32
    neither under- nor overflows for weights of any scale it holds (the eigenvectors are the
    same); None for a zero matrix or one too small to scale."""
    n, dim = u.shape
    top = float(max(np.abs(u[r:r + rows]).max() for r in range(0, n, rows)))
    if top == 0 or not np.isfinite(1.0 / top):
        return None
    scale = u.dtype.type(1.0 / top)

    def product(v):
        v = np.asarray(v, u.dtype).ravel()
        out = u.T @ ((u @ v) * scale) if n >= dim else u @ ((u.T @ v) * scale)
        return np.asarray(out * scale, np.float64)
    return LinearOperator((min(n, dim),) * 2, matvec=product, dtype=np.float64)


def _frobenius(u: np.ndarray, rows: int) -> float:
    """||u||_F^2 of ``u`` (n, dim), summed in float64 over blocks of ``rows`` rows."""
    return sum(float(np.square(u[r:r + rows], dtype=np.float64).sum())
               for r in range(0, len(u), rows))


def powerlaw_alpha(evals: np.ndarray, thresh: float = ALPHA_EVALS_THRESH,
                   min_evals: int = ALPHA_MIN_EVALS) -> float:
    """Power-law exponent alpha of the eigenvalues, fitted as WeightWatcher 0.7.7 does
    (``WW_powerlaw.WWFit.fit_power_law_standard``, its default ``pl_package="ww"``).

    Eigenvalues x > ``thresh``, sorted ascending; for every candidate xmin = x_i (all but the
    largest), the continuous power law's maximum-likelihood exponent over the tail x_j >= x_i
    (n_i = N - i values): alpha_i = 1 + n_i / sum_j log(x_j / x_i) (Clauset, Shalizi and Newman,
    SIAM Review 2009), and the Kolmogorov-Smirnov distance D_i = max_j |1 - (x_j / x_i)^(1 -
    alpha_i) - (j - i) / n_i| (D_i = 1 where alpha_i <= 1); alpha is alpha_i at the first
    smallest D_i.

    Args:
        evals: (N,) eigenvalues of W^T W (squared singular values of W), any order, float.
        thresh, min_evals: fit only the eigenvalues above ``thresh``, and only when at least
            ``min_evals`` are.

    Returns:
        alpha as float; NaN when fewer than ``min_evals`` eigenvalues are above ``thresh``.
    """
    x = np.sort(np.asarray(evals, dtype=np.float64))
    x = x[x > thresh]
    n = len(x)
    if n < max(min_evals, 2):
        return float("nan")
    logx = np.log(x)
    alphas, dists = np.zeros(n - 1), np.ones(n - 1)
    with np.errstate(divide="ignore"):  # a tail of equal values: alpha inf, as WeightWatcher's
        for i in range(n - 1):  # sums per tail as WeightWatcher writes them (np.sum of a slice)
            m = n - i
            alphas[i] = 1 + m / (np.sum(logx[i:]) - m * logx[i])
            if alphas[i] > 1:
                dists[i] = np.max(np.abs(1 - (x[i:] / x[i]) ** (1 - alphas[i]) - np.arange(m) / m))
    return float(alphas[np.argmin(dists)])
