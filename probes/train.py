"""Train one run: build the model at its init rate, train it with accelerate, probe it on a
log-spaced schedule (step 0 included), and return its report rows.

Runs are the unit of parallelism: each accelerate process trains whole runs on its own device, so
the model is never wrapped for data-parallel training (``accelerator.prepare`` would wrap it in
DDP and make every process train the same run). The loop otherwise follows accelerate's examples:
device placement, ``autocast``, ``backward`` and ``clip_grad_norm_`` all go through the
``Accelerator``.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset
from transformers import get_cosine_schedule_with_warmup

from models import apply_init_rate, build_model
from probes.config import RunConfig
from probes.metrics import Condensation, relative_distance
from probes.report import run_dir
from probes.resume import load_state, save_state
from probes.units import read_units

EVAL_SPLITS = ("train", "test_id", "ood")


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


def probe_steps(steps: int, n_probes: int) -> list[int]:
    """Log-spaced probe steps in [0, steps]: 0, then ``n_probes - 1`` geometric points to ``steps``
    (rounded, duplicates removed, so early steps may merge)."""
    if n_probes < 2:
        return [0, steps] if steps else [0]
    points = np.unique(np.round(np.geomspace(1, steps, n_probes - 1)).astype(int))
    return [0, *[int(s) for s in points]]


@torch.no_grad()
def predict_last(model, input_ids: np.ndarray, device, batch_size: int = 4096) -> tuple:
    """Greedy prediction at the last position.

    Args:
        model: causal LM returning ``.logits`` (b, t, vocab).
        input_ids: (n, t) int array.

    Returns:
        (pred (n,) int64 numpy, logits (n, vocab) float32 torch on CPU).
    """
    logits = []
    for start in range(0, len(input_ids), batch_size):
        x = torch.as_tensor(input_ids[start:start + batch_size], device=device)
        logits.append(model(input_ids=x).logits[:, -1].float().cpu())
    logits = torch.cat(logits) if logits else torch.zeros(0, model.config.vocab_size)
    return logits.argmax(-1).numpy(), logits


class Run:
    """One training run of ``cfg`` on ``data`` (numpy columns per split) of ``task``."""

    def __init__(self, cfg: RunConfig, task, data: dict, accelerator: Accelerator):
        self.cfg, self.task, self.data, self.accelerator = cfg, task, data, accelerator
        self.eval_data = {s: {k: v[: cfg.n_eval] if s == "train" else v for k, v in data[s].items()}
                          for s in EVAL_SPLITS}
        self.metrics, self.offsets = [], []

    def build(self):
        cfg = self.cfg
        set_seed(cfg.seed)  # before the model is built: the init draws from the global generator
        model = build_model(
            cfg.model_family, vocab_size=cfg.vocab_size, n_positions=self.task.seq_len,
            n_embd=cfg.n_embd, n_layer=cfg.n_layer, n_head=cfg.n_head, d_ff=cfg.d_ff,
            dropout=cfg.dropout,
        )
        self.init_records = apply_init_rate(model, cfg.gamma, cfg.part_gammas)
        self.units0 = {(u.layer, u.component, u.head): u.units for u in read_units(model)}
        return model.to(self.accelerator.device)

    def batches(self, done: int):
        """Endless (input_ids, target) batches from step ``done`` + 1 on: epochs over the fixed
        training set, or fresh samples every step when ``fresh_samples``. The batch of a step
        depends only on (seed, step), so a resumed run sees the same data as an unbroken one."""
        cfg, device = self.cfg, self.accelerator.device
        if cfg.fresh_samples:
            for step in itertools.count(done + 1):
                b = self.task.train_sampler(np.random.default_rng([cfg.data_seed, cfg.seed, step]),
                                            cfg.batch_size)
                yield (torch.as_tensor(b["input_ids"], device=device),
                       torch.as_tensor(b["target"], device=device))
        train = self.data["train"]
        dataset = TensorDataset(torch.as_tensor(train["input_ids"]), torch.as_tensor(train["target"]))
        batch_size = min(cfg.batch_size, len(dataset))
        first_epoch, skip = divmod(done, len(dataset) // batch_size)
        for epoch in itertools.count(first_epoch):
            seed = int(np.random.SeedSequence([cfg.seed, epoch]).generate_state(1)[0])
            # a batch sampler with batch_size=None makes one vectorized gather per batch
            sampler = BatchSampler(RandomSampler(dataset, generator=torch.Generator().manual_seed(seed)),
                                   batch_size, drop_last=True)
            loader = DataLoader(dataset, sampler=sampler, batch_size=None)
            # skipped batches are cheap gathers: replaying them keeps the order exact
            for x, y in itertools.islice(loader, skip, None):
                yield x.to(device), y.to(device)
            skip = 0

    def train(self, progress=None) -> RunResult:
        cfg, acc = self.cfg, self.accelerator
        start = time.perf_counter()
        model = self.build()
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        scheduler = get_cosine_schedule_with_warmup(optimizer, cfg.warmup_steps, cfg.steps)
        schedule = set(probe_steps(cfg.steps, cfg.n_probes))
        folder = run_dir(cfg)
        saved = None if cfg.overwrite else load_state(folder, model, optimizer, scheduler)
        if saved is None:
            done, scores, wall0 = 0, self.probe(model, 0), 0.0
        else:
            done, scores, wall0 = saved["step"], saved["scores"], saved["wall_s"]
            self.metrics, self.offsets = saved["metrics"], saved["offsets"]
        if progress is not None:
            progress(None, done)
        diverged, step = False, done
        batches = self.batches(done)
        model.train()
        for step in range(done + 1, cfg.steps + 1):
            x, y = next(batches)
            with acc.autocast():
                loss = F.cross_entropy(model(input_ids=x).logits[:, -1], y)  # last position only
            if not torch.isfinite(loss):
                diverged = True
                break
            acc.backward(loss)
            if cfg.grad_clip > 0:
                acc.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if progress is not None:
                progress(loss.item(), 1)
            if step in schedule:
                scores = self.probe(model, step)
                model.train()
            if cfg.save_every and step % cfg.save_every == 0 and step < cfg.steps:
                save_state(folder, model, optimizer, scheduler, {
                    "step": step, "scores": scores, "metrics": self.metrics,
                    "offsets": self.offsets, "wall_s": wall0 + time.perf_counter() - start})
        final = dict.fromkeys(("train_loss", *self.task.score_names), float("nan")) if diverged else scores
        row = self.summary(final, step, diverged, wall0 + time.perf_counter() - start)
        model.eval()
        return RunResult(cfg, row, self.metrics, self.offsets, model.cpu(), self.init_records)

    @torch.no_grad()
    def probe(self, model, step: int) -> dict:
        """Condensation of every unit set and the reasoning scores at ``step``; appends the
        report rows and returns the reasoning scores (train_loss included)."""
        model.eval()
        run_id, cfg = self.cfg.run_id, self.cfg
        for u in read_units(model):
            fit = Condensation(cfg.thresholds).fit(u.units)
            base = dict(run_id=run_id, step=step, layer=u.layer, component=u.component,
                        head=u.head, basis="weight", n_units=fit.n_units_)
            for metric, threshold, value in fit.results():
                self.metrics.append(base | dict(metric=metric, threshold=threshold, value=value))
            rd = relative_distance(u.units, self.units0[(u.layer, u.component, u.head)])
            self.metrics.append(base | dict(metric="rd", threshold=None, value=rd))
        preds, logits = {}, {}
        for split in EVAL_SPLITS:
            preds[split], logits[split] = predict_last(model, self.eval_data[split]["input_ids"],
                                                       self.accelerator.device)
        target = torch.as_tensor(self.eval_data["train"]["target"])
        scores = {"train_loss": F.cross_entropy(logits["train"], target).item()}
        scores |= self.task.reasoning_metrics(preds, self.eval_data)
        base = dict(run_id=run_id, step=step, layer=None, component="output", head=None,
                    basis=None, threshold=None)
        for metric, value in scores.items():
            n = len(self.eval_data["ood" if metric.startswith("ood") else "train"]["key"])
            self.metrics.append(base | dict(metric=metric, value=value, n_units=n))
        for offset, count in self.task.ood_offsets(preds["ood"], self.eval_data["ood"]).items():
            self.offsets.append(dict(run_id=run_id, step=step, offset=offset, count=count,
                                     share=count / len(preds["ood"])))
        return scores

    def summary(self, scores: dict, step: int, diverged: bool, wall_s: float) -> dict:
        cfg = self.cfg
        fitted = (not diverged) and self.task.fitted(scores)
        n_train = len(self.data["train"]["target"])
        epochs = float("nan") if cfg.fresh_samples else step * cfg.batch_size / max(n_train, 1)
        return {
            "run_id": cfg.run_id, "experiment": cfg.experiment, "task": cfg.task,
            "model_family": cfg.model_family, "gamma": cfg.gamma, "n_layer": cfg.n_layer,
            "n_embd": cfg.n_embd, "n_head": cfg.n_head, "lr": cfg.lr,
            "weight_decay": cfg.weight_decay, "dropout": cfg.dropout, "seed": cfg.seed,
            "steps": step, "epochs": round(epochs, 3) if not math.isnan(epochs) else epochs,
            **scores, "fitted": fitted, "diverged": diverged, "wall_s": round(wall_s, 2),
        }
