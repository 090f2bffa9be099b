"""The run folder: what a run writes while it trains, its checkpoint series, and the finished
folder (written whole, then put in place). Layout: ``probes.store``."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from models import LM_FAMILIES
from probes.config import RunConfig, effective_lr, resolved_yaml
from probes.measure.result import (
    LINEAGE_COLUMNS,
    METRICS_COLUMNS,
    NEURONS_COLUMNS,
    OFFSETS_COLUMNS,
    HeatMap,
)
from probes.runtime import hub_progress_bars_off
from probes.store import files
from probes.store.output import replace_folder, shared_mode, staging_dir
from probes.store.provenance import provenance
from probes.store.publish import Publish

MODEL, CONFIG, RUN_JSON, STATE, HEATMAP = "model", "config.yaml", "run.json", "state", "heatmap.npz"
TRAIN_LOG, SCORES = "train_log.csv", "scores.json"
CHECKPOINT = re.compile(r"checkpoint-(\d+)")
# what measuring a run writes into its folder (re-measuring replaces exactly these)
MEASURED = {CONFIG, RUN_JSON, "metrics.csv", "ood_offsets.csv", "neurons.csv", "lineage.csv",
            HEATMAP}


@dataclass
class RunResult:
    """A measured run, as its folder keeps it: the config, its runs.csv row, the rows of every
    probe step (``probes.measure.result``), the last step's heat map, after training the
    trained model (on CPU) with its init records, and the lineage.csv rows."""

    cfg: RunConfig
    row: dict
    metrics: list[dict] = field(default_factory=list)
    offsets: list[dict] = field(default_factory=list)
    neurons: list[dict] = field(default_factory=list)
    heatmap: HeatMap | None = None
    model: torch.nn.Module | None = None
    init_records: list[dict] = field(default_factory=list)
    lineage: list[dict] = field(default_factory=list)


def run_folder(out_dir: Path, run_id: str) -> Path:
    """``<out_dir>/runs/<run_id>``: the folder of one run of the experiment in ``out_dir``."""
    return Path(out_dir) / "runs" / run_id


def run_dir(cfg: RunConfig) -> Path:
    """The folder of the run of ``cfg`` (``run_folder`` of its output folder and run id)."""
    return run_folder(cfg.out_dir, cfg.run_id)


def work_dir(cfg: RunConfig) -> Path:
    """``runs/.<run_id>.training``: where the run of ``cfg`` writes while it trains (state/,
    train_log.csv, checkpoint-<step>/), apart from any finished folder of the same id."""
    return Path(cfg.out_dir) / "runs" / f".{cfg.run_id}.training"


def state_dir(folder: Path) -> Path:
    """The resumable training state in work folder ``folder``."""
    return folder / STATE


def run_of_model(model_dir: Path) -> Path | None:
    """The run folder of a checkpoint this project's training saved (``runs/<run_id>/model`` or
    ``runs/<run_id>/checkpoint-<step>``), or None for any other folder."""
    model_dir = Path(model_dir).resolve()
    if model_dir.name == MODEL:
        return model_dir.parent
    ours = CHECKPOINT.fullmatch(model_dir.name) and (model_dir.parent / CONFIG).is_file()
    return model_dir.parent if ours else None


def write_train_log(folder: Path, rows: list[dict]) -> None:
    """Atomically write a run's training log (TRAIN_LOG_COLUMNS) into ``folder``; with no rows
    (``log_every: 0``) remove a stale one instead."""
    if rows:
        files.write_csv(files.frame(rows, files.TRAIN_LOG_COLUMNS), Path(folder) / TRAIN_LOG)
    else:
        (Path(folder) / TRAIN_LOG).unlink(missing_ok=True)


def save_model(model, folder: Path) -> None:
    """``model.save_pretrained(folder)`` (safetensors, float32, no progress bar) on whichever
    process calls it. transformers 5 writes only on torch.distributed's rank 0
    (``should_save_on_this_rank``), which suits data-parallel training; here each process trains
    runs of its own (a split of the grid) and saves their checkpoint series itself, so the rank
    gate is lifted for this call (older versions have none)."""
    model.should_save_on_this_rank = lambda is_main_process: is_main_process
    try:
        with hub_progress_bars_off():  # one "Writing model shards" bar a probe step
            model.save_pretrained(folder)
    finally:
        del model.should_save_on_this_rank  # the class's own method again


def save_checkpoint(folder: Path, model, step: int, scores: dict) -> None:
    """Save ``model`` as ``folder/checkpoint-<step>`` (``save_pretrained``, safetensors) with the
    task's scores at that step (``scores.json``), written whole, then renamed into place."""
    tmp = Path(tempfile.mkdtemp(dir=folder, prefix=f".checkpoint-{step}."))
    try:
        save_model(model, tmp)
        (tmp / SCORES).write_text(json.dumps({"step": step, **scores}, indent=1, default=float))
        replace_folder(tmp, Path(folder) / f"checkpoint-{step}")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def checkpoint_series(folder: Path) -> list[tuple[int, Path]]:
    """(step, model folder) of every model a finished run saved, in step order: its
    ``checkpoint-<step>`` folders and ``model/`` at the steps it trained (not after a
    divergence, which no probe measured)."""
    found = {int(m.group(1)): p for p in Path(folder).iterdir()
             if p.is_dir() and (m := CHECKPOINT.fullmatch(p.name))}
    row = read_run_json(folder) or {}
    if (Path(folder) / MODEL).is_dir() and not row.get("diverged", False) and "steps" in row:
        found.setdefault(int(row["steps"]), Path(folder) / MODEL)
    return sorted(found.items())


