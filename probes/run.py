"""Entry point: ``condensation-probes [COMMAND] [ARGS] [--KEY VALUE ...]`` (``probes/run.py`` in a
checkout; ``accelerate launch probes/run.py ...`` for several processes).

Dispatches, and nothing else. The commands (``COMMANDS``): ``train`` runs an experiment from a
config (``probes.train.experiment``, default ``configs/default.yaml``) and is the command when
none is named, so ``accelerate launch probes/run.py --config X`` trains; ``probe DIR`` measures
checkpoints on disk (``probes.checkpoint.cli``; ``--checkpoint DIR`` without a command is its
alias); ``measure DIR`` measures a finished experiment again (``probes.train.remeasure``);
``align A B`` compares two checkpoints (``probes.checkpoint.align``); ``merge CKPT`` saves a
checkpoint with its condensed groups merged (``probes.checkpoint.merged``); ``table DIR`` prints the
split table (``probes.report.split_table``); ``convert SRC OUT`` converts a GGUF file
(``probes.checkpoint.gguf``). Every command reads its options by one grammar
(``probes.config.grammar``) from dataclass fields (``probes.config.keys``); bad input prints one
``error:`` line and exits with code 2. ``--log_level`` and ``--progress`` (``LogKeys``) are taken
here, for all of them, and shown by ``probes.logs``.

A command's module (and with it torch) is imported only when the command runs: ``--help`` reads
the help modules alone (``probes.train.usage``, ``probes.checkpoint.usage``,
``probes.report.usage``), which import neither torch nor transformers nor pandas.
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
from probes.config import grammar  # noqa: E402
from probes.config.grammar import ConfigError  # noqa: E402
from probes.config.keys import LogKeys  # noqa: E402
from probes.report import usage as report_usage  # noqa: E402
from probes.train import usage as train_usage  # noqa: E402

# name -> (the module whose main(argv) runs it, its --help text, one line of what it does)
COMMANDS = {
    "train": ("probes.train.experiment", train_usage.experiment_help,
              "train a grid of runs from a config (the command when none is named)"),
    "probe": ("probes.checkpoint.cli", checkpoint_usage.probe_help,
              "measure checkpoints on disk (alias: --checkpoint DIR)"),
    "measure": ("probes.train.remeasure", train_usage.measure_help,
                "measure a finished experiment again from its saved checkpoints"),
    "align": ("probes.checkpoint.align", checkpoint_usage.align_help,
              "match the condensed groups (and CKA) of two checkpoints"),
    "merge": ("probes.checkpoint.merged", checkpoint_usage.merge_help,
              "save a checkpoint with its condensed groups merged at one threshold"),
    "table": ("probes.report.split_table", report_usage.table_help,
              "the symmetric / inferential split of experiments, as Markdown"),
    "convert": ("probes.checkpoint.gguf", checkpoint_usage.convert_help,
                "convert a GGUF file into a safetensors checkpoint folder"),
}


def command(argv: list[str]) -> tuple[str, list[str]]:
    """(the command of ``argv``, the arguments its main takes): a named command; ``probe`` for a
    command line with ``--checkpoint`` and none named; ``train`` otherwise."""
    if argv and argv[0] in COMMANDS:
        return argv[0], argv[1:]
    if any(a == "--checkpoint" or a.startswith("--checkpoint=") for a in argv):
        return "probe", argv
    return "train", argv


def main_help() -> str:
    """The ``--help`` text without a command: the commands, one line each, then ``train``'s (the
    command when none is named)."""
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {line}" for name, (_, _, line) in COMMANDS.items()]
    return ("usage: condensation-probes [COMMAND] [ARGS] [--KEY VALUE ...]   (python probes/run.py ...)\n\n"
            "Commands (COMMAND --help lists its keys):\n" + "\n".join(lines) + "\n\n"
            + train_usage.experiment_help())


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        argv, shown = grammar.take(argv, LogKeys, command="every command")
    except ConfigError as e:
        if os.environ.get("RANK", "0") == "0":  # as probes.runtime.say_error (no torch import here)
            print(f"error: {e}", file=sys.stderr)
        return 2
    name, args = command(argv)
    module, help_text, _ = COMMANDS[name]
    if any(a in ("-h", "--help") for a in args):
        print(main_help() if name == "train" and args == argv else help_text())
        return 0
    logs.configure(shown.get("log_level", "info"), shown.get("progress"))
    return importlib.import_module(module).main(args)


if __name__ == "__main__":
    sys.exit(main())
