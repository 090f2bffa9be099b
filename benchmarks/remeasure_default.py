"""Train once, measure many times, checked on a finished experiment (default: reports/default).

Copies the experiment, then on the copy:
1. ``measure`` at the settings it was trained with: metrics.csv must equal the training-time one
   byte for byte;
2. ``measure --thresholds "[0.8, 0.97]"``: every n_groups row of every W_Q / W_K / W_V / MLP
   unit set, at every saved step, against an independent count (scipy's complete linkage on the
   float64 cosine distance of the weight rows read from the safetensors files);
3. ``measure --merge_probe true``;
and prints the wall time of each pass (no training step runs: the train logs stay byte for byte)
and the disk cost of the checkpoint series per run. With ``--processes N`` (N > 1) each pass runs
as ``accelerate launch --num_processes N probes/run.py measure`` in a fresh process (the runs split
between the processes, ``--num_threads`` each): its time then includes starting them.

    python benchmarks/remeasure_default.py [--experiment reports/default] [--num_threads 2]
        [--processes 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from safetensors.torch import load_file
from scipy.cluster.hierarchy import fcluster, linkage

from probes.run import main
from probes.store import checkpoint_series

WEIGHTS = {"attn.q": "attn.q_proj", "attn.k": "attn.k_proj", "attn.v": "attn.v_proj",
           "mlp.in": "mlp.fc_in"}  # the paper model's unit sets (rows of these weights)


def groups(weight: np.ndarray, tau: float) -> int:
    """Complete-linkage groups of the rows of ``weight`` with every pair at cosine >= tau."""
    norms = np.linalg.norm(weight, axis=1)
    unit = weight[norms > 1e-8 * np.median(norms)]
    unit = unit / np.linalg.norm(unit, axis=1, keepdims=True)
    dist = np.clip(1.0 - unit @ unit.T, 0.0, 2.0)
    return int(fcluster(linkage(dist[np.triu_indices(len(unit), 1)], "complete"), 1.0 - tau,
                        "distance").max())


ROOT = Path(__file__).resolve().parent.parent


def launch(argv: list[str], processes: int) -> list[str]:
    """``accelerate launch`` of ``probes/run.py argv`` on ``processes`` CPU processes."""
    with socket.socket() as s:  # a free port for the processes' gloo group
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
            str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend",
            "no", "--main_process_port", str(port), str(ROOT / "probes" / "run.py"), *argv]


def timed(argv: list[str], processes: int = 1) -> float:
    """Wall seconds of ``probes/run.py argv``: in this process, or launched on ``processes``."""
    start = time.perf_counter()
    if processes > 1:
        env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        proc = subprocess.run(launch(argv, processes), env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
    else:
        assert main(argv) == 0, argv
    return time.perf_counter() - start


def recount(out: Path, thresholds) -> tuple[int, int]:
    """(rows checked, rows that differ) of n_groups in out/metrics.csv against ``groups``."""
    metrics = pd.read_csv(out / "metrics.csv")
    rows = metrics[(metrics["metric"] == "n_groups") & metrics["component"].isin(WEIGHTS)]
    checked = wrong = 0
    for run_id, mine in rows.groupby("run_id"):
        for step, path in checkpoint_series(out / "runs" / run_id):
            weights = load_file(path / "model.safetensors")
            at = mine[mine["step"] == step]
            for r in at.itertuples():
                w = weights[f"h.{int(r.layer)}.{WEIGHTS[r.component]}.weight"].double().numpy()
                checked += 1
                wrong += int(r.value != groups(w, r.threshold))
    assert set(rows["threshold"]) == set(thresholds)
    return checked, wrong


def disk(out: Path) -> str:
    """Checkpoint bytes per run: the series (checkpoint-*) and model/."""
    per_run = []
    for run in sorted((out / "runs").iterdir()):
        series = sum(f.stat().st_size for d in run.glob("checkpoint-*") for f in d.iterdir())
        model = sum(f.stat().st_size for f in (run / "model").iterdir())
        per_run.append((len(list(run.glob("checkpoint-*"))), series, model))
    n, series, model = per_run[0]
    return (f"{len(per_run)} runs; per run {n} checkpoint-<step> folders, {series / 1e6:.2f} MB, "
            f"and model/ {model / 1e6:.2f} MB: {(series + model) / 1e6:.2f} MB a run, "
            f"{sum(s + m for _, s, m in per_run) / 1e6:.1f} MB in all")


def run(experiment: Path, threads: int, processes: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / experiment.name
        shutil.copytree(experiment, out)
        before = (out / "metrics.csv").read_bytes()
        logs = {p: p.read_bytes() for p in out.glob("runs/*/train_log.csv")}
        print(disk(out))
        print(f"{processes} process(es), {threads} thread(s) each; load average before: "
              f"{os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)")
        threads_arg = ["--num_threads", str(threads)]
        t = timed(["measure", str(out), *threads_arg], processes)
        same = (out / "metrics.csv").read_bytes() == before
        print(f"measure at the training settings: {t:.1f} s; metrics.csv byte for byte equal to "
              f"the training-time one: {same}")
        t = timed(["measure", str(out), "--thresholds", "[0.8, 0.97]", *threads_arg], processes)
        checked, wrong = recount(out, (0.8, 0.97))
        print(f"measure --thresholds [0.8, 0.97]: {t:.1f} s; n_groups rows recounted with scipy: "
              f"{checked}, differing: {wrong}")
        t = timed(["measure", str(out), "--merge_probe", "true", *threads_arg], processes)
        merged = pd.read_csv(out / "metrics.csv")
        n = int((merged["metric"] == "loss_merged").sum())
        print(f"measure --merge_probe true: {t:.1f} s; loss_merged rows: {n}")
        untouched = all(p.read_bytes() == b for p, b in logs.items())
        print(f"train logs unchanged by the three passes (nothing trained): {untouched}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", type=Path, default=Path("reports/default"))
    parser.add_argument("--num_threads", type=int, default=2)
    parser.add_argument("--processes", type=int, default=1)
    args = parser.parse_args()
    run(args.experiment, args.num_threads, args.processes)
