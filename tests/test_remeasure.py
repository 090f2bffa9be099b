"""Train once, measure many times: the checkpoint series a run saves, the run id that only
training decides, and measuring a finished experiment again without training."""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from safetensors.torch import load_file, save_file
from scipy.cluster.hierarchy import fcluster, linkage

from probes.config import RunConfig
from probes.run import main
from probes.train.loop import probe_steps

TINY = str(Path(__file__).with_name("tiny.yaml"))
ARGS = ["--config", TINY, "--gamma", "1.0", "--num_threads", "1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("once")
    assert main(ARGS + ["--output_dir", str(out)]) == 0
    return out


def groups(weight: np.ndarray, tau: float) -> int:
    """Complete-linkage groups of the rows of ``weight`` at cosine >= tau, counted by scipy on
    the float64 cosine distance (independent of probes.measure)."""
    unit = weight / np.linalg.norm(weight, axis=1, keepdims=True)
    dist = np.clip(1.0 - unit @ unit.T, 0.0, 2.0)
    condensed = dist[np.triu_indices(len(unit), 1)]
    return int(fcluster(linkage(condensed, "complete"), 1.0 - tau, "distance").max())


@pytest.mark.parametrize("change, same", [
    (dict(thresholds=[0.5]), True), (dict(merge_probe=True), True), (dict(n_probes=30), True),
    (dict(n_eval=7), True), (dict(save_checkpoints="none"), True), (dict(experiment="x"), True),
    (dict(width=7), True),  # an mlp key: the paper model never reads it
    (dict(lr_min=1e-5, lr_schedule="constant"), False),  # the schedule changes
    (dict(lr=3e-3), False), (dict(split_modulus=9), False), (dict(n_train=123), False),
    (dict(mixed_precision="bf16"), False), (dict(seed=3), False),
])
def test_run_id_follows_training_keys_only(change, same):
    base = RunConfig()
    assert (RunConfig(**change).run_id == base.run_id) is same


def test_run_id_ignores_keys_the_task_or_schedule_does_not_read():
    cfg = RunConfig(task="chain_search_authors", vocab_size=201)
    assert RunConfig(task="chain_search_authors", vocab_size=201, seq_len=40).run_id == cfg.run_id
    assert RunConfig(lr_schedule="constant", warmup_steps=5).run_id != \
        RunConfig(lr_schedule="constant").run_id
    assert "lr_min" not in RunConfig(lr_schedule="constant").identity()
    assert RunConfig(lr_min=1e-5).run_id != RunConfig().run_id  # cosine reads it


def test_training_saves_a_checkpoint_series_with_its_scores(trained):
    (folder,) = (trained / "runs").iterdir()
    steps = probe_steps(30, 4)
    saved = sorted(int(p.name.split("-")[1]) for p in folder.glob("checkpoint-*"))
    assert saved == steps[:-1] and (folder / "model" / "model.safetensors").is_file()
    assert not list((trained / "runs").glob(".*"))  # no work folder left
    metrics = pd.read_csv(folder / "metrics.csv")
    for step in saved:
        scores = pd.read_json(folder / f"checkpoint-{step}" / "scores.json", typ="series")
        rows = metrics[(metrics["step"] == step) & (metrics["component"] == "output")]
        assert dict(zip(rows["metric"], rows["value"])) == pytest.approx(scores.drop("step").to_dict())


def angles_deg(now: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Each row's angle to the same row at step 0, by arccos of the float64 cosine (drift.py uses
    atan2 of the difference and sum)."""
    cos = (now * start).sum(axis=1) / (np.linalg.norm(now, axis=1) * np.linalg.norm(start, axis=1))
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def test_training_writes_each_units_angle_to_its_step_0_direction(trained):
    """The angle rows of a training run equal numpy on its saved checkpoint-0 and later weights
    (the paper model: bias-free projections, so a unit is a weight row)."""
    run = next((trained / "runs").iterdir())
    metrics = pd.read_csv(run / "metrics.csv")
    start = load_file(run / "checkpoint-0" / "model.safetensors")
    checked = 0
    for step in probe_steps(30, 4):
        path = run / (f"checkpoint-{step}" if step < 30 else "model") / "model.safetensors"
        now = load_file(path)
        for layer in (0, 1):
            for component, key in (("attn.q", "attn.q_proj"), ("attn.v", "attn.v_proj"),
                                   ("mlp.in", "mlp.fc_in")):
                name = f"h.{layer}.{key}.weight"
                w, w0 = now[name].double().numpy(), start[name].double().numpy()
                a = angles_deg(w, w0)
                rows = metrics[(metrics["step"] == step) & (metrics["layer"] == layer)
                               & (metrics["component"] == component) & metrics["head"].isna()]
                got = dict(zip(rows["metric"], rows["value"]))
                want = dict(angle_mean=a.mean(), angle_median=np.median(a), angle_max=a.max(),
                            rd=np.linalg.norm(w - w0) / np.linalg.norm(w0))
                assert {k: got[k] for k in want} == pytest.approx(want, rel=1e-6, abs=1e-5), \
                    (step, layer, component)
                n = dict(zip(rows["metric"], rows["n_units"]))
                assert n["angle_mean"] == n["angle_max"] == len(w)
                checked += 1
    assert checked == 3 * 2 * len(probe_steps(30, 4))
    late = metrics[(metrics["step"] == 30) & (metrics["metric"] == "angle_max")]
    assert (late["value"] > 0).all()  # the units did turn: the comparison is not 0 against 0


def test_measure_again_at_the_same_settings_gives_the_same_bytes(trained, tmp_path):
    before = {p.name: p.read_bytes() for p in trained.glob("*.csv")}
    run = next((trained / "runs").iterdir())
    run_before = (run / "metrics.csv").read_bytes()
    log = (run / "train_log.csv").read_bytes()
    assert main(["measure", str(trained), "--num_threads", "1"]) == 0
    assert (run / "metrics.csv").read_bytes() == run_before
    for name in ("metrics.csv", "ood_offsets.csv", "correlations.csv"):
        assert (trained / name).read_bytes() == before[name], name
    assert (run / "train_log.csv").read_bytes() == log  # nothing trained


def test_measure_at_new_thresholds_equals_an_independent_count(trained):
    run = next((trained / "runs").iterdir())
    assert main(["measure", str(trained), "--thresholds", "[0.8, 0.97]", "--num_threads", "1"]) == 0
    metrics = pd.read_csv(trained / "metrics.csv")
    q = metrics[(metrics["metric"] == "n_groups") & (metrics["component"] == "attn.q")]
    assert set(q["threshold"]) == {0.8, 0.97}
    for step in probe_steps(30, 4):
        path = run / (f"checkpoint-{step}" if step < 30 else "model") / "model.safetensors"
        weights = load_file(path)
        for layer in (0, 1):
            w = weights[f"h.{layer}.attn.q_proj.weight"].double().numpy()
            for tau in (0.8, 0.97):
                row = q[(q["step"] == step) & (q["layer"] == layer) & (q["threshold"] == tau)]
                assert row["value"].item() == groups(w, tau), (step, layer, tau)
    assert "thresholds:\n- 0.8\n- 0.97" in (run / "config.yaml").read_text()


def test_rerunning_the_command_with_analysis_changes_measures_without_training(trained, tmp_path,
                                                                            capsys):
    run = next((trained / "runs").iterdir())
    log = (run / "train_log.csv").read_bytes()
    new = ["--merge_probe", "true", "--thresholds", "[0.7, 0.9, 0.95, 0.99]"]
    assert main(ARGS + ["--output_dir", str(trained)] + new) == 0
    assert "1 run(s) measured again from their checkpoints" in capsys.readouterr().err
    assert (run / "train_log.csv").read_bytes() == log
    metrics = pd.read_csv(trained / "metrics.csv")
    merged = metrics[metrics["metric"] == "loss_merged"]
    assert set(merged["step"]) == {30} and len(merged) == 5 * 4  # 4 sites and all, 4 thresholds
    # the same rows as a run trained with these settings from the start (same run id)
    assert main(ARGS + ["--output_dir", str(tmp_path)] + new) == 0
    assert (tmp_path / "metrics.csv").read_bytes() == (trained / "metrics.csv").read_bytes()


def test_measure_refuses_a_training_key_and_a_folder_without_runs(trained, tmp_path, capsys):
    assert main(["measure", str(trained), "--lr", "0.1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --lr is not taken by measure") and "\n" not in err
    assert main(["measure", str(trained), "--hops", "3"]) == 2  # a task option, even unread
    assert capsys.readouterr().err.startswith("error: --hops is not taken by measure")
    assert main(["measure", str(trained), "--bogus", "1"]) == 2  # named with measure's keys only
    assert capsys.readouterr().err.strip().endswith(
        "accepted with measure are n_probes, n_eval, merge_steps, merge_probe, thresholds, "
        "chance_draws, chance_nulls, num_threads")
    recorded = yaml.safe_load(next((trained / "runs").glob("*/config.yaml")).read_text())
    assert main(["measure", str(trained), "--n_probes", str(recorded["n_probes"] + 1)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --n_probes {recorded['n_probes'] + 1}: measure measures the "
                          f"steps run") and "accepted is that value" in err and "\n" not in err
    assert main(["measure", str(tmp_path)]) == 2
    assert "holds no runs.csv" in capsys.readouterr().err
    assert main(["measure", str(next((trained / "runs").iterdir()))]) == 2  # a run's own folder
    assert "this is one run's folder" in capsys.readouterr().err


def test_a_run_without_a_series_is_refused_and_left_as_it_was(tmp_path, capsys):
    out = tmp_path / "final"
    assert main(ARGS + ["--output_dir", str(out), "--save_checkpoints", "final"]) == 0
    before = (out / "metrics.csv").read_bytes()
    assert main(["measure", str(out), "--thresholds", "[0.5]"]) == 2
    assert "no checkpoint series" in capsys.readouterr().err
    assert (out / "metrics.csv").read_bytes() == before
    assert (next((out / "runs").iterdir()) / "model" / "model.safetensors").is_file()


def _nan_weight(run: Path, name: str = "h.0.attn.q_proj.weight") -> None:
    path = run / "checkpoint-5" / "model.safetensors"
    tensors = load_file(path)
    tensors[name][0, 0] = float("nan")
    save_file(tensors, path, metadata={"format": "pt"})


def _half_tensor(run: Path) -> None:
    path = run / "checkpoint-5" / "model.safetensors"
    tensors = load_file(path)
    tensors["h.0.mlp.fc_in.weight"] = tensors["h.0.mlp.fc_in.weight"].half()
    save_file(tensors, path, metadata={"format": "pt"})


def _edited_config(run: Path) -> None:
    path = run / "config.yaml"
    path.write_text(path.read_text().replace("\nseed: 0\n", "\nseed: 3\n"))


def _tensor_lost(run: Path) -> None:
    path = run / "checkpoint-5" / "model.safetensors"
    tensors = load_file(path)
    del tensors["h.0.attn.k_proj.weight"]  # transformers would initialize it at random
    save_file(tensors, path, metadata={"format": "pt"})


def _other_shape(run: Path) -> None:
    path = run / "checkpoint-5" / "model.safetensors"
    tensors = load_file(path)
    tensors["h.0.attn.q_proj.weight"] = tensors["h.0.attn.q_proj.weight"][:-1]
    save_file(tensors, path, metadata={"format": "pt"})


DAMAGE = {  # what is done to a finished run's folder -> what the one error line says
    "no config.json": (lambda run: (run / "checkpoint-5" / "config.json").unlink(),
                       "(step 5) lacks config.json"),
    "no weights": (lambda run: (run / "checkpoint-5" / "model.safetensors").unlink(),
                   "(step 5) lacks model.safetensors"),
    "no final model": (lambda run: shutil.rmtree(run / "model"),
                       "lacks the model of step(s) [30] (model/, the final one)"),
    "a step lost": (lambda run: shutil.rmtree(run / "checkpoint-1"), "lacks the model of step(s) [1]"),
    "a step added": (lambda run: shutil.copytree(run / "checkpoint-5", run / "checkpoint-12"),
                     "holds checkpoint-<step> folders of no probe step: [12]"),
    "corrupt weights": (lambda run: (run / "checkpoint-5" / "model.safetensors").write_text("x"),
                        "(step 5) holds a file that cannot be read"),
    "corrupt config": (lambda run: (run / "checkpoint-5" / "config.json").write_text("{bad"),
                       "(step 5) holds a file that cannot be read"),
    "no run.json": (lambda run: (run / "run.json").unlink(), "lacks its run.json"),
    "a NaN weight": (_nan_weight, "(step 5) does not load as the run's model (tensor "
                     "h.0.attn.q_proj.weight holds NaN or inf)"),
    "a NaN in the output head (scored, not measured)": (
        lambda run: _nan_weight(run, "lm_head.weight"),
        "(step 5) does not load as the run's model (tensor lm_head.weight holds NaN or inf)"),
    "a tensor re-saved as float16": (_half_tensor, "(step 5) stores h.0.mlp.fc_in.weight as F16"),
    "a training key edited in config.yaml": (_edited_config, "gives run id 'paper-g1-s3-"),
    "a tensor lost": (_tensor_lost, "(step 5) does not load as the run's model (its weights file "
                      "lacks the tensor(s) h.0.attn.k_proj.weight)"),
    "a tensor of another shape": (_other_shape, "(step 5) does not load as the run's model (a "
                                  "tensor's shape differs from the model's)"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_series_is_one_error_line_and_leaves_the_experiment(trained, tmp_path, capfd,
                                                                       damage):
    out = tmp_path / "copy"
    shutil.copytree(trained, out)
    run = next((out / "runs").iterdir())
    hurt, words = DAMAGE[damage]
    hurt(run)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert main(["measure", str(out), "--thresholds", "[0.5]", "--num_threads", "1"]) == 2
    lines = capfd.readouterr().err.strip().splitlines()  # transformers' own lines included
    # refused before any work: the error line alone; found when the model is loaded or
    # measured: after the plan's info line
    assert lines[-1].startswith("error: ") and words in lines[-1] and "accepted" in lines[-1], lines
    assert len(lines) == 1 or (len(lines) == 2 and "measured again on" in lines[0]), lines
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("value", ["0.9,0.95", "[0.9, 0.95]"])
def test_thresholds_take_the_checkpoint_grammar_too(value):
    from probes.config import load_config, parse_overrides

    _, overrides = parse_overrides(["--thresholds", value])
    assert load_config(TINY, overrides)["thresholds"] == [0.9, 0.95]
    assert load_config(TINY, {"thresholds": 0.9})["thresholds"] == [0.9]


def test_checkpoint_probe_of_a_run_folder_reads_its_whole_series(trained, tmp_path):
    run = next((trained / "runs").iterdir())
    assert main(["--checkpoint", str(run), "--output_dir", str(tmp_path / "ck"),
                 "--num_threads", "1"]) == 0
    runs = pd.read_csv(tmp_path / "ck" / "runs.csv")
    assert list(runs["step"]) == probe_steps(30, 4) and runs["run_id"].nunique() == 1
    assert runs["checkpoint"].iloc[-1].endswith("/model")
    # the two measuring paths (the checkpoint probe's streaming reader, the series probe of
    # training and `measure`) give the same weight-basis rows for the same saved models
    key = ["step", "layer", "component", "head", "metric", "threshold"]
    ck = pd.read_csv(tmp_path / "ck" / "metrics.csv")
    ck = ck[ck["basis"] == "weight"].fillna({"head": -1, "threshold": -1})
    own = pd.read_csv(run / "metrics.csv")
    own = own[own["basis"] == "weight"].fillna({"head": -1, "threshold": -1})
    both = ck.set_index(key)[["value", "n_units"]].join(
        own.set_index(key)[["value", "n_units"]], how="inner", suffixes=("_ck", ""))
    # the probe had no --reference (no rd or angles); merge rows are not unit-set rows
    condensation = own[own["metric"].isin(set(ck["metric"]))]
    assert len(both) == len(condensation) > 0, (len(both), len(condensation))
    assert (both["n_units_ck"] == both["n_units"]).all()
    assert np.allclose(both["value_ck"], both["value"], rtol=1e-12, atol=0, equal_nan=True)


def test_runs_csv_has_exactly_its_columns_and_the_package_version(trained):
    from probes.store import RUNS_FRONT, RUNS_TAIL, package_version

    runs = pd.read_csv(trained / "runs.csv")
    scores = ["acc_train", "acc_test_id", "acc_pair34", "ood_inferential", "ood_symmetric",
              "ood_other"]
    assert list(runs.columns) == RUNS_FRONT + scores + RUNS_TAIL
    assert runs["package_version"].astype(str).tolist() == [package_version()]
    assert runs["batch_size"].tolist() == [64]


def test_measure_takes_the_comma_grammar_and_refuses_bad_values(trained, capsys):
    assert main(["measure", str(trained), "--thresholds", "0.9,0.95", "--num_threads", "1"]) == 0
    metrics = pd.read_csv(trained / "metrics.csv")
    assert set(metrics[metrics["metric"] == "n_groups"]["threshold"]) == {0.9, 0.95}
    capsys.readouterr()  # its messages (stderr) are not the error's
    assert main(["measure", str(trained), "--thresholds", "0.9,high"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: thresholds=") and "\n" not in err
    assert main(["measure", str(trained), "--thresholds", "[1.5]"]) == 2
    assert "thresholds=[1.5] is invalid" in capsys.readouterr().err
