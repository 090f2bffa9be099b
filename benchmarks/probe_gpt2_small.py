"""Benchmark: probe a GPT-2-small-shaped checkpoint, and the metrics against naive scikit-learn.

    python benchmarks/probe_gpt2_small.py [--layers 12]

1. Builds GPT-2 small from its config (12 layers, n_embd 768, d_ff 3072, 12 heads), saves it
   with ``save_pretrained`` and times ``probes/run.py --checkpoint`` on it in a fresh process
   (target: <= 6 s wall), and with ``--spectral_metrics false`` and ``stable`` (the stable ranks
   alone); then the same with condensed groups of several tightness planted in
   every layer's MLP and W_Q (so that group counts differ between thresholds).
2. On the planted model's unit sets, times ``Condensation`` (every metric, one linkage cut at every
   threshold) against a naive scikit-learn ``AgglomerativeClustering`` fitted once per threshold
   (group counts only), both on one thread in this process, and prints the ratio (goal: >= 5x)
   and whether every group count is identical.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from probes.measure.metrics import THRESHOLDS, Condensation  # noqa: E402
from probes.measure.units import read_units  # noqa: E402

NOISE = (0.002, 0.006, 0.012, 0.03)  # per-coordinate noise of planted groups: tight to loose


def planted_columns(n: int, dim: int, rng, n_groups: int) -> torch.Tensor:
    """(dim, n): half the units in ``n_groups`` groups (noise cycling through NOISE), half random."""
    directions = rng.normal(size=(n_groups, dim))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    per = n // (2 * n_groups)
    rows = [directions[g] + NOISE[g % len(NOISE)] * rng.normal(size=(per, dim))
            for g in range(n_groups)]
    rows.append(rng.normal(size=(n - per * n_groups, dim)) / np.sqrt(dim))
    return torch.tensor(np.vstack(rows).T * 0.05, dtype=torch.float32)


def build(n_layer: int, plant: bool):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=n_layer))
    if not plant:
        return model
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for block in model.transformer.h:
            block.mlp.c_fc.weight.copy_(planted_columns(3072, 768, rng, 64))
            block.attn.c_attn.weight[:, :768] = planted_columns(768, 768, rng, 24)
    return model


def child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def time_probe(folder: Path, *flags: str) -> tuple[float, float]:
    """(wall, CPU seconds) of ``probes/run.py --checkpoint folder [flags]`` in a fresh process."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    with tempfile.TemporaryDirectory() as out:
        start, cpu = time.perf_counter(), child_cpu()
        proc = subprocess.run([sys.executable, str(ROOT / "probes" / "run.py"), "--checkpoint",
                               str(folder), "--output_dir", out, *flags],
                              capture_output=True, text=True, env=env, cwd=ROOT)
        wall, cpu = time.perf_counter() - start, child_cpu() - cpu
    if proc.returncode:
        raise SystemExit(f"probe failed:\n{proc.stderr}")
    return wall, cpu


def import_floor() -> None:
    """Wall seconds of importing what every probe needs, each in a fresh process: the floor under
    the probe's wall time that lazy imports cannot remove."""
    for what in ("torch", "transformers.modeling_utils", "matplotlib.pyplot", "probes.run"):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import {what}"], check=True, cwd=ROOT)
        print(f"  import {what} in a fresh process: {time.perf_counter() - start:.1f} s")


def bare_read(folder: Path) -> float:
    """Wall seconds of the baseline the probe is judged against: a fresh process that imports
    torch and reads every tensor of ``folder``'s model.safetensors (safetensors' ``load_file``)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import sys, torch; from safetensors.torch import "
                    "load_file; load_file(sys.argv[1])", str(folder / "model.safetensors")],
                   check=True, cwd=ROOT)
    return time.perf_counter() - start


def compare_sklearn(sets) -> None:
    from sklearn.cluster import AgglomerativeClustering

    with threadpool_limits(1, user_api="blas"):
        start = time.perf_counter()
        ours = [Condensation(THRESHOLDS).fit(u).n_groups_ for u in sets]
        t_ours = time.perf_counter() - start
        start = time.perf_counter()
        naive = []
        for u in sets:
            counts = {}
            for t in THRESHOLDS:
                sk = AgglomerativeClustering(n_clusters=None, distance_threshold=1 - t,
                                             metric="cosine", linkage="complete").fit(u)
                counts[t] = int(sk.n_clusters_)
            naive.append(counts)
        t_naive = time.perf_counter() - start
    same = ours == naive
    n_diff = sum(a != b for a, b in zip(ours, naive))
    print(f"unit sets: {len(sets)}; thresholds {list(THRESHOLDS)}; one thread each")
    print(f"  Condensation (all metrics, one linkage per set): {t_ours:7.2f} s")
    print(f"  sklearn AgglomerativeClustering per threshold:   {t_naive:7.2f} s")
    print(f"  speed-up: {t_naive / t_ours:.1f}x (goal >= 5x); group counts identical: {same}"
          + ("" if same else f" ({n_diff} sets differ)"))
    planted = [o for o in ours if len(set(o.values())) > 1]
    print(f"  sets whose count changes with the threshold: {len(planted)} (planted groups found)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=12)
    args = ap.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f} (2 cores; > 0.5 means a shared CPU)")
    import_floor()
    for plant in (False, True):
        model = build(args.layers, plant)
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp)
            times = [time_probe(Path(tmp)) for _ in range(2)]
            other = {} if plant else {flag: time_probe(Path(tmp), "--spectral_metrics", flag)
                                      for flag in ("false", "stable")}
            bare = min(bare_read(Path(tmp)) for _ in range(2))
        kind = "planted groups" if plant else "as built from config"
        best, goal = min(w for w, _ in times), max(6.0, 2 * bare)
        print(f"GPT-2 small ({args.layers} layers, 768, 3072), {kind}: probe in a fresh process "
              + ", then ".join(f"{w:.1f} s wall ({c:.1f} CPU-s)" for w, c in times)
              + f"; goal <= 6 s or <= 2x the bare read ({2 * bare:.1f} s), whichever is larger: "
              + f"{goal:.1f} s, {'met' if best <= goal else 'missed'}")
        print(f"  bare read (fresh process: import torch, safetensors load_file of the model): "
              f"{bare:.1f} s; probe / bare read: {best / bare:.1f}x")
        for flag, (wall, cpu) in other.items():
            print(f"  the same with --spectral_metrics {flag}: {wall:.1f} s wall ({cpu:.1f} CPU-s)")
    compare_sklearn([u.units.numpy() for u in read_units(model)])
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
