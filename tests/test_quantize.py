"""Q4_1 quantization (probes/checkpoint/quantize.py) against the dequantizer that reads SmolLM2's
GGUF file: bytes packed here, written to a real GGUF file and read back by gguf's reader, must
dequantize to ``quantize_q4_1``'s values bit for bit; and the shipped file is a fixed point."""

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType

from probes.checkpoint.gguf import resolve_gguf
from probes.checkpoint.quantize import q4_1_blocks, quantize_q4_1

Q4_1 = GGMLQuantizationType.Q4_1


def pack(d, m, q) -> np.ndarray:
    """GGUF's block_q4_1 bytes (n_blocks, 20): fp16 d, fp16 m (little-endian), then 16 bytes whose
    low nibble is value j and high nibble value j + 16."""
    out = np.empty((len(d), 20), dtype=np.uint8)
    out[:, 0:2] = d.astype("<f2").view(np.uint8).reshape(-1, 2)
    out[:, 2:4] = m.astype("<f2").view(np.uint8).reshape(-1, 2)
    out[:, 4:] = q[:, :16] | (q[:, 16:] << 4)
    return out


def reference_q(block: np.ndarray) -> list[int]:
    """ggml's quantize_row_q4_1_ref for one block, value by value in float32 scalars."""
    lo, hi = np.float32(np.inf), np.float32(-np.inf)
    for v in block:
        lo, hi = min(lo, v), max(hi, v)
    d = np.float32((hi - lo) / np.float32(15))
    inv = np.float32(1) / d if d else np.float32(0)
    return [min(15, int(np.float32(np.float32(v - lo) * inv) + np.float32(0.5))) for v in block]


@pytest.fixture
def weights():
    rng = np.random.default_rng(7)
    w = (rng.standard_normal((24, 96)) * rng.uniform(1e-3, 0.2, (24, 1))).astype(np.float32)
    w[0, :32] = 0.125  # a constant block: d = 0, every q 0
    w[1, 32:64] = np.linspace(-1, 1, 32, dtype=np.float32)  # values on and between grid points
    w[2, 64:] = np.abs(w[2, 64:]) + 3.0  # all positive, m far from 0
    w[3, :32] = np.r_[0.0, 15.0, np.arange(30) * 0.5]  # d = 1: exact ties k + 0.5 round up
    return w


def test_round_trip_through_a_gguf_file_is_bit_exact(weights, tmp_path):
    d, m, q = q4_1_blocks(weights)
    raw = pack(d, m, q).reshape(len(weights), -1)  # one row of blocks per tensor row
    path = tmp_path / "q.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_tensor("w", raw, raw_dtype=Q4_1)  # shape from the bytes
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    (t,) = gguf.GGUFReader(path).tensors
    assert t.tensor_type == Q4_1 and list(t.shape) == [96, 24]  # GGUF lists the row axis first
    read = gguf.quants.dequantize(t.data, t.tensor_type)
    got = quantize_q4_1(weights)
    assert got.dtype == np.float32 and got.shape == weights.shape
    assert np.array_equal(read.view(np.uint32), got.view(np.uint32))
    assert np.array_equal(got[0, :32], np.full(32, 0.125, np.float32))
    assert got[3, 2:8].tolist() == [0, 1, 1, 2, 2, 3]  # 0.5 -> 1, 1.5 -> 2: half up, not to even


def test_codes_match_ggml_reference_and_gguf_quantizer(weights):
    d, m, q = q4_1_blocks(weights)
    blocks = weights.reshape(-1, 32)
    assert [reference_q(b) for b in blocks] == q.tolist()
    lo, hi = blocks.min(1), blocks.max(1)
    assert np.array_equal(d, ((hi - lo) / np.float32(15)).astype(np.float16))
    assert np.array_equal(m, lo.astype(np.float16))
    # gguf-py's own Q4_1 quantizer writes the same bytes
    assert np.array_equal(pack(d, m, q).reshape(len(weights), -1), gguf.quants.quantize(weights, Q4_1))
    # the error of a value is at most half a step, plus the fp16 rounding of d and m
    slack = 0.5 * d.astype(np.float64) + 15 * np.abs(d.astype(np.float64) - (hi - lo) / 15.0) \
        + np.abs(m.astype(np.float64) - lo) + 1e-7
    err = np.abs(quantize_q4_1(weights).reshape(-1, 32).astype(np.float64) - blocks)
    assert (err <= slack[:, None]).all()


@pytest.mark.real
def test_shipped_smollm2_file_is_a_fixed_point():
    """Re-quantizing the dequantized tensors of SmolLM2's Q4_1 file gives back its bytes: the
    file was written by this scheme (ggml's reference quantizer, no importance matrix)."""
    tensors = {t.name: t for t in gguf.GGUFReader(resolve_gguf("smollm2")).tensors}
    for name in ("blk.0.attn_q.weight", "blk.11.attn_k.weight", "blk.29.ffn_gate.weight"):
        t = tensors[name]
        assert t.tensor_type == Q4_1
        x = gguf.quants.dequantize(t.data, t.tensor_type)
        assert np.array_equal(quantize_q4_1(x), x)
        assert np.array_equal(pack(*q4_1_blocks(x)).reshape(t.data.shape), t.data)


@pytest.mark.parametrize("bad, error", [(np.zeros((4, 33), np.float32), ValueError),
                                        (np.array([[np.nan] * 32]), ValueError),
                                        (np.zeros((2, 32), np.int64), TypeError),
                                        (1.5, TypeError)])
def test_bad_input_is_refused(bad, error):
    with pytest.raises(error):
        quantize_q4_1(bad)
