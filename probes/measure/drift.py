"""How far a unit set has moved from a reference (its initialization, or a base model): the
relative distance RD of the whole matrix (Luo, Xu, Ma, Zhang, JMLR 2021; ``metrics.
relative_distance``, as the training probes report it) and each unit's angle to its own
direction in the reference.

RD says how much the weights moved; the angles say whether the units turned or only grew: in
the condensed (small-initialization) regime units turn far from their random starting
directions while RD is large, in the linear (NTK-like) regime RD is small and so are the angles.
"""

from __future__ import annotations

import numpy as np

from probes.measure.metrics import relative_distance
from probes.measure.result import metric_row

RD = "rd"  # as the training probes name it (probes.measure.series)
ANGLE_MEAN, ANGLE_MEDIAN, ANGLE_MAX = "angle_mean", "angle_median", "angle_max"
DRIFT_METRICS = (RD, ANGLE_MEAN, ANGLE_MEDIAN, ANGLE_MAX)


def unit_angles(units, units0) -> np.ndarray:
    """The angle between each unit and the same unit in the reference, in degrees.

    Computed as 2 atan2(|a - b|, |a + b|) of the unit vectors a, b (Kahan): exact to rounding
    also near 0 and 180 degrees, where arccos of the cosine loses half the digits.

    Args:
        units: (n_units, dim) the units now; units0: (n_units, dim) the same units in the
            reference, row for row.

    Returns:
        (n_units,) float64 in [0, 180]; NaN where either row is zero (no direction).

    Raises:
        ValueError: shapes that differ or are not 2-D.
    """
    a, b = np.asarray(units, dtype=np.float64), np.asarray(units0, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"units {a.shape} and units0 {b.shape}: accepted are two (n_units, dim) "
                         f"arrays of the same shape")
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    ok = (na > 0) & (nb > 0)
    a = a[ok] / na[ok, None]
    b = b[ok] / nb[ok, None]
    out = np.full(len(ok), np.nan)
    out[ok] = np.degrees(2 * np.arctan2(np.linalg.norm(a - b, axis=1), np.linalg.norm(a + b, axis=1)))
    return out


def drift(units, units0) -> list[tuple[str, float, int]]:
    """RD and the angle summary of one unit set against its reference.

    Args:
        units, units0: (n_units, dim) the set now and in the reference (same shape).

    Returns:
        (metric, value, units behind it) triples, metrics in ``DRIFT_METRICS`` order: ``rd``
        over the whole matrix (all n_units); ``angle_mean``, ``angle_median``, ``angle_max`` in
        degrees over the units with a direction on both sides (NaN when none).

    Raises:
        ValueError: shapes that differ.
    """
    angles = unit_angles(units, units0)
    angles = angles[np.isfinite(angles)]
    n = len(angles)
    stats = (angles.mean(), np.median(angles), angles.max()) if n else (np.nan,) * 3
    return [(RD, relative_distance(units, units0), len(np.asarray(units))),
            *((name, float(v), n) for name, v in zip(DRIFT_METRICS[1:], stats))]


def drift_rows(values: list[tuple[str, float, int]], base: dict, n_units: int) -> list[dict]:
    """metrics.csv rows of ``drift``'s triples.

    Args:
        values: ``drift``'s output; base: the rows' identity (run_id, step, layer, component,
            head, basis); n_units: the ``rd`` row's n_units, the fit's kept units as the training
            probes write it (the angle rows carry the units with a measured angle).
    """
    return [metric_row(**base, metric=m, value=v, n_units=n_units if m == RD else n)
            for m, v, n in values]
