"""Lineage of condensed groups over training: how the groups of one unit set at one probe step
descend from the groups of the same units at the previous probe step.

The rule, written once (``transition``):

- A *condensed group* is a group of >= 2 units (``Condensation.labels_`` at a threshold tau). A
  singleton is a unit that has condensed with nothing: it is no condensed group, so it is never
  born, never dies, never splits or merges. (Counting singletons would make every unit that
  leaves a group a "birth" and turn the random initialization, n singletons, into n groups.)
- An old condensed group H (previous step) and a new condensed group G (this step) are *linked*
  when a strict majority of the smaller of the two lies in both: |H n G| > min(|H|, |G|) / 2,
  i.e. their overlap coefficient (Szymkiewicz-Simpson) exceeds 1/2. Then either most of G came
  from H, or most of H went into G. (Jaccard > 1/2 would miss every even merge: two groups of 5
  joining into one of 10 have Jaccard exactly 1/2 with it. The strict inequality keeps one unit
  of a 2-unit group from linking it to two groups.)
- Per old group: no link = a *death* (its members scattered or became singletons); >= 2 links =
  a *split*. Per new group: no link = a *birth*; >= 2 links = a *merge* (a small group absorbed
  into a large one counts too). A linked pair in which both have exactly one link is
  *continued*. An exact half links nothing: two groups that exchange half of their members are
  two deaths and two births (neither new group is mostly either old one, nor holds most of it).

The groups of every step come from the same unit set (same units, same order). A step at which
``Condensation`` dropped units (zero norm) has labels for the kept units only: its transitions,
in and out, are left blank rather than guessed.

``count_trend`` answers the overview's claim (Xu, Zhang, Zhou, arXiv 2504.09484) that the number
of condensed clusters typically grows during training: the share of probe-to-probe transitions at
which a count rises, and Spearman's rho of the count against the step.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy.stats import spearmanr

from probes.measure.result import lineage_row


@dataclass
class Transition:
    """What became of the condensed groups from one step to the next (see the module's rule).

    births, deaths, splits, merges, continued: counts (see the rule); links: (m, 2) int array of
    linked (old label, new label) pairs, in order of the old label; n_old, n_new: condensed
    groups at the previous and at this step.
    """

    births: int
    deaths: int
    splits: int
    merges: int
    continued: int
    links: np.ndarray
    n_old: int
    n_new: int


def _labels(labels, name: str) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.ndim != 1 or not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"{name} must be a 1-D integer array of group ids (one per unit), got "
                         f"dtype {lab.dtype} and shape {lab.shape}")
    return lab


def transition(prev, cur) -> Transition:
    """Match the condensed groups of ``cur`` to those of ``prev`` by member overlap.

    Args:
        prev, cur: (n_units,) integer group ids of the same units at the previous and at this
            step (any integers; equal ids = one group), e.g. ``Condensation.labels_[tau]``.

    Returns:
        the ``Transition`` (rule: module docstring).

    Raises:
        ValueError: labels not 1-D integer arrays, or of different lengths.
    """
    prev, cur = _labels(prev, "prev"), _labels(cur, "cur")
    if prev.shape != cur.shape:
        raise ValueError(f"prev has {len(prev)} units and cur {len(cur)}: accepted are the labels "
                         f"of the same units at two steps")
    old_ids, p = np.unique(prev, return_inverse=True)
    new_ids, c = np.unique(cur, return_inverse=True)
    size_p, size_c = np.bincount(p, minlength=len(old_ids)), np.bincount(c, minlength=len(new_ids))
    # the overlap |H n G| of every (old, new) pair that shares a unit, without a k_old x k_new table
    pair, overlap = np.unique(p.astype(np.int64) * len(new_ids) + c, return_counts=True)
    h, g = np.divmod(pair, len(new_ids))
    link = ((size_p[h] >= 2) & (size_c[g] >= 2)
            & (2 * overlap > np.minimum(size_p[h], size_c[g])))
    out_deg = np.bincount(h[link], minlength=len(old_ids))
    in_deg = np.bincount(g[link], minlength=len(new_ids))
    old, new = size_p >= 2, size_c >= 2
    one_to_one = link & (out_deg[h] == 1) & (in_deg[g] == 1)
    return Transition(births=int((new & (in_deg == 0)).sum()),
                      deaths=int((old & (out_deg == 0)).sum()),
                      splits=int((out_deg >= 2).sum()), merges=int((in_deg >= 2).sum()),
                      continued=int(one_to_one.sum()),
                      links=np.stack([old_ids[h[link]], new_ids[g[link]]], axis=1),
                      n_old=int(old.sum()), n_new=int(new.sum()))


def n_condensed(labels) -> int:
    """Condensed groups (>= 2 units) among ``labels``, (n_units,) integer group ids."""
    _, sizes = np.unique(_labels(labels, "labels"), return_counts=True)
    return int((sizes >= 2).sum())


@dataclass
class CountTrend:
    """How a group count moves over training. n_steps: probe steps; rise_share, fall_share: share
    of the n_steps - 1 transitions at which the count rises, falls (NaN with < 2 steps);
    spearman_rho, spearman_p: Spearman's rank correlation of the count with the step and its
    two-sided p-value (NaN with < 3 steps or a constant count)."""

    n_steps: int
    rise_share: float
    fall_share: float
    spearman_rho: float
    spearman_p: float


def count_trend(steps, counts) -> CountTrend:
    """The trend of a group count over training (``CountTrend``).

    Args:
        steps: (n,) probe steps, increasing; counts: (n,) the count at each step (e.g.
            ``n_groups`` or ``n_condensed`` of lineage.csv).

    Raises:
        ValueError: shapes that differ or are not 1-D, steps not strictly increasing, or counts
            that are not finite.
    """
    s, y = np.asarray(steps, dtype=float), np.asarray(counts, dtype=float)
    if s.ndim != 1 or s.shape != y.shape:
        raise ValueError(f"steps {s.shape} and counts {y.shape} must be 1-D of one length")
    if np.any(np.diff(s) <= 0) or not np.isfinite(y).all():
        raise ValueError("accepted are strictly increasing steps and finite counts")
    nan = float("nan")
    d = np.diff(y)
    rise, fall = (float((d > 0).mean()), float((d < 0).mean())) if len(d) else (nan, nan)
    rho = p = nan
    if len(y) >= 3 and np.ptp(y) > 0:
        with warnings.catch_warnings():  # a p-value from 3 points: scipy warns, the value stands
            warnings.simplefilter("ignore")
            rho, p = (float(v) for v in spearmanr(s, y))
    return CountTrend(len(y), rise, fall, rho, p)


class LineageTracker:
    """The lineage.csv rows of one run, step after step (``probes.measure.series.SeriesProbe``).

    Only the previous step's labels of each unit set are kept: (n_units,) ints per threshold.

    Args:
        run_id: the rows' run id.
    """

    def __init__(self, run_id: str):
        self.run_id = run_id
        self.last: dict[tuple, tuple[int, dict | None]] = {}  # (layer, component, head) -> step, labels

    def rows(self, fit, n_units: int, where: dict) -> list[dict]:
        """lineage.csv rows of one fitted unit set at one step, one per threshold.

        Args:
            fit: the set's fitted ``Condensation``; n_units: units given to it (kept + dropped);
            where: the set's step, layer, component and head (other keys are ignored).

        Raises:
            ValueError: a set whose number of units changed since its previous step (a set whose
                membership changes has no lineage: leave it out).
        """
        step, key = where["step"], (where["layer"], where["component"], where["head"])
        whole = fit.n_units_ == n_units  # labels cover every unit: comparable across steps
        labels = {t: np.asarray(lab) for t, lab in fit.labels_.items()} if whole else None
        prev_step, prev = self.last.get(key, (None, None))
        out = []
        for tau in fit.thresholds:
            moved = None
            if labels is not None and prev is not None and tau in prev:
                moved = transition(prev[tau], labels[tau])
            out.append(lineage_row(run_id=self.run_id, step=step, prev_step=prev_step,
                                   layer=key[0], component=key[1], head=key[2],
                                   threshold=tau, n_units=fit.n_units_,
                                   n_groups=fit.n_groups_[tau],
                                   n_condensed=n_condensed(fit.labels_[tau]), moved=moved))
        self.last[key] = (step, labels)
        return out

    def state_dict(self) -> list[dict]:
        """The previous step's labels as plain data (lists), for a resumable training state."""
        return [dict(key=list(k), step=s, labels=None if lab is None else
                     [[float(t), v.tolist()] for t, v in lab.items()])
                for k, (s, lab) in self.last.items()]

    def load_state_dict(self, state: list[dict]) -> None:
        self.last = {tuple(e["key"]): (e["step"], None if e["labels"] is None else
                                       {t: np.asarray(v) for t, v in e["labels"]})
                     for e in state}
