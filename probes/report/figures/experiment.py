"""Figures of a reasoning experiment, drawn from its CSVs and the heat maps its runs saved
(nothing is measured again):

- ``cosine_<component>_layer<L>.png``: cosine heat maps of the runs' heat-map unit set
  (``store.HEATMAP_UNITS``) for each gamma (lowest seed), units ordered by complete-linkage
  groups so that groups sit together;
- ``groups_over_training.png``: condensed groups (at 0.9) of layer-0 W_Q against step, per run,
  with the isotropic chance level dashed when measured (``chance_draws``);
- ``ood_over_training.png``: the first two ood shares and id accuracy against step, one panel per
  gamma and a line per seed: answers on the held-out pair drift after id accuracy plateaus, so a
  final share alone can hide a passing state; with ``reference_trajectories`` (e.g. the authors'
  logged runs) those are drawn beside the runs of the same gamma;
- ``ood_vs_gamma.png``: ood shares (inferential, symmetric, other) and id accuracy against gamma;
- ``ood_offsets.png``: the held-out pair's answer offsets (answer - key) against gamma;
- ``condensation_vs_ood.png``: final layer-0 W_Q mean |cos| against ood_inferential, one point
  per run (hollow: not fitted), with the Spearman rho and its bootstrap interval;
- ``phase_diagram.png`` (when gamma and depth both vary): ``tables.phase_table`` as heat maps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from probes.measure.chance import chance_metric
from probes.measure.result import HEATMAP_UNITS
from probes.report import tables
from probes.report.figures.common import (
    cosine_panels,
    gamma_colors,
    lines_over_training,
    new_figure,
    save_figure,
)
from probes.report.figures.merge import FIGURE as MERGE_FIGURE
from probes.report.figures.merge import merge_loss_vs_width
from probes.store import load_heatmap, run_folder

LAYER, COMPONENT, _ = HEATMAP_UNITS
CHANCE_LABEL = "chance: isotropic random units"


def cosine_heatmaps(runs: pd.DataFrame, out_dir: Path, path: Path, threshold: float = 0.9) -> bool:
    """One heat map per gamma (the lowest seed that saved one). False if no run saved any."""
    panels = []
    for gamma, group in runs.sort_values(["gamma", "seed"]).groupby("gamma", sort=True):
        for _, run in group.iterrows():
            hm = load_heatmap(run_folder(out_dir, run["run_id"]))
            if hm is None:
                continue
            tau = threshold if threshold in hm.n_groups else min(hm.n_groups)
            panels.append(dict(row=0, col=len(panels), cosine=hm.cosine, title=(
                f"gamma {gamma:g} (seed {run['seed']})\n{hm.n_groups[tau]} groups at {tau:g}, "
                f"mean|cos| {hm.mean_abs_cos:.2f}")))
            break
    if not panels:
        return False
    cosine_panels(panels, path, xlabel="unit (ordered by group)",
                  ylabel=f"layer {LAYER} {COMPONENT} unit")
    return True


def groups_over_training(runs: pd.DataFrame, metrics: pd.DataFrame, path: Path,
                         threshold: float = 0.9) -> None:
    """Groups at ``threshold`` of the layer-0 W_Q rows against step, one line per run; dashed,
    the mean groups of the same number of isotropic random units (``n_groups_null_iso``) where
    metrics.csv has it."""
    m = tables.select(metrics, "n_groups", component=COMPONENT, layer=LAYER, threshold=threshold)
    null = tables.select(metrics, chance_metric("n_groups_null", "isotropic"),
                         component=COMPONENT, layer=LAYER, threshold=threshold)
    colors = gamma_colors(runs["gamma"])
    series = []
    for _, run in runs.iterrows():
        r = m[m["run_id"] == run["run_id"]].sort_values("step")
        series.append(dict(steps=r["step"], values=r["value"], style={"color": colors[run["gamma"]]},
                           label=f"gamma {run['gamma']:g} seed {run['seed']}"))
        r = null[null["run_id"] == run["run_id"]].sort_values("step")
        if len(r):  # "_" labels stay out of the legend: one entry for every chance line
            label = "_chance" if any(s["label"] == CHANCE_LABEL for s in series) else CHANCE_LABEL
            series.append(dict(steps=r["step"], values=r["value"], label=label, style={
                "color": colors[run["gamma"]], "ls": "--", "marker": None, "lw": 1, "alpha": 0.7}))
    lines_over_training(series, path, f"groups at cosine {threshold}",
                        f"Condensation of layer {LAYER} W_Q over training")


def ood_over_training(runs: pd.DataFrame, metrics: pd.DataFrame, path: Path,
                      scores: tuple[str, ...], reference: pd.DataFrame | None = None,
                      axis: str = "step") -> None:
    """``scores`` and acc_test_id over training, one panel per gamma and a line style per seed;
    the legend below the panels.

    Args:
        reference: optional trajectories of another source (columns gamma, step and any of the
            scores; e.g. the authors' logged runs, configs/authors_trajectories.csv),
            drawn as wide pale lines with crosses in the panel of the same gamma.
        axis: ``step``, or ``samples`` (training samples seen: step x batch_size, from runs.csv
            and from the reference's batch_size column), the fair axis when batches differ.

    Raises:
        ValueError: ``axis`` samples and a run or reference row without its batch_size.
    """
    def x_of(steps, batch):
        if axis == "step":
            return np.asarray(steps, dtype=float).clip(min=0.5)
        if batch is None or not np.all(np.isfinite(np.asarray(batch, dtype=float))):
            raise ValueError("trajectory_axis 'samples' needs batch_size in runs.csv and in the "
                             "reference trajectories: accepted for runs without it is 'step'")
        return (np.asarray(steps, dtype=float) * np.asarray(batch, dtype=float)).clip(min=0.5)

    gammas = sorted(runs["gamma"].unique())
    ncols = min(3, len(gammas))
    nrows = -(-len(gammas) // ncols)
    fig, axes = new_figure(nrows, ncols, figsize=(4.6 * ncols + 0.5, 3.8 * nrows + 0.9),
                           sharey=True)
    for ax in axes.flat[len(gammas):]:
        ax.set_visible(False)
    styles = ("-", "--", ":", "-.")
    shown = (*scores, "acc_test_id")
    handles = {}
    for ax, gamma in zip(axes.flat, gammas):
        for j, (_, run) in enumerate(runs[runs["gamma"] == gamma].sort_values("seed").iterrows()):
            ax.plot([], [], color="0.3", ls=styles[j % 4], label=run_label(run, runs))
            m = metrics[(metrics["run_id"] == run["run_id"]) & metrics["layer"].isna()]
            for i, score in enumerate(shown):
                r = m[m["metric"] == score].sort_values("step")
                (line,) = ax.plot(x_of(r["step"], run.get("batch_size")), r["value"],
                                  color=f"C{i}", ls=styles[j % 4], lw=1.4)
                handles.setdefault(score, line)
        ref = None if reference is None else \
            reference[np.isclose(reference["gamma"], gamma)].sort_values("step")
        for i, score in enumerate(shown):
            if ref is not None and len(ref) and score in ref:
                (line,) = ax.plot(x_of(ref["step"], ref.get("batch_size")), ref[score],
                                  color=f"C{i}", lw=5, alpha=0.25, marker="x", ms=4)
                handles.setdefault(f"{score} (reference)", line)
        ax.legend(fontsize=7, loc="upper left", title="line style", title_fontsize=7)
        ax.set_xscale("log")
        ax.set_title(f"gamma {gamma:g}", fontsize=10)
        ax.set_xlabel("training samples seen (step x batch)" if axis == "samples"
                      else "step (step 0 drawn at 0.5)")
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    for row in axes:
        row[0].set_ylabel("share / accuracy")
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=min(4, len(handles)),
               fontsize=8, frameon=False)
    fig.suptitle("Answers on the held-out data over training"
                 + ("" if reference is None else " (wide pale lines: reference trajectories)"),
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.6 / (3.8 * nrows + 0.9) + 0.06, 1, 1))
    save_figure(fig, path)


def run_label(run, runs: pd.DataFrame) -> str:
    """A run's name in a legend: its seed, and the settings that differ between ``runs``."""
    keys = [k for k in ("batch_size", "lr", "n_embd", "steps", "mixed_precision")
            if k in runs and runs[k].nunique() > 1]
    return ", ".join([f"seed {run['seed']}", *(f"{k} {run[k]:g}" if isinstance(run[k], float)
                                                else f"{k} {run[k]}" for k in keys)])


def ood_vs_gamma(runs: pd.DataFrame, path: Path, scores: tuple[str, ...],
                 ood_label: str = "ood answers") -> None:
    """Each run's final ``scores`` against gamma (hollow: not fitted), with the mean per gamma."""
    fig, axes = new_figure(figsize=(6, 4))
    ax = axes[0][0]
    done = runs[~runs["diverged"].astype(bool)]
    for i, score in enumerate(scores):
        mean = done.groupby("gamma")[score].mean()
        ax.plot(mean.index, mean.values, color=f"C{i}", lw=1, alpha=0.7, label=f"{score} (mean)")
        for fitted, face in ((True, f"C{i}"), (False, "white")):  # runs drawn over the means
            pts = done[done["fitted"].astype(bool) == fitted]
            ax.scatter(pts["gamma"], pts[score], s=30, facecolors=face, edgecolors=f"C{i}",
                       linewidths=1.2, zorder=3)
    ax.set_xlabel("init rate gamma (std = d_in^-gamma)")
    ax.set_ylabel(f"share of {ood_label} / accuracy")
    ax.set_ylim(-0.03, 1.03)
    ax.set_title(f"{ood_label[0].upper()}{ood_label[1:]} against gamma (hollow: not fitted)")
    ax.legend(fontsize=7)
    save_figure(fig, path)


def ood_offsets(runs: pd.DataFrame, offsets: pd.DataFrame, path: Path,
                offset_label: str = "offset", min_share: float = 0.01) -> None:
    """Mean share of each final answer offset per gamma; offsets below ``min_share`` for every
    gamma are pooled into one "rest" column so that the picture stays readable. Nothing is drawn
    when no run has an ood answer (``n_ood: 0``)."""
    last = offsets.groupby("run_id")["step"].transform("max")
    final = offsets[offsets["step"] == last].merge(runs[["run_id", "gamma"]], on="run_id")
    if final.empty:
        return
    n_seeds = runs.groupby("gamma")["run_id"].nunique()
    table = final.pivot_table(index="gamma", columns="offset", values="share", aggfunc="sum")
    table = table.div(n_seeds, axis=0).fillna(0.0)  # mean share over the runs of each gamma
    rare = table.columns[table.max(axis=0) < min_share]
    if len(rare):
        table = table.drop(columns=rare).assign(rest=table[rare].sum(axis=1))
    fig, axes = new_figure(figsize=(max(6, 0.35 * table.shape[1]), 0.6 * len(table) + 1.5))
    ax = axes[0][0]
    im = ax.imshow(table.values, aspect="auto", cmap="magma", vmin=0, vmax=1)
    ax.set_xticks(range(table.shape[1]), [str(c) for c in table.columns], fontsize=7, rotation=90)
    ax.set_yticks(range(len(table)), [f"{g:g}" for g in table.index])
    ax.set_xlabel(offset_label)
    ax.set_ylabel("gamma")
    fig.colorbar(im, ax=ax, label="mean share of answers")
    ax.set_title("Out-of-distribution answers at the end of training")
    save_figure(fig, path)


def condensation_vs_ood(runs: pd.DataFrame, metrics: pd.DataFrame, corr: pd.DataFrame,
                        path: Path, metric: str = "mean_abs_cos",
                        score: str = "ood_inferential") -> None:
    """Final layer-0 W_Q ``metric`` against ``score``, one point per run (hollow: not fitted),
    with the Spearman rho of correlations.csv and its interval in the title."""
    m = tables.select(tables.final_values(metrics), metric, component=COMPONENT, layer=LAYER)
    data = runs.merge(m[["run_id", "value"]], on="run_id")
    colors = gamma_colors(runs["gamma"])
    fig, axes = new_figure(figsize=(5.5, 4))
    ax = axes[0][0]
    for _, r in data.iterrows():
        face = colors[r["gamma"]] if r["fitted"] else "none"
        ax.scatter(r["value"], r[score], s=30, facecolors=face, edgecolors=colors[r["gamma"]])
    for g, c in colors.items():
        ax.scatter([], [], color=c, label=f"gamma {g:g}")
    row = corr[(corr["layer"] == LAYER) & (corr["component"] == COMPONENT) & corr["head"].isna()
               & (corr["metric"] == metric) & (corr["score"] == score) & (corr["subset"] == "all")]
    title = f"layer {LAYER} W_Q {metric} vs {score}"
    if len(row) and np.isfinite(row["spearman_rho"].iloc[0]):
        r = row.iloc[0]
        title += f"\nSpearman rho {tables.interval_text(r)}, n={r['n_runs']}"
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(f"final {metric}")
    ax.set_ylabel(score)
    ax.legend(fontsize=7)
    save_figure(fig, path)


def phase_diagram(table: pd.DataFrame, path: Path, ood_scores: tuple[str, ...],
                  x: str = "gamma", y: str = "n_layer") -> None:
    """Heat maps on the x-by-y plane: ood shares of fitted runs, id accuracy, layer-0 W_Q mean|cos|.
    Each cell is annotated with its value and fitted / total runs."""
    panels = [(f"{s}_fitted", f"{s} (fitted runs)") for s in ood_scores]
    panels += [("acc_test_id", "id test accuracy (all runs)"),
              ("wq_mean_abs_cos", f"layer {LAYER} W_Q mean |cos| (all runs)")]
    xs, ys = sorted(table[x].unique()), sorted(table[y].unique())
    fig, axes = new_figure(1, len(panels), figsize=(4.2 * len(panels), 0.5 * len(ys) + 2.4))
    for ax, (col, title) in zip(axes[0], panels):
        grid = table.pivot(index=y, columns=x, values=col).reindex(index=ys, columns=xs)
        counts = table.pivot(index=y, columns=x, values="n_fitted").reindex(index=ys, columns=xs)
        totals = table.pivot(index=y, columns=x, values="n_runs").reindex(index=ys, columns=xs)
        im = ax.imshow(grid.values, origin="lower", aspect="auto", vmin=0, vmax=1, cmap="viridis")
        for i in range(len(ys)):
            for j in range(len(xs)):
                v = grid.values[i, j]
                label = "-" if np.isnan(v) else f"{v:.2f}"
                ax.text(j, i, f"{label}\n{counts.values[i, j]:.0f}/{totals.values[i, j]:.0f}",
                        ha="center", va="center", fontsize=7, color="w" if v < 0.6 else "k")
        ax.set_xticks(range(len(xs)), [f"{v:g}" for v in xs])
        ax.set_yticks(range(len(ys)), [f"{v:g}" for v in ys])
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=list(axes[0]), shrink=0.8)
    save_figure(fig, path)


def phase_scores(task) -> tuple[str, ...]:
    """The (at most two) ood scores shown on phase diagrams: the task's first two."""
    return tuple(task.ood_scores[:2])


def draw_all(out_dir: Path, runs: pd.DataFrame, metrics: pd.DataFrame, offsets: pd.DataFrame,
             corr: pd.DataFrame, task, runs_dir: Path | None = None,
             reference: pd.DataFrame | None = None, axis: str = "step") -> list[Path]:
    """Draw every figure of an experiment into ``out_dir/figures``; returns the paths written.
    ``task`` (the task class or object) names the ood scores and labels the axes; the runs' saved
    heat maps are read from ``runs_dir`` (the experiment's output folder; default ``out_dir``);
    ``reference`` and ``axis``: trajectories drawn in ood_over_training and its x axis (see
    there)."""
    shown = phase_scores(task)
    fig_dir = Path(out_dir) / "figures"
    written = []
    if runs.empty:
        return written
    path = fig_dir / f"cosine_{COMPONENT.replace('.', '_')}_layer{LAYER}.png"
    if cosine_heatmaps(runs, runs_dir or out_dir, path):
        written.append(path)
    if runs["gamma"].nunique() > 1 and runs["n_layer"].nunique() > 1:
        table = tables.phase_table(runs, metrics, scores=("acc_test_id", *shown))
        phase_diagram(table, fig_dir / "phase_diagram.png", shown)
        written.append(fig_dir / "phase_diagram.png")
    for name, draw in (
        ("groups_over_training.png", lambda p: groups_over_training(runs, metrics, p)),
        ("ood_over_training.png", lambda p: ood_over_training(runs, metrics, p, shown, reference,
                                                              axis)),
        ("ood_vs_gamma.png", lambda p: ood_vs_gamma(runs, p, (*task.ood_scores, "acc_test_id"),
                                                    getattr(task, "ood_label", "ood answers"))),
        ("ood_offsets.png", lambda p: ood_offsets(runs, offsets, p,
                                                  getattr(task, "offset_label", "offset"))),
        ("condensation_vs_ood.png", lambda p: condensation_vs_ood(runs, metrics, corr, p)),
    ):
        draw(fig_dir / name)
        written.append(fig_dir / name)
    if merge_loss_vs_width(metrics, fig_dir / MERGE_FIGURE, run_titles(runs)):
        written.append(fig_dir / MERGE_FIGURE)
    return written


def run_titles(runs: pd.DataFrame) -> dict:
    """run_id -> "run_id, gamma g" (panel titles)."""
    return {r["run_id"]: f"{r['run_id']}, gamma {r['gamma']:g}" for _, r in runs.iterrows()}
