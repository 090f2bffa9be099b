"""Entry point: ``accelerate launch probes/run.py [--config FILE] [--KEY VALUE ...]``.

Dispatches, and nothing else: with ``--checkpoint DIR`` it probes models on disk
(``probes.checkpoint.cli``), with ``measure DIR`` it measures a finished experiment again from
its saved checkpoints (``probes.train.remeasure``), with ``align A B`` it compares the condensed
groups and activations of two checkpoints (``probes.checkpoint.align``), with ``merge CKPT`` it
saves a checkpoint with its condensed groups merged (``probes.checkpoint.merged``), otherwise it
runs an experiment from a config (``probes.train.experiment``, default ``configs/default.yaml``). Each
writes its reports under ``reports/`` (or ``--output_dir``); bad input prints one ``error:`` line
and exits with code 2. ``--log_level`` and ``--progress`` are taken here, for all of them
(``probes.logs``).

A command's module (and with it torch) is imported only when the command runs: ``--help`` reads
the help modules alone (``probes.train.usage``, ``probes.checkpoint.usage``), which import
neither torch nor transformers.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import the project, not probes/ siblings
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from probes import logs  # noqa: E402
from probes.checkpoint import usage as checkpoint_usage  # noqa: E402
from probes.train import usage as train_usage  # noqa: E402

# each command's module (its main(argv) runs it) and its help text
COMMANDS = {"measure": "probes.train.remeasure", "align": "probes.checkpoint.align",
            "merge": "probes.checkpoint.merged", "checkpoint": "probes.checkpoint.cli",
            "experiment": "probes.train.experiment"}
HELP = {"measure": lambda: train_usage.MEASURE_USAGE, "align": lambda: checkpoint_usage.ALIGN_USAGE,
        "merge": lambda: checkpoint_usage.MERGE_USAGE, "checkpoint": lambda: checkpoint_usage.USAGE,
        "experiment": train_usage.experiment_help}


def command(argv: list[str]) -> tuple[str, list[str]]:
    """(the command of ``argv``: measure, align, merge, checkpoint or experiment; the arguments
    its main takes)."""
    if argv and argv[0] in ("measure", "align", "merge"):
        return argv[0], argv[1:]
    if any(a == "--checkpoint" or a.startswith("--checkpoint=") for a in argv):
        return "checkpoint", argv
    return "experiment", argv


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        argv, level, progress = logs.split_options(argv)
    except logs.OptionError as e:
        if os.environ.get("RANK", "0") == "0":  # every process fails alike; the main one says so
            print(f"error: {e}", file=sys.stderr)
        return 2
    name, args = command(argv)
    if any(a in ("-h", "--help") for a in args):
        print(HELP[name]())
        return 0
    logs.configure(level, progress)
    return importlib.import_module(COMMANDS[name]).main(args)


if __name__ == "__main__":
    sys.exit(main())
