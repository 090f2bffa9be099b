"""Figures of the baseline families, drawn from their CSVs (nothing recomputed by hand):

- ``amplitude_vs_angle.png`` (mlp, 1-D input): each hidden neuron's amplitude |a| |(w, b)|
  (log scale) against its orientation angle of (w, b), at step 0, at the end of the initial
  stage and at the last probe, one panel per (activation, gamma, width, dropout) (lowest seed),
  as in Luo et al. (JMLR 2021) and Zhou et al. (arXiv 2105.11686);
- ``rd_vs_width.png`` (mlp, several widths): max-RD against width on log-log axes per gamma,
  with the fitted lines of rd_slopes.csv (S_w in the legend);
- ``rd_over_training.png`` (mlp): RD of the hidden layer against step, one line per run;
- ``groups_over_training.png``: groups at cosine 0.95 of the hidden layer (mlp) or of the
  classifier (resnet) against step, one line per run;
- ``groups_by_stage.png`` (resnet): final group ratio per stage at 0.7 and 0.9, and the mean
  |cos| between a stage's units, per gamma.

An experiment measured without those thresholds is drawn at its own lowest and highest
(``probes.report.tables.shown_thresholds``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from probes.report import tables
from probes.report.figures.common import gamma_colors, lines_over_training, new_figure, save_figure
from probes.report.figures.merge import FIGURE as MERGE_FIGURE
from probes.report.figures.merge import merge_loss_vs_width


def _label(run: pd.Series, with_task: bool = False) -> str:
    parts = [run["task"]] if with_task else []
    parts.append(f"gamma {run['gamma']:g}")
    for key, fmt in (("activation", "{}"), ("width", "m {:.0f}"), ("dropout", "dropout {:g}")):
        if key in run and pd.notna(run[key]) and not (key == "dropout" and run[key] == 0):
            parts.append(fmt.format(run[key]))
    return ", ".join(parts)


def _count(counts: dict, metric: str, noun: str) -> str:
    value = counts.get(metric, np.nan)
    return f"{value:.0f} {noun}{'' if value == 1 else 's'}"


def amplitude_vs_angle(runs: pd.DataFrame, neurons: pd.DataFrame, metrics: pd.DataFrame,
                       path: Path, max_panels: int = 12) -> bool:
    """Scatter of amplitude against angle at step 0 (grey), at the end of the initial stage
    (blue, when it is neither) and at the last probe (red), with the directions and lines counted
    at the last two."""
    with_task = runs["task"].nunique() > 1
    keys = [k for k in ("task", "activation", "gamma", "width", "dropout")
            if k in runs and (k != "task" or with_task)]
    chosen = runs.sort_values([*keys, "seed"]).groupby(keys, as_index=False).first()
    chosen = chosen[chosen["run_id"].isin(neurons["run_id"])].head(max_panels)
    if chosen.empty:
        return False
    found = metrics[metrics["metric"].isin(["n_directions", "n_lines", "direction_share"])]
    first = tables.initial_stage(metrics)
    cols = min(len(chosen), 4)
    rows = int(np.ceil(len(chosen) / cols))
    fig, axes = new_figure(rows, cols, figsize=(3.6 * cols, 3.4 * rows), layout="constrained")
    for ax, (_, run) in zip(axes.flat, chosen.iterrows()):
        n = neurons[neurons["run_id"] == run["run_id"]]
        last = n["step"].max()
        early = first.get(run["run_id"], last)
        shown = {0: ("0.6", "step 0"), early: ("C0", f"step {early}"), last: ("C3", f"step {last}")}
        color, label = shown[early]
        shown[early] = (color, f"{label} (initial stage)")  # may be step 0 or the last probe
        title = [_label(run, with_task)]
        for step, (color, label) in shown.items():
            s = n[n["step"] == step]
            ax.scatter(s["angle"], s["amplitude"], s=5, color=color, label=label)
        for step, name in ((early, "initial"), (last, "last")):
            f = found[(found["run_id"] == run["run_id"]) & (found["step"] == step)]
            counts = dict(zip(f["metric"], f["value"]))
            title.append(f"{name}: {_count(counts, 'n_directions', 'direction')}, "
                         f"{_count(counts, 'n_lines', 'line')}, "
                         f"share {counts.get('direction_share', np.nan):.2f}")
        ax.set_title("\n".join(title), fontsize=7)
        ax.set_xlim(-np.pi, np.pi)
        ax.set_xlabel("orientation angle of (w, b)")
        ax.set_ylabel("amplitude |a| |(w, b)|")
        ax.set_yscale("log")  # from a small init the three steps are orders of magnitude apart
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(chosen):]:
        ax.axis("off")
    save_figure(fig, path)
    return True


def rd_vs_width(runs: pd.DataFrame, metrics: pd.DataFrame, slopes: pd.DataFrame,
                path: Path) -> None:
    """log-log max-RD against width, per gamma, with the fitted S_w lines."""
    data = runs.assign(rd_max=runs["run_id"].map(tables.rd_max(metrics)))
    data = data[~data["diverged"].astype(bool) & (data["rd_max"] > 0)]
    colors = gamma_colors(data["gamma"])
    fig, axes = new_figure(figsize=(5.5, 4.2))
    ax = axes[0][0]
    for _, s in slopes.iterrows():
        pts = data[(data["gamma"] == s["gamma"]) & (data["activation"] == s["activation"])
                   & (data["dropout"] == s["dropout"])]
        color = colors[s["gamma"]]
        ax.scatter(pts["width"], pts["rd_max"], s=14, color=color)
        w = np.array([pts["width"].min(), pts["width"].max()], dtype=float)
        ax.plot(w, np.exp(s["intercept"]) * w ** s["slope"], color=color,
                label=f"gamma {s['gamma']:g}: S_w = {s['slope']:.2f} +- {s['stderr']:.2f}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("width m")
    ax.set_ylabel("max-RD of the hidden layer's (w, b)")
    ax.set_title("Relative distance against width (Luo et al., JMLR 2021)", fontsize=9)
    ax.legend(fontsize=7)
    save_figure(fig, path)


def over_training(runs: pd.DataFrame, metrics: pd.DataFrame, path: Path, component: str,
                  metric: str, threshold: float | None, ylabel: str, log_y: bool = False) -> bool:
    """One line per run of ``metric`` of the whole-layer ``component`` against step (dashed:
    with dropout). False when there is nothing to draw."""
    m = tables.select(metrics, metric, component=component, threshold=threshold)
    if m.empty:
        return False
    colors = gamma_colors(runs["gamma"])
    series = []
    for i, (_, run) in enumerate(runs.iterrows()):
        r = m[m["run_id"] == run["run_id"]].sort_values("step")
        color = colors[run["gamma"]] if runs["gamma"].nunique() > 1 else f"C{i % 10}"
        style = {"ls": "-" if run.get("dropout", 0) == 0 else "--", "ms": 2, "color": color}
        series.append(dict(steps=r["step"], values=r["value"], style=style,
                           label=f"{_label(run)}, seed {run['seed']}"))
    lines_over_training(series, path, ylabel, log_y=log_y, legend=len(runs) <= 16)
    return True


def groups_by_stage(final: pd.DataFrame, path: Path, thresholds=(0.7, 0.9)) -> None:
    """Bars per ResNet stage, one bar per gamma (mean over seeds): the final group ratio at each
    threshold, and the mean |cos| between the stage's units."""
    order = ["stem", "stage0", "stage1", "stage2", "stage3", "classifier"]
    panels = [(tau, "group_ratio", f"Final group ratio at cosine {tau}",
               "groups / units (1 = none condensed)") for tau in thresholds]
    panels.append((thresholds[0], "mean_abs_cos", "Final mean |cos| between units", "mean |cos|"))
    fig, axes = new_figure(1, len(panels), figsize=(5.2 * len(panels), 3.8))
    gammas = sorted(final["gamma"].unique())
    colors = gamma_colors(gammas)
    width = 0.8 / max(len(gammas), 1)
    for ax, (tau, value, title, ylabel) in zip(axes[0], panels):
        f = final[np.isclose(final["threshold"], tau)]
        table = f.pivot_table(index="stage", columns="gamma", values=value, aggfunc="mean")
        table = table.reindex([s for s in order if s in table.index])
        x = np.arange(len(table))
        for i, g in enumerate(gammas):
            if g in table:
                ax.bar(x + (i - (len(gammas) - 1) / 2) * width, table[g], width, color=colors[g],
                       label=f"gamma {g:g}")
        ax.set_xticks(x, table.index, fontsize=8)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    save_figure(fig, path)


