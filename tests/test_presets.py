"""The shipped presets parse, and the paper-scale preset starts and trains on a CPU."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from probes.config import expand, load_config
from probes.report.tables import best_over, phase_table
from probes.run import main

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.mark.parametrize("name, n_runs", [("default", 6), ("sweep_small", 10),
                                          ("phase_diagram", 24), ("paper", 1080)])
def test_presets_expand(name, n_runs):
    runs = expand(load_config(CONFIGS / f"{name}.yaml"))
    assert len(runs) == n_runs


def test_paper_preset_is_the_papers_setup():
    runs = expand(load_config(CONFIGS / "paper.yaml"))
    r = runs[0]
    assert (r.n_embd, r.d_ff, r.n_head, r.batch_size, r.model_family) == (400, 1200, 1, 2048, "paper")
    assert sorted({x.n_layer for x in runs}) == [2, 3, 4, 5, 6]
    lrs = sorted({x.lr for x in runs})
    assert len(lrs) == 9 and lrs[0] == 1e-4 and lrs[-1] == 3e-4
    assert r.steps * r.batch_size / r.n_train == pytest.approx(210, rel=0.01)


def shrunk(preset: str, out: Path, *extra: str) -> list[str]:
    """The command line of ``preset`` shrunk to 3 steps on small data sets."""
    return ["--config", str(CONFIGS / f"{preset}.yaml"), "--steps", "3", "--warmup_steps", "1",
            "--n_test_id", "256", "--n_ood", "256", "--n_eval", "256", "--n_probes", "2",
            "--output_dir", str(out), *extra]


def test_paper_preset_runs_a_few_steps_on_cpu(tmp_path):
    args = shrunk("paper", tmp_path, "--n_layer", "2", "--gamma", "0.5", "--lr", "0.0002",
                  "--seed", "0", "--n_train", "4096")
    assert main(args) == 0
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert runs["steps"].tolist() == [3] and not runs["diverged"].any()
    m = pd.read_csv(tmp_path / "metrics.csv")
    q = m[(m["component"] == "attn.q") & (m["metric"] == "n_groups") & (m["threshold"] == 0.9)]
    assert set(q["n_units"]) == {200}  # d_k = 200 rows of W_Q
    assert set(m[m["component"] == "mlp.in"]["n_units"]) == {1200}


def test_best_over_keeps_the_best_lr_per_cell_and_seed():
    runs = pd.DataFrame({
        "run_id": list("abcdef"), "gamma": [0.5] * 6, "n_layer": [2] * 6,
        "seed": [0, 0, 0, 1, 1, 1], "lr": [1, 2, 3] * 2,
        "acc_test_id": [0.5, 0.9, np.nan, 0.7, 0.6, 0.7],
        "ood_inferential": [0.1, 0.8, np.nan, 0.2, 0.3, 0.4],
        "ood_symmetric": [0.0] * 6, "fitted": [False, False, False, False, False, False]})
    best = best_over(runs)
    assert best["run_id"].tolist() == ["b", "d"]  # NaN (diverged) never wins; ties keep the first
    metrics = pd.DataFrame({"run_id": list("bd"), "step": [10, 10], "layer": [0, 0],
                            "component": ["attn.q"] * 2, "head": [np.nan] * 2,
                            "basis": ["weight"] * 2, "metric": ["mean_abs_cos"] * 2,
                            "threshold": [np.nan] * 2, "value": [0.2, 0.4], "n_units": [8, 8]})
    table = phase_table(runs, metrics)
    row = table.iloc[0]
    assert (row["n_runs"], row["n_fitted"]) == (2, 0)
    assert row["acc_test_id"] == pytest.approx(0.8) and row["ood_inferential"] == pytest.approx(0.5)
    assert np.isnan(row["ood_inferential_fitted"])
    assert row["wq_mean_abs_cos"] == pytest.approx(0.3)


def test_split_cpu_preset_is_the_d400_setting_and_runs_shrunk(tmp_path):
    runs = expand(load_config(CONFIGS / "split_cpu.yaml"))
    assert len(runs) == 6 and {r.gamma for r in runs} == {0.5, 0.8}
    r = runs[0]
    assert (r.n_embd, r.d_ff, r.batch_size, r.steps, r.lr_schedule, r.mixed_precision) == \
        (400, 1200, 256, 10000, "constant", "bf16")
    args = shrunk("split_cpu", tmp_path, "--gamma", "0.8", "--seed", "1", "--n_train", "2048",
                  "--mixed_precision", "no", "--num_threads", "1")
    assert main(args) == 0
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert runs["steps"].tolist() == [3] and runs["batch_size"].tolist() == [256]
    m = pd.read_csv(tmp_path / "metrics.csv")
    q = m[(m["component"] == "attn.q") & (m["metric"] == "n_groups") & (m["layer"] == 0)]
    assert set(q["n_units"]) == {200} and set(q["step"]) == {0, 3}
    assert (tmp_path / "figures" / "ood_over_training.png").stat().st_size > 1000
