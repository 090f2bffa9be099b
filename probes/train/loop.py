"""Train one run: build the model at its init rate, train it with accelerate, probe it on a
log-spaced schedule (step 0 included), and return its report rows.

The loop is the same for every model family. What differs comes from three places: the model
(``models.build_for_run``: builder and init rate), the units the probes read
(``probes.measure.family_units.all_units``) and the task's objective (``tasks.objective``: which
columns a batch holds, the loss of a batch, the evaluation and its scores). Full-batch gradient
descent is ``optimizer: sgd`` with ``batch_size >= n_train``: every step then sees the whole
training set in its stored order.

Runs are the unit of parallelism: each accelerate process trains whole runs on its own device, so
the model is never wrapped for data-parallel training (``accelerator.prepare`` would wrap it in
DDP and make every process train the same run). The loop otherwise follows accelerate's examples:
device placement, ``autocast``, ``backward`` and ``clip_grad_norm_`` all go through the
``Accelerator``, and so does the optimizer (``prepare_optimizer``, which wraps it without touching
the model): under fp16 the gradients are then unscaled before clipping and a step whose gradients
overflowed is skipped (the scheduler then waits too). The scheduler is not prepared: a prepared
scheduler steps once per process, while each process trains a different run. Each run starts from
a fresh gradient scale, kept in its resumable state.
"""

from __future__ import annotations

import functools
import itertools
import math
import time
import weakref
from dataclasses import dataclass, field

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset

from models import build_for_run
from probes.config import RunConfig, effective_lr
from probes.measure.family_units import NO_RD, all_units, neuron_features
from probes.measure.metrics import Condensation, metric_rows, relative_distance
from probes.measure.neurons import count_directions, loss_fell
from probes.store import HEATMAP_UNITS, run_dir, runs_row, write_train_log
from probes.train.merge_probe import merge_rows
from probes.train.resume import load_state, save_state
from tasks.objective import objective_for

# fp16: the state each accelerator's GradScaler had before its first run (its initial scale), so
# that every run starts from it rather than from the scale the previous run left
SCALER_START: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass
class RunResult:
    """What a run hands to the report: one runs.csv row, its metrics and ood-offset rows, and the
    trained model (on CPU) with its init records for the checkpoint."""

    cfg: RunConfig
    row: dict
    metrics: list[dict] = field(default_factory=list)
    offsets: list[dict] = field(default_factory=list)
    model: torch.nn.Module | None = None
    init_records: list[dict] = field(default_factory=list)
    # 1-D two-layer nets: step 0, the end of the initial stage and the last probe
    neurons: list[dict] = field(default_factory=list)
    # HEATMAP_UNITS at the last probe: ordered cosine, stride, n_units, n_groups, mean_abs_cos
    heatmap: dict | None = None


def probe_steps(steps: int, n_probes: int) -> list[int]:
    """Log-spaced probe steps in [0, steps]: 0, then ``n_probes - 1`` geometric points to ``steps``
    (rounded, duplicates removed, so early steps may merge)."""
    if n_probes <= 2:  # geomspace(1, steps, 1) would be [1], not the last step
        return [0, steps] if steps else [0]
    points = np.unique(np.round(np.geomspace(1, steps, n_probes - 1)).astype(int))
    return [0, *[int(s) for s in points]]


def make_optimizer(cfg: RunConfig, params) -> torch.optim.Optimizer:
    """``cfg.optimizer``: adamw (decoupled weight decay), adam (L2 weight decay) or sgd (plain
    gradient descent, weight decay as L2), at ``effective_lr(cfg)``."""
    kinds = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}
    return kinds[cfg.optimizer](params, lr=effective_lr(cfg), weight_decay=cfg.weight_decay)


