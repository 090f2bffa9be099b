"""``lineage.png``: condensed groups (>= 2 units) of one unit set against the step, one line per
run, with the probe steps at which groups were born, split or merged marked (from lineage.csv;
the rule: ``probes.measure.lineage``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from probes.measure.result import HEATMAP_UNITS
from probes.report.figures.common import new_figure, save_figure

# marker of each event, drawn at the step where it happened (above the line: the count after it)
EVENTS = {"births": ("^", "tab:green"), "splits": ("v", "tab:red"), "merges": ("s", "tab:purple")}


def shown_set(lineage: pd.DataFrame, threshold: float = 0.9) -> tuple[tuple, float]:
    """The unit set (layer, component) and threshold drawn: ``HEATMAP_UNITS`` when the rows have
    it, else the first whole-layer set; ``threshold`` when present, else the smallest."""
    whole = lineage[lineage["head"].isna()]
    sets = list(dict.fromkeys(zip(whole["layer"], whole["component"])))
    chosen = HEATMAP_UNITS[:2] if HEATMAP_UNITS[:2] in sets else sets[0]
    taus = whole["threshold"].astype(float).unique()
    near = taus[np.isclose(taus, threshold)]
    return chosen, float(near[0]) if len(near) else float(taus.min())


def lineage_over_training(lineage: pd.DataFrame, runs: pd.DataFrame, path: Path) -> None:
    """Draw ``lineage.png`` at ``path`` (atomically).

    Args:
        lineage: lineage.csv frame with at least one whole-layer row (``head`` empty);
        runs: runs.csv frame (a line's label: gamma and seed when it has them, else the run id).
    """
    (layer, component), tau = shown_set(lineage)
    rows = lineage[lineage["head"].isna() & (lineage["layer"] == layer)
                   & (lineage["component"] == component)
                   & np.isclose(lineage["threshold"].astype(float), tau)]
    labels = {r["run_id"]: (f"gamma {r['gamma']:g} seed {r['seed']}" if "gamma" in r and "seed" in r
                            else r["run_id"]) for _, r in runs.iterrows()}
    fig, axes = new_figure(figsize=(6.5, 4))
    ax = axes[0][0]
    for run_id, r in rows.groupby("run_id", sort=False):
        r = r.sort_values("step")
        x = r["step"].to_numpy(float).clip(min=0.5)
        ax.plot(x, r["n_condensed"].to_numpy(float), marker="o", ms=2, lw=1,
                        label=labels.get(run_id, run_id))
        for event, (marker, color) in EVENTS.items():
            hit = r[event].fillna(0).to_numpy(float) > 0
            ax.scatter(x[hit], r["n_condensed"].to_numpy(float)[hit], marker=marker, s=30,
                       facecolors="none", edgecolors=color, zorder=3)
    for event, (marker, color) in EVENTS.items():  # one legend entry per event kind
        ax.scatter([], [], marker=marker, facecolors="none", edgecolors=color,
                   label=f"{event[:-1]} at this step")
    ax.set_xscale("log")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step (step 0 drawn at 0.5)")
    ax.set_ylabel(f"condensed groups (>= 2 units) at cosine {tau:g}")
    ax.set_title(f"Lineage of layer {layer} {component} groups", fontsize=10)
    ax.legend(fontsize=6, loc="best")
    save_figure(fig, path)