def runs_row(cfg: RunConfig, scores: dict, *, step: int, n_train: int, fitted: bool,
             diverged: bool, wall_s: float, num_threads: int, device: str = "",
             mixed_precision: str | None = None, lr_peak: float | None = None,
             skipped_steps: int = 0) -> dict:
    """One run's runs.csv row (without ``checkpoint``, added on saving), with the provenance of
    the code that trains it (``files.PROVENANCE_COLUMNS``: measuring the run again keeps it).

    Args:
        cfg: the run's config; scores: train_loss and the task's scores at the last step;
        step: steps trained; n_train: training samples (epochs = step * batch / n_train);
        fitted, diverged: the run's outcome; wall_s: seconds of training and probing;
        num_threads: torch threads (float sums depend on it, and training amplifies them);
        device: the device type it trained on (``cpu``, ``cuda``, ...);
        mixed_precision: the autocast precision the accelerator trained it in (no | fp16 | bf16;
            None: ``cfg.mixed_precision``). It is part of the run's identity, so a run trained
            in another precision than its config names is refused.
        lr_peak: the highest learning rate a weight update used (``train.loop.peak_lr``; None:
            blank); skipped_steps: optimizer steps fp16's gradient scaler skipped for
            overflowed gradients (``step`` counts them).

    Raises:
        ValueError: ``mixed_precision`` is not ``cfg.mixed_precision``.
    """
    if mixed_precision is not None and mixed_precision != cfg.mixed_precision:
        raise ValueError(f"run {cfg.run_id!r} was trained with mixed_precision="
                         f"{mixed_precision!r} but its config names {cfg.mixed_precision!r}: "
                         f"accepted is an accelerator made with the config's precision")
    per_step = min(cfg.batch_size, n_train)
    epochs = float("nan") if cfg.fresh_samples else step * per_step / max(n_train, 1)
    lm = cfg.model_family in LM_FAMILIES
    return {
        "run_id": cfg.run_id, "experiment": cfg.experiment, "task": cfg.task,
        "model_family": cfg.model_family, "gamma": cfg.gamma,
        "n_layer": cfg.n_layer if lm else None, "n_embd": cfg.n_embd if lm else None,
        "n_head": cfg.n_head if lm else None, "lr": cfg.lr, "lr_peak": lr_peak,
        "weight_decay": cfg.weight_decay, "dropout": cfg.dropout, "seed": cfg.seed,
        "batch_size": per_step,
        **{k: getattr(cfg, k) for k in files.FAMILY_KEYS.get(cfg.model_family, ())},
        **({"lr_effective": effective_lr(cfg)} if cfg.lr_scaling != "none" else {}),
        "steps": step, "epochs": round(epochs, 3) if not math.isnan(epochs) else epochs,
        **scores, "fitted": fitted, "diverged": diverged, "wall_s": round(wall_s, 2),
        "num_threads": num_threads, "device": device,
        "mixed_precision": mixed_precision or cfg.mixed_precision,
        "skipped_steps": skipped_steps, **provenance(),
    }


def save_run(result: RunResult, source: Path, publish: Publish | None = None) -> dict:
    """Write a measured run's folder whole and put it in place; returns its runs row.

    Args:
        result: the run; its model, when given, is saved as ``model/`` (``save_checkpoints``
            probes or final).
        source: a folder whose files are carried over (hard links), less the ``MEASURED`` files
            and the training state: the work folder after training (train log and checkpoint
            series), or the run folder itself when a finished run is measured again.
        publish: a set the new folder joins (``store.publish.Publish``: its owner commits it,
            or rolls every member back); None: it replaces the old folder at once.

    The new folder is staged beside the old one and swapped into its place
    (``output.replace_folder``): a kill at any point leaves the old folder (and the work folder)
    as they were. ``run.json`` marks it finished.
    """
    cfg, folder = result.cfg, run_dir(result.cfg)
    stage = staging_dir(folder)
    try:
        for p in sorted(Path(source).iterdir()) if Path(source).is_dir() else []:
            if p.name not in MEASURED and p.name != STATE and not p.name.startswith("."):
                if p.is_dir():  # hard links: nothing copied, the source left as it is
                    shutil.copytree(p, stage / p.name, copy_function=os.link)
                else:
                    os.link(p, stage / p.name)
        row = dict(result.row)
        row.setdefault("checkpoint", "")
        if cfg.save_checkpoints != "none" and result.model is not None:
            save_model(result.model, stage / MODEL)
            row["checkpoint"] = str(folder / MODEL)
        init = {"init_method": "init_rate (std = d_in^-gamma)", "init_records": result.init_records}
        files.atomic_write_text(stage / CONFIG, resolved_yaml(cfg, init))
        files.write_csv(files.frame(result.metrics, METRICS_COLUMNS), stage / "metrics.csv")
        files.write_csv(files.frame(result.offsets, OFFSETS_COLUMNS), stage / "ood_offsets.csv")
        if result.neurons:
            files.write_csv(files.frame(result.neurons, NEURONS_COLUMNS), stage / "neurons.csv")
        if result.lineage:
            files.write_csv(files.frame(result.lineage, LINEAGE_COLUMNS), stage / "lineage.csv")
        if result.heatmap is not None:
            save_heatmap(stage / HEATMAP, result.heatmap)
        files.atomic_write_text(stage / RUN_JSON, json.dumps(row, indent=1, default=float))
        if publish is None:
            replace_folder(stage, folder)
        else:
            publish.put(stage, folder)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return row


