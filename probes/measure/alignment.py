"""Did two runs, or two steps of one run, find the same directions? Two measures, both pure numpy
and scipy:

- ``match_groups`` (``align_groups`` from units and labels): the condensed groups of two unit
  sets matched one to one by the Hungarian algorithm (``scipy.optimize.linear_sum_assignment``)
  on the cosine similarity of their group centroids (``group_centroids``). Unit vectors can
  only be compared where they live in one coordinate system: two steps of one run, or layers
  that read the same fixed input features (the first layer of two-layer nets on the same
  inputs). Two transformer runs have different embeddings, so their W_Q rows sit in different
  residual-stream bases and a centroid cosine between them means nothing; compare their
  activations with CKA instead.
- ``linear_cka``: linear centered kernel alignment between the activations of two layers on
  the same inputs (Kornblith, Norouzi, Lee, Hinton, ICML 2019, arXiv 1905.00414), by default
  debiased: HSIC replaced by its unbiased estimator (Song, Smola, Gretton, Bedo, Borgwardt,
  JMLR 2012, eq. 5), as in Nguyen, Raghu, Kornblith (ICLR 2021, arXiv 2010.15327). Invariant
  to orthogonal maps and isotropic scaling of either side, not to other invertible linear maps.

``group_alignment`` gives the rows of one unit set pair for ``align.csv``; the metric names are
``ALIGN_METRICS``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

MATCHED_SHARE, MEAN_MATCHED_COS = "matched_share", "mean_matched_cos"
N_CONDENSED_A, N_CONDENSED_B, CKA = "n_condensed_a", "n_condensed_b", "cka"
ALIGN_METRICS = (MATCHED_SHARE, MEAN_MATCHED_COS, N_CONDENSED_A, N_CONDENSED_B, CKA)


def _matrix(a, name: str) -> np.ndarray:
    m = np.asarray(a, dtype=np.float64)
    if m.ndim != 2 or not np.isfinite(m).all():
        raise ValueError(f"{name} must be a finite 2-D array, got shape {m.shape}"
                         + ("" if m.ndim != 2 else " with NaN or inf"))
    return m


def _unit_rows(m: np.ndarray, name: str) -> np.ndarray:
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError(f"{name} has {int((norms == 0).sum())} zero rows: accepted are rows "
                         f"with a direction")
    return m / norms


def group_centroids(units, labels, min_size: int = 2,
                    antipodal: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The direction of each group: the mean of its members' unit vectors, normalized.

    Args:
        units: (n_units, dim) unit rows (any nonzero norms: each is normalized first, so a
            large unit does not outweigh the others); labels: (n_units,) integer group ids
            (e.g. ``Condensation.labels_[tau]``); min_size: groups smaller than this are left out
            (2: condensed groups only).
        antipodal: groups made with |cosine| (v and -v in one group): each member is first
            turned to the side of the group's leading singular vector, so that v and -v add up
            instead of cancelling; the centroid's own sign is then arbitrary (match with
            ``antipodal=True`` too).

    Returns:
        (centroids (k, dim) float64 of norm 1, ids (k,) the group id of each row, ascending).

    Raises:
        ValueError: shapes that do not fit, non-finite or zero units, non-integer labels.
    """
    u = _unit_rows(_matrix(units, "units"), "units")
    lab = np.asarray(labels)
    if lab.shape != (len(u),) or not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"labels must be ({len(u)},) integers, got {lab.dtype} {lab.shape}")
    ids, sizes = np.unique(lab, return_counts=True)
    ids = ids[sizes >= min_size]
    out = np.zeros((len(ids), u.shape[1]))
    for k, gid in enumerate(ids):
        members = u[lab == gid]
        if antipodal:
            lead = np.linalg.svd(members, full_matrices=False)[2][0]
            members = members * np.where(members @ lead < 0, -1.0, 1.0)[:, None]
        out[k] = members.mean(axis=0)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.where(norms > 0, norms, 1.0), ids


@dataclass
class GroupMatch:
    """Hungarian matching of two sets of group centroids.

    pairs: (m, 2) int row indices (into a, into b), m = min(k_a, k_b), in order of a's row;
    cosines: (m,) the matched pairs' cosine similarities (with ``antipodal``: |cosine|);
    signs: (m,) +1, or -1 where b's centroid matched a's turned around (``antipodal`` only);
    matched_share: pairs with cosine >= threshold / max(k_a, k_b) (NaN when both are empty);
    mean_cosine: mean of ``cosines`` (NaN when m = 0); k_a, k_b: groups on each side.
    """

    pairs: np.ndarray
    cosines: np.ndarray
    signs: np.ndarray
    matched_share: float
    mean_cosine: float
    k_a: int
    k_b: int


