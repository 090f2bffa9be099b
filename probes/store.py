"""Every file the suite writes: CSV columns, atomic writes and the run-folder layout, in one place.

Layout of an experiment's output folder (schema: shared DESIGN.md and reports/README.md)::

    runs.csv  metrics.csv  ood_offsets.csv  correlations.csv  figures/*.png
    neurons.csv (1-D two-layer nets only: each neuron at step 0, at the end of the initial
    stage and at the last probe)
    runs/<run_id>/config.yaml  model/  run.json  metrics.csv  ood_offsets.csv  [neurons.csv]
    runs/<run_id>/heatmap.npz  (the cosine heat map of HEATMAP_UNITS at the last probe)
    runs/<run_id>/train_log.csv  (TRAIN_LOG_COLUMNS every log_every steps, written by the
    process that trains the run, at each saved state and at the end)
    runs/<run_id>/state/  (while a run is unfinished: its resumable training state)

``runs/<run_id>/run.json`` is written last: a run folder with it is finished, and a rerun of the
same command reads it back instead of training again. A checkpoint probe's output folder holds
``metrics.csv`` (same columns), ``runs.csv`` (CHECKPOINT_RUNS_COLUMNS) and ``figures/``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import pandas as pd

from models import LM_FAMILIES
from probes.config import RunConfig, effective_lr, resolved_yaml

METRICS_COLUMNS = ["run_id", "step", "layer", "component", "head", "basis", "metric",
                   "threshold", "value", "n_units"]
OFFSETS_COLUMNS = ["run_id", "step", "offset", "count", "share"]
NEURONS_COLUMNS = ["run_id", "step", "layer", "component", "unit", "w", "b", "angle", "amplitude"]
# train_log.csv: the training loss of the step's batch, the learning rate the step used and the
# gradient norm before clipping (unscaled under fp16; blank for the step whose loss diverged)
TRAIN_LOG_COLUMNS = ["step", "loss", "lr", "grad_norm"]
# runs.csv: these identity columns, then train_loss and the task's own scores, then RUNS_TAIL
RUNS_FRONT = ["run_id", "experiment", "task", "model_family", "gamma", "n_layer", "n_embd",
              "n_head", "lr", "weight_decay", "dropout", "seed", "steps", "epochs", "train_loss"]
RUNS_TAIL = ["fitted", "diverged", "wall_s", "num_threads", "device", "mixed_precision", "checkpoint",
             "package_version"]
# runs.csv settings columns of each baseline family, after RUNS_FRONT's (the transformer sizes
# are blank for the baselines, which have none)
FAMILY_KEYS = {"mlp": ("width", "activation", "gamma_prime", "in_dim", "optimizer", "lr_scaling"),
               "resnet": ("image_source", "image_size", "optimizer")}
# what a --checkpoint probe writes into its output folder (replaced whole on the next probe)
CHECKPOINT_OUTPUTS = {"metrics.csv", "runs.csv", "figures"}
CHECKPOINT_RUNS_COLUMNS = ["run_id", "step", "checkpoint", "format", "model_type", "architecture",
                           "n_params", "n_layers", "unit_reader", "fold_norms", "spectral_metrics",
                           "activation_point",
                           "probe_inputs", "n_samples",
                           "wall_s", "package_version"]
_INT_COLUMNS = ("step", "layer", "head", "n_units", "offset", "count", "unit")

# an experiment's report: the files its output folder holds beside runs/ (replaced as one set)
REPORT_FILES = {"runs.csv", "metrics.csv", "ood_offsets.csv", "neurons.csv", "correlations.csv",
                "phase_diagram.csv", "final_condensation.csv", "rd_slopes.csv", "directions.csv",
                "figures"}
# files of a run folder
MODEL, CONFIG, RUN_JSON, STATE, HEATMAP = "model", "config.yaml", "run.json", "state", "heatmap.npz"
TRAIN_LOG = "train_log.csv"
# the unit set (layer, component, head) whose cosine matrix a run keeps for the heat maps
HEATMAP_UNITS = (0, "attn.q", None)


def package_version() -> str:
    """This package's installed version, or ``unknown`` when it runs from a bare checkout."""
    try:
        return version("condensation-probes")
    except PackageNotFoundError:
        return "unknown"