def draw_all(out_dir: Path, runs: pd.DataFrame, metrics: pd.DataFrame,
             neurons: pd.DataFrame | None, final: pd.DataFrame,
             slopes: pd.DataFrame | None) -> list[Path]:
    """Draw the figures that apply to the experiment's family; returns the paths written."""
    fig_dir = Path(out_dir) / "figures"
    written = []
    family = runs["model_family"].iloc[0]
    if neurons is not None and len(neurons):
        if amplitude_vs_angle(runs, neurons, metrics, fig_dir / "amplitude_vs_angle.png"):
            written.append(fig_dir / "amplitude_vs_angle.png")
    if slopes is not None and len(slopes):
        rd_vs_width(runs, metrics, slopes, fig_dir / "rd_vs_width.png")
        written.append(fig_dir / "rd_vs_width.png")
    if family == "mlp":
        if over_training(runs, metrics, fig_dir / "rd_over_training.png", "mlp.in", "rd", None,
                         "RD of the hidden layer's (w, b)", log_y=True):
            written.append(fig_dir / "rd_over_training.png")
        component = "mlp.in"
    else:
        component = "classifier"
    tau = tables.shown_thresholds(metrics, (0.95,))[-1:]
    if tau and over_training(runs, metrics, fig_dir / "groups_over_training.png", component,
                             "n_groups", tau[0], f"groups at cosine {tau[0]:g} ({component})"):
        written.append(fig_dir / "groups_over_training.png")
    if family == "resnet" and len(final):
        groups_by_stage(final, fig_dir / "groups_by_stage.png",
                        tables.shown_thresholds(final, (0.7, 0.9)))
        written.append(fig_dir / "groups_by_stage.png")
    titles = {r["run_id"]: _label(r) for _, r in runs.iterrows()}
    if merge_loss_vs_width(metrics, fig_dir / MERGE_FIGURE, titles):
        written.append(fig_dir / MERGE_FIGURE)
    return written
