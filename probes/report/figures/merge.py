"""The merge probe's figure (``merge_loss_vs_width.png``), drawn from the merge rows of
metrics.csv (``merged_width``, ``rel_loss_change``; nothing recomputed): what condensation buys.

One panel per run or checkpoint (the last step that has merge rows): the relative change of the
loss (symmetric log axis) against the kept width, merged_width / n_units (the fraction of units
left), one line per merge site (layer, component) through its thresholds, coloured by layer
(solid: MLP neurons; dashed: attention query rows), and a black line for every site merged at
once, each point labelled with its threshold. A condensed layer sits at the left and low: few
units kept, the loss unchanged.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from probes.report.figures.common import new_figure, save_figure

FIGURE = "merge_loss_vs_width.png"
MAX_PANELS = 12
LINTHRESH = 1e-3  # relative loss changes below 0.1% are drawn on a linear scale


def merge_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per (run_id, step, layer, component, threshold) of the merge rows, at each run's
    last step with merge rows: ``kept`` (merged_width / n_units, in (0, 1]) and
    ``rel_loss_change``; empty when there are no merge rows."""
    m = metrics[metrics["metric"].isin(["merged_width", "rel_loss_change"])]
    if m.empty:
        return pd.DataFrame(columns=["run_id", "step", "layer", "component", "threshold", "kept",
                                     "rel_loss_change"])
    m = m.assign(step=m["step"].fillna(-1))
    last = m.groupby("run_id")["step"].transform("max")
    m = m[m["step"] == last]
    keys = ["run_id", "step", "layer", "component", "threshold"]
    wide = m.pivot_table(index=keys, columns="metric", values="value", dropna=False).reset_index()
    units = m[m["metric"] == "merged_width"].set_index(keys)["n_units"]
    wide["kept"] = wide["merged_width"].to_numpy() / units.reindex(
        pd.MultiIndex.from_frame(wide[keys])).to_numpy()
    return wide.dropna(subset=["kept", "rel_loss_change"])


def merge_loss_vs_width(metrics: pd.DataFrame, path: Path, titles: dict | None = None) -> bool:
    """Draw the figure (module docstring) at ``path``; False (nothing written) without merge rows.

    Args:
        metrics: metrics.csv rows (any runs, steps and metrics; only merge rows are used).
        path: PNG to write (atomically).
        titles: run_id -> panel title (default the run_id).

    Raises:
        OSError: the folder cannot be written.
    """
    table = merge_table(metrics)
    if table.empty:
        return False
    runs = list(dict.fromkeys(table["run_id"]))[:MAX_PANELS]
    cols = min(len(runs), 3)
    rows = int(np.ceil(len(runs) / cols))
    fig, axes = new_figure(rows, cols, figsize=(5.2 * cols, 4.2 * rows), layout="constrained")
    cmap = matplotlib.colormaps["viridis"]
    for ax in axes.flat[len(runs):]:
        ax.axis("off")
    for ax, run_id in zip(axes.flat, runs):
        t = table[table["run_id"] == run_id]
        sites = t[t["component"] != "all"]
        layers = sorted(sites["layer"].dropna().unique())
        for (layer, comp), s in sites.groupby(["layer", "component"]):
            s = s.sort_values("threshold")
            colour = cmap(layers.index(layer) / max(len(layers) - 1, 1))
            ax.plot(s["kept"], s["rel_loss_change"], color=colour, marker="o", ms=3, lw=1,
                    ls="--" if comp.startswith("attn") else "-", alpha=0.8)
        every = t[t["component"] == "all"].sort_values("threshold")
        ax.plot(every["kept"], every["rel_loss_change"], color="black", marker="s", ms=5, lw=2)
        for _, r in every.iterrows():
            ax.annotate(f"{r['threshold']:g}", (r["kept"], r["rel_loss_change"]), fontsize=7,
                        xytext=(4, 4), textcoords="offset points")
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_yscale("symlog", linthresh=LINTHRESH)
        lo, hi = t["rel_loss_change"].min(), t["rel_loss_change"].max()
        ax.set_ylim(3 * lo if lo < -LINTHRESH else -LINTHRESH, 3 * hi if hi > LINTHRESH else LINTHRESH)
        ax.set_xlim(0, 1.03)
        ax.set_xlabel("kept width (units left / units)")
        ax.set_ylabel("relative loss change")
        step = t["step"].iloc[0]
        title = (titles or {}).get(run_id, run_id)
        ax.set_title(title + (f" (step {step:g})" if step >= 0 else ""), fontsize=8)
        handles = [Line2D([], [], color="black", marker="s", lw=2, label="all layers at once"),
                   Line2D([], [], color="grey", label="one MLP layer"),
                   Line2D([], [], color="grey", ls="--", label="one attention layer")]
        if len(layers) > 1:
            handles += [Line2D([], [], color=cmap(0.0), label=f"layer {layers[0]:g}"),
                        Line2D([], [], color=cmap(1.0), label=f"layer {layers[-1]:g}")]
        ax.legend(handles=handles, fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.14),
                  ncol=3, frameon=False)
    fig.suptitle("Merging each condensed group into one unit: loss against kept width "
                 "(points: thresholds)", fontsize=9)
    save_figure(fig, path)
    return True