def match_groups(centroids_a, centroids_b, threshold: float = 0.9,
                 antipodal: bool = False) -> GroupMatch:
    """Match the groups of two unit sets one to one, maximizing the summed centroid cosine.

    Args:
        centroids_a: (k_a, dim), centroids_b: (k_b, dim) group directions in one coordinate
            system (``group_centroids``; rows are normalized here again); threshold: cosine in
            (0, 1] at which a matched pair counts as the same direction; antipodal: v and -v are
            one direction (odd activations: compare |cosine|).

    Returns:
        the ``GroupMatch``: a group with no partner (the larger side's surplus) or one whose
        partner is below ``threshold`` is unmatched, so matched_share = 1 only when both sides
        have the same number of groups and each finds its own.

    Raises:
        ValueError: not finite 2-D arrays, dims that differ, zero rows, threshold not in (0, 1].
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold={threshold} is invalid: accepted is a cosine in (0, 1]")
    a, b = _matrix(centroids_a, "centroids_a"), _matrix(centroids_b, "centroids_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"centroids of dim {a.shape[1]} and {b.shape[1]}: accepted are "
                         f"directions in one space")
    cos = np.clip(_unit_rows(a, "centroids_a") @ _unit_rows(b, "centroids_b").T, -1.0, 1.0)
    score = np.abs(cos) if antipodal else cos
    rows, cols = linear_sum_assignment(score, maximize=True)
    matched = score[rows, cols]
    signs = np.where(antipodal & (cos[rows, cols] < 0), -1, 1)
    k = max(len(a), len(b))
    # a cosine computed as 1 - 1e-16 still counts at threshold 1
    hits = int((matched >= threshold - 1e-12).sum())
    return GroupMatch(pairs=np.stack([rows, cols], axis=1), cosines=matched, signs=signs,
                      matched_share=hits / k if k else float("nan"),
                      mean_cosine=float(matched.mean()) if len(matched) else float("nan"),
                      k_a=len(a), k_b=len(b))


def _cross(a: np.ndarray, b: np.ndarray) -> float:
    """||a^T b||_F^2 = tr(a a^T b b^T) for a (n, p), b (n, q): by whichever product is smaller."""
    if len(a) < min(a.shape[1], b.shape[1]):
        return float(np.sum((a @ a.T) * (b @ b.T)))
    return float(np.sum((a.T @ b) ** 2))


def _hsic(x: np.ndarray, y: np.ndarray, debiased: bool) -> float:
    """HSIC of the linear kernels K = x x^T, L = y y^T of column-centered x (n, p), y (n, q),
    up to a factor that is the same for every pair and cancels in CKA.

    Biased: tr(K H L H) = ||x^T y||_F^2. Unbiased (Song et al. 2012, eq. 5), with K~, L~ the
    kernels with their diagonals set to 0:
    [tr(K~ L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~ L~1] / (n (n-3)).
    """
    xy = _cross(x, y)
    if not debiased:
        return xy
    n = len(x)
    kd, ld = np.einsum("ij,ij->i", x, x), np.einsum("ij,ij->i", y, y)
    k1 = x @ x.sum(axis=0) - kd  # K~ 1
    l1 = y @ y.sum(axis=0) - ld
    trace = xy - kd @ ld
    return (trace + k1.sum() * l1.sum() / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * (k1 @ l1)) / (n * (n - 3))


def linear_cka(x, y, debiased: bool = True) -> float:
    """Linear CKA between two representations of the same n inputs.

    CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) with K = X X^T, L = Y Y^T of the
    column-centered activations (Kornblith et al. 2019, eq. 4 with a linear kernel). Biased:
    ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F), which is > 0 even for independent X and Y at
    finite n; debiased (default): each HSIC by the unbiased estimator (Song et al. 2012),
    near 0 for independent X and Y, and may come out slightly negative.

    Args:
        x: (n, p) activations (rows = inputs); y: (n, q) activations of the same inputs in the
            same order; debiased: use the unbiased HSIC.

    Returns:
        CKA as a float (1 for y = x Q, Q orthogonal, times any scale); NaN when a side is
        constant over the inputs, or (debiased) a self-HSIC estimate is not positive.

    Raises:
        ValueError: not finite 2-D arrays, different numbers of rows, n < 4 when debiased
            (the estimator divides by n - 3) or n < 2.
    """
    a, b = _matrix(x, "x"), _matrix(y, "y")
    if len(a) != len(b):
        raise ValueError(f"x has {len(a)} rows and y {len(b)}: accepted are the activations of "
                         f"the same inputs")
    least = 4 if debiased else 2
    if len(a) < least:
        raise ValueError(f"n={len(a)} inputs: accepted are at least {least}")
    if min(a.shape[1], b.shape[1]) == 0 or np.ptp(a, axis=0).max() == 0 \
            or np.ptp(b, axis=0).max() == 0:  # a constant side: centered, it is all zero
        return float("nan")
    a, b = a - a.mean(axis=0), b - b.mean(axis=0)
    xx, yy = _hsic(a, a, debiased), _hsic(b, b, debiased)
    if not (xx > 0 and yy > 0):
        return float("nan")
    return float(_hsic(a, b, debiased) / np.sqrt(xx * yy))


def align_groups(units_a, labels_a, units_b, labels_b, threshold: float = 0.9,
                 min_size: int = 2, antipodal: bool = False) -> tuple[GroupMatch, np.ndarray]:
    """Match the condensed groups of two unit sets in one coordinate system (two steps of a run,
    or first layers that read the same inputs): ``group_centroids`` of each, then
    ``match_groups``.

    Args:
        units_a: (n_a, dim), labels_a: (n_a,) and units_b: (n_b, dim), labels_b: (n_b,) the
            units and their group ids (e.g. ``Condensation.labels_[tau]`` of each fit); the
            two sets need not have the same units. threshold, antipodal: as ``match_groups``;
            min_size: as ``group_centroids`` (2: condensed groups only).

    Returns:
        (the ``GroupMatch``, (m, 2) the matched pairs as (group id in a, group id in b)).

    Raises:
        ValueError: as ``group_centroids`` and ``match_groups``.
    """
    cent_a, ids_a = group_centroids(units_a, labels_a, min_size, antipodal)
    cent_b, ids_b = group_centroids(units_b, labels_b, min_size, antipodal)
    found = match_groups(cent_a, cent_b, threshold, antipodal)
    return found, np.stack([ids_a[found.pairs[:, 0]], ids_b[found.pairs[:, 1]]], axis=1)


def group_alignment(units_a, labels_a: dict, units_b, labels_b: dict,
                    antipodal: bool = False) -> list[tuple[str, float, float]]:
    """The condensed groups of two unit sets matched at each threshold (``align_groups``, the
    threshold tau both cutting the groups and deciding a match).

    Args:
        units_a: (n_a, dim) kept units of a; labels_a: {tau: (n_a,) group ids} (e.g.
            ``Condensation.labels_``, whose rows are ``units[fit.kept_]``); units_b, labels_b:
            likewise for b (n_b may differ, dim may not), with the same thresholds;
            antipodal: as ``match_groups``.

    Returns:
        (metric, tau, value) for each tau: ``matched_share`` (groups matched with centroid
        cosine >= tau / the larger number of condensed groups; NaN when neither side has one),
        ``mean_matched_cos`` (over the min(k_a, k_b) assigned pairs, those below tau
        included; NaN without pairs), ``n_condensed_a``,
        ``n_condensed_b`` (groups of >= 2 units).

    Raises:
        ValueError: thresholds that differ, or as ``align_groups``.
    """
    if set(labels_a) != set(labels_b):
        raise ValueError(f"thresholds {sorted(labels_a)} and {sorted(labels_b)}: accepted are the "
                         f"same thresholds on both sides")
    out = []
    for tau in labels_a:
        found, _ = align_groups(units_a, labels_a[tau], units_b, labels_b[tau], threshold=tau,
                                antipodal=antipodal)
        out += [(MATCHED_SHARE, tau, found.matched_share), (MEAN_MATCHED_COS, tau, found.mean_cosine),
                (N_CONDENSED_A, tau, float(found.k_a)), (N_CONDENSED_B, tau, float(found.k_b))]
    return out
