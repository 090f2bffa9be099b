"""Alias kept for the documented command ``python -m probes.gguf_convert``: the same as
``condensation-probes convert`` (``probes.checkpoint.gguf``), messages and options included."""

import sys

from probes.run import main

if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:]]))
