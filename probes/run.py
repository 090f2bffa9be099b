"""Entry point: ``accelerate launch probes/run.py [--config FILE] [--KEY VALUE ...]``.

Dispatches, and nothing else: with ``--checkpoint DIR`` it probes models on disk
(``probes.checkpoint.cli``), with ``measure DIR`` it measures a finished experiment again from
its saved checkpoints (``probes.train.remeasure``), with ``align A B`` it compares the condensed
groups and activations of two checkpoints (``probes.checkpoint.align``), otherwise it runs an
experiment from a config (``probes.train.experiment``, default ``configs/default.yaml``). Each
writes its reports under ``reports/`` (or ``--output_dir``); bad input prints one ``error:``
line and exits with code 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import the project, not probes/ siblings
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from probes.checkpoint import align, cli  # noqa: E402
from probes.train import experiment, remeasure  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "measure":
        return remeasure.main(argv[1:])
    if argv and argv[0] == "align":
        return align.main(argv[1:])
    if any(a == "--checkpoint" or a.startswith("--checkpoint=") for a in argv):
        return cli.main(argv)
    return experiment.main(argv)


if __name__ == "__main__":
    sys.exit(main())
