"""Issue 13: mixed precision through accelerate, precision in the run id and runs.csv, the per-run
training log, help generated from RunConfig, presets as package data, and transformers'
conventions (bos/eos inside the vocabulary, progress bars switched off only where needed)."""

import dataclasses
import math
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from transformers.utils import logging as hf_logging

from models import build_model
from probes.config import (
    DEFAULT_CONFIG,
    RunConfig,
    config_path,
    expand,
    load_config,
    preset_names,
)
from probes.run import main
from probes.runtime import hub_progress_bars_off
from probes.store import TRAIN_LOG_COLUMNS, work_dir
from probes.train.loop import Run
from tasks import make_task

ROOT = Path(__file__).resolve().parent.parent
TINY = str(Path(__file__).with_name("tiny.yaml"))


def tiny_run(**changes) -> tuple[RunConfig, object, dict]:
    """The first run of tests/tiny.yaml with ``changes``, its task and its data."""
    cfg = dataclasses.replace(expand(load_config(TINY))[0], n_probes=2, save_every=0,
                              save_checkpoints="none", **changes)
    task = make_task(cfg.task, **cfg.task_options())
    splits = task.build()
    return cfg, task, {s: splits[s][:] for s in splits}


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one state per process: a test that asks for another precision resets it
    before and after (as accelerate's own test cases do)."""
    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


def fp16_with_cpu_scaler(init_scale: float) -> Accelerator:
    """An fp16 Accelerator on CPU with a real GradScaler: accelerate gives CPU fp16 none (it would
    train in float32), so the scaler and autocast that a GPU would get are put in by hand."""
    acc = Accelerator(cpu=True, mixed_precision="fp16")
    acc.native_amp = True  # autocast in float16 and unscale_gradients, as on a GPU
    acc.scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    return acc


def test_fp16_unscales_before_clipping_and_skips_overflowed_steps(tmp_path, fresh_accelerate_state):
    cfg, task, data = tiny_run(steps=8, log_every=1, grad_clip=1.0, output_dir=str(tmp_path / "a"))
    Run(cfg, task, data, Accelerator(cpu=True)).train()
    ref_log = pd.read_csv(work_dir(cfg) / "train_log.csv")
    AcceleratorState._reset_state(True)

    # a moderate scale: no overflow; the logged norm is the unscaled one, ~ the float32 run's
    acc = fp16_with_cpu_scaler(2.0 ** 8)
    cfg16 = dataclasses.replace(cfg, mixed_precision="fp16", output_dir=str(tmp_path / "b"))
    Run(cfg16, task, data, acc).train()
    log = pd.read_csv(work_dir(cfg16) / "train_log.csv")
    assert acc.scaler.get_scale() == 2.0 ** 8  # no step skipped (growth only after 2000 steps)
    assert log["grad_norm"][0] == pytest.approx(ref_log["grad_norm"][0], rel=0.05)
    assert (log["lr"].diff().dropna() != 0).all()  # the scheduler stepped every step

    # a huge scale: the first steps overflow, are skipped (weights and schedule unchanged) and
    # halve the scale each time
    AcceleratorState._reset_state(True)
    acc = fp16_with_cpu_scaler(2.0 ** 22)
    cfg16 = dataclasses.replace(cfg16, output_dir=str(tmp_path / "c"))
    Run(cfg16, task, data, acc).train()
    log = pd.read_csv(work_dir(cfg16) / "train_log.csv")
    skipped = ~log["grad_norm"].map(math.isfinite)
    halvings = round(math.log2(2.0 ** 22 / acc.scaler.get_scale()))
    assert 0 < skipped.sum() == halvings < len(log)
    # the rate of step s is the schedule after the unskipped steps before s
    lrs = [ref_log["lr"][0]] + [None] * (len(log) - 1)
    done = 0
    for i in range(1, len(log)):
        done += not skipped[i - 1]
        lrs[i] = ref_log["lr"][done]
    assert log["lr"].tolist() == pytest.approx(lrs)
    assert log["grad_norm"][~skipped].between(0, 100).all()  # unscaled: not ~2^30


def test_fp16_on_cpu_is_refused_with_one_line(tmp_path, capsys):
    if torch.accelerator.is_available():
        pytest.skip("a GPU is present: fp16 is accepted")
    out = tmp_path / "out"
    assert main(["--config", TINY, "--output_dir", str(out), "--mixed_precision", "fp16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: mixed_precision='fp16'") and "'bf16'" in err[0]
    assert not out.exists()


def test_precision_in_run_id_and_ids_pinned():
    # pinned when the id came to hash the training keys only: a change that moves them must say
    # what happens to finished runs (docs/running.md, "Run ids: train once, measure many times")
    assert RunConfig().run_id == "paper-g0.5-s0-010a6678"
    assert [c.run_id for c in expand(load_config(TINY))] == ["paper-g0.5-s0-65aac4af",
                                                             "paper-g1-s0-a6220600"]
    assert RunConfig(mixed_precision="no").run_id == RunConfig().run_id
    ids = {RunConfig(mixed_precision=p).run_id for p in ("no", "fp16", "bf16")}
    assert len(ids) == 3
    assert RunConfig(log_every=1).run_id == RunConfig().run_id  # logging is not the run
    # ood_scoring is no part of the runs of tasks without it
    assert RunConfig(task="identity").run_id == RunConfig(task="identity", ood_scoring="pooled").run_id
    # YAML reads a bare `no` as false: it means "no" all the same
    assert expand(load_config(TINY, {"mixed_precision": False}))[0].run_id == \
        "paper-g0.5-s0-65aac4af"


def test_bf16_run_records_device_and_precision_and_logs(tmp_path, fresh_accelerate_state):
    out = tmp_path / "out"
    args = ["--config", TINY, "--output_dir", str(out), "--steps", "12", "--log_every", "5",
            "--num_threads", "1", "--gamma", "0.5"]
    assert main([*args, "--mixed_precision", "bf16"]) == 0
    runs = pd.read_csv(out / "runs.csv")
    assert runs["mixed_precision"].tolist() == ["bf16"] and runs["device"].tolist() == ["cpu"]
    cfg = expand(load_config(TINY, {"steps": 12, "gamma": 0.5, "mixed_precision": "bf16"}))[0]
    assert runs["run_id"].tolist() == [cfg.run_id]
    log = pd.read_csv(out / "runs" / cfg.run_id / "train_log.csv")
    assert list(log.columns) == TRAIN_LOG_COLUMNS and log["step"].tolist() == [5, 10]
    # the rate step s used: linear warm-up over warmup_steps, then cosine to 0 at steps
    w, t = cfg.warmup_steps, cfg.steps

    def rate(done):
        if done < w:
            return cfg.lr * done / w
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * (done - w) / (t - w)))

    assert log["lr"].tolist() == pytest.approx([rate(4), rate(9)])
    assert (log["grad_norm"] > 0).all() and log["loss"].between(0, 20).all()
    # a float32 rerun is another run: nothing reused
    AcceleratorState._reset_state(True)
    assert main(args) == 0
    runs = pd.read_csv(out / "runs.csv")
    assert runs["mixed_precision"].tolist() == ["no"] and runs["run_id"][0] != cfg.run_id


