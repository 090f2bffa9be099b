"""Grids split between processes, resumed after kill -9, and divergence: the rows must not change."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from probes.config import ConfigError, expand, load_config
from probes.run import main

ROOT = Path(__file__).resolve().parent.parent
TINY = str(Path(__file__).with_name("tiny.yaml"))
ENV = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def same_rows(a: Path, b: Path) -> None:
    """Every report row equal, wall time aside."""
    for name in ("metrics.csv", "ood_offsets.csv", "lineage.csv"):
        assert (a / name).read_text() == (b / name).read_text(), name
    ra, rb = (pd.read_csv(p / "runs.csv").drop(columns=["wall_s", "checkpoint"]) for p in (a, b))
    pd.testing.assert_frame_equal(ra, rb)


def test_grid_expands_as_product_with_stable_ids():
    raw = load_config(TINY, {"seed": [0, 1, 2], "lr": [1e-3, 3e-3]})
    runs = expand(raw)
    assert len(runs) == 2 * 3 * 2  # gamma x seed x lr
    assert len({r.run_id for r in runs}) == 12
    assert [r.run_id for r in expand(raw)] == [r.run_id for r in runs]
    # experiment-level keys do not change a run's identity
    moved = expand(raw | {"output_dir": "elsewhere", "num_threads": 1})
    assert [r.run_id for r in moved] == [r.run_id for r in runs]
    with pytest.raises(ConfigError, match="repeats a run"):
        expand(raw | {"seed": [0, 0]})


def test_divergence_is_flagged_and_the_sweep_goes_on(tmp_path):
    assert main(["--config", TINY, "--gamma", "0.5", "--lr", "[1.0e+30, 0.001]",
                 "--output_dir", str(tmp_path)]) == 0
    runs = pd.read_csv(tmp_path / "runs.csv").set_index("lr")
    assert runs.loc[1e30, "diverged"] and runs.loc[1e30, "steps"] < 30
    assert pd.isna(runs.loc[1e30, "ood_inferential"])
    assert not runs.loc[1e-3, "diverged"] and runs.loc[1e-3, "steps"] == 30


def test_kill_9_then_rerun_gives_the_rows_of_an_unbroken_sweep(tmp_path):
    args = ["--config", TINY, "--steps", "200", "--save_every", "20", "--num_threads", "1"]
    assert main(args + ["--output_dir", str(tmp_path / "unbroken")]) == 0
    out = tmp_path / "killed"
    killed_mid_training(args, out)
    assert not (out / "runs.csv").exists()
    cmd = [sys.executable, "probes/run.py", *args, "--output_dir", str(out)]
    assert subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True).returncode == 0
    same_rows(tmp_path / "unbroken", out)
    assert not list(out.glob("runs/.*"))  # finished runs drop their work folders


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_give_the_rows_of_one(tmp_path):
    args = ["--config", TINY, "--seed", "[0, 1]", "--num_threads", "1"]
    assert main(args + ["--output_dir", str(tmp_path / "one")]) == 0
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
              "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
              "--dynamo_backend", "no", "--main_process_port", str(free_port()),
              "probes/run.py", *args, "--output_dir", str(tmp_path / "two")]
    proc = subprocess.run(launch, cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    plan = [line for line in proc.stderr.splitlines() if "4 run(s)" in line]  # the main one's
    assert len(plan) == 1 and "on 2 process(es)" in plan[0], proc.stderr[-2000:]
    same_rows(tmp_path / "one", tmp_path / "two")
    # each process saves the checkpoint series of the runs it trains (transformers 5 would let
    # only rank 0 write): the same series, the same tensors
    one, two = tree(tmp_path / "one" / "runs"), tree(tmp_path / "two" / "runs")
    models = [k for k in one if k.endswith("model.safetensors")]
    assert len(models) == 4 * 4 and sorted(models) == sorted(k for k in two if k.endswith(
        "model.safetensors"))
    for k in models:
        a, b = (load_file(str(root / "runs" / k)) for root in (tmp_path / "one", tmp_path / "two"))
        assert a.keys() == b.keys() and all(torch.equal(a[t], b[t]) for t in a), k


def killed_mid_training(args: list[str], out: Path) -> None:
    """Start ``probes/run.py args`` and SIGKILL it once a run has saved a resumable state."""
    cmd = [sys.executable, "probes/run.py", *args, "--output_dir", str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list(out.glob("runs/.*.training/state/trainer.pt")):
        assert proc.poll() is None and time.time() < deadline, "no state was saved before the end"
        time.sleep(0.02)
    time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_a_killed_overwrite_leaves_the_finished_run_byte_for_byte(tmp_path):
    args = ["--config", TINY, "--gamma", "0.5", "--steps", "200", "--save_every", "20",
            "--num_threads", "1"]
    out = tmp_path / "out"
    assert main(args + ["--output_dir", str(out)]) == 0
    (run,) = (out / "runs").iterdir()
    before = tree(run)
    killed_mid_training(args + ["--overwrite", "true"], out)
    assert tree(run) == before  # the new attempt wrote only into runs/.<run_id>.training/
    assert main(args + ["--output_dir", str(out)]) == 0  # finished: kept as it was
    assert tree(run) == before
    assert not list(out.glob("runs/.*"))  # the killed attempt's work folder, never resumed, gone


def test_a_run_resumed_with_new_analysis_settings_is_measured_with_them(tmp_path):
    args = ["--config", TINY, "--gamma", "0.5", "--steps", "200", "--save_every", "20",
            "--num_threads", "1"]
    new = ["--thresholds", "[0.5, 0.9]"]
    assert main(args + new + ["--output_dir", str(tmp_path / "unbroken")]) == 0
    out = tmp_path / "killed"
    killed_mid_training(args, out)  # began with the default thresholds
    assert main(args + new + ["--output_dir", str(out)]) == 0
    same_rows(tmp_path / "unbroken", out)
    metrics = pd.read_csv(out / "metrics.csv")
    assert set(metrics["threshold"].dropna()) == {0.5, 0.9}
