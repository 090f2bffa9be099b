"""Every file the suite writes: CSV columns, atomic writes and the run-folder layout, in one place.

Layout of an experiment's output folder (schema: reports/README.md)::

    runs.csv  metrics.csv  ood_offsets.csv  correlations.csv  lineage.csv  lineage_summary.csv
    figures/*.png
    neurons.csv (1-D two-layer nets only: each neuron at step 0, at the end of the initial
    stage and at the last probe)
    runs/<run_id>/config.yaml  model/  run.json  metrics.csv  ood_offsets.csv  lineage.csv
    [neurons.csv]
    runs/<run_id>/checkpoint-<step>/  (save_checkpoints: probes: the model at every probe step
    before the last, save_pretrained, with scores.json; model/ is the last step's)
    runs/<run_id>/heatmap.npz  (the cosine heat map of HEATMAP_UNITS at the last probe)
    runs/<run_id>/train_log.csv  (TRAIN_LOG_COLUMNS every log_every steps)
    runs/.<run_id>.training/  (while a run trains: its resumable state/, train_log.csv and
    checkpoint series so far, written by the process that trains it; a finished run's folder
    is never touched before the new one is complete)

A kill leaves hidden working names (``.<name>.staging-*``, ``.<name>.old-*``, ``.publish.old-*``
and the journal ``.publishing.json`` of a set being published): ``recover`` (``store.publish``)
rolls them back at the start of the next command that writes the folder.

``runs/<run_id>/run.json`` is written last: a run folder with it is finished, and a rerun of the
same command reads it back instead of training again (re-measuring it when only analysis
settings changed: ``probes.train.remeasure``). A checkpoint probe's output folder holds
``metrics.csv`` (same columns), ``runs.csv`` (CHECKPOINT_RUNS_COLUMNS) and ``figures/``; an
``align`` command's, ``align.csv`` (ALIGN_COLUMNS).

Provenance (``provenance``: suite version, git commit and dirty flag, library versions) lives in
the rows: each run's ``run.json`` (so a reused run keeps the commit that trained it, and runs.csv
shows a mix of versions row by row) and each row of a checkpoint probe's runs.csv.
"""

from probes.measure.result import (
    ALIGN_COLUMNS,
    LINEAGE_COLUMNS,
    METRICS_COLUMNS,
    NEURONS_COLUMNS,
    OFFSETS_COLUMNS,
)
from probes.store.files import (
    ALIGN_OUTPUTS,
    CHECKPOINT_OUTPUTS,
    CHECKPOINT_RUNS_COLUMNS,
    FAMILY_KEYS,
    MERGED_OUTPUTS,
    PROVENANCE_COLUMNS,
    REPORT_FILES,
    RUNS_FRONT,
    RUNS_TAIL,
    TRAIN_LOG_COLUMNS,
    atomic_write_text,
    frame,
    package_version,
    read_csv,
    write_csv,
)
from probes.store.output import (
    OutputError,
    check_output_dir,
    check_replaceable,
    folder_replaced,
    replace_folder,
    staging_dir,
)
from probes.store.provenance import other_version, provenance
from probes.store.publish import REPORT_STAGE, Publish, publish_reports, recover
from probes.store.runs import (
    CHECKPOINT,
    CONFIG,
    HEATMAP,
    MEASURED,
    MODEL,
    RUN_JSON,
    SCORES,
    STATE,
    TRAIN_LOG,
    RunResult,
    checkpoint_series,
    finished,
    gather_runs,
    load_heatmap,
    read_run_json,
    run_dir,
    run_folder,
    run_of_model,
    runs_row,
    save_checkpoint,
    save_heatmap,
    save_run,
    state_dir,
    work_dir,
    write_train_log,
)

__all__ = [
    "ALIGN_COLUMNS", "ALIGN_OUTPUTS", "CHECKPOINT", "CHECKPOINT_OUTPUTS", "CHECKPOINT_RUNS_COLUMNS",
    "CONFIG", "FAMILY_KEYS",
    "HEATMAP", "LINEAGE_COLUMNS", "MEASURED", "MERGED_OUTPUTS", "METRICS_COLUMNS", "MODEL", "NEURONS_COLUMNS",
    "OFFSETS_COLUMNS", "PROVENANCE_COLUMNS", "REPORT_FILES", "REPORT_STAGE", "RUNS_FRONT", "RUNS_TAIL",
    "RUN_JSON", "SCORES", "STATE", "TRAIN_LOG", "TRAIN_LOG_COLUMNS", "OutputError", "Publish",
    "RunResult", "atomic_write_text", "check_output_dir", "check_replaceable", "checkpoint_series",
    "finished", "folder_replaced", "frame", "gather_runs", "load_heatmap", "other_version", "package_version",
    "provenance", "publish_reports", "read_csv", "read_run_json", "recover", "replace_folder",
    "run_dir", "run_folder", "run_of_model", "runs_row", "save_checkpoint", "save_heatmap",
    "save_run", "staging_dir", "state_dir", "work_dir", "write_csv", "write_train_log",
]
