"""Alias kept for the documented command ``python -m probes.split_table``: the table now lives in
``probes.report.split_table``."""

import sys

from probes.report.split_table import main

if __name__ == "__main__":
    sys.exit(main())
