"""The ``--help`` texts of an experiment and of ``measure``, built from the fields of
``probes.config.keys.RunKeys`` (each key's type, default, section and help are its field's), so
that there is no second list to keep in sync with the dataclass. Imports neither torch nor the
tasks: ``probes/run.py --help`` reads this module alone."""

from __future__ import annotations

import dataclasses
import json

from probes.config.keys import ANALYSIS_KEYS, RunKeys
from probes.logs import OPTIONS_HELP

USAGE = """usage: accelerate launch probes/run.py [--config FILE] [--output_dir DIR] [--KEY VALUE ...]
       accelerate launch probes/run.py --checkpoint DIR [--checkpoint DIR ...] [--output_dir DIR]
         (probe checkpoints on disk; --checkpoint X --help lists its options)
       python probes/run.py measure DIR [--thresholds ...] [--merge_probe true] [--chance_draws N]
         (measure a finished experiment again from its saved checkpoints, without training)
       python probes/run.py align A B [--probe_inputs SPEC] [--output_dir DIR]
         (match the condensed groups of two checkpoints; align --help lists its options)

--config takes a YAML file or a preset's name (default, sweep_small, ...: configs/ in the package).
Any config key can be overridden; a YAML list value (e.g. --gamma "[0.3, 1.0]") makes a grid.
Messages and progress (every command):
""" + OPTIONS_HELP + """
Keys (type, default, meaning):
"""
# what ``measure`` takes: the analysis settings and the thread count
MEASURE_KEYS = (*ANALYSIS_KEYS, "num_threads")
MEASURE_USAGE = f"""usage: condensation-probes measure DIR [--KEY VALUE ...]
       (python probes/run.py measure DIR ...)

Measure every run of the finished experiment in DIR again from its saved checkpoints, without
training, and rewrite its metrics.csv, lineage.csv, correlations.csv and figures.
Keys: {", ".join(ANALYSIS_KEYS)} (analysis settings; n_probes: a run is measured at the steps it
saved) and num_threads. Under accelerate launch --num_processes N the processes split the
runs; the main one writes (the same files as one process, at the same threads a process).
{OPTIONS_HELP}
"""


def key_docs() -> list[tuple[str, str, str, str, str]]:
    """Every RunConfig key with its section, type, default and meaning, from its field.

    Returns:
        (section, key, type, default as YAML text, meaning) in field order.
    """
    out = []
    for f in dataclasses.fields(RunKeys):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        shown = json.dumps(default) if isinstance(default, (bool, list, type(None))) else str(default)
        out.append((f.metadata["section"], f.name, str(f.type), shown, f.metadata["help"]))
    return out


def key_help() -> str:
    """The help text of every RunConfig key (``key_docs``), grouped by section: one line per key
    with its type, default and meaning."""
    docs = key_docs()
    width = [max(len(d[i]) for d in docs) for i in (1, 2, 3)]
    text, section = [], None
    for sec, key, tp, default, meaning in docs:
        if sec != section:
            text.append(f"  {sec}:")
            section = sec
        text.append(f"    --{key:<{width[0]}}  {tp:<{width[1]}}  {default:<{width[2]}}  {meaning}".rstrip())
    return "\n".join(text)


def experiment_help() -> str:
    """The whole ``--help`` text of an experiment: ``USAGE`` and every key (``key_help``)."""
    return USAGE + key_help()