def lr_factor(step: int, cfg: RunConfig) -> float:
    """The learning rate at scheduler step ``step`` (0-based: optimizer step ``step`` + 1 uses it)
    as a fraction of the peak ``lr``. With W = warmup_steps, S = steps, s0 = lr_warmup_start and
    m = lr_min / lr:

        step < W:  s0 + (1 - s0) * step / W                        (linear warm-up from s0 lr)
        else:      cosine:   max(0, m + (1 - m) * (1 + cos(pi * p)) / 2),  p = (step - W) / (S - W)
                   constant: 1

    (max(1, .) guards W = 0 and S = W). At s0 = m = 0 this is, float for float, transformers'
    ``get_cosine_schedule_with_warmup`` / ``get_constant_schedule_with_warmup``; the authors'
    reference run (GradualWarmupScheduler x20 over 10 epochs, then CosineAnnealingLR to eta_min
    over 200 epochs) is s0 = 0.05, lr_min = 1e-5 at lr 2e-4, W = 3,700, S = 77,700.
    """
    w = cfg.warmup_steps
    if step < w:
        return cfg.lr_warmup_start + (1.0 - cfg.lr_warmup_start) * (float(step) / float(max(1, w)))
    if cfg.lr_schedule == "constant":
        return 1.0
    progress = float(step - w) / float(max(1, cfg.steps - w))
    floor = cfg.lr_min / cfg.lr
    factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    return max(0.0, factor * (1 - floor) + floor)


