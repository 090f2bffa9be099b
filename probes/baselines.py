"""Reports of the baseline families (``mlp``, ``resnet``): tables computed from metrics.csv and
the figures that belong to them. ``write_all`` is what ``probes/run.py`` calls for a baseline
experiment (a task without out-of-distribution scores).

- ``rd_slopes.csv`` (mlp, when the width varies): the slope S_w of log max-RD of the hidden
  layer's input weights against log width, per (gamma, gamma', activation, dropout), as in the
  phase diagram of Luo, Xu, Ma, Zhang (JMLR 2021): S_w < 0 linear regime, ~ 0 critical, > 0
  condensed.
- ``final_condensation.csv``: each run's final groups per stage (ResNet: stem, stage0..3,
  classifier; mlp: ``mlp.in``) and threshold, the convolutions of a stage pooled.
- ``directions.csv`` (mlp with 1-D input): the condensed directions and lines at the last probe
  and at the end of the initial stage (``initial_stage``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from probes.neurons import INITIAL_LOSS_RATIO
from probes.units_baselines import resnet_stage

SLOPE_GROUPS = ("gamma", "gamma_prime", "activation", "dropout")
# settings that split the slope fits further when they vary in the grid
SLOPE_SPLITS = ("task", "lr", "optimizer", "lr_scaling", "weight_decay", "steps", "in_dim")
SLOPE_COLUMNS = [*SLOPE_GROUPS, "n_runs", "widths", "slope", "stderr", "intercept", "r_value"]
FINAL_COLUMNS = ["run_id", "model_family", "gamma", "dropout", "width", "activation", "stage",
                 "threshold", "n_sets", "n_units", "n_groups", "group_ratio", "effective_ratio",
                 "mean_abs_cos"]


def _whole(metrics: pd.DataFrame) -> pd.DataFrame:
    """Weight-basis rows of whole layers (no per-head rows)."""
    return metrics[metrics["basis"].notna() & metrics["head"].isna()]


def rd_max(metrics: pd.DataFrame, component: str = "mlp.in", layer: int = 0) -> pd.Series:
    """run_id -> the largest RD of (layer, component) over the run's probe steps.

    RD = ||theta_w(t) - theta_w(0)||_F / ||theta_w(0)||_F of the input weights with biases
    (Luo et al., JMLR 2021); "max" is over the probed steps (log-spaced, the last step included).
    """
    m = _whole(metrics)
    m = m[(m["metric"] == "rd") & (m["component"] == component) & (m["layer"] == layer)]
    return m.groupby("run_id")["value"].max()


def rd_slopes(runs: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """S_w per (gamma, gamma', activation, dropout): least-squares slope of log max-RD against
    log width (scipy.stats.linregress over every run of the group, seeds included; the slope
    equals the one through the per-width means of log RD when each width has as many seeds).

    Args:
        runs: runs.csv frame of mlp runs (columns width, gamma, gamma_prime, activation, dropout,
            diverged).
        metrics: metrics.csv frame.

    Returns:
        SLOPE_COLUMNS frame (plus a column per SLOPE_SPLITS setting that varies in ``runs``: a
        fit never pools runs that differ in it), one row per group with >= 2 distinct widths
        (diverged runs and runs with RD = 0 left out); ``widths`` lists the widths used.
    """
    ok = runs[~runs["diverged"].astype(bool)].copy()
    ok["rd_max"] = ok["run_id"].map(rd_max(metrics))
    ok = ok[ok["rd_max"] > 0]
    splits = [c for c in SLOPE_SPLITS if c in runs and runs[c].nunique() > 1]
    keys = [*SLOPE_GROUPS, *splits]
    rows = []
    for key, g in ok.groupby(keys, sort=True):
        if g["width"].nunique() < 2:
            continue
        fit = stats.linregress(np.log(g["width"].astype(float)), np.log(g["rd_max"]))
        rows.append(dict(zip(keys, key)) | {
            "n_runs": len(g), "widths": " ".join(str(int(w)) for w in sorted(g["width"].unique())),
            "slope": fit.slope, "stderr": fit.stderr, "intercept": fit.intercept,
            "r_value": fit.rvalue})
    return pd.DataFrame(rows, columns=[*keys, *SLOPE_COLUMNS[len(SLOPE_GROUPS):]])


def stage_of(family: str, layer, component: str) -> str:
    """The stage a unit set is pooled into: ResNet stages (``resnet_stage``), else the component."""
    if family == "resnet":
        return resnet_stage(int(layer))
    return component


def final_condensation(runs: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """Each run's condensation at its last probe, pooled per stage and threshold.

    n_groups and n_units are summed over the stage's unit sets (a stage's convolutions have
    different input sizes, so their units are never compared with each other);
    group_ratio = n_groups / n_units; effective_ratio = n_groups / width (mlp: the dropout
    paper's effective ratio when the stage is ``mlp.active``; empty for resnet);
    mean_abs_cos is the mean over the stage's sets.

    Returns:
        FINAL_COLUMNS frame.
    """
    m = _whole(metrics)
    last = m.groupby("run_id")["step"].transform("max")
    m = m[m["step"] == last]
    info = runs.set_index("run_id")
    rows = []
    for run_id, r in m.groupby("run_id", sort=False):
        family = info.loc[run_id, "model_family"]
        r = r.assign(stage=[stage_of(family, lay, comp) for lay, comp in zip(r["layer"], r["component"])])
        for stage, s in r.groupby("stage", sort=False):
            cos = s[s["metric"] == "mean_abs_cos"]["value"].mean()
            groups = s[s["metric"] == "n_groups"]
            for tau, t in groups.groupby("threshold"):
                units = t["n_units"].sum()
                width = info.get("width", {}).get(run_id)
                rows.append({
                    "run_id": run_id, "model_family": family, "gamma": info.loc[run_id, "gamma"],
                    "dropout": info.loc[run_id, "dropout"], "width": width,
                    "activation": info.get("activation", {}).get(run_id), "stage": stage,
                    "threshold": tau, "n_sets": len(t), "n_units": units,
                    "n_groups": t["value"].sum(), "group_ratio": t["value"].sum() / units,
                    "effective_ratio": t["value"].sum() / width if pd.notna(width) else np.nan,
                    "mean_abs_cos": cos})
    return pd.DataFrame(rows, columns=FINAL_COLUMNS)


def initial_stage(metrics: pd.DataFrame, loss_ratio: float = INITIAL_LOSS_RATIO) -> pd.Series:
    """run_id -> the last probe step of the initial stage: the probe before the training loss
    first falls below ``loss_ratio`` times its value at step 0 (the last probe when it never
    does).

    The initial-condensation analysis (Zhou et al., NeurIPS 2022, arXiv 2105.11686) holds while
    the output is still ~0, so that the residual is the target; once the loss falls, the first
    neurons to escape take over the fit and the count reflects the next stage.

    Args:
        metrics: metrics.csv frame with ``train_loss`` rows (component ``output``).
        loss_ratio: in (0, 1].

    Returns:
        Series of int steps, one per run with a ``train_loss`` at step 0.
    """
    loss = metrics[(metrics["metric"] == "train_loss") & (metrics["component"] == "output")]
    steps = {}
    for run_id, r in loss.groupby("run_id"):
        r = r.sort_values("step")
        if r["step"].iloc[0] != 0:
            continue
        fallen = (r["value"] < loss_ratio * r["value"].iloc[0]).to_numpy()
        k = int(np.argmax(fallen)) - 1 if fallen.any() else len(r) - 1
        steps[run_id] = int(r["step"].iloc[k])
    return pd.Series(steps, dtype=int)


def directions(runs: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """n_directions, n_lines and direction_share of each 1-D mlp run (probes.neurons) at its last
    probe, and the same at the end of the initial stage (``initial_stage``) as
    initial_step, initial_n_directions, initial_n_lines, initial_direction_share."""
    names = ["n_directions", "n_lines", "direction_share"]
    m = metrics[metrics["metric"].isin(names)]
    if m.empty:
        return pd.DataFrame(columns=["run_id", "step", *names])
    table = m.pivot_table(index=["run_id", "step"], columns="metric", values="value").reset_index()
    last = table[table["step"] == table.groupby("run_id")["step"].transform("max")]
    first = initial_stage(metrics)
    early = table[table["step"] == table["run_id"].map(first)]
    early = early.rename(columns={c: f"initial_{c}" for c in ("step", *names)})
    keep = [c for c in ("task", "activation", "gamma", "width", "dropout", "seed") if c in runs]
    out = runs[["run_id", *keep]].merge(last, on="run_id").merge(early, on="run_id", how="left")
    cols = [c for c in names if c in table]
    return out[["run_id", *keep, "step", *cols, "initial_step", *[f"initial_{c}" for c in cols]]]


def summary(runs: pd.DataFrame, final: pd.DataFrame, slopes: pd.DataFrame | None,
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
    if len(final):
        keys = ["gamma", "dropout", "stage"]
        table = final[np.isclose(final["threshold"], 0.95)].groupby(keys, sort=False)[
            ["n_units", "mean_abs_cos"]].mean()
        for tau in (0.7, 0.95):
            f = final[np.isclose(final["threshold"], tau)].groupby(keys, sort=False)
            table[f"groups@{tau:g}"] = f["n_groups"].mean()
            if tau == 0.95:
                table["ratio@0.95"] = f["group_ratio"].mean()
                if final["effective_ratio"].notna().any():
                    table["effective@0.95"] = f["effective_ratio"].mean()
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


def write_all(cfgs, frames: dict) -> None:
    """Main process, baseline experiment: correlations.csv (header only: no ood scores), the
    tables above, the baseline figures and a printed summary."""
    from probes import analysis, figures_baselines
    from probes.report import write_csv

    out_dir: Path = cfgs[0].out_dir
    runs, metrics = frames["runs"], frames["metrics"]
    write_csv(analysis.correlations(runs, metrics, ()), out_dir / "correlations.csv")
    if runs.empty:
        print(f"no finished run: reports written to {out_dir}/")
        return
    final = final_condensation(runs, metrics)
    write_csv(final, out_dir / "final_condensation.csv")
    slopes = None
    if "width" in runs and runs["width"].nunique() > 1:
        slopes = rd_slopes(runs, metrics)
        write_csv(slopes, out_dir / "rd_slopes.csv")
    found = directions(runs, metrics)
    if len(found):
        write_csv(found, out_dir / "directions.csv")
    figures_baselines.draw_all(out_dir, runs, metrics, frames.get("neurons"), final, slopes)
    print(summary(runs, final, slopes, found))
    print(f"reports written to {out_dir}/ (runs.csv, metrics.csv, final_condensation.csv"
          f"{', rd_slopes.csv' if slopes is not None else ''}"
          f"{', directions.csv, neurons.csv' if len(found) else ''}, figures/)")
