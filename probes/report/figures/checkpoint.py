"""Figures of a ``--checkpoint`` probe, drawn from what the probe measured (nothing recomputed):

- ``cosine_<run_id>[_step<N>]_<component>.png``: cosine heat maps of the chosen layers (columns)
  in each basis (rows), units ordered by complete-linkage groups so that groups sit together;
- ``groups_over_training.png`` (series only): groups at the chosen threshold against step, one
  line per (run, layer).
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from probes.report import tables
from probes.report.figures.common import cosine_panels, lines_over_training


def heatmap_name(run_id: str, step, component: str) -> str:
    """File name of one checkpoint's heat maps (characters outside [\\w.-] become _)."""
    safe = re.sub(r"[^\w.-]", "_", f"{run_id}" + (f"_step{step}" if step is not None else ""))
    return f"cosine_{safe}_{component.replace('.', '_')}.png"


def cosine_heatmaps(maps: list[dict], path: Path, title: str) -> None:
    """One panel per (basis, layer): bases in rows, layers in columns.

    Args:
        maps: dicts with ``basis``, ``layer``, ``threshold`` (of the group count shown) and
            ``map`` (a ``probes.measure.result.HeatMap``).
        path: PNG to write (atomically).
        title: figure title (checkpoint, component).
    """
    bases = list(dict.fromkeys(m["basis"] for m in maps))
    layers = sorted({m["layer"] for m in maps})
    panels = []
    for m in maps:
        hm, tau = m["map"], m["threshold"]
        shown = f", every {hm.stride}th shown" if hm.stride > 1 else ""
        panels.append(dict(row=bases.index(m["basis"]), col=layers.index(m["layer"]),
                           cosine=hm.cosine, title=(
                               f"layer {m['layer']} ({m['basis']}): {hm.n_units} units{shown}\n"
                               f"{hm.n_groups[tau]} groups at {tau:g}, "
                               f"mean|cos| {hm.mean_abs_cos:.2f}")))
    cosine_panels(panels, path, title)


def groups_over_training(metrics: pd.DataFrame, path: Path, component: str, layers: list[int],
                         threshold: float) -> None:
    """Groups at ``threshold`` of ``component`` (weight basis, whole layer) against step."""
    m = tables.select(metrics, "n_groups", component=component, threshold=threshold)
    m = m[(m["basis"] == "weight") & m["step"].notna() & m["layer"].isin(layers)]
    series = []
    for (run_id, layer), r in m.groupby(["run_id", "layer"]):
        r = r.sort_values("step")
        series.append(dict(steps=r["step"], values=r["value"], label=f"{run_id} layer {layer}"))
    lines_over_training(series, path, f"groups at cosine {threshold:g}",
                        f"Condensation of {component} over training")
