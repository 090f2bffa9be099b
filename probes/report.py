"""Tidy CSV reports (schema: shared DESIGN.md and reports/README.md), written atomically.

Layout of an experiment's output folder::

    runs.csv  metrics.csv  ood_offsets.csv  correlations.csv  figures/*.png
    neurons.csv (1-D two-layer nets only: each neuron at step 0, at the end of the initial
    stage and at the last probe)
    runs/<run_id>/config.yaml  model/  run.json  metrics.csv  ood_offsets.csv  [neurons.csv]

``runs/<run_id>/run.json`` is written last: a run folder with it is finished, and a rerun of the
same command reads it back instead of training again.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pandas as pd

from probes.config import RunConfig, resolved_yaml
from probes.resume import clear_state

METRICS_COLUMNS = ["run_id", "step", "layer", "component", "head", "basis", "metric",
                   "threshold", "value", "n_units"]
OFFSETS_COLUMNS = ["run_id", "step", "offset", "count", "share"]
NEURONS_COLUMNS = ["run_id", "step", "layer", "component", "unit", "w", "b", "angle", "amplitude"]
# runs.csv: these identity columns, then train_loss and the task's own scores, then RUNS_TAIL
RUNS_FRONT = ["run_id", "experiment", "task", "model_family", "gamma", "n_layer", "n_embd",
              "n_head", "lr", "weight_decay", "dropout", "seed", "steps", "epochs", "train_loss"]
RUNS_TAIL = ["fitted", "diverged", "wall_s", "num_threads", "checkpoint", "package_version"]
_INT_COLUMNS = ("step", "layer", "head", "n_units", "offset", "count", "unit")


def package_version() -> str:
    try:
        return version("condensation-probes")
    except PackageNotFoundError:
        return "unknown"


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file in the same folder and a rename, so a
    reader never sees half a file."""
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
    df = pd.read_csv(path)
    for col in _INT_COLUMNS:
        if col in df:
            df[col] = df[col].astype("Int64")
    return df


def run_dir(cfg: RunConfig) -> Path:
    return cfg.out_dir / "runs" / cfg.run_id


def save_run(result) -> dict:
    """Write one finished run's folder (checkpoint, resolved config, rows); returns its runs row.

    The checkpoint goes through ``save_pretrained`` into a temp folder renamed into place.
    """
    cfg, folder = result.cfg, run_dir(result.cfg)
    folder.mkdir(parents=True, exist_ok=True)
    row = dict(result.row)
    row["checkpoint"] = ""
    if cfg.save_checkpoint and result.model is not None:
        tmp = Path(tempfile.mkdtemp(dir=folder, prefix=".model."))
        result.model.save_pretrained(tmp)
        target = folder / "model"
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
        row["checkpoint"] = str(target)
    row["package_version"] = package_version()
    init = {"init_method": "init_rate (std = d_in^-gamma)", "init_records": result.init_records}
    atomic_write_text(folder / "config.yaml", resolved_yaml(cfg, init))
    write_csv(frame(result.metrics, METRICS_COLUMNS), folder / "metrics.csv")
    write_csv(frame(result.offsets, OFFSETS_COLUMNS), folder / "ood_offsets.csv")
    if getattr(result, "neurons", None):
        write_csv(frame(result.neurons, NEURONS_COLUMNS), folder / "neurons.csv")
    atomic_write_text(folder / "run.json", json.dumps(row, indent=1, default=float))
    clear_state(folder)
    return row


def finished(cfg: RunConfig) -> bool:
    return (run_dir(cfg) / "run.json").is_file()


def load_run(cfg: RunConfig) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """(runs row, metrics rows, offsets rows) of a finished run folder."""
    folder = run_dir(cfg)
    row = json.loads((folder / "run.json").read_text())
    return row, read_csv(folder / "metrics.csv"), read_csv(folder / "ood_offsets.csv")


def load_neurons(cfg: RunConfig) -> pd.DataFrame | None:
    """The neurons.csv rows of a finished run folder, or None when it has none."""
    path = run_dir(cfg) / "neurons.csv"
    return read_csv(path) if path.is_file() else None


def write_reports(cfgs: list[RunConfig], out_dir: Path) -> dict[str, pd.DataFrame]:
    """Gather the finished runs of ``cfgs`` into the experiment's runs, metrics and ood_offsets
    CSVs, and neurons.csv when some run has neuron rows (only the runs of this grid, in grid
    order). Returns the frames: runs, metrics, offsets, neurons (None when no run has any)."""
    rows, metrics, offsets, neurons = [], [], [], []
    for cfg in cfgs:
        if finished(cfg):
            row, m, o = load_run(cfg)
            rows.append(row)
            metrics.append(m)
            offsets.append(o)
            n = load_neurons(cfg)
            if n is not None:
                neurons.append(n)
    scores = [k for k in dict.fromkeys(k for r in rows for k in r)
              if k not in RUNS_FRONT and k not in RUNS_TAIL]
    runs = pd.DataFrame(rows, columns=RUNS_FRONT + scores + RUNS_TAIL)
    metrics = pd.concat(metrics, ignore_index=True) if metrics else frame([], METRICS_COLUMNS)
    offsets = pd.concat(offsets, ignore_index=True) if offsets else frame([], OFFSETS_COLUMNS)
    write_csv(runs, out_dir / "runs.csv")
    write_csv(metrics, out_dir / "metrics.csv")
    write_csv(offsets, out_dir / "ood_offsets.csv")
    neurons = pd.concat(neurons, ignore_index=True) if neurons else None
    if neurons is not None:
        write_csv(neurons, out_dir / "neurons.csv")
    return {"runs": runs, "metrics": metrics, "offsets": offsets, "neurons": neurons}
