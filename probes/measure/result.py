"""The result contract of one probe: the CSV columns, the one place metric rows are built, the
heat map and ``ProbeResult``. Everything that measures a model returns these; ``probes.store``
writes them with these columns, and ``probes.report`` reads them back.

Schema and meaning of each column: reports/README.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

METRICS_COLUMNS = ["run_id", "step", "layer", "component", "head", "basis", "metric",
                   "threshold", "value", "n_units"]
OFFSETS_COLUMNS = ["run_id", "step", "offset", "count", "share"]
NEURONS_COLUMNS = ["run_id", "step", "layer", "component", "unit", "w", "b", "angle", "amplitude"]
# lineage.csv: the condensed groups of a unit set at a step against the previous probe step
LINEAGE_COLUMNS = ["run_id", "step", "prev_step", "layer", "component", "head", "threshold",
                   "n_units", "n_groups", "n_condensed", "births", "deaths", "splits", "merges",
                   "continued"]
LINEAGE_EVENTS = ("births", "deaths", "splits", "merges", "continued")
# align.csv: one unit set of two checkpoints (a, b) compared (probes.measure.alignment)
ALIGN_COLUMNS = ["a_run", "b_run", "layer", "component", "head", "threshold", "metric", "value"]
# the unit set (layer, component, head) whose cosine matrix a run keeps for the heat maps
HEATMAP_UNITS = (0, "attn.q", None)


def metric_row(*, run_id: str, step: int | None, metric: str, value: float, layer: int | None = None,
               component: str = "output", head: int | None = None, basis: str | None = None,
               threshold: float | None = None, n_units: int | None = None) -> dict:
    """One metrics.csv row, keyed exactly by ``METRICS_COLUMNS``.

    Args:
        run_id, step: the run and its optimizer step (None: unknown); metric, value: what was measured;
        layer (from 0), component (``attn.q``, ``mlp.in``, ..., ``output`` for task scores),
        head (None: all heads), basis (``weight`` | ``activation``; None for task scores),
        threshold (cosine tau of a group count, None otherwise), n_units (units, or samples
        behind a task score).

    Raises:
        TypeError: a missing or unknown keyword (the signature is the schema).
    """
    return dict(run_id=run_id, step=None if step is None else int(step), layer=layer,
                component=component, head=head, basis=basis, metric=metric, threshold=threshold,
                value=float(value) if value is not None else math.nan, n_units=n_units)


def lineage_row(*, run_id: str, step: int, prev_step: int | None, layer: int | None,
                component: str, head: int | None, threshold: float, n_units: int, n_groups: int,
                n_condensed: int, moved=None) -> dict:
    """One lineage.csv row, keyed exactly by ``LINEAGE_COLUMNS``.

    Args:
        run_id, step: the run and its probe step; prev_step: the previous probe step (None at
            the first); layer, component, head: the unit set; threshold: cosine tau;
        n_units: units kept; n_groups: all groups (singletons included, as metrics.csv);
        n_condensed: groups of >= 2 units; moved: the ``probes.measure.lineage.Transition``
            from prev_step, or None (first step, or units dropped): its counts left blank.
    """
    return dict(run_id=run_id, step=int(step), prev_step=None if prev_step is None else int(prev_step),
                layer=layer, component=component, head=head, threshold=float(threshold),
                n_units=int(n_units), n_groups=int(n_groups), n_condensed=int(n_condensed),
                **{k: None if moved is None else int(getattr(moved, k)) for k in LINEAGE_EVENTS})


@dataclass
class HeatMap:
    """The cosine matrix of one unit set in group order, for the heat-map figures.

    cosine: (m', m') float32, m' = ceil(n_units / stride) (every ``stride``-th unit of the
    dendrogram order); n_units: units kept; n_groups: {tau: groups}; mean_abs_cos: mean |cos|.
    """

    cosine: np.ndarray
    stride: int
    n_units: int
    n_groups: dict[float, int]
    mean_abs_cos: float

    @classmethod
    def of(cls, fit) -> HeatMap:
        """The heat map of a fitted ``probes.measure.metrics.Condensation`` (``order=True``)."""
        cosine, stride = fit.ordered_cosine()
        return cls(cosine, stride, fit.n_units_, dict(fit.n_groups_), fit.mean_abs_cos_)


@dataclass
class ProbeResult:
    """What measuring one model at one step gives, on every measuring path
    (``probes.measure.probe.measure_units`` and the two that call it).

    metrics: metrics.csv rows (``metric_row``): condensation of every unit set, relative
    distance from the reference, the task's scores, merge rows; offsets: ood_offsets.csv rows;
    neurons: neurons.csv rows (1-D two-layer nets); lineage: lineage.csv rows
    (``probes.measure.lineage``); scores: the task's scores by name (``train_loss`` first; this
    project's runs only); heatmaps: the drawn unit sets' heat maps, dicts of ``basis``,
    ``layer``, ``component``, ``head``, ``threshold`` (the group count shown) and ``map`` (a
    ``HeatMap``); record: what was done, for a checkpoint its runs.csv row
    (``store.CHECKPOINT_RUNS_COLUMNS``), empty for a step of a training series.
    """

    step: int | None
    metrics: list[dict] = field(default_factory=list)
    offsets: list[dict] = field(default_factory=list)
    neurons: list[dict] = field(default_factory=list)
    lineage: list[dict] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)
    heatmaps: list[dict] = field(default_factory=list)
    record: dict = field(default_factory=dict)

    @property
    def heatmap(self) -> HeatMap | None:
        """The first weight-basis heat map (a training run draws ``HEATMAP_UNITS`` only), or
        None."""
        return next((h["map"] for h in self.heatmaps if h["basis"] == "weight"), None)

    def add(self, other: ProbeResult) -> ProbeResult:
        """Append ``other``'s rows and heat maps (the same step) to this result; returns it."""
        for name in ("metrics", "offsets", "neurons", "lineage", "heatmaps"):
            getattr(self, name).extend(getattr(other, name))
        return self
