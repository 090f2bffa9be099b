"""The main job end to end on a tiny config, and its answers to bad input."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM

import models  # noqa: F401  (registers the paper family)
from probes.run import main
from tasks import make_task

ROOT = Path(__file__).resolve().parent.parent
TINY = str(Path(__file__).with_name("tiny.yaml"))

METRICS_COLUMNS = ["run_id", "step", "layer", "component", "head", "basis", "metric",
                   "threshold", "value", "n_units"]
RUNS_REQUIRED = ["run_id", "experiment", "task", "model_family", "gamma", "n_layer", "n_embd",
                 "n_head", "lr", "weight_decay", "dropout", "seed", "steps", "train_loss",
                 "acc_train", "acc_test_id", "acc_pair34", "ood_inferential", "ood_symmetric",
                 "ood_other", "fitted", "diverged", "wall_s", "checkpoint", "package_version"]
CORR_REQUIRED = ["layer", "component", "head", "basis", "metric", "threshold", "n_runs",
                 "spearman_rho", "ci_low", "ci_high"]


@pytest.fixture(scope="module")
def tiny_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    assert main(["--config", TINY, "--output_dir", str(out)]) == 0
    return out


def test_writes_all_reports_with_design_columns(tiny_out):
    runs = pd.read_csv(tiny_out / "runs.csv")
    metrics = pd.read_csv(tiny_out / "metrics.csv")
    corr = pd.read_csv(tiny_out / "correlations.csv")
    assert list(metrics.columns) == METRICS_COLUMNS
    assert set(RUNS_REQUIRED) <= set(runs.columns)
    assert set(CORR_REQUIRED) <= set(corr.columns)
    assert sorted(runs["gamma"]) == [0.5, 1.0] and len(runs) == 2
    # after 30 steps nothing fits, and it says so
    assert not runs["fitted"].any() and not runs["diverged"].any()
    for name in ("cosine_attn_q_layer0", "groups_over_training", "ood_over_training",
                 "ood_vs_gamma", "ood_offsets",
                 "condensation_vs_ood"):
        assert (tiny_out / "figures" / f"{name}.png").stat().st_size > 1000


def test_probe_schedule_and_units(tiny_out):
    metrics = pd.read_csv(tiny_out / "metrics.csv")
    q = metrics[(metrics["layer"] == 0) & (metrics["component"] == "attn.q")
                & (metrics["metric"] == "n_groups") & (metrics["threshold"] == 0.9)]
    for _, steps in q.groupby("run_id")["step"]:
        assert list(steps) == [0, 1, 5, 30]  # log-spaced, step 0 and the last included
    assert set(q["n_units"]) == {8}  # d_k = n_embd / 2
    reasoning = metrics[metrics["component"] == "output"]
    assert {"acc_train", "acc_test_id", "acc_pair34", "ood_inferential", "ood_symmetric",
            "ood_other", "train_loss"} <= set(reasoning["metric"])
    shares = reasoning.pivot_table(index=["run_id", "step"], columns="metric", values="value")
    total = shares[["ood_inferential", "ood_symmetric", "ood_other"]].sum(axis=1)
    assert np.allclose(total, 1.0)
    # rd is 0 at step 0 and positive after training
    rd = metrics[(metrics["metric"] == "rd") & (metrics["component"] == "attn.q")]
    assert (rd[rd["step"] == 0]["value"] == 0).all() and (rd[rd["step"] == 30]["value"] > 0).all()


def test_checkpoint_reproduces_reported_scores(tiny_out):
    runs = pd.read_csv(tiny_out / "runs.csv")
    offsets = pd.read_csv(tiny_out / "ood_offsets.csv")
    data = make_task("composite", n_train=2000, n_test_id=300, n_ood=300, seed=0).build()
    ood = data["ood"][:]
    for _, run in runs.iterrows():
        model = AutoModelForCausalLM.from_pretrained(run["checkpoint"]).eval()
        with torch.no_grad():
            pred = model(input_ids=torch.as_tensor(ood["input_ids"])).logits[:, -1].argmax(-1)
        pred = pred.numpy()
        assert np.mean(pred == ood["key"] - 10) == pytest.approx(run["ood_inferential"])
        assert np.mean(pred == ood["key"] - 6) == pytest.approx(run["ood_symmetric"])
        final = offsets[(offsets["run_id"] == run["run_id"]) & (offsets["step"] == 30)]
        counts = dict(zip(*np.unique(pred - ood["key"], return_counts=True)))
        assert dict(zip(final["offset"], final["count"])) == counts


def test_rerun_skips_finished_and_same_seed_is_identical(tiny_out, tmp_path, capsys):
    before = (tiny_out / "metrics.csv").read_text()
    assert main(["--config", TINY, "--output_dir", str(tiny_out)]) == 0
    assert "2 finished run(s) kept" in capsys.readouterr().err  # a message: the log, on stderr
    assert (tiny_out / "metrics.csv").read_text() == before
    assert main(["--config", TINY, "--output_dir", str(tmp_path)]) == 0
    assert (tmp_path / "metrics.csv").read_text() == before
    # report_only: reports of the finished runs, nothing trained
    assert main(["--config", TINY, "--gamma", "[0.5, 1.0, 2.0]", "--report_only", "true",
                 "--output_dir", str(tmp_path)]) == 0
    assert len(pd.read_csv(tmp_path / "runs.csv")) == 2
    assert not list(tmp_path.glob("runs/*g2-*"))


@pytest.mark.parametrize("args, names", [
    (["--task", "nope"], "task='nope'"),
    (["--model_family", "bert"], "model_family='bert'"),
    (["--gamm", "0.5"], "'gamm'"),
    (["--gamma", "0"], "gamma=0"),
    (["--gamma", "[0.5, -1]"], "gamma=-1"),
    (["--n_embd", "30", "--n_head", "4"], "n_embd=30"),
    (["--config", "missing.yaml"], "missing.yaml"),
    (["--experiment", "[a, b]"], "experiment"),
    (["--steps", "ten"], "steps='ten' has the wrong type: accepted is an integer"),
    (["--d_ff", "wide"], "accepted is an integer or null"),
])
def test_bad_input_one_line_exit_2_nothing_written(args, names, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--config", TINY] if "--config" not in args else []
    assert main(argv + args + ["--output_dir", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and names in err
    assert "accepted" in err or "does not exist" in err
    assert not out.exists()


def test_script_exit_code_is_2():
    proc = subprocess.run([sys.executable, "probes/run.py", "--gamma", "-1"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: gamma=-1 is invalid: accepted is a number in (0, 3]"]


def test_every_file_and_folder_written_has_the_mode_of_a_plain_open(tiny_out):
    # tempfile's staging files are private (0o600 / 0o700); what is renamed into place is shared
    umask = os.umask(0)
    os.umask(umask)
    paths = [p for p in tiny_out.rglob("*")]
    assert any(p.suffix == ".safetensors" for p in paths) and any(p.suffix == ".png" for p in paths)
    wrong = [(str(p.relative_to(tiny_out)), oct(p.stat().st_mode & 0o777)) for p in paths
             if p.stat().st_mode & 0o777 != (0o777 if p.is_dir() else 0o666) & ~umask]
    assert wrong == []


def test_no_ood_samples_draw_no_offsets_figure_and_no_library_warning(tmp_path, capfd):
    out = tmp_path / "out"
    assert main(["--config", TINY, "--gamma", "0.5", "--n_ood", "0", "--steps", "5",
                 "--warmup_steps", "1", "--num_threads", "1", "--output_dir", str(out)]) == 0
    err = capfd.readouterr().err
    assert "UserWarning" not in err, err
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert "ood_offsets.png" not in figures and "ood_over_training.png" in figures
