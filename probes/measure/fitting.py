"""Fitting unit sets off the reading thread: ``Fitter`` (a thread pool with one BLAS thread a
worker) and ``unit_bytes`` (what a layer's unit sets hold in memory), shared by every measuring
path (``probes.measure.probe.measure_units``: training probes, ``measure``, checkpoint probing,
the Python API) and by ``align``.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch
from threadpoolctl import threadpool_limits

from probes.measure.chance import chance_baselines
from probes.measure.metrics import Condensation


def unit_bytes(sets) -> int:
    """Bytes of memory that the unit sets ``sets`` (UnitSet list) hold: each storage once, since
    per-head sets are views of their component's rows."""
    held = {}
    for u in sets:
        for t in (u.units, u.dead):
            if t is not None:
                held[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(held.values())


def fit_cost(n_units: int, dim: int) -> float:
    """Rough floating-point work of fitting an (n_units, dim) set: the cosine scan (n^2 dim / 2
    multiply-adds), the Gram matrix of the spectrum (n dim m, m = min(n, dim)) and its
    eigenvalues (~4 m^3). Only its order matters: ``Fitter.submit_all`` starts the largest
    sets first."""
    m = min(n_units, dim)
    return n_units * n_units * dim / 2 + n_units * dim * m + 4.0 * m**3


class Fitter:
    """Fits unit sets on ``workers`` threads, each with one BLAS thread, while the main thread
    reads the next layer with one torch thread: the metrics' BLAS / LAPACK calls are faster side
    by side than sharing threads on a small machine, and idle threads that spin at barriers
    (OpenBLAS, OpenMP) cost much when another process takes a core. ``torch_threads`` is the
    caller's torch thread count, for the forward passes of the activation basis. ``chance``:
    (draws, nulls) of each set's chance baselines, fitted in the same task (draws 0: none)."""

    def __init__(self, thresholds, workers: int, spectral: bool = True,
                 chance: tuple[int, str] = (0, "both")):
        self.thresholds, self.workers, self.spectral = thresholds, max(1, workers), spectral
        self.chance = chance

    def __enter__(self) -> Fitter:
        self.limits = threadpool_limits(1, user_api="blas")
        self.torch_threads = torch.get_num_threads()
        torch.set_num_threads(1)
        self.pool = ThreadPoolExecutor(self.workers)
        return self

    def __exit__(self, *exc) -> None:
        self.pool.shutdown()
        torch.set_num_threads(self.torch_threads)
        self.limits.restore_original_limits()

    def submit(self, units: torch.Tensor, dead: torch.Tensor | None = None, order: bool = True,
               bias_columns: int | None = None):
        """Fit ``units`` (n_units, dim) float32 CPU in the pool (``dead``: (n_units,) bool units
        to leave out, or None; ``order``: keep the dendrogram order for a heat map;
        ``bias_columns``: as ``Condensation.fit``); returns the Future of (the fitted
        Condensation, its fitted chance baselines)."""
        dead = None if dead is None else dead.numpy()
        return self.pool.submit(self._fit, units.numpy(), dead, order, bias_columns)

    def submit_all(self, sets, drawn) -> list:
        """``submit`` every UnitSet of ``sets`` (``drawn(u)``: keep its order for a heat map),
        the costliest first (``fit_cost``): a layer's fits then end together instead of one
        large set running alone at the end (7B-shaped layer: the MLP's 11008-unit sets take
        twice a 4096-unit projection's time). Returns the futures in the order of ``sets``."""
        futures = [None] * len(sets)
        for k in sorted(range(len(sets)), key=lambda k: -fit_cost(*sets[k].units.shape)):
            u = sets[k]
            futures[k] = self.submit(u.units, u.dead, drawn(u), u.bias_columns)
        return futures

    def _fit(self, units, dead, order: bool, bias_columns: int | None):
        fit = Condensation(self.thresholds, order=order, spectral=self.spectral).fit(
            units, dead, bias_columns)
        draws, nulls = self.chance
        return fit, chance_baselines(units, fit, nulls, draws, dead)


def fitted(future, where: str):
    """(fit, chance baselines) of a ``Fitter.submit`` future.

    Raises:
        UnitsError (a ValueError): units with NaN or inf (known only once the tensor is read),
            naming ``where`` (the model or checkpoint, its step, layer and component).
    """
    try:
        return future.result()
    except ValueError as e:
        raise UnitsError(f"{where}: {e}: accepted are finite weights") from e


class UnitsError(ValueError):
    """A unit set that cannot be measured (one line, naming where it is)."""