# --- writing and reading ----------------------------------------------------------------------

def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file in the same folder and a rename, so a
    reader never sees half a file. Raises OSError when the folder cannot be written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def frame(rows: list[dict], columns: list[str]) -> pd.DataFrame:
    """Rows as a DataFrame with ``columns`` in order; integer columns stay integers with blanks."""
    df = pd.DataFrame(rows, columns=columns)
    for col in _INT_COLUMNS:
        if col in df:
            df[col] = pd.to_numeric(df[col]).astype("Int64")
    return df


def write_csv(df: pd.DataFrame, path: Path) -> None:
    """Atomically write ``df`` as CSV (missing values as empty fields)."""
    atomic_write_text(path, df.to_csv(index=False, na_rep=""))


def read_csv(path: Path) -> pd.DataFrame:
    """A CSV the suite wrote, with its integer columns as nullable integers."""
    df = pd.read_csv(path)
    for col in _INT_COLUMNS:
        if col in df:
            df[col] = df[col].astype("Int64")
    return df


# --- the run folder ---------------------------------------------------------------------------

def run_folder(out_dir: Path, run_id: str) -> Path:
    """``<out_dir>/runs/<run_id>``: the folder of one run of the experiment in ``out_dir``."""
    return Path(out_dir) / "runs" / run_id


def run_dir(cfg: RunConfig) -> Path:
    """The folder of the run of ``cfg`` (``run_folder`` of its output folder and run id)."""
    return run_folder(cfg.out_dir, cfg.run_id)


def state_dir(folder: Path) -> Path:
    """The resumable training state of the run in ``folder``."""
    return folder / STATE


def run_of_model(model_dir: Path) -> Path | None:
    """The run folder of a checkpoint this project's training saved (``runs/<run_id>/model``),
    or None for any other folder."""
    model_dir = Path(model_dir).resolve()
    return model_dir.parent if model_dir.name == MODEL else None


def write_train_log(folder: Path, rows: list[dict]) -> None:
    """Atomically write a run's training log (TRAIN_LOG_COLUMNS) into run folder ``folder``;
    with no rows (``log_every: 0``) remove a stale one instead."""
    if rows:
        write_csv(frame(rows, TRAIN_LOG_COLUMNS), Path(folder) / TRAIN_LOG)
    else:
        (Path(folder) / TRAIN_LOG).unlink(missing_ok=True)


def runs_row(cfg: RunConfig, scores: dict, *, step: int, n_train: int, fitted: bool,
             diverged: bool, wall_s: float, num_threads: int, device: str = "") -> dict:
    """One run's runs.csv row (without ``checkpoint`` and ``package_version``, added on saving).

    Args:
        cfg: the run's config; scores: train_loss and the task's scores at the last step;
        step: steps trained; n_train: training samples (epochs = step * batch / n_train);
        fitted, diverged: the run's outcome; wall_s: seconds of training and probing;
        num_threads: torch threads (float sums depend on it, and training amplifies them);
        device: the device type it trained on (``cpu``, ``cuda``, ...); its precision is
        ``cfg.mixed_precision`` (no | fp16 | bf16).
    """
    per_step = min(cfg.batch_size, n_train)
    epochs = float("nan") if cfg.fresh_samples else step * per_step / max(n_train, 1)
    lm = cfg.model_family in LM_FAMILIES
    return {
        "run_id": cfg.run_id, "experiment": cfg.experiment, "task": cfg.task,
        "model_family": cfg.model_family, "gamma": cfg.gamma,
        "n_layer": cfg.n_layer if lm else None, "n_embd": cfg.n_embd if lm else None,
        "n_head": cfg.n_head if lm else None, "lr": cfg.lr,
        "weight_decay": cfg.weight_decay, "dropout": cfg.dropout, "seed": cfg.seed,
        **{k: getattr(cfg, k) for k in FAMILY_KEYS.get(cfg.model_family, ())},
        **({"lr_effective": effective_lr(cfg)} if cfg.lr_scaling != "none" else {}),
        "steps": step, "epochs": round(epochs, 3) if not math.isnan(epochs) else epochs,
        **scores, "fitted": fitted, "diverged": diverged, "wall_s": round(wall_s, 2),
        "num_threads": num_threads, "device": device, "mixed_precision": cfg.mixed_precision,
    }


