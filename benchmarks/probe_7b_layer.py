"""Benchmark: probe Llama-7B-shaped layers (hidden 4096, MLP 11008, 32 heads) on CPU.

    python benchmarks/probe_7b_layer.py [--threads 2] [--layers 2] [--baseline | --no-baseline]

Builds the checkpoint from a ``LlamaConfig`` (meta device, random weights N(0, 0.02), norms 1, no
download), written as safetensors with one shard per layer, then:
1. per component of layer 0 (``mlp.gate``, ``mlp.up``, ``attn.q/k/v`` with their per-head sets,
   ``attn.qk_heads``), the time of ``Condensation`` on one BLAS thread (as each worker of the
   probe runs) and, with ``--baseline``, of the float64 path the suite used before (float64
   cosines into condensed distances, one scipy linkage of every pair, singular values from the
   Gram matrix or an SVD): the ratio, whether every group count is identical and the largest
   metric difference;
2. ``probes/run.py --checkpoint`` in a fresh process on a 1-layer and an N-layer checkpoint: wall
   time and peak RSS (goal: one layer <= 20 s on 2 cores, peak <= the layer's weights + 1.5 GB;
   peak flat in the number of layers), and the 32-layer time extrapolated from the two;
3. the 1-layer probe again with ``--spectral_metrics false`` (no stable_rank / effective_rank:
   their float64 Gram matrices and eigenvalues are most of the time), and per component the
   share of the time they take;
4. the 1-layer and N-layer probes with ``--spectral_metrics stable`` (the stable ranks alone,
   from s_max by Lanczos: no spectrum), and per component its time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from scipy.cluster.hierarchy import fcluster, linkage
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from probe_smollm2 import run as fresh_process  # noqa: E402  (same child, its peak RSS)

from probes.checkpoint.discover import open_weights  # noqa: E402
from probes.measure.arch import layout_for  # noqa: E402
from probes.measure.metrics import THRESHOLDS, Condensation  # noqa: E402
from probes.measure.units import base_prefix, block_units  # noqa: E402

GB = 1024**3


def build(folder: Path, n_layers: int, dtype: torch.dtype, vocab: int) -> int:
    """Write a random Llama-7B-shaped checkpoint (one shard per layer); returns one layer's bytes."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_attention_heads=32,
                         num_key_value_heads=32, num_hidden_layers=n_layers, vocab_size=vocab,
                         torch_dtype=str(dtype).removeprefix("torch."))
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in LlamaForCausalLM(config).state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    shards: dict[str, dict] = defaultdict(dict)
    for name in shapes:
        layer = name.split(".")[2] if name.startswith("model.layers.") else "rest"
        shards[layer][name] = name
    weight_map, layer_bytes = {}, 0
    for i, (key, names) in enumerate(sorted(shards.items())):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {}
        for name in names:
            shape = shapes[name]
            t = (torch.ones(shape) if "norm" in name else
                 torch.empty(shape).normal_(0, 0.02, generator=gen)).to(dtype)
            tensors[name] = t
            weight_map[name] = file
        save_file(tensors, folder / file, metadata={"format": "pt"})
        if key == "0":
            layer_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
        del tensors
    total = sum(np.prod(s) for s in shapes.values()) * torch.empty(0, dtype=dtype).element_size()
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": int(total)}, "weight_map": weight_map}))
    config.save_pretrained(folder)
    return layer_bytes