def make_scheduler(cfg: RunConfig, optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_steps`` from ``lr_warmup_start`` of the peak, then cosine
    decay to ``lr_min`` at ``steps`` (``lr_schedule: cosine``) or constant (see ``lr_factor``).
    The factor multiplies the optimizer's learning rate (``effective_lr``), so under
    ``lr_scaling: ntk`` the floor is scaled with the peak."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(lr_factor, cfg=cfg))


class Run:
    """One training run of ``cfg`` on ``data`` (numpy columns per split) of ``task``."""

    def __init__(self, cfg: RunConfig, task, data: dict, accelerator: Accelerator):
        self.cfg, self.task, self.data, self.accelerator = cfg, task, data, accelerator
        self.objective = objective_for(task, cfg.last_position_only)
        self.eval_data = {s: {k: v[: cfg.n_eval] if s == "train" else v for k, v in data[s].items()}
                          for s in data}
        self.metrics, self.offsets, self.neurons, self.last_neurons = [], [], [], []
        self.initial_neurons: list[dict] = []  # the probe before the loss first falls
        self.heatmap = None
        self.train_log: list[dict] = []  # store.TRAIN_LOG_COLUMNS every log_every steps

    def build(self):
        """The run's untrained model at its init rate, on the device; keeps its unit sets at
        step 0 (for RD) and its init records."""
        cfg = self.cfg
        set_seed(cfg.seed)  # before the model is built: the init draws from the global generator
        model, self.init_records = build_for_run(cfg, self.task)
        self.units0 = {(u.layer, u.component, u.head): u.units for u in all_units(model)}
        return model.to(self.accelerator.device)

    def batches(self, done: int):
        """Endless batches (dicts of the objective's ``batch_columns`` as tensors on the device)
        from step ``done`` + 1 on: epochs over the fixed training set, the whole set every step
        when ``batch_size`` >= its size (full batch), or fresh samples every step when
        ``fresh_samples``. The batch of a step depends only on (seed, step), so a resumed run sees
        the same data as an unbroken one."""
        cfg, device = self.cfg, self.accelerator.device
        columns = self.objective.batch_columns
        if cfg.fresh_samples:
            for step in itertools.count(done + 1):
                b = self.task.train_sampler(np.random.default_rng([cfg.data_seed, cfg.seed, step]),
                                            cfg.batch_size)
                yield {c: torch.as_tensor(b[c], device=device) for c in columns}
        train = self.data["train"]
        tensors = [torch.as_tensor(train[c]) for c in columns]
        if cfg.batch_size >= len(tensors[0]):
            full = {c: t.to(device) for c, t in zip(columns, tensors)}
            while True:
                yield full
        dataset = TensorDataset(*tensors)
        batch_size = min(cfg.batch_size, len(dataset))
        first_epoch, skip = divmod(done, len(dataset) // batch_size)
        for epoch in itertools.count(first_epoch):
            seed = int(np.random.SeedSequence([cfg.seed, epoch]).generate_state(1)[0])
            # a batch sampler with batch_size=None makes one vectorized gather per batch
            sampler = BatchSampler(RandomSampler(dataset, generator=torch.Generator().manual_seed(seed)),
                                   batch_size, drop_last=True)
            loader = DataLoader(dataset, sampler=sampler, batch_size=None)
            # skipped batches are cheap gathers: replaying them keeps the order exact
            for batch in itertools.islice(loader, skip, None):
                yield {c: t.to(device) for c, t in zip(columns, batch)}
            skip = 0

    def train(self, progress=None) -> RunResult:
        """Train to ``cfg.steps`` (from the saved state when there is one), probing on the
        log-spaced schedule; stops early when the loss is not finite (``diverged``). Every
        ``log_every`` steps it logs loss, learning rate and gradient norm, and writes them to the
        run folder's train_log.csv at each saved state and at the end.

        Args:
            progress: called as progress(loss or None, steps done since the last call).

        Returns:
            the run's RunResult (model moved to CPU).
        """
        cfg, acc = self.cfg, self.accelerator
        start = time.perf_counter()
        model = self.build()
        optimizer = make_optimizer(cfg, model.parameters())
        scheduler = make_scheduler(cfg, optimizer)
        schedule = set(probe_steps(cfg.steps, cfg.n_probes))
        folder = run_dir(cfg)
        saved = None if cfg.overwrite else load_state(folder, model, optimizer, scheduler)
        if saved is None:
            done, scores, wall0 = 0, self.probe(model, 0), 0.0
        else:
            done, scores, wall0 = saved["step"], saved["scores"], saved["wall_s"]
            self.metrics, self.offsets = saved["metrics"], saved["offsets"]
            self.neurons, self.last_neurons = saved.get("neurons", []), saved.get("last_neurons", [])
            self.initial_neurons = saved.get("initial_neurons", [])
            self.train_log = saved.get("train_log", [])
        # through accelerate: under fp16 it unscales before clipping and skips overflowed steps
        optimizer = acc.prepare_optimizer(optimizer, device_placement=False)
        if acc.scaler is not None:  # fp16: this run's own gradient scale, fresh or resumed
            fresh = SCALER_START.setdefault(acc.scaler, acc.scaler.state_dict())
            acc.scaler.load_state_dict((saved or {}).get("scaler") or fresh)
        if progress is not None:
            progress(None, done)
        diverged, step = False, done
        batches = self.batches(done)
        model.train()
        for step in range(done + 1, cfg.steps + 1):
            batch = next(batches)
            with acc.autocast():
                loss = self.objective.loss(model, batch)
            log_now = cfg.log_every > 0 and step % cfg.log_every == 0
            lr = scheduler.get_last_lr()[0]  # the rate this step uses
            if not torch.isfinite(loss):
                diverged = True
                self.train_log.append(dict(step=step, loss=loss.item(), lr=lr, grad_norm=None))
                break
            acc.backward(loss)
            norm = None
            if cfg.grad_clip > 0 or log_now:  # max_norm inf: the norm measured, no gradient changed
                norm = acc.clip_grad_norm_(model.parameters(), cfg.grad_clip or math.inf)
            optimizer.step()
            if not optimizer.step_was_skipped:  # fp16: no scheduler step for a skipped step
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            value = loss.item() if progress is not None or log_now else None
            if log_now:
                self.train_log.append(dict(step=step, loss=value, lr=lr, grad_norm=norm.item()))
            if progress is not None:
                progress(value, 1)
            if step in schedule:
                scores = self.probe(model, step)
                model.train()
            if cfg.save_every and step % cfg.save_every == 0 and step < cfg.steps:
                save_state(folder, model, optimizer, scheduler, {
                    "step": step, "scores": scores, "metrics": self.metrics,
                    "offsets": self.offsets, "neurons": self.neurons,
                    "last_neurons": self.last_neurons, "initial_neurons": self.initial_neurons,
                    "train_log": self.train_log, "wall_s": wall0 + time.perf_counter() - start,
                    **({"scaler": acc.scaler.state_dict()} if acc.scaler is not None else {})})
                write_train_log(folder, self.train_log)
        names = ("train_loss", *self.objective.score_names)
        final = dict.fromkeys(names, float("nan")) if diverged else scores
        n_train = len(self.data["train"][self.objective.batch_columns[0]])
        fitted = (not diverged) and self.objective.fitted(final)
        row = runs_row(cfg, final, step=step, n_train=n_train, fitted=fitted, diverged=diverged,
                       wall_s=wall0 + time.perf_counter() - start,
                       num_threads=torch.get_num_threads(), device=acc.device.type)
        write_train_log(folder, self.train_log)
        acc.free_memory()  # forget this run's optimizer: the next run prepares its own
        model.eval()
        steps = {0}
        neurons = list(self.neurons)
        for rows in (self.initial_neurons, self.last_neurons):
            if rows and rows[0]["step"] not in steps:
                steps.add(rows[0]["step"])
                neurons += rows
        return RunResult(cfg, row, self.metrics, self.offsets, model.cpu(), self.init_records,
                         neurons, self.heatmap)

    @torch.no_grad()
    def probe(self, model, step: int) -> dict:
        """Condensation of every unit set, the directions of a 1-D two-layer net, and the task's
        scores at ``step``; appends the report rows and returns the scores (train_loss included)."""
        model.eval()
        run_id, cfg = self.cfg.run_id, self.cfg
        for u in all_units(model):
            fit = Condensation(cfg.thresholds).fit(u.units)
            base = dict(run_id=run_id, step=step, layer=u.layer, component=u.component,
                        head=u.head, basis="weight")
            self.metrics += metric_rows(fit, base)
            if (u.layer, u.component, u.head) == HEATMAP_UNITS and fit.n_units_ > 1:
                cosine, stride = fit.ordered_cosine()
                self.heatmap = dict(cosine=cosine, stride=stride, n_units=fit.n_units_,
                                    n_groups=fit.n_groups_, mean_abs_cos=fit.mean_abs_cos_)
            if u.component in NO_RD:
                continue
            rd = relative_distance(u.units, self.units0[(u.layer, u.component, u.head)])
            self.metrics.append(base | dict(metric="rd", threshold=None, value=rd, n_units=fit.n_units_))
        before = self.last_neurons
        self.probe_neurons(model, step)
        ev = self.objective.evaluate(model, self.eval_data, self.accelerator.device)
        if before and not self.initial_neurons and self.loss_fell(ev.scores.get("train_loss")):
            self.initial_neurons = before
        base = dict(run_id=run_id, step=step, layer=None, component="output", head=None,
                    basis=None, threshold=None)
        for metric, value in ev.scores.items():
            self.metrics.append(base | dict(metric=metric, value=value, n_units=ev.counts[metric]))
        if cfg.merge_probe and step == cfg.steps:  # the condensed groups merged (final probe)
            self.metrics += merge_rows(model, self.objective, self.eval_data,
                                       self.accelerator.device, cfg.thresholds,
                                       dict(run_id=run_id, step=step), ev.scores)
        n_ood = sum(ev.offsets.values())
        for offset, count in ev.offsets.items():
            self.offsets.append(dict(run_id=run_id, step=step, offset=offset, count=count,
                                     share=count / n_ood))
        return ev.scores

    def loss_fell(self, loss) -> bool:
        """Whether the training loss has left the initial stage (``measure.neurons.loss_fell``,
        the rule ``report.tables.initial_stage`` applies to metrics.csv)."""
        first = [r["value"] for r in self.metrics
                 if r["step"] == 0 and r["metric"] == "train_loss" and r["component"] == "output"]
        return bool(first) and loss is not None and bool(loss_fell(loss, first[0]))

    def probe_neurons(self, model, step: int) -> None:
        """1-D two-layer nets: directions counted from the angle histogram (metrics rows
        ``n_directions``, ``n_lines`` and ``direction_share``, the share of the total amplitude
        they hold), and each neuron's (w, b, angle, amplitude), kept for step 0, the end of the
        initial stage (``loss_fell``) and the latest probe."""
        feats = neuron_features(model)
        if feats is None or not np.isfinite(feats["amplitude"]).all():
            return
        found = count_directions(feats["angle"], feats["amplitude"])
        base = dict(run_id=self.cfg.run_id, step=step, layer=feats["layer"],
                    component=feats["component"], head=None, basis="weight", threshold=None,
                    n_units=len(feats["angle"]))
        self.metrics.append(base | dict(metric="n_directions", value=float(found.n_directions)))
        self.metrics.append(base | dict(metric="n_lines", value=float(found.n_lines)))
        # how much of the output amplitude the directions hold: near 1 when condensed, well
        # below at a random initialization, whose histogram also has chance peaks
        self.metrics.append(base | dict(metric="direction_share", value=float(found.shares.sum())))
        rows = [dict(run_id=self.cfg.run_id, step=step, layer=feats["layer"],
                     component=feats["component"], unit=k, w=float(w), b=float(b),
                     angle=float(t), amplitude=float(amp))
                for k, ((w, b), t, amp) in enumerate(zip(feats["units"], feats["angle"],
                                                         feats["amplitude"]))]
        if step == 0:
            self.neurons = rows
        self.last_neurons = rows