def save_run(result) -> dict:
    """Write one finished run's folder (checkpoint, resolved config, rows); returns its runs row.

    Args:
        result: a ``probes.train.loop.RunResult`` (cfg, row, metrics, offsets, neurons, heatmap,
            model, init_records).

    All or nothing: the folder is written whole into a staging folder beside it, then put in
    place of the old one: the training log the training process wrote there is carried over, the
    resumable state and any file of an earlier run of the same id are dropped. ``run.json`` marks
    it finished.
    """
    cfg, folder = result.cfg, run_dir(result.cfg)
    stage = staging_dir(folder)
    try:
        row = dict(result.row)
        row["checkpoint"] = ""
        if cfg.save_checkpoint and result.model is not None:
            result.model.save_pretrained(stage / MODEL)
            row["checkpoint"] = str(folder / MODEL)
        row["package_version"] = package_version()
        init = {"init_method": "init_rate (std = d_in^-gamma)", "init_records": result.init_records}
        atomic_write_text(stage / CONFIG, resolved_yaml(cfg, init))
        write_csv(frame(result.metrics, METRICS_COLUMNS), stage / "metrics.csv")
        write_csv(frame(result.offsets, OFFSETS_COLUMNS), stage / "ood_offsets.csv")
        if result.neurons:
            write_csv(frame(result.neurons, NEURONS_COLUMNS), stage / "neurons.csv")
        if result.heatmap is not None:
            save_heatmap(stage / HEATMAP, result.heatmap)
        atomic_write_text(stage / RUN_JSON, json.dumps(row, indent=1, default=float))
        if (folder / TRAIN_LOG).is_file():  # written by the training process while it ran
            os.replace(folder / TRAIN_LOG, stage / TRAIN_LOG)
        replace_folder(stage, folder)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return row


def save_heatmap(path: Path, heatmap: dict) -> None:
    """Write a run's heat map atomically: ``cosine`` (m, m) float32 in group order, ``stride``,
    ``n_units``, ``mean_abs_cos`` and ``n_groups`` {threshold: groups} as two arrays."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".npz")
    os.close(fd)
    try:
        thresholds = sorted(heatmap["n_groups"])
        np.savez(tmp, cosine=heatmap["cosine"], stride=heatmap["stride"],
                 n_units=heatmap["n_units"], mean_abs_cos=heatmap["mean_abs_cos"],
                 thresholds=np.array(thresholds, dtype=float),
                 n_groups=np.array([heatmap["n_groups"][x] for x in thresholds]))
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def load_heatmap(folder: Path) -> dict | None:
    """The heat map saved in run folder ``folder`` (see ``save_heatmap``), or None."""
    path = Path(folder) / HEATMAP
    if not path.is_file():
        return None
    with np.load(path) as z:
        return dict(cosine=z["cosine"], stride=int(z["stride"]), n_units=int(z["n_units"]),
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
    CSVs, and neurons.csv when some run has neuron rows (only the runs of this grid, in grid
    order).

    Returns:
        the frames: runs, metrics, offsets, neurons (None when no run has any).
    """
    rows, metrics, offsets, neurons = [], [], [], []
    for cfg in cfgs:
        if not finished(cfg):
            continue
        folder = run_dir(cfg)
        rows.append(read_run_json(folder))
        metrics.append(read_csv(folder / "metrics.csv"))
        offsets.append(read_csv(folder / "ood_offsets.csv"))
        if (folder / "neurons.csv").is_file():
            neurons.append(read_csv(folder / "neurons.csv"))
    scores = [k for k in dict.fromkeys(k for r in rows for k in r)
              if k not in RUNS_FRONT and k not in RUNS_TAIL]
    runs = pd.DataFrame(rows, columns=RUNS_FRONT + scores + RUNS_TAIL)
    metrics = pd.concat(metrics, ignore_index=True) if metrics else frame([], METRICS_COLUMNS)
    offsets = pd.concat(offsets, ignore_index=True) if offsets else frame([], OFFSETS_COLUMNS)
    neurons = pd.concat(neurons, ignore_index=True) if neurons else None
    write_csv(runs, out_dir / "runs.csv")
    write_csv(metrics, out_dir / "metrics.csv")
    write_csv(offsets, out_dir / "ood_offsets.csv")
    if neurons is not None:
        write_csv(neurons, out_dir / "neurons.csv")
    return {"runs": runs, "metrics": metrics, "offsets": offsets, "neurons": neurons}


