"""Measuring one run's models step after step: the one path by which this project's runs are
measured, live during training (``probes.train.loop``) and again from a saved checkpoint series
(``probes.train.remeasure``). Same model, same settings: the same rows, bit for bit.

At each step ``SeriesProbe.measure`` gives a ``ProbeResult``: through ``measure_units`` (the
function every measuring path calls, ``probes.measure.probe``), condensation of every unit set in
the weight basis (``probes.measure.metrics.Condensation``; Xu, Zhang, Zhou, arXiv 2504.09484)
and, when asked, its chance level (``probes.measure.chance``),
the relative distance RD from step 0 (Luo, Xu, Ma, Zhang, JMLR 2021) and each unit's angle to
its step-0 direction (``probes.measure.drift``, as ``--reference`` writes them), the task's
scores and the held-out pair's answer offsets (Zhang, Zhang, Xu et al., arXiv 2405.05409), the merge rows at
the final step and any ``merge_steps`` (``merge_probe``), for 1-D two-layer nets each neuron's
direction, and the lineage of each weight-basis set's condensed groups from the previous step
(``probes.measure.lineage``; not of ``mlp.active``, whose units change).
"""

from __future__ import annotations

import numpy as np
import torch

from probes.measure.drift import drift
from probes.measure.family_units import all_units, neuron_features
from probes.measure.fitting import Fitter
from probes.measure.lineage import LineageTracker
from probes.measure.merge_probe import merge_rows
from probes.measure.neurons import count_directions, loss_fell
from probes.measure.probe import measure_units
from probes.measure.result import HEATMAP_UNITS, HeatMap, ProbeResult, metric_row


