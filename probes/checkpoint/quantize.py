"""GGUF / ggml's 4-bit Q4_1 quantization, reproduced in numpy, to measure what it does to float
weights (``benchmarks/quantization_cosines.py``).

Q4_1 (ggml's ``quantize_row_q4_1_ref``, the scheme of GGUF files made without an importance
matrix) cuts each row into blocks of 32 consecutive values. Per block, in float32: min m and max
M, d = (M - m) / 15, id = 1 / d (0 when d = 0), q = min(15, trunc((x - m) * id + 0.5)), i.e.
round half up of (x - m) / d on 0..15. The file stores d and m as fp16 (round to nearest even)
and q as nibbles; a reader gets fp16(d) * q + fp16(m) in float32. q is computed with the float32
d and m, not with their fp16 copies, so the grid a block lands on is not the one q was rounded
to: the error per value can exceed d / 2 by the fp16 rounding of d and m.

Rows are the array's last, contiguous axis, as ggml stores a tensor: for a transformers
``nn.Linear`` weight (d_out, d_in) the blocks run along each output unit's d_in input weights,
which is how llama.cpp's converter writes it (GGUF shape [d_in, d_out]). One-dimensional tensors
(biases, norm gains) stay float32 in such files and are not quantized here.
"""

from __future__ import annotations

import numpy as np

QK4_1 = 32  # values per block
Q4_1_LEVELS = 15  # q runs over 0..15


def _blocks(w) -> np.ndarray:
    """``w`` as float32 blocks (n_blocks, 32) in row order; raises as ``quantize_q4_1``."""
    if isinstance(w, (bool, int, float, complex)) or w is None:
        raise TypeError(f"w must be an array of floats, got {type(w).__name__}")
    x = np.asarray(w)
    if x.dtype.kind != "f":
        raise TypeError(f"w must be a float array (float16/32/64), got dtype {x.dtype}")
    if x.ndim < 1 or x.shape[-1] % QK4_1:
        raise ValueError(f"w of shape {x.shape} is invalid: accepted is an array whose last axis "
                         f"(a row) holds a multiple of {QK4_1} values")
    x = np.ascontiguousarray(x, dtype=np.float32)  # ggml quantizes from float32
    if not np.isfinite(x).all():
        raise ValueError("w contains NaN or inf: accepted are finite weights")
    return x.reshape(-1, QK4_1)


def q4_1_blocks(w) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The Q4_1 encoding of ``w``, as a GGUF file stores it (before packing into bytes).

    Args:
        w: float array (..., n), n a multiple of 32; blocks of 32 along the last axis.

    Returns:
        (d, m, q): d and m (n_blocks,) float16, the block's step and minimum; q (n_blocks, 32)
        uint8 in 0..15, block b holding values b*32 .. b*32+31 of the flattened array.

    Raises:
        TypeError: ``w`` is not a float array.
        ValueError: the last axis is not a multiple of 32, or ``w`` holds NaN or inf.
    """
    x = _blocks(w)
    lo, hi = x.min(axis=1), x.max(axis=1)
    d = (hi - lo) / np.float32(Q4_1_LEVELS)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    scaled = (x - lo[:, None]) * inv[:, None] + np.float32(0.5)  # float32 throughout, as ggml
    # ggml casts to int (truncation; the value is >= 0.5 here) and caps at 15
    q = np.minimum(np.trunc(scaled), Q4_1_LEVELS).astype(np.uint8)
    return d.astype(np.float16), lo.astype(np.float16), q


def quantize_q4_1(w) -> np.ndarray:
    """``w`` quantized to Q4_1 and dequantized as a GGUF reader does: fp16(d) * q + fp16(m).

    Args:
        w: float array (..., n), n a multiple of 32 (see ``q4_1_blocks``).

    Returns:
        float32 array of ``w``'s shape: the values gguf's ``dequantize`` returns for the Q4_1
        bytes ggml's reference quantizer writes for ``w`` (bit for bit, tested).

    Raises:
        TypeError, ValueError: as ``q4_1_blocks``.
    """
    d, m, q = q4_1_blocks(w)
    out = d.astype(np.float32)[:, None] * q.astype(np.float32) + m.astype(np.float32)[:, None]
    return out.reshape(np.shape(w))
