"""Benchmark: the wall time of each command's ``--help``, each in a fresh process.

    python benchmarks/help_time.py [--root DIR] [--repeats 3]

Times ``python probes/run.py --help``, ``--checkpoint x --help`` and every command's ``--help``
(``COMMANDS``) in the checkout ``DIR`` (default: this one; another
folder times another version of the code, e.g. an earlier commit unpacked with ``git archive``),
``--repeats`` times each, and prints every time, the median (goal: < 1.5 s) and the load average,
which says how busy the machine was.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = (["--help"], ["--checkpoint", "x", "--help"], ["train", "--help"], ["probe", "--help"],
            ["measure", "--help"], ["align", "--help"], ["merge", "--help"], ["table", "--help"],
            ["convert", "--help"])
GOAL_S = 1.5


def time_help(root: Path, argv: list[str]) -> float:
    """Seconds of one ``python probes/run.py argv`` in ``root`` (a fresh interpreter).

    Raises:
        subprocess.CalledProcessError: the command failed.
    """
    env = os.environ | {"PYTHONPATH": str(root)}
    start = time.perf_counter()
    subprocess.run([sys.executable, "probes/run.py", *argv], cwd=root, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    print(f"root {a.root}, python {sys.executable}, load average before "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for argv in COMMANDS:
        times = [time_help(a.root, argv) for _ in range(a.repeats)]
        median = statistics.median(times)
        print(f"python probes/run.py {' '.join(argv)}: median {median:.2f} s "
              f"({', '.join(f'{t:.2f}' for t in times)}); goal < {GOAL_S} s: "
              f"{'met' if median < GOAL_S else 'missed'}")
    print(f"load average after {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