class SeriesProbe:
    """Measures the models of one run in step order and keeps the run's rows.

    Args:
        run_id: the rows' run id; objective: the task's objective (``tasks.objective``);
        eval_data: split -> column -> numpy array, the samples scored (training split cut to
            n_eval); device: where the model runs; thresholds: cosine thresholds tau in (0, 1);
        merge_steps: the steps at which the condensed groups are merged and scored (None or
            empty: never);
        units0: {(layer, component, head): (n_units, dim) tensor} at step 0, for RD and the
            unit angles; None: taken from the model measured at step 0.
        chance: (draws, nulls): the chance baselines of every unit set (``chance_baselines``;
            draws 0: none; nulls ``isotropic``, ``covariance`` or ``both``).
        workers: threads that fit the unit sets, one BLAS thread each (None: torch's thread
            count when measuring).

    After each ``measure``: ``metrics``, ``offsets``, ``lineage`` (all steps so far), ``neurons``
    (step 0, the end of the initial stage and the latest step), ``heatmap`` (the latest step's).
    """

    def __init__(self, run_id: str, objective, eval_data: dict, device, thresholds,
                 merge_steps=None, units0: dict | None = None,
                 chance: tuple[int, str] = (0, "both"), workers: int | None = None):
        self.workers = workers
        self.run_id, self.objective, self.eval_data, self.device = run_id, objective, eval_data, device
        self.chance_draws, self.chance_nulls = chance
        self.thresholds, self.units0 = list(thresholds), units0
        self.merge_steps = {int(s) for s in merge_steps or ()}
        self.metrics: list[dict] = []
        self.offsets: list[dict] = []
        self.lineage: list[dict] = []
        self.tracker = LineageTracker(run_id)
        self.heatmap: HeatMap | None = None
        self.first_neurons: list[dict] = []  # step 0
        self.initial_neurons: list[dict] = []  # the probe before the loss first falls
        self.last_neurons: list[dict] = []

    @torch.no_grad()
    def measure(self, model, step: int) -> ProbeResult:
        """Measure ``model`` (put in eval mode) at ``step``; keeps and returns its rows.

        Raises:
            ValueError: the first step measured is not 0 and no ``units0`` was given (RD needs
                the weights at initialization), or units that are not finite (``UnitsError``).
        """
        model.eval()
        sets = all_units(model)
        if self.units0 is None:
            if step != 0:
                raise ValueError(f"the series starts at step {step}: accepted is a series that "
                                 f"starts at step 0 (RD is measured from it)")
            self.units0 = {(u.layer, u.component, u.head): u.units for u in sets}
        with Fitter(self.thresholds, self.workers or torch.get_num_threads(),
                    chance=(self.chance_draws, self.chance_nulls)) as fitter:
            # one "layer" of every set: the sets are already read, and all fit side by side
            result = measure_units([sets], fitter, dict(run_id=self.run_id, step=step),
                                   drift=self.drift_from_start, lineage=self.tracker,
                                   drawn=lambda u: (u.layer, u.component, u.head) == HEATMAP_UNITS,
                                   label=f"run {self.run_id!r}")
        before = self.last_neurons
        result.neurons, neuron_rows = self.directions(model, step)
        result.metrics += neuron_rows
        ev = self.objective.evaluate(model, self.eval_data, self.device)
        result.scores = ev.scores
        if before and not self.initial_neurons and self.loss_fell(ev.scores.get("train_loss")):
            self.initial_neurons = before
        for name, value in ev.scores.items():
            result.metrics.append(metric_row(run_id=self.run_id, step=step, metric=name,
                                             value=value, n_units=ev.counts[name]))
        if step in self.merge_steps:
            result.metrics += merge_rows(model, self.objective, self.eval_data, self.device,
                                         self.thresholds, dict(run_id=self.run_id, step=step),
                                         ev.scores)
        n_ood = sum(ev.offsets.values())
        result.offsets = [dict(run_id=self.run_id, step=step, offset=offset, count=count,
                               share=count / n_ood) for offset, count in ev.offsets.items()]
        self.keep(result)
        return result

    def drift_from_start(self, u):
        """``drift`` of unit set ``u`` from its step-0 units."""
        return drift(u.units, self.units0[(u.layer, u.component, u.head)])

    def directions(self, model, step: int) -> tuple[list[dict], list[dict]]:
        """1-D two-layer nets: (neurons.csv rows, metrics rows). Directions are counted from the
        angle histogram: ``n_directions``, ``n_lines`` and ``direction_share``, the share of the
        total amplitude they hold (near 1 when condensed, well below at a random init, whose
        histogram also has chance peaks). Any other model: ([], [])."""
        feats = neuron_features(model)
        if feats is None or not np.isfinite(feats["amplitude"]).all():
            return [], []
        found = count_directions(feats["angle"], feats["amplitude"])
        where = dict(run_id=self.run_id, step=step, layer=feats["layer"],
                     component=feats["component"], basis="weight", n_units=len(feats["angle"]))
        rows = [metric_row(**where, metric="n_directions", value=found.n_directions),
                metric_row(**where, metric="n_lines", value=found.n_lines),
                metric_row(**where, metric="direction_share", value=found.shares.sum())]
        neurons = [dict(run_id=self.run_id, step=step, layer=feats["layer"],
                        component=feats["component"], unit=k, w=float(w), b=float(b),
                        angle=float(t), amplitude=float(amp))
                   for k, ((w, b), t, amp) in enumerate(zip(feats["units"], feats["angle"],
                                                            feats["amplitude"]))]
        return neurons, rows

    def loss_fell(self, loss) -> bool:
        """Whether the training loss has left the initial stage (``measure.neurons.loss_fell``,
        the rule ``report.tables.initial_stage`` applies to metrics.csv)."""
        first = [r["value"] for r in self.metrics
                 if r["step"] == 0 and r["metric"] == "train_loss" and r["component"] == "output"]
        return bool(first) and loss is not None and bool(loss_fell(loss, first[0]))

    def keep(self, result: ProbeResult) -> None:
        self.metrics += result.metrics
        self.offsets += result.offsets
        self.lineage += result.lineage
        if result.heatmap is not None:
            self.heatmap = result.heatmap
        if result.neurons:
            if result.step == 0:
                self.first_neurons = result.neurons
            self.last_neurons = result.neurons

    @property
    def neurons(self) -> list[dict]:
        """neurons.csv rows: step 0, the end of the initial stage and the latest step, once each."""
        steps, rows = set(), []
        for kept in (self.first_neurons, self.initial_neurons, self.last_neurons):
            if kept and kept[0]["step"] not in steps:
                steps.add(kept[0]["step"])
                rows += kept
        return rows

    def state_dict(self) -> dict:
        """Plain data to resume the series from (``load_state_dict``); the heat map is left out:
        the last step, measured after any resume, sets it."""
        return dict(metrics=self.metrics, offsets=self.offsets, neurons=self.first_neurons,
                    initial_neurons=self.initial_neurons, last_neurons=self.last_neurons,
                    lineage=self.lineage, lineage_labels=self.tracker.state_dict())

    def load_state_dict(self, state: dict) -> None:
        self.metrics, self.offsets = state["metrics"], state["offsets"]
        self.first_neurons = state.get("neurons", [])
        self.initial_neurons = state.get("initial_neurons", [])
        self.last_neurons = state.get("last_neurons", [])
        self.lineage = state.get("lineage", [])
        self.tracker.load_state_dict(state.get("lineage_labels", []))
