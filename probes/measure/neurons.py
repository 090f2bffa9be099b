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
        """How many directions were found."""
        return len(self.angles)

    @property
    def n_lines(self) -> int:
        """How many lines they form (a pair of opposite directions is one line)."""
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


MULTIPLICITY_ONE = ("tanh", "sigmoid", "softplus")
# the initial stage ends at the probe before the training loss first falls below this share of
# its value at step 0 (the residual is then no longer the target)
INITIAL_LOSS_RATIO = 0.99


def loss_fell(loss, loss0, ratio: float = INITIAL_LOSS_RATIO):
    """Whether the training loss has left the initial stage: ``loss < ratio * loss0``.

    The initial-condensation analysis (Zhou et al., NeurIPS 2022, arXiv 2105.11686) holds while the
    output is still ~0, so that the residual is the target; once the loss falls, the first neurons
    to escape take over the fit. The initial stage ends at the probe before the first one at which
    this is true (the last probe when it never is). The one rule both the training loop and the
    report tables apply.

    Args:
        loss: the training loss at a probe (float or array of them); loss0: at step 0.
        ratio: in (0, 1].

    Returns:
        bool, or a bool array for an array of losses.
    """
    return loss < ratio * loss0


def early_directions(inputs, target, activation: str, min_rel: float = 0.5,
                     n_grid: int = 3600) -> np.ndarray:
    """Directions of (w, b) that the initial-stage dynamics favour, in closed form.

    From a small initialization the output is ~0, so the residual is the target y and each
    neuron's (w, b) follows the first non-vanishing term of sigma at 0 (Zhou et al., NeurIPS 2022,
    arXiv 2105.11686), with x~ = (x, 1) and means over the training points:

    - tanh, sigmoid, softplus (sigma'(0) != 0): d(w, b)/dt ~ a sigma'(0) E[y x~], so every neuron
      moves along +-m, m = E[y x~]: one line, two opposite directions;
    - x tanh(x) (~ z^2 at 0): d(w, b)/dt ~ 2 a M (w, b), M = E[y x~ x~^T]: neurons with a > 0
      grow along the top eigenvector of M (when its eigenvalue is > 0), a < 0 along the bottom
      one (when < 0): two lines when M is indefinite;
    - relu (1-homogeneous): a neuron of angle t grows at rate ~ |F(t)|, F(t) = E[y relu(cos t x +
      sin t)], and turns toward a local maximum of F (a > 0) or minimum (a < 0): the directions
      are the local extrema of F with |F| >= ``min_rel`` times the largest |F|.

    Args:
        inputs: (n,) or (n, 1) scalar inputs x of the training points.
        target: (n,) or (n, 1) targets y.
        activation: one of relu, tanh, sigmoid, softplus, xtanh.
        min_rel: relu only, the smallest |F| of an extremum kept, relative to max |F|, in (0, 1].
        n_grid: relu only, angles on which F is evaluated.

    Returns:
        (k,) angles in [-pi, pi), sorted: both directions of each predicted line (tanh family,
        x tanh x), or the kept extrema of F (relu).

    Raises:
        ValueError: an unknown activation, inputs that are not scalar, or a length mismatch.
    """
    x = np.asarray(inputs, dtype=np.float64).reshape(len(inputs), -1)
    y = np.asarray(target, dtype=np.float64).reshape(-1)
    if x.shape[1] != 1 or len(y) != len(x):
        raise ValueError(f"inputs {x.shape} and target {y.shape}: accepted are n scalar inputs "
                         f"and n targets")
    xt = np.column_stack([x[:, 0], np.ones(len(x))])
    if activation in MULTIPLICITY_ONE:
        m = (y[:, None] * xt).mean(0)
        angles = [np.arctan2(m[1], m[0])] * 2 + np.array([0.0, np.pi])
    elif activation == "xtanh":
        vals, vecs = np.linalg.eigh((y[:, None, None] * xt[:, :, None] * xt[:, None, :]).mean(0))
        keep = [i for i, v in ((1, vals[1]), (0, -vals[0])) if v > 0]
        angles = [np.arctan2(vecs[1, i], vecs[0, i]) + s for i in keep for s in (0.0, np.pi)]
    elif activation == "relu":
        t = np.linspace(-np.pi, np.pi, n_grid, endpoint=False)
        f = (y[None] * np.maximum(np.outer(np.cos(t), xt[:, 0]) + np.sin(t)[:, None], 0)).mean(1)
        prev, after = np.roll(f, 1), np.roll(f, -1)
        extremum = ((f > prev) & (f >= after) & (f > 0)) | ((f < prev) & (f <= after) & (f < 0))
        angles = t[extremum & (np.abs(f) >= min_rel * np.abs(f).max())]
    else:
        raise ValueError(f"activation={activation!r}: accepted are relu, tanh, sigmoid, softplus, "
                         f"xtanh")
    return np.sort(np.mod(np.asarray(angles) + np.pi, 2 * np.pi) - np.pi)
