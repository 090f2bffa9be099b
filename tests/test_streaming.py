"""Streaming a checkpoint layer by layer keeps memory flat: a safetensors file is mapped only
while a tensor read from it is alive, and a large layer is fitted before the next one is read."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from probes.checkpoint.discover import SafetensorsTensors
from probes.measure import probe
from probes.measure.fitting import Fitter, fit_cost, unit_bytes
from probes.measure.spectral import SPECTRAL_METRICS
from probes.measure.units import UnitSet


def mapped(path: Path) -> bool:
    """Whether ``path`` is memory-mapped into this process (Linux /proc)."""
    return str(path) in Path("/proc/self/maps").read_text()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
def test_file_mapped_only_while_a_tensor_from_it_lives(tmp_path):
    file = tmp_path / "model.safetensors"
    a, b = torch.arange(12.0).reshape(3, 4), torch.full((2, 5), -1.5, dtype=torch.bfloat16)
    save_file({"a": a, "b": b}, file)
    source = SafetensorsTensors([file])
    assert not mapped(file)  # headers read, nothing kept open
    assert source.by_file == {"model.safetensors": {"a", "b"}}
    assert source.shape("a") == (3, 4) and source.shape("b") == (2, 5)
    t = source.get("a")
    assert mapped(file)
    assert torch.equal(t, a)
    u = source.get("b")
    assert u.dtype == torch.bfloat16 and torch.equal(u, b)
    del t, u
    assert not mapped(file)


class Recorder:
    """A fitter that fits nothing; the prober's reads and collects are recorded in ``events``."""

    def __init__(self):
        self.events = []
        self.submitted = []

    def submit(self, units, dead=None, order=True, bias_columns=None):
        self.submitted.append(tuple(units.shape))
        return tuple(units.shape)

    submit_all = Fitter.submit_all


def run_layers(n_floats: int, budget: int, monkeypatch) -> list:
    fitter = Recorder()  # only measure_units' scheduling is under test: nothing is fitted
    monkeypatch.setattr(probe, "fitted", lambda future, where: (None, None))
    monkeypatch.setattr(probe, "unit_set_rows", lambda *args: [])
    collected = iter(range(3))  # layers are collected in order: progress() says the next one

    def layers():
        for layer in range(3):
            fitter.events.append(("read", layer))
            rows = torch.zeros(n_floats // 8, 8)
            yield [UnitSet(layer, "attn.q", None, rows),
                   UnitSet(layer, "attn.q", 0, rows[:2])]  # a per-head view: counted once

    probe.measure_units(layers(), fitter, dict(run_id="r", step=None), prefetch_bytes=budget,
                        progress=lambda: fitter.events.append(("fit", next(collected))))
    return fitter.events


def test_small_layers_prefetch_one_large_layers_one_at_a_time(monkeypatch):
    rows = torch.zeros(10, 8)
    assert unit_bytes([UnitSet(0, "x", None, rows), UnitSet(0, "x", 1, rows[:3])]) == 320
    assert unit_bytes([UnitSet(0, "x", None, rows), UnitSet(0, "y", None, rows.clone())]) == 640
    small = run_layers(n_floats=64, budget=1024, monkeypatch=monkeypatch)  # 256 bytes a layer: read ahead
    assert small == [("read", 0), ("read", 1), ("fit", 0), ("read", 2), ("fit", 1), ("fit", 2)]
    # 1024 bytes a layer: never two in memory
    large = run_layers(n_floats=256, budget=1024, monkeypatch=monkeypatch)
    assert large == [("read", 0), ("fit", 0), ("read", 1), ("fit", 1), ("read", 2), ("fit", 2)]


def test_a_layer_is_submitted_costliest_first_and_collected_in_order():
    sets = [UnitSet(0, "attn.q", None, torch.zeros(64, 64)),
            UnitSet(0, "attn.q", 0, torch.zeros(8, 64)),
            UnitSet(0, "mlp.gate", None, torch.zeros(172, 64)),
            UnitSet(0, "attn.k", None, torch.zeros(64, 64))]
    fitter = Recorder()
    futures = fitter.submit_all(sets, lambda u: False)
    assert futures == [tuple(u.units.shape) for u in sets]  # the futures keep the sets' order
    assert fitter.submitted == [(172, 64), (64, 64), (64, 64), (8, 64)]  # ties keep theirs
    assert fit_cost(172, 64) > fit_cost(64, 64) > fit_cost(8, 64)


def test_spectral_metrics_off_leaves_out_the_ranks_only(tmp_path):
    """``--spectral_metrics false`` (the fast path for large layers) drops stable_rank,
    effective_rank, stable_rank_weight and alpha and changes no other value; ``stable`` keeps the
    two stable ranks (equal to the full route's); with it on they equal the SVD's of the rows."""
    import numpy as np
    import pandas as pd
    import transformers as T

    from probes.run import main

    torch.manual_seed(0)
    model = T.LlamaForCausalLM(T.LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=96,
                                             num_hidden_layers=2, num_attention_heads=4,
                                             num_key_value_heads=2))
    model.save_pretrained(tmp_path / "ckpt")
    out = {}
    for flag in ("true", "false", "stable"):
        assert main(["--checkpoint", str(tmp_path / "ckpt"), "--output_dir", str(tmp_path / flag),
                     "--num_threads", "1", "--spectral_metrics", flag]) == 0
        out[flag] = pd.read_csv(tmp_path / flag / "metrics.csv")
        runs = pd.read_csv(tmp_path / flag / "runs.csv", dtype={"spectral_metrics": str})
        assert runs["spectral_metrics"].str.lower().tolist() == [flag]  # what was done
    full, fast, stable = out["true"], out["false"], out["stable"]
    spectral = full["metric"].isin(SPECTRAL_METRICS)
    assert set(full.loc[spectral, "metric"]) == set(SPECTRAL_METRICS)
    assert not fast["metric"].isin(SPECTRAL_METRICS).any()
    pd.testing.assert_frame_equal(full[~spectral].reset_index(drop=True), fast)
    # "stable": the stable ranks alone (no spectrum), equal to the full route's to 1e-6
    ranks = full["metric"].isin(["stable_rank", "stable_rank_weight"])
    kept = stable["metric"].isin(SPECTRAL_METRICS)
    assert set(stable.loc[kept, "metric"]) == {"stable_rank", "stable_rank_weight"}
    pd.testing.assert_frame_equal(stable[~kept].reset_index(drop=True), fast)
    pd.testing.assert_frame_equal(stable[kept].reset_index(drop=True),
                                  full[ranks].reset_index(drop=True), rtol=1e-6)
    # norm gains are 1 at initialization, so mlp.gate's rows are gate_proj's weight
    s = np.linalg.svd(model.model.layers[1].mlp.gate_proj.weight.detach().double().numpy(),
                      compute_uv=False)
    p = s / s.sum()
    got = full[(full["layer"] == 1) & (full["component"] == "mlp.gate") & full["head"].isna()]
    got = got.set_index("metric")["value"]
    assert got["stable_rank"] == pytest.approx((s**2).sum() / s[0] ** 2, rel=1e-9)
    assert got["effective_rank"] == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-9)
