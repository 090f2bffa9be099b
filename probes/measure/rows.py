"""The metrics.csv rows of one fitted unit set, built in one place for both measuring paths: the
series probe of training and ``measure`` (``probes.measure.series``) and the checkpoint probe
(``probes.checkpoint.probe``)."""

from __future__ import annotations

from probes.measure.chance import chance_rows
from probes.measure.drift import drift_rows
from probes.measure.metrics import metric_rows


def unit_set_rows(fit, chance, where: dict, drift=None) -> list[dict]:
    """Rows of one unit set: its condensation (``metric_rows``: Xu, Zhang, Zhou, arXiv
    2504.09484), its chance level (``chance_rows``) and, when given its ``drift`` from a
    reference, the relative distance and the unit angles (``drift_rows``; Luo, Xu, Ma, Zhang,
    JMLR 2021).

    Args:
        fit: a fitted ``Condensation``; chance: its fitted chance baselines
            (``chance_baselines``; empty: none); where: the rows' run_id, step, layer, component,
            head and basis; drift: ``probes.measure.drift.drift`` of the set, or None.

    Returns:
        metrics.csv rows in that order.
    """
    rows = metric_rows(fit, where) + chance_rows(chance, where)
    if drift is not None:
        rows += drift_rows(drift, where, fit.n_units_)
    return rows
