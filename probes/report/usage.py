"""The ``--help`` text of ``table`` (``probes.report.split_table``), its keys listed from the fields
of ``probes.config.keys.TableKeys``. Imports neither pandas nor torch: ``probes/run.py table
--help`` reads this module alone."""

from probes.config.grammar import key_help
from probes.config.keys import TableKeys
from probes.logs import OPTIONS_HELP


def table_help() -> str:
    """The ``--help`` text of ``table``: its usage and its keys."""
    return f"""usage: condensation-probes table DIR [DIR ...] [--out FILE] [--min_seeds N]
       (python -m probes.split_table DIR ...)

The symmetric / inferential split of composite-task experiments as Markdown, from their CSVs:
one row per run, the per-gamma means over fitted runs, and whether the split rule holds.
{OPTIONS_HELP}
Keys (type, default, meaning):
{key_help(TableKeys, sections=False)}
"""
