"""Per-neuron features of a two-layer net with 1-D input, and the condensed directions they show.

For f(x) = sum_k a_k sigma(w_k x + b_k) with scalar x, neuron k's input weights (w_k, b_k) are a
point of the plane; the condensation papers draw each neuron by its orientation, the angle of
(w_k, b_k), and its amplitude |a_k| * |(w_k, b_k)| (Luo et al., JMLR 2021, Fig. 3; Zhou et al.,
NeurIPS 2022, arXiv 2105.11686; Xu, Zhang, Zhou, arXiv 2504.09484). Condensed neurons pile up on
a few angles; ``count_directions`` counts them from the amplitude-weighted angle histogram, and
groups directions that are opposite (differ by pi) into lines: early in training from a small
initialization, tanh gives one line (two opposite directions), x tanh(x) two lines, ReLU three
directions of which two are opposite (arXiv 2105.11686: at most twice the multiplicity of the
activation at 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def orientation(units) -> np.ndarray:
    """Angle of each neuron's (w, b) in [-pi, pi).

    Args:
        units: (n, 2) array-like, rows (w_k, b_k) (input weight, then bias).

    Returns:
        (n,) float64 angles theta with (w, b) = |(w, b)| (cos theta, sin theta); the angle of
        (w, b) = (-1, 0) is -pi. A zero row has angle 0.

    Raises:
        ValueError: ``units`` is not (n, 2).
    """
    u = np.asarray(units, dtype=np.float64)
    if u.ndim != 2 or u.shape[1] != 2:
        raise ValueError(f"units must be (n, 2) rows (w, b) of a 1-D input layer, got {u.shape}")
    theta = np.arctan2(u[:, 1], u[:, 0])
    return np.where(theta >= np.pi, theta - 2 * np.pi, theta)


def amplitude(units, out_weights) -> np.ndarray:
    """|a_k| * |(w_k, b_k)|: the size of neuron k's contribution to the output.

    Args:
        units: (n, d + 1) input weights with the bias last.
        out_weights: (n,) output weights a_k, or (out_dim, n) (|a_k| is then the norm of
            column k).

    Returns:
        (n,) float64 amplitudes.

    Raises:
        ValueError: the numbers of neurons differ.
    """
    u = np.asarray(units, dtype=np.float64)
    a = np.asarray(out_weights, dtype=np.float64)
    a = np.abs(a) if a.ndim == 1 else np.linalg.norm(a, axis=0)
    if len(a) != len(u):
        raise ValueError(f"{len(u)} neurons but {len(a)} output weights")
    return a * np.linalg.norm(u, axis=1)


@dataclass
class Directions:
    """Condensed directions found in an angle histogram.

    Attributes:
        angles: (n_directions,) amplitude-weighted circular mean angle of each direction.
        shares: (n_directions,) share of the total amplitude in each direction.
        lines: (n_directions,) line id of each direction (opposite directions share one).
    """

    angles: np.ndarray
    shares: np.ndarray
    lines: np.ndarray

    @property
    def n_directions(self) -> int:
        return len(self.angles)

    @property
    def n_lines(self) -> int:
        return len(set(self.lines.tolist()))


def count_directions(angles, weights=None, n_bins: int = 36, min_share: float = 0.05,
                     opposite_tol: float | None = None) -> Directions:
    """Condensed directions: the peaks of the amplitude-weighted angle histogram.

    The circle [-pi, pi) is cut into ``n_bins`` bins; a bin is occupied when it holds at least
    twice its uniform share (2 / n_bins) of the total weight. A direction is a maximal circular run
    of occupied bins holding at least ``min_share`` of the total weight. Two directions are
    opposite, and form one line, when their mean angles differ by pi within ``opposite_tol``
    (default: two bins).

    Args:
        angles: (n,) angles in radians (any range; taken mod 2 pi).
        weights: (n,) non-negative weights (amplitudes); default 1 each.
        n_bins: histogram bins (>= 4).
        min_share: smallest share of the total weight a direction holds, in (0, 1].

    Returns:
        ``Directions``; none when the total weight is 0.

    Raises:
        ValueError: n_bins < 4, min_share outside (0, 1], NaN / inf, negative weights or a shape
            mismatch.
    """
    a = np.mod(np.asarray(angles, dtype=np.float64) + np.pi, 2 * np.pi) - np.pi
    w = np.ones_like(a) if weights is None else np.asarray(weights, dtype=np.float64)
    if n_bins < 4 or not 0 < min_share <= 1:
        raise ValueError(f"n_bins={n_bins}, min_share={min_share}: accepted are n_bins >= 4 and "
                         f"min_share in (0, 1]")
    if not (np.isfinite(a).all() and np.isfinite(w).all()):
        raise ValueError("angles and weights must be finite")
    if w.shape != a.shape or (w < 0).any():
        raise ValueError("weights must be non-negative and match angles in shape")
    empty = Directions(np.zeros(0), np.zeros(0), np.zeros(0, dtype=int))
    total = w.sum()
    if total <= 0:
        return empty
    bins = np.minimum(((a + np.pi) / (2 * np.pi) * n_bins).astype(int), n_bins - 1)
    hist = np.bincount(bins, weights=w, minlength=n_bins) / total
    occupied = hist >= 2.0 / n_bins
    if occupied.all():
        return empty  # weight everywhere: no isolated direction
    start = int(np.argmin(occupied))  # an empty bin: runs never wrap past it
    runs, current = [], []
    for i in range(start, start + n_bins):
        b = i % n_bins
        if occupied[b]:
            current.append(b)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    means, shares = [], []
    for run in runs:
        share = hist[run].sum()
        if share < min_share:
            continue
        inside = np.isin(bins, run)
        means.append(np.angle(np.sum(w[inside] * np.exp(1j * a[inside]))))
        shares.append(share)
    means, shares = np.array(means), np.array(shares)
    tol = 2 * (2 * np.pi / n_bins) if opposite_tol is None else opposite_tol
    lines = np.arange(len(means))
    for i in range(len(means)):
        for j in range(i):
            gap = abs(np.angle(np.exp(1j * (means[i] - means[j]))))  # in [0, pi]
            if np.pi - gap <= tol and lines[j] == j:
                lines[i] = j
                break
    return Directions(means, shares, lines)