def test_logging_leaves_training_unchanged(tmp_path):
    """The gradient norm of a logged step without clipping is measured with max_norm inf: the
    trained weights are bit for bit those of a run that logs nothing."""
    weights = []
    for log_every in (0, 1):
        cfg, task, data = tiny_run(steps=6, grad_clip=0.0, log_every=log_every,
                                   output_dir=str(tmp_path / str(log_every)))
        model = Run(cfg, task, data, Accelerator(cpu=True)).train().model
        weights.append({k: v.clone() for k, v in model.state_dict().items()})
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    logs = [work_dir(dataclasses.replace(cfg, output_dir=str(tmp_path / d))) / "train_log.csv"
            for d in ("0", "1")]
    assert not logs[0].exists() and len(pd.read_csv(logs[1])) == 6


def test_help_lists_every_key_with_type_default_and_meaning(capsys):
    assert main(["--help"]) == 0
    rows = [re.split(r"\s{2,}", line.strip()) for line in capsys.readouterr().out.splitlines()
            if line.startswith("    --")]
    by_key = {r[0][2:]: r for r in rows}
    assert list(by_key) == [f.name for f in dataclasses.fields(RunConfig)]
    for f in dataclasses.fields(RunConfig):
        _, tp, default, meaning = by_key[f.name]
        value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        assert tp == str(f.type)
        assert default == value if isinstance(value, str) else yaml.safe_load(default) == value
        assert len(meaning) > 5, f.name


