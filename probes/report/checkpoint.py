"""The report of a ``--checkpoint`` probe: ``metrics.csv`` (the experiments' schema), ``runs.csv``
(one row per checkpoint: ``store.CHECKPOINT_RUNS_COLUMNS``), the figures of
``report.figures.checkpoint`` and a printed summary."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from probes.report.figures.checkpoint import cosine_heatmaps, groups_over_training, heatmap_name
from probes.report.figures.merge import FIGURE as MERGE_FIGURE
from probes.report.figures.merge import merge_loss_vs_width
from probes.store import CHECKPOINT_RUNS_COLUMNS, METRICS_COLUMNS, frame, write_csv


def write_outputs(out: Path, results: list, plans: list, opts) -> None:
    """Main process: metrics.csv, runs.csv and the figures, each written atomically.

    Args:
        out: the output folder.
        results: a ``ProbeResult`` per checkpoint (``Prober.run``: metrics rows, heat maps, its
            runs row as ``record``); plans: their ``Plan`` s, in the same order; opts: the ``Options``.
    """
    metrics = frame([r for res in results for r in res.metrics], METRICS_COLUMNS)
    runs = frame([res.record for res in results], CHECKPOINT_RUNS_COLUMNS)
    write_csv(metrics, out / "metrics.csv")
    write_csv(runs, out / "runs.csv")
    for res, plan in zip(results, plans):
        if res.heatmaps:
            ckpt = plan.ckpt
            title = f"{ckpt.run_id}" + (f" step {ckpt.step}" if ckpt.step is not None else "")
            name = heatmap_name(ckpt.run_id, ckpt.step, plan.component)
            cosine_heatmaps(res.heatmaps, out / "figures" / name,
                            f"{title}: {plan.component} cosine, units ordered by group")
    series = [p for p in plans if p.ckpt.series is not None]
    if series:
        groups_over_training(metrics, out / "figures" / "groups_over_training.png",
                             series[-1].component, series[-1].draw_layers, opts.heatmap_threshold)
    merge_loss_vs_width(metrics, out / "figures" / MERGE_FIGURE)  # with --merge_probe only


def summary(metrics, threshold: float) -> str:
    """Per checkpoint and component (weight basis, whole layers): the median over layers of the
    group ratio at ``threshold`` and of mean |cos|, and the most condensed layer."""
    m = metrics[metrics["head"].isna() & (metrics["basis"] == "weight")].copy()
    # steps in number order, not as text (0, 1, 2, ..., 12); a folder without a step shows -
    m["order"] = m["step"].fillna(-1).astype(int)
    m["step"] = m["step"].astype("string").fillna("-")
    ratio = m[(m["metric"] == "group_ratio") & np.isclose(m["threshold"].astype(float), threshold)]
    cos = m[m["metric"] == "mean_abs_cos"]
    keys = ["run_id", "order", "step", "component"]
    # a set whose every unit was dropped (zero rows) has a NaN ratio: no lowest layer there
    measured = ratio.dropna(subset=["value"])
    low = measured.loc[measured.groupby(keys)["value"].idxmin()].set_index(keys)
    table = pd.DataFrame({
        f"group_ratio@{threshold:g} median": ratio.groupby(keys)["value"].median(),
        "lowest": low["value"], "in layer": low["layer"],
        "mean|cos| median": cos.groupby(keys)["value"].median()})
    table = table.reset_index("order", drop=True)
    return ("condensation over layers (weight basis; group ratio = groups / units, 1 = none):\n"
            + table.round(3).to_string())
