"""Benchmark: spectral metrics of Llama-7B-sized unit matrices, old float64 path against the new.

    python benchmarks/spectral.py [--repeat 1] [--planted]

On one thread (OMP_NUM_THREADS=1, torch.set_num_threads(1), threadpool_limits(1)), for random
float32 matrices N(0, 0.02) of 4096 x 4096 (attention projections) and 11008 x 4096 (MLP), and with
``--planted`` also rank 256 + 1% noise of each (spectra that reach down to float64 rounding, where
the old path took an SVD): the time of stable_rank, effective_rank and alpha with
``Condensation(spectral="exact")`` (float64 Gram matrix and eigenvalues, an SVD where the rounding
could move the effective rank by 1e-8: the path used before), with the default (``spectral=True``:
the same, an SVD only past 1e-5) and with ``spectral="float32"`` (float32 Gram matrices where they
meet 1e-5 / 1e-6), the ratios, the routes taken, the relative differences of each metric from the
old path and the error bounds the routes met. Then ``spectral="stable"`` (the stable rank alone,
by Lanczos) and, as evidence for a route the suite does not take, a float32 Gram matrix with a
float32 eigensolver (no error bound: its effective rank's difference from the old path is all
there is). The CPU's model name and whether it has avx512_bf16 / amx_bf16 come first.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy / torch load their thread pools

import argparse  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from probes.measure.metrics import Condensation  # noqa: E402
from probes.measure.spectral import FAST_RANK_TOL, FAST_TOP_TOL, Spectrum  # noqa: E402


def cpu_line() -> str:
    """lscpu's model name and the bf16 flags this CPU has."""
    info = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                  if line.startswith("Model name")), "unknown")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines()
                  if line.startswith("Flags")), [])
    have = ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in ("avx512_bf16", "amx_bf16"))
    return f"CPU: {model} ({os.cpu_count()} cores; {have})"


def timed(spectral, u: np.ndarray, repeat: int):
    """(best seconds of ``repeat``, Spectrum, alpha) of the spectral metrics of ``u``."""
    best, result = np.inf, None
    for _ in range(repeat):
        start = time.perf_counter()
        spectrum = Condensation(order=False, spectral=spectral)._spectrum(u)
        alpha = None if spectrum.s is None else spectrum.alpha  # (the weight's: no bias here)
        best = min(best, time.perf_counter() - start)
        result = (spectrum, alpha)
    return best, *result


def float32_eigensolver(u: np.ndarray, repeat: int):
    """(best seconds, Spectrum, alpha) from a float32 Gram matrix and a float32 eigensolver (MKL's
    syevd through torch): the route the suite does not take (its errors cannot be bounded)."""
    best = np.inf
    for _ in range(repeat):
        start = time.perf_counter()
        gram = u.T @ u if u.shape[0] >= u.shape[1] else u @ u.T
        lam = torch.linalg.eigvalsh(torch.from_numpy(gram)).numpy()[::-1].astype(np.float64)
        s = np.sqrt(np.maximum(lam, 0.0))
        spectrum = Spectrum(s, float(s[0] ** 2), None, "f32-eig", float("nan"))
        alpha = spectrum.alpha
        best = min(best, time.perf_counter() - start)
    return best, spectrum, alpha


def sets(planted: bool):
    """(name, float32 matrix) pairs, made one at a time."""
    rng = np.random.default_rng(0)
    for n, dim in ((4096, 4096), (11008, 4096)):
        yield f"random {n}x{dim}", (rng.standard_normal((n, dim), dtype=np.float32) * 0.02)
        if planted:
            a = rng.standard_normal((n, 256), dtype=np.float32)
            b = rng.standard_normal((256, dim), dtype=np.float32) / 16
            yield (f"planted rank 256 + 1% {n}x{dim}",
                   (a @ b + 0.01 * rng.standard_normal((n, dim), dtype=np.float32)) * 0.02)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=1, help="timings per path (the best is kept)")
    ap.add_argument("--planted", action="store_true", help="also planted low-rank sets")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(cpu_line())
    print(f"threads: 1 (OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, torch 1, BLAS 1); load "
          f"average before: {os.getloadavg()[0]:.2f} (above ~1 on 2 cores the CPU is shared and "
          "times are inflated)")
    print(f"tolerances of the new paths: effective_rank {FAST_RANK_TOL:g} (first-order bound), "
          f"stable_rank {FAST_TOP_TOL:g} (float32: certified); alpha is not bounded")
    print(f"{'set':34s} {'old s':>7s} {'path':>8s} {'new s':>7s} {'ratio':>6s} {'route':>8s}  "
          "rel. diff from old: stable, effective, alpha; bounds met: effective, stable")
    with threadpool_limits(1):
        for name, u in sets(args.planted):
            old_s, ref, ref_alpha = timed("exact", u, args.repeat)
            for setting in (True, "float32", "stable", "f32-eig"):
                new_s, got, alpha = (float32_eigensolver(u, args.repeat) if setting == "f32-eig"
                                     else timed(setting, u, args.repeat))
                ranks = (float("nan"), float("nan")) if setting == "stable" else \
                    (got.effective_rank, alpha)
                diffs = [abs(a / b - 1) for a, b in ((got.stable_rank, ref.stable_rank),
                                                     (ranks[0], ref.effective_rank),
                                                     (ranks[1], ref_alpha))]
                label = "default" if setting is True else setting
                print(f"{name:34s} {old_s:7.2f} {label:>8s} {new_s:7.2f} {old_s / new_s:5.2f}x "
                      f"{got.route:>8s}  " + ", ".join(f"{d:.1e}" for d in diffs)
                      + f"; {got.rank_error:.1e}, {got.top_error:.1e}", flush=True)
            print(f"{'':34s} (old route: {ref.route})")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