def save_heatmap(path: Path, heatmap: HeatMap) -> None:
    """Write a run's heat map atomically: ``cosine`` (m, m) float32 in group order, ``stride``,
    ``n_units``, ``mean_abs_cos`` and ``n_groups`` {threshold: groups} as two arrays."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".npz")
    os.close(fd)
    try:
        thresholds = sorted(heatmap.n_groups)
        np.savez(tmp, cosine=heatmap.cosine, stride=heatmap.stride, n_units=heatmap.n_units,
                 mean_abs_cos=heatmap.mean_abs_cos, thresholds=np.array(thresholds, dtype=float),
                 n_groups=np.array([heatmap.n_groups[x] for x in thresholds]))
        os.replace(shared_mode(tmp), path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def load_heatmap(folder: Path) -> HeatMap | None:
    """The heat map saved in run folder ``folder`` (see ``save_heatmap``), or None."""
    path = Path(folder) / HEATMAP
    if not path.is_file():
        return None
    with np.load(path) as z:
        return HeatMap(cosine=z["cosine"], stride=int(z["stride"]), n_units=int(z["n_units"]),
                       mean_abs_cos=float(z["mean_abs_cos"]),
                       n_groups=dict(zip(z["thresholds"].tolist(), z["n_groups"].tolist())))


def finished(cfg: RunConfig) -> bool:
    """Whether the run of ``cfg`` has a complete folder (its run.json)."""
    return (run_dir(cfg) / RUN_JSON).is_file()


def read_run_json(folder: Path) -> dict | None:
    """The runs row saved in run folder ``folder``, or None when it has none or it is unreadable."""
    try:
        return json.loads((Path(folder) / RUN_JSON).read_text())
    except (OSError, ValueError):
        return None


def gather_runs(cfgs: list[RunConfig], out_dir: Path) -> dict[str, pd.DataFrame | None]:
    """Gather the finished runs of ``cfgs`` into the experiment's runs, metrics and ood_offsets
    CSVs, and neurons.csv and lineage.csv when some run has such rows (only the runs of this
    grid, in grid order).

    Returns:
        the frames: runs, metrics, offsets, neurons, lineage (None when no run has any).
    """
    rows, metrics, offsets, neurons, lineage = [], [], [], [], []
    for cfg in cfgs:
        if not finished(cfg):
            continue
        folder = run_dir(cfg)
        rows.append(read_run_json(folder))
        metrics.append(files.read_csv(folder / "metrics.csv"))
        offsets.append(files.read_csv(folder / "ood_offsets.csv"))
        if (folder / "neurons.csv").is_file():
            neurons.append(files.read_csv(folder / "neurons.csv"))
        if (folder / "lineage.csv").is_file():
            lineage.append(files.read_csv(folder / "lineage.csv"))
    scores = [k for k in dict.fromkeys(k for r in rows for k in r)
              if k not in files.RUNS_FRONT and k not in files.RUNS_TAIL]
    runs = pd.DataFrame(rows, columns=files.RUNS_FRONT + scores + files.RUNS_TAIL)
    metrics = pd.concat(metrics, ignore_index=True) if metrics else files.frame([], METRICS_COLUMNS)
    offsets = pd.concat(offsets, ignore_index=True) if offsets else files.frame([], OFFSETS_COLUMNS)
    neurons = pd.concat(neurons, ignore_index=True) if neurons else None
    lineage = pd.concat(lineage, ignore_index=True) if lineage else None
    files.write_csv(runs, out_dir / "runs.csv")
    files.write_csv(metrics, out_dir / "metrics.csv")
    files.write_csv(offsets, out_dir / "ood_offsets.csv")
    if neurons is not None:
        files.write_csv(neurons, out_dir / "neurons.csv")
    if lineage is not None:
        files.write_csv(lineage, out_dir / "lineage.csv")
    return {"runs": runs, "metrics": metrics, "offsets": offsets, "neurons": neurons,
            "lineage": lineage}


