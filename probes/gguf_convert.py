"""Alias kept for the documented command ``python -m probes.gguf_convert``: the converter now
lives in ``probes.checkpoint.gguf``."""

import sys

from probes.checkpoint.gguf import main

if __name__ == "__main__":
    sys.exit(main())
