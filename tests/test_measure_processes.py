"""``measure DIR`` split over the processes of ``accelerate launch``: each process measures a share
of the runs, the main one gathers them and alone writes, so every file is the one a single process
writes, byte for byte."""

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from safetensors.torch import load_file, save_file

from probes.run import main

ROOT = Path(__file__).resolve().parent.parent
TINY = str(Path(__file__).with_name("tiny.yaml"))
ENV = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
NEW = ["--thresholds", "[0.8, 0.97]", "--num_threads", "1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (the figures aside: their bytes are matplotlib's) -> bytes,
    the folder's own path (config.yaml's output_dir) read as DIR."""
    return {str(p.relative_to(folder)): p.read_bytes().replace(str(folder).encode(), b"DIR")
            for p in sorted(folder.rglob("*")) if p.is_file() and "figures" not in p.parts}


@pytest.mark.slow
def test_two_processes_measure_the_bytes_of_one(tmp_path):
    trained = tmp_path / "trained"
    # three runs: two processes get an uneven share (2 and 1), gathered back in runs.csv's order
    assert main(["--config", TINY, "--gamma", "[0.5, 0.8, 1.0]", "--num_threads", "1",
                 "--output_dir", str(trained)]) == 0
    one, two = tmp_path / "one", tmp_path / "two"
    shutil.copytree(trained, one)
    shutil.copytree(trained, two)
    assert main(["measure", str(one), *NEW]) == 0
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
              "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
              "--dynamo_backend", "no", "--main_process_port", str(free_port()),
              "probes/run.py", "measure", str(two), *NEW, "--log_level", "debug"]
    proc = subprocess.run(launch, cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    shares = sorted(re.findall(r"process (\d) measures (\d) run\(s\)", proc.stderr))
    assert shares == [("0", "2"), ("1", "1")], proc.stderr[-2000:]
    plan = [line for line in proc.stderr.splitlines() if "measured again on" in line]
    assert len(plan) == 1 and "on 2 process(es), 1 thread(s) each" in plan[0]
    before, after_one, after_two = tree(trained), tree(one), tree(two)
    assert after_one["metrics.csv"] != before["metrics.csv"]  # measured at the new thresholds
    assert after_two.keys() == after_one.keys()
    assert [k for k in after_one if after_two[k] != after_one[k]] == []


@pytest.mark.slow
def test_a_run_the_second_process_cannot_measure_is_one_error_line(tmp_path):
    """A damaged checkpoint in the second process's share: every process stops at the same
    point (no process left waiting for another, so no traceback of a broken connection), the
    main one says it once, and the experiment is left as it was."""
    trained = tmp_path / "trained"
    assert main(["--config", TINY, "--num_threads", "1", "--output_dir", str(trained)]) == 0
    last = trained / "runs" / pd.read_csv(trained / "runs.csv")["run_id"].iloc[-1]
    path = last / "checkpoint-5" / "model.safetensors"
    tensors = load_file(path)
    tensors["h.0.attn.q_proj.weight"][0, 0] = float("nan")
    save_file(tensors, path, metadata={"format": "pt"})
    before = tree(trained)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
              "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
              "--dynamo_backend", "no", "--main_process_port", str(free_port()),
              "probes/run.py", "measure", str(trained), *NEW]
    proc = subprocess.run(launch, cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "holds NaN or inf" in errors[0], proc.stderr[-2000:]
    assert "[rank" not in proc.stderr and "gloo" not in proc.stderr, proc.stderr[-2000:]
    # every process left with code 2 (none aborted while another held the process group)
    assert "terminate called" not in proc.stderr and "SIGABRT" not in proc.stderr, proc.stderr[-2000:]
    assert tree(trained) == before