def test_presets_found_through_package_resources():
    names = preset_names()
    assert "default" in names and "sweep_small" in names and "accelerate_cpu" not in names
    for name in ("sweep_small", "sweep_small.yaml", "configs/sweep_small.yaml"):
        assert config_path(name).read_text() == (ROOT / "configs" / "sweep_small.yaml").read_text()
    assert DEFAULT_CONFIG.read_text() == (ROOT / "configs" / "default.yaml").read_text()
    assert load_config("sweep_small") == load_config(str(ROOT / "configs" / "sweep_small.yaml"))


def test_gpt2_bos_eos_inside_vocabulary():
    model = build_model("gpt2", vocab_size=128, n_positions=9, n_embd=16, n_layer=1, n_head=1)
    assert 0 <= model.config.bos_token_id < 128 and 0 <= model.config.eos_token_id < 128


def test_progress_bars_switched_off_only_inside():
    hf_logging.enable_progress_bar()
    with hub_progress_bars_off():
        assert not hf_logging.is_progress_bar_enabled()
    assert hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    with hub_progress_bars_off():
        pass
    assert not hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()


def test_last_position_only_trains_the_same_run_to_float_rounding(tmp_path):
    # issue 14: the fast path computes the last block and the head at the last position only;
    # the independent computation is the same run with the full forward
    scores = []
    for last_only in (False, True):
        cfg, task, data = tiny_run(output_dir=str(tmp_path / str(last_only)), steps=10,
                                   last_position_only=last_only)
        scores.append(Run(cfg, task, data, Accelerator(cpu=True)).train().row)
    for key in ("train_loss", "acc_train", "acc_test_id"):
        assert scores[1][key] == pytest.approx(scores[0][key], rel=1e-4, abs=1e-4), key
    a, b = RunConfig(), RunConfig(last_position_only=True)
    assert a.run_id != b.run_id


def test_last_position_only_refused_for_models_without_positions(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--config", str(ROOT / "configs" / "mlp_initial.yaml"), "--output_dir", str(out),
            "--last_position_only", "true"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "last_position_only=true" in err[0] and "'mlp'" in err[0]
    assert not out.exists()


@pytest.mark.parametrize("native", [False, True])
def test_bf16_without_native_units_warns_once(tmp_path, fresh_accelerate_state, capsys, monkeypatch,
                                              native):
    # issue 14: emulated bf16 on an AVX2 CPU runs at ~1% of float32's rate; say so, train anyway
    from probes.train import experiment

    monkeypatch.setattr(experiment, "bf16_native", lambda: native)
    out = tmp_path / "out"
    args = ["--config", TINY, "--output_dir", str(out), "--steps", "2", "--num_threads", "1",
            "--gamma", "0.5", "--mixed_precision", "bf16", "--save_checkpoints", "none"]
    assert main(args) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "native bf16" in line]
    assert len(warnings) == (0 if native else 1)
    assert native or warnings[0].startswith("warning: this CPU has no native bf16 matmul")
