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

import dataclasses
import functools
import itertools
import math
import shutil
import time
import weakref

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset

from models import build_for_run
from probes.config import ANALYSIS_BEFORE, RunConfig, effective_lr, merge_at
from probes.measure.family_units import all_units
from probes.measure.series import SeriesProbe
from probes.store import RunResult, runs_row, save_checkpoint, work_dir, write_train_log
from probes.train.resume import load_state, save_state
from tasks import make_task
from tasks.objective import objective_for

# fp16: the state each accelerator's GradScaler had before its first run (its initial scale), so
# that every run starts from it rather than from the scale the previous run left
SCALER_START: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


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


def peak_lr(cfg: RunConfig, updates: int) -> float:
    """The highest learning rate that any of the run's first ``updates`` weight updates used
    (the optimizer's rate, ``effective_lr``): the factor of ``lr_factor`` rises over the warm-up
    and never rises after it, so it is the factor of scheduler step min(updates - 1, W). Below
    the peak ``lr`` when the warm-up did not end: ``warmup_steps >= steps``, a run that diverged
    or, under fp16, steps skipped during the warm-up. NaN when no update was made."""
    if updates < 1:
        return float("nan")
    return effective_lr(cfg) * lr_factor(min(updates - 1, cfg.warmup_steps), cfg)


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
        self.folder = work_dir(cfg)
        self.train_log: list[dict] = []  # store.TRAIN_LOG_COLUMNS every log_every steps
        self.series: SeriesProbe | None = None

    def build(self):
        """The run's untrained model at its init rate, on the device; keeps its unit sets (RD is
        measured from them) and its init records."""
        set_seed(self.cfg.seed)  # before the model is built: the init draws from the global generator
        model, self.init_records = build_for_run(self.cfg, self.task)
        self.units0 = {(u.layer, u.component, u.head): u.units for u in all_units(model)}
        return model.to(self.accelerator.device)

    def measuring(self) -> SeriesProbe:
        """The series probe of this run, at its analysis settings."""
        cfg = self.cfg
        return SeriesProbe(cfg.run_id, self.objective, eval_data(cfg, self.data),
                           self.accelerator.device, cfg.thresholds,
                           merge_steps=merge_at(cfg, probe_steps(cfg.steps, cfg.n_probes)),
                           units0=self.units0, chance=(cfg.chance_draws, cfg.chance_nulls))

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
        """Train to ``cfg.steps`` (from the saved state when there is one), measuring and saving
        the model at each step of the log-spaced schedule; stops early when the loss is not
        finite (``diverged``). Every ``log_every`` steps it logs loss, learning rate and gradient
        norm (train_log.csv, written at each saved state and at the end).

        Args:
            progress: called as progress(loss or None, steps done since the last call).

        Returns:
            the run's RunResult (model moved to CPU).
        """
        start = time.perf_counter()
        model = self.build()
        optimizer = make_optimizer(self.cfg, model.parameters())
        scheduler = make_scheduler(self.cfg, optimizer)
        saved = None if self.cfg.overwrite else load_state(self.folder, model, optimizer, scheduler)
        done, scores, wall0 = self.resume(model, saved)
        cfg, acc = self.cfg, self.accelerator
        schedule = set(probe_steps(cfg.steps, cfg.n_probes))
        optimizer = self.prepare(optimizer, saved)
        if progress is not None:
            progress(None, done)
        diverged, step = False, done
        batches = self.batches(done)
        model.train()
        for step in range(done + 1, cfg.steps + 1):
            value = self.step(model, next(batches), optimizer, scheduler, step,
                              want_loss=progress is not None)
            if value is None:
                diverged = True
                break
            if progress is not None:
                progress(value, 1)
            if step in schedule:
                scores = self.probe(model, step)
                model.train()
            if cfg.save_every and step % cfg.save_every == 0 and step < cfg.steps:
                save_state(self.folder, model, optimizer, scheduler, {
                    "step": step, "scores": scores, "series": self.series.state_dict(),
                    "analysis": cfg.analysis(),
                    "train_log": self.train_log, "wall_s": wall0 + time.perf_counter() - start,
                    **({"scaler": acc.scaler.state_dict()} if acc.scaler is not None else {})})
                write_train_log(self.folder, self.train_log)
        write_train_log(self.folder, self.train_log)
        acc.free_memory()  # forget this run's optimizer: the next run prepares its own
        # the scheduler steps once per weight update (``step``: not for an fp16 step skipped
        # for overflow, nor for a diverged one), and its count is resumed with the run
        updates = scheduler.last_epoch
        return self.result(model.eval(), scores, step, diverged,
                           wall0 + time.perf_counter() - start, updates)

    def resume(self, model, saved: dict | None) -> tuple[int, dict, float]:
        """(steps done, latest scores, wall seconds so far): from the saved state, measured on
        at the analysis settings it began with (the experiment measures the finished run again
        if they differ from the ones asked for); or 0 after measuring the untrained model in an
        emptied work folder (no checkpoint of an unfinished earlier attempt is kept)."""
        if saved is None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder.mkdir(parents=True)
            self.series = self.measuring()
            return 0, self.probe(model, 0), 0.0
        self.cfg = dataclasses.replace(self.cfg, **(ANALYSIS_BEFORE | saved["analysis"]))
        self.series = self.measuring()
        self.series.load_state_dict(saved["series"])
        self.train_log = saved.get("train_log", [])
        return saved["step"], saved["scores"], saved["wall_s"]

    def prepare(self, optimizer, saved: dict | None):
        """The optimizer through accelerate (under fp16 it unscales before clipping and skips
        overflowed steps) with this run's own gradient scale, fresh or resumed."""
        acc = self.accelerator
        optimizer = acc.prepare_optimizer(optimizer, device_placement=False)
        if acc.scaler is not None:
            fresh = SCALER_START.setdefault(acc.scaler, acc.scaler.state_dict())
            acc.scaler.load_state_dict((saved or {}).get("scaler") or fresh)
        return optimizer

    def step(self, model, batch, optimizer, scheduler, step: int, want_loss: bool) -> float | None:
        """One optimizer step; returns the batch loss (NaN when not asked for and not logged),
        or None when it is not finite (nothing is updated then)."""
        cfg, acc = self.cfg, self.accelerator
        with acc.autocast():
            loss = self.objective.loss(model, batch)
        log_now = cfg.log_every > 0 and step % cfg.log_every == 0
        lr = scheduler.get_last_lr()[0]  # the rate this step uses
        if not torch.isfinite(loss):
            self.train_log.append(dict(step=step, loss=loss.item(), lr=lr, grad_norm=None))
            return None
        acc.backward(loss)
        norm = None
        if cfg.grad_clip > 0 or log_now:  # max_norm inf: the norm measured, no gradient changed
            norm = acc.clip_grad_norm_(model.parameters(), cfg.grad_clip or math.inf)
        optimizer.step()
        if not optimizer.step_was_skipped:  # fp16: no scheduler step for a skipped step
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        value = loss.item() if want_loss or log_now else math.nan
        if log_now:
            self.train_log.append(dict(step=step, loss=value, lr=lr, grad_norm=norm.item()))
        return value

    def probe(self, model, step: int) -> dict:
        """Measure ``model`` at ``step`` (``SeriesProbe``) and, under ``save_checkpoints:
        probes``, save it as checkpoint-<step> (the last step's model is saved as model/ with
        the finished run); returns the scores (train_loss included)."""
        scores = self.series.measure(model, step).scores
        if self.cfg.save_checkpoints == "probes" and step < self.cfg.steps:
            save_checkpoint(self.folder, model, step, scores)
        return scores

    def result(self, model, scores: dict, step: int, diverged: bool, wall_s: float,
               updates: int) -> RunResult:
        """The finished run: its runs row from the final scores (NaN after a divergence) and
        every probe's rows. ``updates``: the optimizer steps that changed the weights; of the
        ``step`` steps taken (less the diverged one), the others were skipped by fp16's
        gradient scaler."""
        cfg = self.cfg
        names = ("train_loss", *self.objective.score_names)
        final = dict.fromkeys(names, float("nan")) if diverged else scores
        n_train = len(self.data["train"][self.objective.batch_columns[0]])
        fitted = (not diverged) and self.objective.fitted(final)
        row = runs_row(cfg, final, step=step, n_train=n_train, fitted=fitted, diverged=diverged,
                       wall_s=wall_s, num_threads=torch.get_num_threads(),
                       device=self.accelerator.device.type,
                       mixed_precision=self.accelerator.mixed_precision,
                       lr_peak=peak_lr(cfg, updates),
                       skipped_steps=step - int(diverged) - updates)
        s = self.series
        return RunResult(cfg, row, s.metrics, s.offsets, s.neurons, s.heatmap, model.cpu(),
                         self.init_records, lineage=s.lineage)


def eval_data(cfg: RunConfig, data: dict) -> dict:
    """The samples a probe scores: every split, the training split cut to ``n_eval``."""
    return {s: {k: v[: cfg.n_eval] if s == "train" else v for k, v in data[s].items()}
            for s in data}


def build_data(cfgs):
    """A lookup cfg -> (task, numpy columns per split), built once per distinct task setting
    (runs of a grid share their data)."""
    def key(cfg):
        return cfg.task, tuple(sorted(cfg.task_options().items()))

    cache = {}
    for cfg in cfgs:
        if key(cfg) not in cache:
            task = make_task(cfg.task, **cfg.task_options())
            splits = task.build()
            cache[key(cfg)] = (task, {s: splits[s][:] for s in splits})
    return lambda cfg: cache[key(cfg)]
