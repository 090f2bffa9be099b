"""Alias kept for the documented command ``python -m probes.split_table``: the same as
``condensation-probes table`` (``probes.report.split_table``), messages and options included."""

import sys

from probes.run import main

if __name__ == "__main__":
    sys.exit(main(["table", *sys.argv[1:]]))
