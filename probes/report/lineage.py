"""The lineage tables of an experiment: lineage_summary.csv from lineage.csv
(``probes.measure.lineage``), and its figure.

lineage_summary.csv has one row per (run, unit set, threshold, count): how the group count moved
over the run's probe steps (``measure.lineage.count_trend``), to test the claim of Xu, Zhang,
Zhou (arXiv 2504.09484) that the number of condensed clusters typically grows during training.
``count`` is ``n_groups`` (every group, singletons included, as metrics.csv) or ``n_condensed``
(groups of >= 2 units).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from probes.measure.lineage import count_trend
from probes.measure.result import LINEAGE_EVENTS
from probes.report.figures.lineage import lineage_over_training
from probes.store import write_csv

SUMMARY_KEYS = ["run_id", "layer", "component", "head", "threshold"]
SUMMARY_COLUMNS = [*SUMMARY_KEYS, "count", "n_steps", "first", "last", "rise_share", "fall_share",
                   "spearman_rho", "spearman_p", *LINEAGE_EVENTS[:4]]
COUNTS = ("n_groups", "n_condensed")


def lineage_summary(lineage: pd.DataFrame) -> pd.DataFrame:
    """One row per (run_id, layer, component, head, threshold, count) of a lineage.csv frame.

    Columns (SUMMARY_COLUMNS): n_steps (probe steps), first and last (the count at the first and
    the last probe), rise_share, fall_share, spearman_rho, spearman_p (``CountTrend``), and the
    births, deaths, splits and merges summed over the run's transitions.

    Raises:
        ValueError: a unit set whose steps repeat (``count_trend``).
    """
    rows = []
    for key, g in lineage.groupby(SUMMARY_KEYS, dropna=False, sort=False):
        g = g.sort_values("step")
        events = {e: int(g[e].sum()) for e in LINEAGE_EVENTS[:4]}
        for count in COUNTS:
            trend = count_trend(g["step"], g[count])
            rows.append(dict(zip(SUMMARY_KEYS, key), count=count, n_steps=trend.n_steps,
                             first=int(g[count].iloc[0]), last=int(g[count].iloc[-1]),
                             rise_share=trend.rise_share, fall_share=trend.fall_share,
                             spearman_rho=trend.spearman_rho, spearman_p=trend.spearman_p,
                             **events))
    out = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    for col in ("layer", "head"):
        out[col] = pd.to_numeric(out[col]).astype("Int64")
    return out


def write_lineage(stage: Path, lineage: pd.DataFrame | None, runs: pd.DataFrame) -> None:
    """lineage_summary.csv and figures/lineage.png into ``stage`` (nothing without lineage rows).

    Args:
        stage: the folder the experiment's reports are staged in; lineage: its lineage.csv frame
            or None; runs: its runs.csv frame (labels of the figure's lines).
    """
    if lineage is None or lineage.empty:
        return
    write_csv(lineage_summary(lineage), stage / "lineage_summary.csv")
    lineage_over_training(lineage, runs, stage / "figures" / "lineage.png")
