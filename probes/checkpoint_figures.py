"""Figures of a ``--checkpoint`` probe, drawn from what the probe measured (nothing recomputed):

- ``cosine_<run_id>[_step<N>]_<component>.png``: cosine heat maps of the chosen layers (columns)
  in each basis (rows), units ordered by complete-linkage groups so that groups sit together;
- ``groups_over_training.png`` (series only): groups at the chosen threshold against step, one
  line per (run, layer).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure state

from probes.figures import save_figure


def heatmap_name(run_id: str, step, component: str) -> str:
    """File name of one checkpoint's heat maps (characters outside [\\w.-] become _)."""
    safe = re.sub(r"[^\w.-]", "_", f"{run_id}" + (f"_step{step}" if step is not None else ""))
    return f"cosine_{safe}_{component.replace('.', '_')}.png"


def cosine_heatmaps(maps: list[dict], path: Path, title: str) -> None:
    """One panel per (basis, layer).

    Args:
        maps: dicts with ``basis``, ``layer``, ``cosine`` (m, m) ordered float32, ``stride``,
            ``n_units``, ``n_groups``, ``threshold``, ``mean_abs_cos``.
        path: PNG to write (atomically).
        title: figure title (checkpoint, component).
    """
    bases = list(dict.fromkeys(m["basis"] for m in maps))
    layers = sorted({m["layer"] for m in maps})
    fig = Figure(figsize=(3.4 * len(layers), 3.3 * len(bases) + 0.4))
    axes = fig.subplots(len(bases), len(layers), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    im = None
    for m in maps:
        ax = axes[bases.index(m["basis"])][layers.index(m["layer"])]
        ax.axis("on")
        im = ax.imshow(m["cosine"], vmin=-1, vmax=1, cmap="RdBu_r", interpolation="nearest")
        shown = f", every {m['stride']}th shown" if m["stride"] > 1 else ""
        ax.set_title(f"layer {m['layer']} ({m['basis']}): {m['n_units']} units{shown}\n"
                     f"{m['n_groups']} groups at {m['threshold']:g}, "
                     f"mean|cos| {m['mean_abs_cos']:.2f}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="cosine similarity")
    save_figure(fig, path)


def groups_over_training(metrics: pd.DataFrame, path: Path, component: str, layers: list[int],
                         threshold: float) -> None:
    """Groups at ``threshold`` of ``component`` (weight basis, whole layer) against step."""
    m = metrics[(metrics["component"] == component) & metrics["head"].isna()
                & (metrics["basis"] == "weight") & (metrics["metric"] == "n_groups")
                & np.isclose(metrics["threshold"].astype(float), threshold)
                & metrics["step"].notna() & metrics["layer"].isin(layers)]
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for (run_id, layer), r in m.groupby(["run_id", "layer"]):
        r = r.sort_values("step")
        ax.plot(r["step"].astype(float).clip(lower=0.5), r["value"], marker="o", ms=3,
                label=f"{run_id} layer {layer}")
    ax.set_xscale("log")
    ax.set_xlabel("step (step 0 drawn at 0.5)")
    ax.set_ylabel(f"groups at cosine {threshold:g}")
    ax.set_title(f"Condensation of {component} over training")
    ax.legend(fontsize=7)
    save_figure(fig, path)
