"""What every figure shares: atomic saving, gamma colours, cosine heat-map panels and lines over
training. Figures are ``matplotlib.figure.Figure`` objects (no pyplot: no GUI backend, no global
state), drawn from the suite's CSVs and saved heat maps, never from re-measured models."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from probes.store.output import shared_mode


def new_figure(nrows: int = 1, ncols: int = 1, figsize=(6, 4), **kwargs):
    """(figure, axes) with ``axes`` a (nrows, ncols) array (``squeeze=False``)."""
    layout = kwargs.pop("layout", None)
    fig = Figure(figsize=figsize, layout=layout)
    return fig, fig.subplots(nrows, ncols, squeeze=False, **kwargs)


def save_figure(fig: Figure, path: Path) -> None:
    """Save ``fig`` as PNG at ``path`` atomically (temp file, then rename). Raises OSError when
    the folder cannot be written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
        os.replace(shared_mode(tmp), path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def gamma_colors(gammas) -> dict:
    """gamma -> an RGBA colour of viridis, spread over the distinct values in order."""
    cmap = matplotlib.colormaps["viridis"]
    gammas = sorted(set(gammas))
    return {g: cmap(i / max(len(gammas) - 1, 1)) for i, g in enumerate(gammas)}


def cosine_panels(panels: list[dict], path: Path, title: str | None = None,
                  xlabel: str | None = None, ylabel: str | None = None) -> None:
    """Cosine heat maps in a grid, one colour bar.

    Args:
        panels: dicts with ``row``, ``col`` (grid position), ``cosine`` (m, m) in group order,
            values in [-1, 1], and ``title``.
        path: PNG to write (atomically).
        title: figure title; xlabel: under every panel; ylabel: left of the first column.
    """
    nrows = 1 + max(p["row"] for p in panels)
    ncols = 1 + max(p["col"] for p in panels)
    fig, axes = new_figure(nrows, ncols, figsize=(3.5 * ncols, 3.3 * nrows + 0.4))
    for ax in axes.flat:
        ax.axis("off")
    im = None
    for p in panels:
        ax = axes[p["row"]][p["col"]]
        ax.axis("on")
        im = ax.imshow(p["cosine"], vmin=-1, vmax=1, cmap="RdBu_r", interpolation="nearest")
        ax.set_title(p["title"], fontsize=8)
        if xlabel:
            ax.set_xlabel(xlabel)
        else:
            ax.set_xticks([])
            ax.set_yticks([])
    if ylabel:
        for row in axes:
            row[0].set_ylabel(ylabel)
    if title:
        fig.suptitle(title, fontsize=10)
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="cosine similarity")
    save_figure(fig, path)


def lines_over_training(series: list[dict], path: Path, ylabel: str, title: str | None = None,
                        log_y: bool = False, legend: bool = True) -> None:
    """One line per series against the training step (log axis; step 0 drawn at 0.5).

    Args:
        series: dicts with ``steps`` and ``values`` (equal-length sequences), ``label`` and
            optional matplotlib line keywords in ``style`` (color, ls, ms, ...).
        path: PNG to write (atomically).
        ylabel, title: axis label and title; log_y: log scale on the values; legend: draw one.
    """
    fig, axes = new_figure(figsize=(6, 4))
    ax = axes[0][0]
    for s in series:
        style = {"marker": "o", "ms": 3} | s.get("style", {})
        ax.plot(np.asarray(s["steps"], dtype=float).clip(min=0.5), s["values"], label=s["label"],
                **style)
    ax.set_xscale("log")
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel("step (step 0 drawn at 0.5)")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if legend:
        ax.legend(fontsize=7 if len(series) <= 8 else 6)
    save_figure(fig, path)
