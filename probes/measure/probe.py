"""Measuring the unit sets of one model at one step: ``measure_units``, the one function every
measuring path calls. Training probes and ``measure`` call it through
``probes.measure.series.SeriesProbe`` (this project's runs, with their task scores), ``probe`` /
``--checkpoint`` and the Python API through ``probes.checkpoint.probe.Prober`` (any checkpoint,
weight and activation basis), and both get back a ``ProbeResult``. ``Prober`` hands it the unit
sets one layer at a time as it reads them (``probes.measure.units.block_units`` of a tensor
source, or the activations of a layer), so that reading overlaps fitting; ``SeriesProbe`` hands
it every set of a live model at once (``probes.measure.family_units.all_units``: the same
``block_units`` plus the family's extra sets, the ResNet classifier and ``mlp.active``), as one
group fitted side by side.

Per unit set: its condensation (``Condensation``: cosine similarity, condensed groups at each
threshold, ranks; Xu, Zhang, Zhou, arXiv 2504.09484), its chance level
(``probes.measure.chance``), its drift from a reference (relative distance RD, Luo, Xu, Ma,
Zhang, JMLR 2021; unit angles, ``probes.measure.drift``), the lineage of its condensed groups
from the previous step (``probes.measure.lineage``) and, for the sets drawn, its heat map. The
rows of a set are built by ``probes.measure.rows.unit_set_rows``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable

from probes.measure.family_units import NO_RD
from probes.measure.fitting import Fitter, fitted, unit_bytes
from probes.measure.result import HeatMap, ProbeResult
from probes.measure.rows import unit_set_rows
from probes.measure.units import UnitSet

# The next layer is read while this one is fitted only when the layers in flight hold less
# than this much unit memory: on small models reading overlaps fitting, while a 7B-sized layer
# (0.75 GB of float32 units, ~1 s to read against ~30 s to fit) would cost a second layer's
# memory to save a few percent of the time.
PREFETCH_BYTES = 256 * 2**20


def _never(u: UnitSet) -> bool:
    return False


def measure_units(layers: Iterable[list[UnitSet]], fitter: Fitter, where: dict, *,
                  basis: str = "weight", drift: Callable | None = None, lineage=None,
                  drawn: Callable[[UnitSet], bool] = _never, threshold: float | None = None,
                  label: str = "", progress: Callable[[], None] | None = None,
                  prefetch_bytes: int = PREFETCH_BYTES) -> ProbeResult:
    """Fit every unit set of one model at one step; at most two layers are in flight at once, and
    a second is read only while the first holds less than ``prefetch_bytes`` of units.

    Args:
        layers: per layer, its unit sets (``UnitSet``: (n_units, dim) float32 CPU rows), in
            layer order; read lazily, so a generator reads the next layer while one is fitted.
        fitter: an entered ``Fitter`` (thresholds, spectral metrics, chance baselines).
        where: the rows' ``run_id`` and ``step`` (None: unknown).
        basis: ``weight`` or ``activation``, written in every row.
        drift: weight basis: ``drift(u)`` gives ``probes.measure.drift.drift`` of set ``u``
            from its reference, or None (no rd / angle rows); called once the set is fitted.
        lineage: a ``probes.measure.lineage.LineageTracker`` that gets every weight-basis set
            of fixed membership (not ``NO_RD``), or None.
        drawn: whether a set's heat map is kept (its fit then keeps the dendrogram order).
        threshold: the group count the heat maps show (recorded with each).
        label: the model in error messages (a checkpoint's path, a run id).
        progress: called after each layer.

    Returns:
        ``ProbeResult`` with ``metrics`` (per set, in the order given: ``unit_set_rows``),
        ``lineage`` and ``heatmaps`` (dicts of basis, layer, component, head, threshold and the
        ``HeatMap``, for the drawn sets of more than one unit).

    Raises:
        UnitsError (a ValueError): a set with NaN or inf, naming ``label``, the step, the layer,
            the component and the basis; whatever reading ``layers`` raises.
    """
    result = ProbeResult(where["step"])
    step = f" (step {where['step']})" if where["step"] is not None else ""

    def collect(sets, futures) -> None:
        """Rows, lineage and heat maps of one layer's fitted unit sets, into ``result``."""
        for u, future in zip(sets, futures):
            fit, chance = fitted(future, f"{label}{step} layer {u.layer} {u.component} "
                                         f"({basis} basis)")
            at = dict(run_id=where["run_id"], step=where["step"], layer=u.layer,
                      component=u.component, head=u.head, basis=basis)
            weight = basis == "weight" and u.component not in NO_RD
            if weight and lineage is not None:
                result.lineage += lineage.rows(fit, len(u.units), at)
            found = drift(u) if weight and drift is not None else None
            result.metrics += unit_set_rows(fit, chance, at, found)
            if drawn(u) and fit.n_units_ > 1:
                result.heatmaps.append(dict(basis=basis, layer=u.layer, component=u.component,
                                            head=u.head, threshold=threshold, map=HeatMap.of(fit)))
        if progress is not None:
            progress()

    pending = deque()
    for sets in layers:
        pending.append((sets, fitter.submit_all(sets, drawn)))
        while pending and (len(pending) > 1 or unit_bytes(pending[0][0]) >= prefetch_bytes):
            collect(*pending.popleft())
        del sets  # else the loop variable keeps a collected layer alive while the next is read
    while pending:
        collect(*pending.popleft())
    return result