# --- output folders: checked before any work, written all or nothing -------------------------

class OutputError(ValueError):
    """An output folder that cannot be used: the message is one line, for the user."""


def _probe_write(folder: Path) -> None:
    """Create and remove a file in ``folder``; raises OutputError when that fails."""
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".write-check.")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise OutputError(f"output_dir {str(folder)!r} is not writable ({e.strerror}): accepted is a "
                          f"folder this user can write") from e


def check_output_dir(out_dir: Path) -> None:
    """Check, before any work, that ``out_dir`` can be written: no file in its place or above
    it, and a file can be created (and removed) in it, or in its nearest existing parent, and in
    its parent (where staging folders go).

    Raises:
        OutputError: the first problem found, in one line.
    """
    out_dir = Path(out_dir)
    for p in (out_dir, *out_dir.parents):
        if p.exists():
            if not p.is_dir():
                raise OutputError(f"output_dir={str(out_dir)!r} is not usable: {str(p)!r} is a file; "
                                  f"accepted is a folder path")
            _probe_write(p)
            if p == out_dir and out_dir.parent != out_dir:
                _probe_write(out_dir.parent)
            return


def check_replaceable(out_dir: Path, own: set[str]) -> None:
    """Refuse an existing, non-empty ``out_dir`` that holds anything but ``own`` entries (files
    or folders a previous run of the same command wrote), so that replacing it whole never
    deletes a user's files.

    Raises:
        OutputError: naming an entry that is not ours.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return
    foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in own)
    if foreign:
        raise OutputError(f"output_dir {str(out_dir)!r} holds files this command did not write "
                          f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}): accepted "
                          f"is a new or empty folder, or the folder of an earlier run of it "
                          f"(replaced whole)")


def staging_dir(target: Path) -> Path:
    """A new, empty hidden folder beside ``target`` (same file system, so it can be renamed)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.staging-"))


def replace_folder(staged: Path, target: Path) -> None:
    """Put the finished folder ``staged`` in the place of ``target`` (which may exist): two
    renames, the old folder removed only after the new one is in place."""
    target = Path(target)
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
        os.rmdir(old)
        os.replace(target, old)
    os.replace(staged, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def publish_reports(staged: Path, out_dir: Path) -> None:
    """Move an experiment's staged report files into ``out_dir`` as one set: the REPORT_FILES of
    an earlier report are removed first, so that no table or figure of an earlier, different grid
    stays beside the new ones (run folders and anything else are left alone)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for p in out_dir.iterdir():
        if p.name not in REPORT_FILES:
            continue
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()
    for p in Path(staged).iterdir():
        os.replace(p, out_dir / p.name)
    shutil.rmtree(staged, ignore_errors=True)
