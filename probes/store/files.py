"""The tables the suite writes: their columns, and CSV and text files written atomically."""

from __future__ import annotations

import os
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pandas as pd

from probes.store.output import shared_mode

# train_log.csv: the training loss of the step's batch, the learning rate the step used and the
# gradient norm before clipping (unscaled under fp16; blank for the step whose loss diverged)
TRAIN_LOG_COLUMNS = ["step", "loss", "lr", "grad_norm"]
# runs.csv: these identity columns, then train_loss and the task's own scores, then RUNS_TAIL
RUNS_FRONT = ["run_id", "experiment", "task", "model_family", "gamma", "n_layer", "n_embd",
              "n_head", "lr", "lr_peak", "weight_decay", "dropout", "seed", "batch_size", "steps",
              "epochs", "train_loss"]
# the code that made a row (probes.store.provenance): the suite's version, the git commit of a
# checkout and whether its tracked files had uncommitted changes (blank outside a checkout), and the
# versions of the libraries the numbers depend on
PROVENANCE_COLUMNS = ["package_version", "git_commit", "git_dirty", "torch_version",
                      "transformers_version", "accelerate_version", "numpy_version"]
RUNS_TAIL = ["fitted", "diverged", "wall_s", "num_threads", "device", "mixed_precision",
             "skipped_steps", "checkpoint", *PROVENANCE_COLUMNS]
# runs.csv settings columns of each baseline family, after RUNS_FRONT's (the transformer sizes
# are blank for the baselines, which have none)
FAMILY_KEYS = {"mlp": ("width", "activation", "gamma_prime", "in_dim", "optimizer", "lr_scaling"),
               "resnet": ("image_source", "image_size", "optimizer")}
# what a --checkpoint probe writes into its output folder (replaced whole on the next probe)
CHECKPOINT_OUTPUTS = {"metrics.csv", "runs.csv", "figures"}
ALIGN_OUTPUTS = {"align.csv"}  # what ``condensation-probes align`` writes (replaced whole)
MERGED_OUTPUTS = {"model", "config.yaml", "merge.json"}  # ``condensation-probes merge``
# runs.csv of a checkpoint probe: fold_norms and activation_point record what was done (norms
# folded; "post" when some unit set was captured after its nonlinearity), notes each option
# asked for and not (wholly) applied
CHECKPOINT_RUNS_COLUMNS = ["run_id", "step", "checkpoint", "format", "model_type", "architecture",
                           "n_params", "n_layers", "unit_reader", "fold_norms", "spectral_metrics",
                           "activation_point",
                           "probe_inputs", "reference", "n_samples",
                           "wall_s", *PROVENANCE_COLUMNS, "notes"]
_INT_COLUMNS = ("step", "layer", "head", "n_units", "offset", "count", "unit",
                # lineage.csv (blank at a run's first step)
                "prev_step", "n_groups", "n_condensed", "births", "deaths", "splits", "merges",
                "continued")

# an experiment's report: the files its output folder holds beside runs/ (replaced as one set)
REPORT_FILES = {"runs.csv", "metrics.csv", "ood_offsets.csv", "neurons.csv", "correlations.csv",
                "phase_diagram.csv", "final_condensation.csv", "rd_slopes.csv", "directions.csv",
                "lineage.csv", "lineage_summary.csv", "figures"}


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
        os.replace(shared_mode(tmp), path)
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
