"""An experiment's reports, written by the main process from its finished run folders.

``write_all(cfgs)`` gathers the runs into ``runs.csv``, ``metrics.csv``, ``ood_offsets.csv``
(and ``neurons.csv``), then writes what the task's kind calls for and prints a summary:
- reasoning tasks: ``correlations.csv``, ``phase_diagram.csv`` (when gamma and depth both vary)
  and the figures of ``report.figures.experiment``;
- the baseline families (``mlp``, ``resnet``: tasks without ood scores): ``correlations.csv``
  (header only), ``final_condensation.csv``, ``rd_slopes.csv`` (several widths),
  ``directions.csv`` (1-D mlp) and the figures of ``report.figures.baselines``;
- every kind: ``lineage.csv`` (gathered), ``lineage_summary.csv`` and ``figures/lineage.png``
  (``report.lineage``).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from probes.report import tables
from probes.report.figures import baselines as baseline_figures
from probes.report.figures import experiment as figures
from probes.report.lineage import write_lineage
from probes.store import (
    REPORT_STAGE,
    Publish,
    gather_runs,
    publish_reports,
    staging_dir,
    write_csv,
)
from tasks import TASKS

logger = logging.getLogger(__name__)


def write_all(cfgs, publish: Publish | None = None) -> None:
    """Main process: the experiment's CSVs, tables and figures, and a printed summary.

    Everything is written into a staging folder first and published as one set
    (``store.publish_reports``): a failure or a kill part-way leaves the previous report as it
    was (a kill: once ``store.recover`` has run), and no file of an earlier, different grid stays
    beside the new ones.

    Args:
        cfgs: the experiment's RunConfigs (grid order); only finished runs are reported.
        publish: a larger set the report joins (``store.Publish``, committed by its owner, as
            ``measure DIR`` does with its run folders); None: the report is its own set.
    """
    out_dir = cfgs[0].out_dir
    stage = staging_dir(out_dir / REPORT_STAGE)
    try:
        frames = gather_runs(cfgs, stage)
        task = TASKS[cfgs[0].task]
        if getattr(task, "families", None):  # a baseline task (mlp, resnet): its own tables
            text = write_baselines(stage, frames)
        else:
            reference = cfgs[0].reference_trajectories
            text = write_reasoning(stage, out_dir, frames, task,
                                   pd.read_csv(reference) if reference else None,
                                   cfgs[0].trajectory_axis)
        write_lineage(stage, frames["lineage"], frames["runs"])
        publish_reports(stage, out_dir, publish)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    written = sorted(p.name for p in out_dir.glob("*.csv"))
    print(text)  # the result: stdout; messages go to the log (stderr)
    logger.info(f"reports written to {out_dir}/: {', '.join(written)}"
                + (", figures/" if (out_dir / "figures").is_dir() else ""))


def write_reasoning(stage: Path, out_dir: Path, frames: dict, task,
                    reference: pd.DataFrame | None = None, axis: str = "step") -> str:
    """A reasoning experiment's correlations.csv, phase_diagram.csv (when gamma and depth both
    vary) and figures, written into ``stage`` (the run folders are read from ``out_dir``;
    ``reference``: trajectories for ood_over_training); returns the summary text."""
    runs, metrics = frames["runs"], frames["metrics"]
    corr = tables.correlations(runs, metrics, task.ood_scores) if len(runs) else None
    if corr is not None:
        write_csv(corr, stage / "correlations.csv")
        if runs["gamma"].nunique() > 1 and runs["n_layer"].nunique() > 1:
            table = tables.phase_table(runs, metrics,
                                       scores=("acc_test_id", *figures.phase_scores(task)))
            write_csv(table, stage / "phase_diagram.csv")
        figures.draw_all(stage, runs, metrics, frames["offsets"], corr, task, runs_dir=out_dir,
                         reference=reference, axis=axis)
    return summary(runs, corr, task)


def summary(runs: pd.DataFrame, corr: pd.DataFrame | None, task) -> str:
    """Per-gamma means of the final scores, the fitted count, and the headline correlation."""
    if runs.empty:
        return "no finished runs yet"
    cols = [c for c in task.score_names if c != "acc_train"]
    table = runs.groupby("gamma").agg(
        runs=("run_id", "count"), fitted=("fitted", "sum"),
        **{c: (c, "mean") for c in cols}, wall_s_total=("wall_s", "sum"))
    text = "final scores, mean over the runs of each gamma:\n" + table.round(3).to_string()
    if corr is not None:
        row = corr[(corr["layer"] == 0) & (corr["component"] == "attn.q") & corr["head"].isna()
                   & (corr["metric"] == "mean_abs_cos") & (corr["score"] == "ood_inferential")
                   & (corr["subset"] == "all")]
        if len(row) and np.isfinite(row["spearman_rho"].iloc[0]):
            r = row.iloc[0]
            text += (f"\nSpearman(layer-0 W_Q mean|cos|, ood_inferential) over {r['n_runs']} runs: "
                     + tables.interval_text(r))
    return text


def write_baselines(out_dir: Path, frames: dict) -> str:
    """Baseline experiment: correlations.csv (header only: no ood scores), the baseline tables
    and their figures, written into ``out_dir``; returns the summary text."""
    runs, metrics = frames["runs"], frames["metrics"]
    write_csv(tables.correlations(runs, metrics, ()), out_dir / "correlations.csv")
    if runs.empty:
        return "no finished run"
    final = tables.final_condensation(runs, metrics)
    write_csv(final, out_dir / "final_condensation.csv")
    slopes = None
    if "width" in runs and runs["width"].nunique() > 1:
        slopes = tables.rd_slopes(runs, metrics)
        write_csv(slopes, out_dir / "rd_slopes.csv")
    found = tables.directions(runs, metrics)
    if len(found):
        write_csv(found, out_dir / "directions.csv")
    baseline_figures.draw_all(out_dir, runs, metrics, frames.get("neurons"), final, slopes)
    return baseline_summary(runs, final, slopes, found)


def baseline_summary(runs: pd.DataFrame, final: pd.DataFrame, slopes: pd.DataFrame | None,
            found: pd.DataFrame | None = None) -> str:
    """Final scores per run, condensation per stage, the directions counted (1-D mlp) and the RD
    slopes."""
    scores = [c for c in ("train_loss", "rel_err_train", "test_loss", "acc_train", "acc_test")
              if c in runs]
    settings = [c for c in ("gamma", "width", "activation", "dropout", "seed") if c in runs]
    if len(runs) <= 24:
        text = "final scores:\n" + runs[[*settings, *scores, "fitted", "wall_s"]].to_string(index=False)
    else:  # a long grid: means over seeds
        keys = [k for k in ("task", *settings) if k in runs and k != "seed"]
        table = runs.groupby(keys).agg(runs=("run_id", "count"), fitted=("fitted", "sum"),
                                       **{c: (c, "mean") for c in scores},
                                       wall_s_total=("wall_s", "sum"))
        text = "final scores, mean over seeds:\n" + table.to_string()
    taus = tables.shown_thresholds(final, (0.7, 0.95)) if len(final) else ()
    if taus:
        keys, high = ["gamma", "dropout", "stage"], taus[-1]
        table = final[np.isclose(final["threshold"], high)].groupby(keys, sort=False)[
            ["n_units", "mean_abs_cos"]].mean()
        for tau in taus:
            f = final[np.isclose(final["threshold"], tau)].groupby(keys, sort=False)
            table[f"groups@{tau:g}"] = f["n_groups"].mean()
            if tau == high:
                table[f"ratio@{tau:g}"] = f["group_ratio"].mean()
                if final["effective_ratio"].notna().any():
                    table[f"effective@{tau:g}"] = f["effective_ratio"].mean()
        text += "\n\ncondensation at the last probe, per stage (mean over runs):\n"
        text += table.round(4).to_string()
    if found is not None and len(found):
        for prefix, when in (("initial_", "at the end of the initial stage"),
                             ("", "at the last probe")):
            outcome = found.dropna(subset=[f"{prefix}n_directions"])
            outcome = outcome.assign(
                counted=[f"{d:.0f} dir / {n:.0f} line{'' if n == 1 else 's'}" for d, n in
                         zip(outcome[f"{prefix}n_directions"], outcome[f"{prefix}n_lines"])])
            keys = [k for k in ("task", "activation", "gamma", "width", "dropout") if k in outcome]
            table = outcome.groupby(keys)["counted"].value_counts().unstack(fill_value=0)
            text += f"\n\ndirections {when} (runs with each outcome):\n" + table.to_string()
    if slopes is not None and len(slopes):
        text += "\n\nS_w = slope of log max-RD against log width:\n"
        text += slopes[["gamma", "activation", "dropout", "widths", "slope", "stderr"]].round(3) \
            .to_string(index=False)
    return text
