"""``mixed_precision: auto``: bf16 only where the hardware multiplies it natively (CPU flags
avx512_bf16 / amx_bf16, a CUDA device of compute capability >= 8), float32 (``no``) elsewhere;
the runs are made from the picked value, so their ids and records never say ``auto``."""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from accelerate.state import AcceleratorState

from probes.config import ConfigError, RunConfig, expand, load_config, validate
from probes.run import main
from probes.runtime import bf16_native, cpu_info, pick_precision
from probes.train import experiment

TINY = str(Path(__file__).with_name("tiny.yaml"))


def cpuinfo(flags: str, name: str = "Test CPU") -> str:
    """A /proc/cpuinfo of two processors, the first with ``flags``; the second's flags (amx_bf16)
    must be ignored: every processor of a machine lists the same ones."""
    first = f"processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: {name}\nflags\t\t: {flags}\n"
    second = "processor\t: 1\nmodel name\t: Other\nflags\t\t: fpu amx_bf16\n"
    return f"{first}\n{second}"


SAPPHIRE_RAPIDS = "fpu sse2 avx2 avx512f avx512bw avx512vl avx512_bf16 amx_bf16 amx_tile"
ZEN4 = "fpu sse2 avx2 avx512f avx512bw avx512vl avx512dq avx512_bf16 avx512_vnni"
SKYLAKE_X = "fpu sse2 avx2 avx512f avx512bw avx512vl avx512dq avx512_vnni"  # AVX-512, no bf16
AVX2 = "fpu sse2 avx avx2 fma"


@pytest.fixture
def on_cpu(monkeypatch):
    """Training on the CPU, whatever this machine holds."""
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: False)


def test_cpu_info_reads_the_first_processor():
    flags, name = cpu_info(cpuinfo(AVX2, name="AMD EPYC 7B13"))
    assert flags == {"fpu", "sse2", "avx", "avx2", "fma"} and name == "AMD EPYC 7B13"
    arm = "processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\nCPU part\t: 0xd40\n"
    assert cpu_info(arm) == ({"fp", "asimd", "bf16", "i8mm"}, "")


@pytest.mark.parametrize("flags, picked, named", [
    (SAPPHIRE_RAPIDS, "bf16", "amx_bf16, avx512_bf16"),
    (ZEN4, "bf16", "(avx512_bf16)"),
    (SKYLAKE_X, "no", "emulated"),  # oneDNN would say yes here: bf16 converted, not native
    (AVX2, "no", "emulated"),
])
def test_cpu_pick_follows_the_bf16_flags(on_cpu, flags, picked, named):
    flag_set = cpu_info(cpuinfo(flags))[0]
    precision, reason = pick_precision(flag_set)
    assert precision == picked and named in reason
    assert bf16_native(flag_set) == (picked == "bf16")


@pytest.mark.parametrize("major, picked", [(8, "bf16"), (9, "bf16"), (7, "no")])
def test_cuda_pick_follows_native_bf16(monkeypatch, major, picked):
    asked = []

    def is_bf16_supported(including_emulation=True):
        asked.append(including_emulation)
        return major >= 8 or including_emulation  # pre-Ampere "supports" bf16 by emulation

    monkeypatch.setattr(torch.accelerator, "is_available", lambda: True)
    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: f"GPU sm{major}0")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    precision, reason = pick_precision(frozenset({"avx512_bf16"}))  # the CPU's flags do not count
    assert (precision, asked) == (picked, [False]) and f"GPU sm{major}0" in reason


def test_other_accelerators_get_float32(monkeypatch):
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: True)
    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda: torch.device("mps"))
    assert pick_precision(frozenset({"avx512_bf16"})) == ("no", "bf16 speed on a mps device is not checked")


def test_auto_is_refused_in_a_run_config_and_listed_as_accepted():
    with pytest.raises(ConfigError, match="mixed_precision='auto' names no precision"):
        validate(RunConfig(mixed_precision="auto"))
    with pytest.raises(ConfigError, match=r"accepted are \['no', 'fp16', 'bf16', 'auto'\]"):
        validate(RunConfig(mixed_precision="bf17"))


@pytest.mark.parametrize("picked", ["bf16", "no"])
def test_auto_trains_and_records_the_picked_precision(tmp_path, capsys, monkeypatch, picked):
    """A run under ``auto`` is the run of the precision picked: same id, and runs.csv, run.json
    and config.yaml name that precision; one info line says what was picked and why."""
    monkeypatch.setattr(experiment, "pick_precision", lambda: (picked, "because of the test"))
    out = tmp_path / "out"
    args = ["--config", TINY, "--output_dir", str(out), "--steps", "2", "--num_threads", "1",
            "--gamma", "0.5", "--save_checkpoints", "none", "--n_probes", "2"]
    AcceleratorState._reset_state(True)
    try:
        assert main([*args, "--mixed_precision", "auto"]) == 0
    finally:
        AcceleratorState._reset_state(True)
    same = expand(load_config(TINY, {"steps": 2, "gamma": 0.5, "n_probes": 2,
                                     "mixed_precision": picked}))[0]
    runs = pd.read_csv(out / "runs.csv")
    assert runs["run_id"].tolist() == [same.run_id]
    assert runs["mixed_precision"].tolist() == [picked]
    folder = out / "runs" / same.run_id
    assert json.loads((folder / "run.json").read_text())["mixed_precision"] == picked
    assert yaml.safe_load((folder / "config.yaml").read_text())["mixed_precision"] == picked
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "mixed_precision auto" in ln]
    assert lines == [f"mixed_precision auto -> {picked}: because of the test"]
    other = expand(load_config(TINY, {"steps": 2, "gamma": 0.5, "n_probes": 2,
                                      "mixed_precision": "no" if picked == "bf16" else "bf16"}))[0]
    assert other.run_id != same.run_id