def float64_fit(u: np.ndarray, thresholds=THRESHOLDS) -> dict:
    """The suite's float64 path before the float32 GEMM (its code, condensed): float64 cosines in
    blocks into condensed distances, one complete linkage of every pair, fcluster at each
    threshold, singular values from the Gram matrix unless an eigenvalue lies between rounding
    level and 1e-8 of the largest (then an SVD)."""
    u = np.asarray(u, dtype=np.float64)
    norms = np.linalg.norm(u, axis=1)
    u = u[norms > 0]
    n = len(u)
    unit = u / np.linalg.norm(u, axis=1)[:, None]
    dist, abs_sum, start = np.empty(n * (n - 1) // 2), 0.0, 0
    for i0 in range(0, n, 256):
        block = np.clip(unit[i0:i0 + 256] @ unit[i0:].T, -1.0, 1.0)
        b = len(block)
        abs_sum += float(np.abs(block[:, b:]).sum() + np.triu(np.abs(block[:, :b]), 1).sum())
        np.clip(1.0 - block, 0.0, 2.0, out=block)
        for r in range(b):
            dist[start:start + n - i0 - r - 1] = block[r, r + 1:]
            start += n - i0 - r - 1
    z = linkage(dist, method="complete")
    del dist
    groups = {t: int(fcluster(z, t=1.0 - t, criterion="distance").max()) for t in thresholds}
    gram = u.T @ u if n >= u.shape[1] else u @ u.T
    lam = np.linalg.eigvalsh(gram)[::-1]
    noise = 10 * len(gram) * np.finfo(np.float64).eps * lam[0]
    if ((lam < 1e-8 * lam[0]) & (lam > noise)).any():
        s = np.linalg.svd(u, compute_uv=False)
    else:
        s = np.sqrt(np.where(lam > noise, lam, 0.0))
    p = s[s > 0] / s.sum()
    return dict(n_groups=groups, mean_abs_cos=2.0 * abs_sum / (n * (n - 1)),
                stable_rank=float((s**2).sum() / s[0] ** 2),
                effective_rank=float(np.exp(-(p * np.log(p)).sum())))


def components(folder: Path, baseline: bool) -> None:
    """Time per component of layer 0, new path against the float64 path."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder)
    layout = layout_for(config)
    _, source = open_weights(folder, False)
    start = time.perf_counter()
    sets = block_units(source, base_prefix(source.names(), layout), layout.blocks[0], True)
    print(f"layer 0 read (norms folded, qk_heads formed): {time.perf_counter() - start:.1f} s")
    by_comp = defaultdict(list)
    for u in sets:
        by_comp[u.component].append(u.units.numpy())
    totals = [0.0, 0.0, 0.0, 0.0]  # new path, float64 path, without the ranks, stable ranks
    print(f"{'component':14s} {'sets':>4s} {'new s':>7s} {'f64 s':>7s} {'ratio':>6s}  same groups,"
          " max |metric diff| (relative); without the ranks")
    for comp, units in by_comp.items():
        with threadpool_limits(1, user_api="blas"):
            start = time.perf_counter()
            fits = [Condensation(THRESHOLDS, order=False).fit(u) for u in units]
            new = time.perf_counter() - start
            start = time.perf_counter()
            for u in units:
                Condensation(THRESHOLDS, order=False, spectral=False).fit(u)
            fast = time.perf_counter() - start
            start = time.perf_counter()
            for u in units:
                Condensation(THRESHOLDS, order=False, spectral="stable").fit(u)
            stable = time.perf_counter() - start
            line = f"{comp:14s} {len(units):4d} {new:7.1f}"
            totals[0] += new
            totals[2] += fast
            totals[3] += stable
            if baseline:
                start = time.perf_counter()
                refs = [float64_fit(u) for u in units]
                old = time.perf_counter() - start
                totals[1] += old
                same = all(f.n_groups_ == r["n_groups"] for f, r in zip(fits, refs))
                diff = max(abs(getattr(f, m + "_") - r[m]) / max(1.0, abs(r[m]))
                           for f, r in zip(fits, refs)
                           for m in ("mean_abs_cos", "stable_rank", "effective_rank"))
                line += f" {old:7.1f} {old / new:5.1f}x  {same}, {diff:.1e}"
        print(f"{line}; {fast:.1f} s ({1 - fast / new:.0%} of the time is the ranks); "
              f"stable ranks alone {stable:.1f} s")
    line = f"{'all (1 thread)':14s} {len(sets):4d} {totals[0]:7.1f}"
    if baseline:
        line += f" {totals[1]:7.1f} {totals[1] / totals[0]:5.1f}x"
    print(f"{line}; {totals[2]:.1f} s without the ranks; {totals[3]:.1f} s with the stable ranks "
          "alone")


def probe(folder: Path, threads: int, *flags: str) -> tuple[float, float]:
    """(wall seconds, peak RSS bytes) of ``probes/run.py --checkpoint folder`` in a fresh process."""
    with tempfile.TemporaryDirectory() as out:
        return fresh_process(["--checkpoint", str(folder), "--output_dir", out,
                              "--num_threads", str(threads), *flags])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layers", type=int, default=2, help="layers of the streaming checkpoint")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                    help="time the float64 path too (minutes: an SVD per 4096 x 4096 projection)")
    ap.add_argument("--skip-components", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"load average before: {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores; above ~0.5 "
          "the CPU is shared and times are inflated)")
    dtype = getattr(torch, args.dtype)
    with tempfile.TemporaryDirectory() as tmp:
        one, many = Path(tmp) / "one", Path(tmp) / "many"
        one.mkdir()
        start = time.perf_counter()
        layer_bytes = build(one, 1, dtype, args.vocab)
        print(f"built 1 layer ({layer_bytes / GB:.2f} GB of {args.dtype} weights) in "
              f"{time.perf_counter() - start:.1f} s")
        if not args.skip_components:
            components(one, args.baseline)
        w1, rss1 = probe(one, args.threads)
        goal = (layer_bytes + 1.5 * GB) / GB
        print(f"probe, 1 layer, {args.threads} threads, fresh process: {w1:.1f} s wall (goal <= 20 s), "
              f"peak RSS {rss1 / GB:.2f} GB (goal <= {goal:.2f} GB: weights + 1.5 GB)")
        wf, rssf = probe(one, args.threads, "--spectral_metrics", "false")
        print(f"the same with --spectral_metrics false (no stable_rank / effective_rank): "
              f"{wf:.1f} s wall ({w1 / wf:.1f}x faster), peak RSS {rssf / GB:.2f} GB")
        ws, rsss = probe(one, args.threads, "--spectral_metrics", "stable")
        print(f"the same with --spectral_metrics stable (stable ranks alone, no spectrum): "
              f"{ws:.1f} s wall ({w1 / ws:.1f}x faster), peak RSS {rsss / GB:.2f} GB")
        if args.layers > 1:
            many.mkdir()
            build(many, args.layers, dtype, args.vocab)
            for flags, first, name in (((), w1, "every metric"),
                                       (("--spectral_metrics", "stable"), ws, "stable ranks alone")):
                wn, rssn = probe(many, args.threads, *flags)
                per_layer = (wn - first) / (args.layers - 1)
                total = first - per_layer + 32 * per_layer
                print(f"probe, {args.layers} layers, {name}: {wn:.1f} s wall, peak RSS "
                      f"{rssn / GB:.2f} GB ({rssn / rss1:.2f}x the 1-layer peak: flat if ~1); "
                      f"{per_layer:.1f} s a layer; extrapolated 32-layer 7B model: {total:.0f} s "
                      f"({total / 60:.1f} min; goal <= 11 min)")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
