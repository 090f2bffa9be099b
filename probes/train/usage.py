"""The ``--help`` texts of ``train`` and ``measure``, built from the fields of
``probes.config.keys.RunKeys`` (each key's type, default, section and help are its field's, listed
by ``probes.config.grammar.key_help``), so that there is no second list to keep in sync with the
dataclass. Imports neither torch nor the tasks: ``probes/run.py --help`` reads this module alone."""

from __future__ import annotations

from probes.config.grammar import key_docs, key_help
from probes.config.keys import MEASURE_KEYS, RunKeys
from probes.logs import OPTIONS_HELP

__all__ = ["MEASURE_KEYS", "experiment_help", "key_docs", "key_help", "measure_help"]

USAGE = """usage: accelerate launch probes/run.py [train] [--config FILE] [--output_dir DIR] [--KEY VALUE ...]
       (condensation-probes [train] ...; train is the command when none is named)

Train a grid of runs: --config takes a YAML file or a preset's name (default, sweep_small, ...:
configs/ in the package), and any key below overrides it. A list of values, --gamma "[0.3, 1.0]",
makes a grid (not for the experiment-level and probes keys, which all runs share). A list-typed
key takes 0.9,0.95 or [0.9, 0.95]; a boolean key --flag alone or --flag true|false.
Messages and progress (every command):
""" + OPTIONS_HELP + """
Keys (type, default, meaning):
"""


def experiment_help() -> str:
    """The whole ``--help`` text of ``train``: ``USAGE`` and every RunKeys key by section."""
    return USAGE + key_help(RunKeys)


def measure_help() -> str:
    """The ``--help`` text of ``measure``: what it does and its keys (``MEASURE_KEYS``), each
    defaulting to what the run recorded."""
    keys = list(MEASURE_KEYS)
    recorded = dict.fromkeys(keys[:-1], "as recorded")  # num_threads: its own default
    return f"""usage: condensation-probes measure DIR [--KEY VALUE ...]
       (python probes/run.py measure DIR ...)

Measure every run of the finished experiment in DIR again from its saved checkpoints, without
training, and rewrite its metrics.csv, lineage.csv, correlations.csv and figures. It takes the
analysis keys below and num_threads, one value each (no grid); a key not given keeps the value
each run recorded (its config.yaml). A run is measured at the steps it saved: n_probes takes
only the value it was trained with. Under accelerate launch --num_processes N the processes
split the runs; the main one writes (the same files as one process, at the same threads a
process).
{OPTIONS_HELP}
Keys (type, default, meaning):
{key_help(RunKeys, keys, recorded, sections=False)}
"""
