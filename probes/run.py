"""Entry point: ``accelerate launch probes/run.py [--config FILE] [--KEY VALUE ...]``.

Dispatches, and nothing else: with ``--checkpoint DIR`` it probes models on disk
(``probes.checkpoint.cli``), with ``measure DIR`` it measures a finished experiment again from
its saved checkpoints (``probes.train.remeasure``), otherwise it runs an experiment from a config
(``probes.train.experiment``, default ``configs/default.yaml``). Both write their reports under
``reports/`` (or ``--output_dir``); bad input prints one ``error:`` line and exits with code 2.
``--log_level`` and ``--progress`` are taken here, for all three (``probes.logs``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import the project, not probes/ siblings
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from probes import logs  # noqa: E402
from probes.checkpoint import cli  # noqa: E402
from probes.train import experiment, remeasure  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        argv, level, progress = logs.split_options(argv)
    except logs.OptionError as e:
        if os.environ.get("RANK", "0") == "0":  # every process fails alike; the main one says so
            print(f"error: {e}", file=sys.stderr)
        return 2
    logs.configure(level, progress)
    if argv and argv[0] == "measure":
        return remeasure.main(argv[1:])
    if any(a == "--checkpoint" or a.startswith("--checkpoint=") for a in argv):
        return cli.main(argv)
    return experiment.main(argv)


if __name__ == "__main__":
    sys.exit(main())
