"""Streaming a checkpoint layer by layer keeps memory flat: a safetensors file is mapped only
while a tensor read from it is alive, and a large layer is fitted before the next one is read."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from probes.checkpoint.discover import SafetensorsTensors
from probes.checkpoint.probe import Prober, unit_bytes
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

    def submit(self, units, dead=None, order=True):
        return None


def run_layers(n_floats: int, budget: int) -> list:
    fitter = Recorder()
    prober = Prober.__new__(Prober)  # only measure's scheduling is under test
    prober.fitter, prober.prefetch_bytes = fitter, budget
    prober.drawn = lambda u: False
    prober.collect = lambda basis, sets, futures: fitter.events.append(("fit", sets[0].layer))

    def layers():
        for layer in range(3):
            fitter.events.append(("read", layer))
            rows = torch.zeros(n_floats // 8, 8)
            yield [UnitSet(layer, "attn.q", None, rows),
                   UnitSet(layer, "attn.q", 0, rows[:2])]  # a per-head view: counted once

    prober.measure("weight", layers())
    return fitter.events


def test_small_layers_prefetch_one_large_layers_one_at_a_time():
    rows = torch.zeros(10, 8)
    assert unit_bytes([UnitSet(0, "x", None, rows), UnitSet(0, "x", 1, rows[:3])]) == 320
    assert unit_bytes([UnitSet(0, "x", None, rows), UnitSet(0, "y", None, rows.clone())]) == 640
    small = run_layers(n_floats=64, budget=1024)  # 256 bytes a layer: read ahead
    assert small == [("read", 0), ("read", 1), ("fit", 0), ("read", 2), ("fit", 1), ("fit", 2)]
    large = run_layers(n_floats=256, budget=1024)  # 1024 bytes a layer: never two in memory
    assert large == [("read", 0), ("fit", 0), ("read", 1), ("fit", 1), ("read", 2), ("fit", 2)]
